"""Kill whole groups when this process dies (with_kill_on_parent_death).

PR_SET_PDEATHSIG reaches only the direct child (the group leader); the
kernel clears it in every process the leader forks. To take the rest of the
tree down too, one small watchdog process per parent holds the read end of a
pipe and a list of pgids. When the parent dies, for any reason including
SIGKILL, the kernel closes the write end; the watchdog reads EOF and sends
SIGKILL to every registered group. The pgids stay valid for that: a group's
id cannot be reused while any member is alive, and only live members are
worth killing.

The watchdog starts on the first registration (one interpreter start-up,
~20 ms, once) and exits when the last group is unregistered: the parent then
closes the pipe with an empty list, which the watchdog takes as "done".
After killing, it removes the cgroup directories of the groups it ended
(their owner, dead, cannot), once the last process in each has gone.

If the watchdog cannot be started (no fd for its pipe, no process slot),
register() raises a typed error and keeps nothing: the group is not on the
list, no watchdog process or pipe is left behind.
"""
from __future__ import annotations

import errno
import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, Optional, Sequence, Tuple

    from .process import Process

from .errors import from_errno

# Runs in the watchdog (python -I -S: no site, no user paths: a fast start).
# Lines: "+PGID KILL DIR..." registers, "-PGID" forgets. Paths go hex-encoded
# (any byte may be in a path), "-" for none. KILL is the group's cgroup.kill
# file in the cgroup tier: writing it also reaches members that left the
# process group (setsid). DIR... are the group's cgroup directories, removed
# after the kill. Like every remover (osl_pg.cgroup), the watchdog takes a
# directory's flock first (free: its creator is dead) and checks the name
# still leads to the directory it locked; a sweeping process that holds the
# lock is removing it already.
_WATCHDOG_CODE = r"""
import errno, fcntl, os, signal, time
groups = {}
f = os.fdopen(0, "rb", buffering=0)
buf = b""
while True:
    chunk = f.read(4096)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            pgid, *paths = line[1:].split(b" ")
            groups[int(pgid)] = [b"" if p == b"-" else bytes.fromhex(p.decode()) for p in paths]
        elif line[:1] == b"-":
            groups.pop(int(line[1:]), None)
for pgid, paths in groups.items():
    if paths and paths[0]:
        try:
            with open(paths[0], "wb") as k:
                k.write(b"1")
        except OSError:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass

def remove(path, deadline):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        pause = 0.001
        while True:
            # Our EOF may come before the exiting parent's fds are all
            # closed, its lock among them; a sweeper may hold it briefly.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        st, now = os.fstat(fd), os.stat(path)  # gone meanwhile: OSError
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            return
        pause = 0.001
        while True:  # EBUSY until the killed processes have exited
            try:
                os.rmdir(path)
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    return
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
    except OSError:
        return
    finally:
        os.close(fd)
    try:
        os.rmdir(os.path.dirname(path))  # the osl_pg subtree, once empty
    except OSError:
        pass

# Bounded: a process stuck in the kernel (D state) must not keep us here;
# what stays is removed by the next process's sweep once it is empty.
deadline = time.monotonic() + 10
for paths in groups.values():
    for path in paths[1:]:
        remove(path, deadline)
"""

_lock = threading.Lock()
# pgid -> (cgroup.kill file or None, cgroup directories)
_groups: Dict[int, Tuple[Optional[str], Tuple[str, ...]]] = {}
_proc = None  # the watchdog's Process handle
_pipe: Optional[int] = None


def register(pgid: int, cgroup_kill_file: Optional[str] = None, cgroup_dirs: Sequence[str] = ()) -> None:
    """Kill group `pgid` (and everything in `cgroup_kill_file`'s cgroup)
    when this process dies, then remove `cgroup_dirs`. Raises a typed
    OSError (and registers nothing) if no watchdog can be started."""
    entry = (cgroup_kill_file, tuple(cgroup_dirs))
    with _lock:
        _groups[pgid] = entry
        try:
            _send(_line(pgid, entry))
        except BaseException as e:
            del _groups[pgid]
            if isinstance(e, OSError):
                raise _start_error(e) from e
            raise


