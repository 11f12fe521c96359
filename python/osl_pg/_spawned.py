"""What both backends (_posix, _windows) share around a spawn: the result
record, and the bookkeeping of pipe ends (the parent's to keep, the
child's to close once the child has its copies)."""
import os
import threading
from typing import List, Optional

from .errors import from_errno

SLOTS = ("stdin", "stdout", "stderr")

_devnull_fd = -1
_devnull_lock = threading.Lock()


def devnull() -> int:
    """One shared fd on the null device (/dev/null, NUL), opened on first
    use: saves an open/close pair per spawn. Not inheritable (PEP 446:
    O_CLOEXEC on POSIX, O_NOINHERIT on Windows)."""
    global _devnull_fd
    if _devnull_fd < 0:
        with _devnull_lock:
            if _devnull_fd < 0:
                try:
                    _devnull_fd = os.open(os.devnull, os.O_RDWR)
                except OSError as e:  # EMFILE, ENFILE: ours, with what it was for
                    raise from_errno(e.errno or 0, f"cannot open {os.devnull} for the child", os.devnull) from None
    return _devnull_fd


class Spawned:
    """A spawned child: pid, its group id (None: the caller's), the parent's
    pipe fds, and whether the backend's fallback path ran (vfork on POSIX,
    CREATE_SUSPENDED + AssignProcessToJobObject on Windows)."""

    __slots__ = ("pid", "pgid", "stdin", "stdout", "stderr", "used_vfork")

    def __init__(self, pid: int, pgid: Optional[int], pipes: List[Optional[int]], used_vfork: bool):
        self.pid = pid
        self.pgid = pgid
        self.stdin, self.stdout, self.stderr = pipes
        self.used_vfork = used_vfork


class PipeEnds:
    """The parent's ends of the pipes made for a spawn, and the fds to close
    after it."""

    def __init__(self) -> None:
        self.parent: List[Optional[int]] = [None, None, None]
        self.close_after: List[int] = []

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
