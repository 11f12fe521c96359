"""Terminal job control (POSIX): what a shell does with a job, for a group.

A Job wraps a ProcessGroup this program spawned and a controlling terminal:

- ``foreground()`` makes the group the terminal's foreground group (so it can
  read the terminal, and Ctrl-C / Ctrl-Z reach it instead of us), continues
  it if it was stopped, and waits until it has ended or stopped; then the
  terminal is ours again, also when the wait fails or is interrupted.
- ``background()`` continues it without the terminal; ``stop()`` and
  ``cont()`` send SIGTSTP (or SIGSTOP) and SIGCONT to the whole group.
- ``state`` is "running", "stopped" or "done", from the members' process
  states (psutil), not from what we last sent.

Nothing here can hang the caller on the terminal. A background job that
reads the terminal gets SIGTTIN and stops (and one that writes to it with
``stty tostop`` gets SIGTTOU): ``wait()`` then returns "stopped" rather
than waiting for an exit that will not come. While a job is in the
foreground the caller is the background group, so its own writes to the
terminal would stop it with SIGTTOU under tostop: the caller ignores SIGTTOU
for that time (process-wide from the main thread; off the main thread only
the tcsetpgrp() calls are protected, by blocking it in that thread). The
handoff itself is osl_pg.terminal.ForegroundTerminal.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time
from contextlib import contextmanager

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Iterator, Optional

import psutil

from .errors import ProcessNotFound, Unsupported
from .executor import ProcessExecutor
from .group import ProcessGroup
from .operations import ProcessSpawnOperation
from .process import WaitTimeout
from .terminal import ForegroundTerminal

RUNNING, STOPPED, DONE = "running", "stopped", "done"

_SIGTTOU = getattr(signal, "SIGTTOU", None)
SIGTSTP: Optional[int] = getattr(signal, "SIGTSTP", None)  # both None on Windows (Job() refuses there)
SIGCONT: Optional[int] = getattr(signal, "SIGCONT", None)
# After the leader has exited, stops of the other members (not our children)
# raise no event we can wait on: their states are read at this interval.
ORPHAN_POLL = 0.05


class Job:
    """A process group under terminal job control. `terminal` defaults to
    standard input when it is our controlling terminal and we have it in
    the foreground; without one, foreground() raises Unsupported and the
    rest (stop, cont, state, wait) still works."""

    def __init__(self, group: ProcessGroup, terminal: Optional[ForegroundTerminal] = None):
        if SIGCONT is None:
            raise Unsupported("job control needs POSIX signals")
        if group.leader is None:
            raise ValueError("job control needs a group this program spawned (it waits on the leader)")
        self.group = group
        self.terminal: ForegroundTerminal = terminal if terminal is not None else ForegroundTerminal(0)

    @classmethod
    def start(cls, op: ProcessSpawnOperation, executor: Optional[ProcessExecutor] = None,
              terminal: Optional[ForegroundTerminal] = None) -> "Job":
        """Spawn `op` as a new group (in the background) and wrap it."""
        if not op.makes_group:
            op = op.with_new_process_group()
        result = (executor or ProcessExecutor("osl-pg-jobs")).execute(op)
        assert result.group is not None
        return cls(result.group, terminal)

    def __repr__(self) -> str:
        return f"<Job pgid={self.group.pgid} {self.state}>"

    # -- state ---------------------------------------------------------------------
    @property
    def state(self) -> str:
        """"done" when no member runs, "stopped" when every live member is
        stopped (or traced), else "running"."""
        statuses = []
        for m in self.group.members():
            if m.zombie:
                continue
            try:
                statuses.append(psutil.Process(m.pid).status())
            except psutil.NoSuchProcess:
                continue
        if not statuses:
            return DONE
        if all(s in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP) for s in statuses):
            return STOPPED
        return RUNNING

    # -- signals -------------------------------------------------------------------
    def stop(self, sig: Optional[int] = None) -> None:
        """Stop the whole group: SIGTSTP by default (what Ctrl-Z sends; a
        program may catch it), or SIGSTOP (which none can)."""
        sig = sig if sig is not None else SIGTSTP
        assert sig is not None  # see __init__
        self.group.signal(int(sig))

    def cont(self) -> None:
        """SIGCONT to the whole group; it stays in the background."""
        assert SIGCONT is not None  # see __init__
        self.group.signal(int(SIGCONT))

    def background(self) -> None:
        """Continue the job without the terminal (a shell's `bg`)."""
        self.cont()

    # -- waiting ---------------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> str:
        """Block until the job is done or stopped and say which. Raises
        WaitTimeout after `timeout` seconds if it still runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        leader = self.group.leader
        assert leader is not None
        if leader.returncode is None and not leader.reaped:
            if self._wait_leader(leader.pid, deadline) == STOPPED:
                return STOPPED
        # The leader has exited: wait for the rest of the group, looking for
        # a stop between slices (their stops notify nobody we can hear).
        while True:
            if self.group.released:
                return DONE
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout([f"job {self.group.pgid}"], timeout or 0.0)
            try:
                self.group.wait(ORPHAN_POLL if remaining is None else min(ORPHAN_POLL, remaining))
                return DONE
            except WaitTimeout:
                if self.state == STOPPED:
                    return STOPPED

    def _wait_leader(self, pid: int, deadline: Optional[float]) -> str:
        """waitid(WEXITED|WSTOPPED|WNOWAIT) on the leader: sleeps until it
        exits or stops and consumes nothing, so the Process handle still
        reaps it. A stop is reported for as long as the leader stays
        stopped, so asking again answers the same."""
        flags = os.WEXITED | os.WSTOPPED | os.WNOWAIT
        while True:
            if deadline is None:
                info = os.waitid(os.P_PID, pid, flags)
            else:
                info = os.waitid(os.P_PID, pid, flags | os.WNOHANG)
                if info is None:
                    if time.monotonic() >= deadline:
                        raise WaitTimeout([f"job {self.group.pgid}"], 0.0)
                    time.sleep(min(ORPHAN_POLL, max(0.0, deadline - time.monotonic())))
                    continue
            if info is None:
                continue
            if info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED):
                return STOPPED
            return DONE

    # -- the terminal ----------------------------------------------------------------------
    def foreground(self, timeout: Optional[float] = None) -> str:
        """Give the job the terminal, continue it, and wait until it is done
        or stopped (Ctrl-Z); the terminal is ours again on return, error or
        not. Returns "done" or "stopped"."""
        if self.terminal.fd is None:
            raise Unsupported("no controlling terminal of ours in the foreground to hand over")
        if self.group.released:
            return DONE
        with self.terminal_given():
            try:
                self.cont()
            except ProcessNotFound:
                return DONE
            return self.wait(timeout)

    @contextmanager
    def terminal_given(self) -> Iterator[None]:
        """The job is the terminal's foreground group inside the block."""
        with _caller_ignores_sigttou():
            self.terminal.give(self.group.pgid)
            if self.terminal.given_to is None:
                raise ProcessNotFound(errno.ESRCH, f"could not give the terminal to group {self.group.pgid}")
            try:
                yield
            finally:
                self.terminal.restore()


@contextmanager
def _caller_ignores_sigttou() -> Iterator[None]:
    """While a job has the terminal we are a background group: with tostop
    set, our own writes to it would stop us. Ignore SIGTTOU meanwhile (a
    handler is process-wide and only the main thread may set one)."""
    if _SIGTTOU is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(_SIGTTOU, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(_SIGTTOU, old)
