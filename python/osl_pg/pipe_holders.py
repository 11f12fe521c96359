"""Who keeps a pipe open: the processes holding its write end.

osl_pg.run() creates each output pipe for one child only (both ends are
O_CLOEXEC in this process; the child gets a dup of the write end), so a
process holding the write end is that child or a descendant that inherited
it, whatever group or session it has moved to since. That makes the pipe a
trace of the tree that survives setsid(), setpgid() and the death of the
parents in between, which the parent links (osl_pg.tiers.DescendantTracker)
do not.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, Iterable, List

_PROC = "/proc"


def pipe_writers(read_fds: Iterable[int]) -> Dict[int, List[int]]:
    """Processes (other than this one) holding the write end of the pipes
    whose read ends are `read_fds`: {pid: [read fds they keep open]}.

    Linux only (it reads /proc/PID/fd and fdinfo); elsewhere, or for
    processes whose fds this user may not read, nothing is reported."""
    by_inode: Dict[int, int] = {}
    for fd in read_fds:
        try:
            by_inode[os.fstat(fd).st_ino] = fd
        except OSError:
            continue
    if not by_inode or not os.path.isdir(os.path.join(_PROC, "self", "fd")):
        return {}
    me = os.getpid()
    holders: Dict[int, List[int]] = {}
    for entry in os.listdir(_PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        fd_dir = os.path.join(_PROC, entry, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        for name in fds:
            try:
                link = os.readlink(os.path.join(fd_dir, name))
            except OSError:
                continue
            # A pipe's two ends share one inode: "pipe:[12345]".
            if not link.startswith("pipe:["):
                continue
            ours = by_inode.get(int(link[6:-1]))
            if ours is not None and _opened_for_writing(entry, name):
                holders.setdefault(int(entry), []).append(ours)
    return holders


def _opened_for_writing(pid: str, fd: str) -> bool:
    """The access mode in /proc/PID/fdinfo/FD ("flags:" is octal): a
    process holding only a read end does not keep the pipe from EOF."""
    try:
        with open(os.path.join(_PROC, pid, "fdinfo", fd)) as f:
            for line in f:
                if line.startswith("flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False
