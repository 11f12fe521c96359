"""Handing the controlling terminal to a child's process group.

A child in its own process group is a *background* job of the terminal: if
it reads the terminal the kernel stops it with SIGTTIN (and with SIGTTOU on
output when `stty tostop` is set), and Ctrl-C reaches the caller's group,
not the child's. A shell solves this by making the job's group the
terminal's foreground group while it runs and taking the terminal back
afterwards; so do `osl-pg run` and `osl_pg.run()` when the child inherits
a terminal stdin that this process has in the foreground.
"""
import os
import signal
from typing import Any, Optional

_SIGTTOU = getattr(signal, "SIGTTOU", None)
_SIGCONT = getattr(signal, "SIGCONT", None)


class ForegroundTerminal:
    """The terminal on `fd` when it is this process's controlling terminal
    and this process's group is in the foreground; otherwise inert."""

    def __init__(self, fd: int = 0) -> None:
        self.fd: Optional[int] = None
        self.given_to: Optional[int] = None
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                self.fd = fd
        except (OSError, AttributeError):  # not a tty, or no job control (Windows)
            self.fd = None

    def give(self, pgid: int) -> None:
        """Make group `pgid` the foreground group."""
        if self.fd is not None and self._set(pgid):
            self.given_to = pgid

    def give_to_group(self, group: Any) -> None:
        """give() the terminal to a ProcessGroup just spawned, then SIGCONT
        it. A child that read the terminal between its spawn and the
        handoff was stopped by SIGTTIN (a shell closes that window in the
        child, before exec; posix_spawn cannot run code there). SIGCONT
        continues it, or discards a stop signal still pending; a child that
        was not stopped only sees a SIGCONT it ignores by default."""
        self.give(group.pgid)
        if self.given_to is not None and _SIGCONT is not None:
            try:
                group.signal(int(_SIGCONT))
            except ProcessLookupError:  # the whole group has already exited
                pass

    def restore(self) -> None:
        """Take the terminal back (a no-op unless give() succeeded)."""
        if self.given_to is not None:
            self._set(os.getpgrp())
            self.given_to = None

    def _set(self, pgid: int) -> bool:
        # tcsetpgrp() from a background group raises SIGTTOU (which would
        # stop this process) unless SIGTTOU is blocked or ignored. Blocking
        # it in this thread alone, rather than ignoring it process-wide with
        # signal.signal(), also works off the main thread and does not race
        # with handlers other threads install.
        mask = {_SIGTTOU} if _SIGTTOU is not None else set()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        try:
            os.tcsetpgrp(self.fd, pgid)  # type: ignore[arg-type]
            return True
        except OSError:  # the group is already gone, or the tty was hung up
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
