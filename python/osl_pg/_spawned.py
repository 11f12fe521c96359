"""What both backends (_posix, _windows) share around a spawn: the result
record, and the bookkeeping of pipe ends (the parent's to keep, the
child's to close once the child has its copies)."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import List, Optional

from .errors import from_errno

SLOTS = ("stdin", "stdout", "stderr")

class Spawned:
    """A spawned child: pid, its group id (None: the caller's), the parent's
    pipe fds, whether the backend's fallback path ran (vfork on POSIX,
    CREATE_SUSPENDED + AssignProcessToJobObject on Windows), and in the
    pid_namespace tier the init's status pipe."""

    __slots__ = ("pid", "pgid", "stdin", "stdout", "stderr", "used_vfork", "init_status_fd")

    def __init__(self, pid: int, pgid: Optional[int], pipes: List[Optional[int]], used_vfork: bool,
                 init_status_fd: Optional[int] = None):
        self.pid = pid
        self.pgid = pgid
        self.stdin, self.stdout, self.stderr = pipes
        self.used_vfork = used_vfork
        # pid_namespace: the read end of the init's status pipe (osl_pg.pidns)
        self.init_status_fd = init_status_fd


class PipeEnds:
    """The parent's ends of the pipes made for a spawn, and the fds to close
    after it."""

    def __init__(self) -> None:
        self.parent: List[Optional[int]] = [None, None, None]
        self.close_after: List[int] = []
        self._devnull = -1

    def devnull(self) -> int:
        """An fd on the null device (/dev/null, NUL) for this spawn, closed
        after it like a pipe's child end. Not shared across spawns: a cached
        fd can be closed by user code (os.closerange) and its number reused
        for a file, which the next DEVNULL child would then write to. Opening
        per spawn costs ~1.2 us (an fstat check of a cached fd ~0.7 us, and
        that still races a closing thread). Not inheritable (PEP 446)."""
        if self._devnull < 0:
            try:
                self._devnull = os.open(os.devnull, os.O_RDWR)
            except OSError as e:  # EMFILE, ENFILE: ours, with what it was for
                raise from_errno(e.errno or 0, f"cannot open {os.devnull} for the child", os.devnull) from None
            self.close_after.append(self._devnull)
        return self._devnull

    def pipe(self, slot: int) -> int:
        """A pipe for std slot `slot` (0 stdin, 1 stdout, 2 stderr): the
        parent's end is kept, the child's end is returned and closed after
        the spawn. Neither is inheritable (PEP 446)."""
        try:
            r, w = os.pipe()
        except OSError as e:  # EMFILE, ENFILE: ours, with what it was for
            raise from_errno(e.errno or 0, f"cannot make a pipe for the child's {SLOTS[slot]}") from None
        child, self.parent[slot] = (r, w) if slot == 0 else (w, r)
        self.close_after.append(child)
        return child

    def close_child_ends(self) -> None:
        for fd in self.close_after:
            os.close(fd)
        self.close_after = []

    def close_parent_ends(self) -> None:
        for fd in self.parent:
            if fd is not None:
                os.close(fd)
        self.parent = [None, None, None]
