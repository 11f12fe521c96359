"""Handing the controlling terminal to a child's process group.

A child in its own process group is a *background* job of the terminal: if
it reads the terminal the kernel stops it with SIGTTIN (and with SIGTTOU on
output when `stty tostop` is set), and Ctrl-C reaches the caller's group,
not the child's. A shell solves this by making the job's group the
terminal's foreground group while it runs and taking the terminal back
afterwards; so do `osl-pg run` and `osl_pg.run()` when the child inherits
a terminal stdin that this process has in the foreground.

One holder at a time. The terminal has one foreground group, so this
process hands it to one child group at a time: a run() that starts while
another thread's child has it runs its own child in the background, and if
that child stops for the terminal (SIGTTIN/SIGTTOU) it gets it, and a
SIGCONT, as soon as the first one gives it back.

Ctrl-Z. The child's group gets SIGTSTP from the terminal and stops. The
waiting side (wait_in_foreground) then behaves as a nested shell: it takes
the terminal back and stops its own group too, so the shell that started
this program prints "Stopped" and has its prompt; on `fg` it hands the
terminal to the child's group again and continues it.
"""
from __future__ import annotations

import os
import signal
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Optional

_SIGTTOU = getattr(signal, "SIGTTOU", None)
_SIGCONT = getattr(signal, "SIGCONT", None)
_SIGTSTP = getattr(signal, "SIGTSTP", None)
_BACKGROUND_STOPS = tuple(s for s in (getattr(signal, "SIGTTIN", None), _SIGTTOU) if s is not None)

# Which of our children's groups has the terminal now (None: we have it).
_holder_lock = threading.Condition()
_holder: Optional[int] = None


class ForegroundTerminal:
    """The terminal on `fd` when it is this process's controlling terminal
    and this process's group (or a child group it handed it to) is in the
    foreground; otherwise inert."""

    def __init__(self, fd: int = 0) -> None:
        self.fd: Optional[int] = None
        self.given_to: Optional[int] = None
        try:
            if os.isatty(fd):
                fg = os.tcgetpgrp(fd)
                if fg == os.getpgrp() or (_holder is not None and fg == _holder):
                    self.fd = fd
        except (OSError, AttributeError):  # not a tty, or no job control (Windows)
            self.fd = None

    def give(self, pgid: int) -> bool:
        """Make group `pgid` the foreground group, unless another of our
        groups has the terminal (then `pgid` runs in the background)."""
        global _holder
        if self.fd is None:
            return False
        with _holder_lock:
            if _holder is not None and _holder != self.given_to:
                return False
            if self._set(pgid):
                _holder = self.given_to = pgid
                return True
        return False

    def give_to_group(self, group: Any) -> None:
        """give() the terminal to a ProcessGroup just spawned, then SIGCONT
        it. A child that read the terminal between its spawn and the
        handoff was stopped by SIGTTIN (a shell closes that window in the
        child, before exec; posix_spawn cannot run code there). SIGCONT
        continues it, or discards a stop signal still pending; a child that
        was not stopped only sees a SIGCONT it ignores by default."""
        if self.fd is None:
            return  # not our foreground terminal (the usual case for a tool's child)
        # The group whose members read the terminal: the pgid, except in the
        # pid_namespace tier, where it is the command's group under the init.
        if self.give(group.terminal_pgid()) and _SIGCONT is not None:
            try:
                group.signal(int(_SIGCONT))
            except ProcessLookupError:  # the whole group has already exited
                pass

    def restore(self) -> None:
        """Take the terminal back (a no-op unless give() succeeded)."""
        global _holder
        if self.given_to is None:
            return
        with _holder_lock:
            self._set(os.getpgrp())
            if _holder == self.given_to:
                _holder = None
            self.given_to = None
            _holder_lock.notify_all()

    def wait_in_foreground(self, proc: Any, group: Any, deadline: Optional[float]) -> bool:
        """Wait until the child `proc` (the leader of `group`) exits, True,
        or `deadline` passes, False; meanwhile act on its stops as a shell
        would (see the module docstring): Ctrl-Z stops this process's group
        too, `fg` continues the child's; a child stopped for a terminal
        another of our groups holds gets it once that one is done."""
        while True:
            stop = group._wait_exit_or_stop(proc.pid, deadline)
            if stop is None:
                return False
            if stop == 0:
                return True
            if self.given_to is not None and stop not in _BACKGROUND_STOPS:
                self._stop_with_child(group)
            else:
                self._wait_for_terminal(group, deadline)

    def _stop_with_child(self, group: Any) -> None:
        """Ctrl-Z (or a stop signal) stopped the child's group: take the
        terminal back and stop our own group, so that our shell regains the
        terminal and prints "Stopped"; once continued (`fg`), hand the
        terminal to the child's group again and continue it."""
        self.restore()
        if _SIGTSTP is not None:
            previous = signal.signal(_SIGTSTP, signal.SIG_DFL) if threading.current_thread() is \
                threading.main_thread() else None
            try:
                os.killpg(os.getpgrp(), _SIGTSTP)  # returns once the shell continued us
            finally:
                if previous is not None:
                    signal.signal(_SIGTSTP, previous)
        if self._still_ours():
            self.give_to_group(group)
        elif _SIGCONT is not None:  # continued in the background (`bg`): so is the child
            try:
                group.signal(int(_SIGCONT))
            except ProcessLookupError:
                pass

    def _wait_for_terminal(self, group: Any, deadline: Optional[float]) -> None:
        """The child stopped because it touched a terminal it does not have
        (another of our groups has it): give it the terminal as soon as it
        is ours to give, and continue it."""
        with _holder_lock:
            while _holder is not None and _holder != self.given_to:
                if not _holder_lock.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                    if deadline is not None and time.monotonic() >= deadline:
                        return
        self.give_to_group(group)

    def _still_ours(self) -> bool:
        """Whether this process's group has the terminal (after `fg`)."""
        try:
            return self.fd is not None and os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:
            return False

    def _set(self, pgid: int) -> bool:
        # tcsetpgrp() from a background group raises SIGTTOU (which would
        # stop this process) unless SIGTTOU is blocked or ignored. Blocking
        # it in this thread alone, rather than ignoring it process-wide with
        # signal.signal(), also works off the main thread and does not race
        # with handlers other threads install.
        fd = self.fd
        if fd is None:
            return False
        mask = {_SIGTTOU} if _SIGTTOU is not None else set()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
        try:
            os.tcsetpgrp(fd, pgid)
            return True
        except OSError:  # the group is already gone, or the tty was hung up
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
