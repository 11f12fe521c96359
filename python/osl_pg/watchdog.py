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
"""
import os
import sys
import threading
from typing import Dict, Optional

# Runs in the watchdog (python -I -S: no site, no user paths: a fast start).
# Lines: "+PGID" or "+PGID CGROUP_KILL_FILE" registers, "-PGID" forgets. A
# group in the cgroup tier is ended through its cgroup.kill file as well,
# which also reaches members that left the process group (setsid).
_WATCHDOG_CODE = r"""
import os, signal
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
            pgid, _, kill_file = line[1:].partition(b" ")
            groups[int(pgid)] = kill_file
        elif line[:1] == b"-":
            groups.pop(int(line[1:]), None)
for pgid, kill_file in groups.items():
    if kill_file:
        try:
            with open(kill_file, "wb") as k:
                k.write(b"1")
        except OSError:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""

_lock = threading.Lock()
_groups: Dict[int, Optional[str]] = {}  # pgid -> cgroup.kill file
_proc = None  # the watchdog's Process handle
_pipe: Optional[int] = None


def register(pgid: int, cgroup_kill_file: Optional[str] = None) -> None:
    """Kill group `pgid` (and everything in `cgroup_kill_file`'s cgroup)
    when this process dies."""
    global _proc, _pipe
    if cgroup_kill_file is not None and (" " in cgroup_kill_file or "\n" in cgroup_kill_file):
        raise ValueError(f"cgroup path not usable by the watchdog: {cgroup_kill_file!r}")
    with _lock:
        _groups[pgid] = cgroup_kill_file
        try:
            if _pipe is None:
                _proc, _pipe = _start()
            os.write(_pipe, _line(pgid, cgroup_kill_file))
        except BrokenPipeError:
            # The watchdog died (OOM killer, a stray kill): start another
            # and give it every group, this one included.
            _discard_watchdog()
            _proc, _pipe = _start()
            os.write(_pipe, b"".join(_line(p, k) for p, k in _groups.items()))


def _line(pgid: int, cgroup_kill_file: Optional[str]) -> bytes:
    line = b"+%d" % pgid
    if cgroup_kill_file:
        line += b" " + os.fsencode(cgroup_kill_file)
    return line + b"\n"


def _discard_watchdog() -> None:
    """Forget a dead watchdog: close our end, reap it."""
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
            os.write(_pipe, b"-%d\n" % pgid)
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


def _start():
    # Imported here: the executor imports this module.
    from ._backend import backend
    from .operations import PIPE, ProcessSpawnOperation
    from .process import Process
    # A session of its own: terminal signals (Ctrl-C, hang-up) aimed at our
    # group must not take the watchdog down with us.
    op = (ProcessSpawnOperation(sys.executable).with_args(["-I", "-S", "-c", _WATCHDOG_CODE])
          .with_detach_from_terminal().with_stdin(PIPE))
    spawned = backend.spawn(op)
    proc = Process(spawned.pid, [sys.executable, "watchdog"])
    return proc, spawned.stdin