def ready() -> None:
    """Start the watchdog now if none runs. A spawn with_kill_on_parent_death
    calls this before its child exists, so that a watchdog that cannot start
    (no fd left for its pipe, no process slot) is a typed error with nothing
    to clean up, rather than a live group to kill with those same fds short."""
    global _proc, _pipe
    with _lock:
        if _pipe is not None:
            return
        try:
            _proc, _pipe = _start()
            # Groups still listed if an earlier watchdog died: hand them on.
            _write_all(_pipe, b"".join(_line(p, e) for p, e in _groups.items()))
        except BaseException as e:
            _discard_watchdog()
            if isinstance(e, OSError):
                raise _start_error(e) from e
            raise


def release_if_idle() -> None:
    """After ready() and a spawn that then failed: a watchdog with no group
    to watch is let go (EOF with an empty list: it exits without killing)."""
    with _lock:
        if not _groups:
            _discard_watchdog()


def _start_error(e: OSError) -> OSError:
    """The same typed error, saying that the watchdog could not start."""
    err = e.errno or errno.EIO
    cls = type(from_errno(err, ""))
    return cls(err, f"cannot start the kill-on-parent-death watchdog: {e.strerror or e}")


def _send(data: bytes) -> None:
    """Write to the watchdog; if there is none (the first group, or it
    died: the OOM killer, a stray kill), start one and give it every group,
    the new one included. On failure no watchdog process or pipe is kept."""
    global _proc, _pipe
    if _pipe is not None:
        try:
            _write_all(_pipe, data)
            return
        except BrokenPipeError:
            _discard_watchdog()
    _proc, _pipe = _start()
    try:
        _write_all(_pipe, b"".join(_line(p, e) for p, e in _groups.items()))
    except BaseException:
        _discard_watchdog()
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _line(pgid: int, entry: Tuple[Optional[str], Tuple[str, ...]]) -> bytes:
    kill_file, dirs = entry
    paths = [os.fsencode(p).hex().encode() if p else b"-" for p in (kill_file, *dirs)]
    return b"+%d %s\n" % (pgid, b" ".join(paths))


def _discard_watchdog() -> None:
    """Forget a watchdog: close our end (with nothing registered it exits
    on EOF without killing; a dead one is just reaped), reap it."""
    global _proc, _pipe
    if _pipe is not None:
        os.close(_pipe)
        _pipe = None
    proc, _proc = _proc, None
    if proc is not None:
        proc.wait()


def unregister(pgid: int) -> None:
    with _lock:
        if pgid not in _groups:
            return
        del _groups[pgid]
        if _pipe is None:
            return
        try:
            _write_all(_pipe, b"-%d\n" % pgid)
        except BrokenPipeError:
            _discard_watchdog()  # dead already: the next register() starts one
            return
        if not _groups:
            # EOF with an empty list: the watchdog exits without killing.
            _discard_watchdog()


def _forget_in_child() -> None:
    """After os.fork(): the child owns none of the parent's groups, and must
    not hold the pipe open (the watchdog would never see the parent die)."""
    global _proc, _pipe, _lock
    if _pipe is not None:
        try:
            os.close(_pipe)
        except OSError:
            pass
    _proc, _pipe = None, None
    _groups.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _start() -> Tuple[Process, int]:
    # Imported here: the executor imports this module.
    from ._backend import backend
    from .operations import PIPE, ProcessSpawnOperation
    from .process import Process
    # A session of its own: terminal signals (Ctrl-C, hang-up) aimed at our
    # group must not take the watchdog down with us.
    op = (ProcessSpawnOperation(sys.executable).with_args(["-I", "-S", "-c", _WATCHDOG_CODE])
          .with_detach_from_terminal().with_stdin(PIPE))
    spawned = backend.spawn(op)
    stdin = spawned.stdin
    assert stdin is not None  # with_stdin(PIPE)
    try:
        proc = Process(spawned.pid, [sys.executable, "watchdog"])
    except BaseException:
        # Started, but we cannot keep it: EOF with nothing registered ends it.
        os.close(stdin)
        os.waitpid(spawned.pid, 0)
        raise
    return proc, stdin
