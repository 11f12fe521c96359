"""Windows backend: the only Python code that touches the C module there.

A "process group" on Windows is a Job Object (csrc/osl_pg_win.c). The group
id is its leader's pid, as DESIGN.md says; this module keeps the map from
that id to the job, so groups are known only to the process that made them
(a job is reached through a handle, not a number). Every job is created with
KILL_ON_JOB_CLOSE: when this process exits, however it exits, the kernel
closes the handle and kills the whole tree.

Process handles play the part of POSIX's unreaped zombies: the handle of
every child is kept, in a pid -> handle map, until the child is "reaped"
(wait without nowait closes it). Windows does not give a pid to a new
process while any handle to the old one is open, so a kept handle pins the
pid exactly as a zombie does on POSIX; a ProcessGroup pins its leader's
handle, and so its id, until the group is released.

Signals are mapped, not emulated: SIGTERM and SIGKILL end the job (or the
process) with TerminateJobObject/TerminateProcess and the signal number as
exit code (os.kill's convention; Windows has nothing a process could catch),
SIGBREAK becomes a console control event for the leader's console process
group, signal 0 probes; SIGINT (see _sigint_refused) and any other signal
are Unsupported.
"""
from __future__ import annotations

import collections
import errno
import functools
import msvcrt
import os
import signal as _signal
import subprocess
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

# Type checkers check this module for Windows only (_posix.py is the backend
# elsewhere): the assert tells them; _backend imports it only there anyway.
assert sys.platform == "win32"

import _winapi

from ._native import ffi, lib
from ._spawned import PipeEnds, Spawned
from .errors import (CommandNotFound, LimitUnavailable, OslOSError, OslPermissionError, ProcessNotFound,
                     Unsupported)
from .operations import DEVNULL, PIPE, STDOUT, JoinGroup, NewGroup, ProcessSpawnOperation, signal_name

NAME = "windows"
# A job with KILL_ON_JOB_CLOSE dies with this process: no watchdog needed.
GROUPS_DIE_WITH_PARENT = True
# spawn() applies op.limits to the job (no cgroups here).
LIMITS_IN_SPAWN = True

SIGTERM = int(_signal.SIGTERM)
SIGKILL = 9  # not in Windows' signal module; osl_pg accepts it there
SIGINT = int(_signal.SIGINT)
SIGBREAK = int(getattr(_signal, "SIGBREAK", 21))
CTRL_BREAK_EVENT = int(getattr(_signal, "CTRL_BREAK_EVENT", 1))

_WAIT_SLICE_MS = 100  # blocking waits wake this often so Ctrl-C is seen

# Windows error codes this module names (winerror.h).
ERROR_FILE_NOT_FOUND = 2
ERROR_PATH_NOT_FOUND = 3
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
ERROR_BAD_EXE_FORMAT = 193
ERROR_DIRECTORY = 267


# Ownership. Every HANDLE and osl_job * below is a cdata made by ffi.gc, so
# it is closed when the last Python reference to it goes, and not before: a
# table entry is one reference, and every call that uses the handle holds
# another in a local variable for as long as it uses it, so a handle can
# never be closed under a thread that is waiting on it (on Windows that is
# undefined behaviour: GetQueuedCompletionStatus fails, or the value already
# names the next spawn's new job). STYLE.md prefers explicit close() for OS
# handles; these are shared by threads that use them outside any lock, and
# the only count of their users that needs no lock (nothing reachable from
# __del__ may take a blocking lock: group release is) is the interpreter's
# own reference count. So there is no lock in this module: each table is
# changed by single dict/deque operations, which are atomic. A handle no
# other code has seen yet (spawn's error path) is closed explicitly.
_handles: Dict[int, Any] = {}  # pid -> process HANDLE, until reaped
_jobs: Dict[int, Any] = {}  # pgid (the leader's pid) -> osl_job *
# pgid -> the leader's HANDLE, until the group is released: the entry in
# _jobs pins its own key (reaping the leader closes no handle while this
# one is held), so no new leader can get the number and its entry before
# release_group() has taken the old one out.
_leaders: Dict[int, Any] = {}
# Jobs that must stay open while they have members (closing the last handle
# kills them): those of detached or dropped groups, and the private jobs of
# Inherit children spawned with kill_on_parent_death. Each spawn lets go of
# the ones that have emptied.
_kept_jobs: "collections.deque[Any]" = collections.deque()
_limits: Dict[int, Dict[str, str]] = {}  # pgid -> each limit set on its job -> "job"
_consoleless: Set[int] = set()  # pgids of detached groups: no console, no console events


def _owned_job(job: Any) -> Any:
    return ffi.gc(job, lib.osl_job_close)


def _owned_handle(handle: Any) -> Any:
    return ffi.gc(handle, lib.osl_win_close_handle)


def _winerror(code: int, what: str, filename: Optional[str] = None) -> OSError:
    """An OSError subclass for a GetLastError() code; its errno is the one
    CPython maps the code to, and `winerror` is kept."""
    mapped = OSError(0, "", None, code).errno or errno.EINVAL
    if code in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_DIRECTORY):
        cls: type[OSError] = CommandNotFound
    elif code == ERROR_ACCESS_DENIED:
        cls = OslPermissionError
    elif code == ERROR_INVALID_PARAMETER and what.startswith(("kill", "signal")):
        cls = ProcessNotFound
    else:
        cls = OslOSError
    # str() adds "[WinError N]" in front (and the filename after).
    return cls(mapped, f"{what}: {os.strerror(mapped)}", filename, code)


# --------------------------------------------------------------------------
# command lookup

_which_cache: Dict[Tuple[str, Optional[str], str], str] = {}


def _child_env_value(op: ProcessSpawnOperation, key: str) -> Optional[str]:
    """A variable as the child will see it (keys are case-insensitive)."""
    for k, value in reversed(op.env_overrides):
        if k.upper() == key:
            return value
    if not op.inherit_env:
        return None
    return os.environ.get(key)


def _candidates(name: str, pathext: List[str]) -> List[str]:
    """`name` as given if it has an extension, then with each PATHEXT one
    (CreateProcess itself only ever adds .exe)."""
    ext = os.path.splitext(name)[1]
    names = [name] if ext else []
    return names + [name + e for e in pathext]


def resolve_command(op: ProcessSpawnOperation) -> str:
    """The executable's path: a command with a directory part is used as
    given (trying PATHEXT extensions if it has none), a bare name is looked
    up in the child's PATH with PATHEXT, like cmd.exe and shutil.which.
    op.executable, when given, is what is looked up (the command line
    still starts with op.command)."""
    command = op.executable if op.executable is not None else op.command
    pathext = [e for e in (_child_env_value(op, "PATHEXT") or ".COM;.EXE;.BAT;.CMD").split(";") if e]
    if os.path.dirname(command):
        for candidate in _candidates(command, pathext):
            if os.path.isfile(candidate):
                return candidate
        raise CommandNotFound(errno.ENOENT, f"command not found: {command!r}", command)
    path = _child_env_value(op, "PATH") or ""
    key = (command, path, ";".join(pathext))
    hit = _which_cache.get(key)
    if hit is not None:
        return hit
    for d in path.split(os.pathsep):
        if not d:
            continue
        for candidate in _candidates(os.path.join(d.strip('"'), command), pathext):
            if os.path.isfile(candidate):
                if len(_which_cache) > 256:
                    _which_cache.clear()
                _which_cache[key] = candidate
                return candidate
    raise CommandNotFound(errno.ENOENT, f"command not found: {command!r} (searched PATH={path})", command)


# --------------------------------------------------------------------------
# environment


def _env_block(op: ProcessSpawnOperation) -> Optional[str]:
    """The UTF-16 environment block's text ("K=V\\0...\\0\\0"), or None for
    the parent's environment unchanged. Keys compare case-insensitively, as
    Windows does; the block is sorted, as CreateProcess documents."""
    if op.inherit_env and not op.env_overrides:
        return None
    env: Dict[str, Tuple[str, str]] = {}
    if op.inherit_env:
        env = {k.upper(): (k, v) for k, v in os.environ.items()}
    for key, value in op.env_overrides:
        if value is None:
            env.pop(key.upper(), None)
        else:
            env[key.upper()] = (key, value)
    entries = [f"{k}={v}" for _, (k, v) in sorted(env.items())]
    return "\0".join(entries) + "\0\0" if entries else "\0\0"


# --------------------------------------------------------------------------
# stdio

def _std_handle(slot: int) -> Any:
    """This process's own std handle (what the C layer gives for NULL)."""
    which = (_winapi.STD_INPUT_HANDLE, _winapi.STD_OUTPUT_HANDLE, _winapi.STD_ERROR_HANDLE)[slot]
    return ffi.cast("void *", _winapi.GetStdHandle(which) or 0)


class _Stdio(PipeEnds):
    """The HANDLEs the child gets (NULL: ours), the parent's ends of pipes
    as fds, and the child's ends to close after the spawn. The C layer
    duplicates what it is given, so nothing here needs to be inheritable."""

    def __init__(self) -> None:
        super().__init__()
        self.child: List[Any] = [ffi.NULL, ffi.NULL, ffi.NULL]

    def setup(self, op: ProcessSpawnOperation) -> None:
        for i, spec in enumerate((op.stdin, op.stdout, op.stderr)):
            if spec is None:
                continue
            if spec == PIPE:
                self.child[i] = _fd_handle(self.pipe(i))
            elif spec == DEVNULL:
                self.child[i] = _fd_handle(self.devnull())
            elif spec == STDOUT:
                self.child[2] = self.child[1] if self.child[1] != ffi.NULL else _std_handle(1)
            else:
                self.child[i] = _fd_handle(spec if isinstance(spec, int) else spec.fileno())


def _fd_handle(fd: int) -> Any:
    return ffi.cast("void *", msvcrt.get_osfhandle(fd))


# --------------------------------------------------------------------------
# jobs


def _new_job() -> Any:
    out = ffi.new("osl_job **")
    err = lib.osl_job_create(lib.OSL_JOB_KILL_ON_CLOSE, out)
    if err:
        raise _winerror(err, "CreateJobObject")
    return _owned_job(out[0])


def _apply_limits(job: Any, op: ProcessSpawnOperation) -> Dict[str, str]:
    """Set op.limits on the job before the child runs; returns what was set."""
    limits = getattr(op, "limits", None)
    if limits is None:
        return {}
    if limits.cpu_quota is not None:
        raise LimitUnavailable("cpu_quota has no Job Object implementation in osl_pg yet "
                               "(JOBOBJECT_CPU_RATE_CONTROL_INFORMATION is not wired)")
    err = lib.osl_job_set_limits(job, limits.max_processes or 0, limits.max_memory or 0)
    if err:
        raise _winerror(err, "SetInformationJobObject(limits)")
    return {name: "job" for name in limits.requested()}


def limits_applied(pgid: int) -> Dict[str, str]:
    """Each limit set on group `pgid`'s job, e.g. {"max_processes": "job"}."""
    return dict(_limits.get(pgid, {}))


def _job_for(pgid: int) -> Any:
    """The job of group `pgid`, held by the caller while it uses it."""
    job = _jobs.get(pgid)
    if job is None:
        raise ProcessNotFound(errno.ESRCH, f"process group {pgid} is not a job this process created "
                                           "(or it was released)")
    return job


def group_pids(pgid: int) -> List[int]:
    """The pids in group `pgid`'s job now; [] for a group we do not know."""
    job = _jobs.get(pgid)
    return _job_pids(job) if job is not None else []


def _job_pids(job: Any) -> List[int]:
    capacity = 64
    while True:
        pids = ffi.new("unsigned long[]", capacity)
        count = ffi.new("unsigned long *")
        err = lib.osl_job_pids(job, pids, capacity, count)
        if err == lib.OSL_WIN_MORE_DATA:
            capacity = count[0] + 16  # the job may grow meanwhile
            continue
        if err:
            raise _winerror(err, "QueryInformationJobObject(process ids)")
        return [int(pids[i]) for i in range(count[0])]


def job_accounting(pgid: int) -> Tuple[int, int, int]:
    """(active, total ever, terminated) process counts of group `pgid`'s
    job. Wine 8 leaves the third at 0."""
    return _accounting(_job_for(pgid))


def _accounting(job: Any) -> Tuple[int, int, int]:
    out = ffi.new("unsigned long[3]")
    err = lib.osl_job_accounting(job, out, out + 1, out + 2)
    if err:
        raise _winerror(err, "QueryInformationJobObject(accounting)")
    return int(out[0]), int(out[1]), int(out[2])


def job_handle(pgid: int) -> int:
    """The HANDLE of group `pgid`'s Job Object, as an int for ctypes or
    _winapi. Owned by osl_pg and valid while the group is open: do not
    close it."""
    out = ffi.new("void **")
    lib.osl_job_handle(_job_for(pgid), out)
    return int(ffi.cast("uintptr_t", out[0]))


def _active(job: Any) -> int:
    return _accounting(job)[0]


def group_job(pgid: int) -> Any:
    """An opaque token for group `pgid`'s job (its holder keeps the job
    open), for release_group(); None for a group we do not know."""
    return _jobs.get(pgid)


def release_group(pgid: int, job: Any) -> None:
    """Group `pgid`'s handle is released (once; `job` is group_job()'s
    token): forget its id. A job with members left (a detached group, a
    dropped handle) is kept open, so they live on, until it empties or
    this process exits (KILL_ON_JOB_CLOSE then ends them: on Windows no
    group outlives the process that made it); an empty one is closed once
    no call uses it any more. Called from ProcessGroup.__del__ too: it
    takes no lock."""
    if job is None or _jobs.get(pgid) is not job:
        return
    # _leaders[pgid] pins the id until the last line: no later group can
    # have it yet, so the entries taken out are this group's.
    _jobs.pop(pgid, None)
    _limits.pop(pgid, None)
    _consoleless.discard(pgid)
    _keep_while_busy(job)
    _leaders.pop(pgid, None)


def _keep_while_busy(job: Any) -> None:
    """Hold a job no table holds any more while it has members."""
    try:
        busy = _active(job) > 0
    except OSError:
        busy = True  # cannot tell: keeping it open never kills anything
    if busy:
        _kept_jobs.append(job)


def _close_emptied_jobs() -> None:
    """Let go of the kept jobs that have emptied (each is closed when the
    last call using it returns). Safe beside other threads doing the same:
    each job is taken out, looked at, and put back if still busy."""
    for _ in range(len(_kept_jobs)):
        try:
            job = _kept_jobs.popleft()
        except IndexError:
            return
        _keep_while_busy(job)


# --------------------------------------------------------------------------
# spawn


def spawn(op: ProcessSpawnOperation, cgroup_procs_fds: Sequence[int] = ()) -> Spawned:
    """CreateProcessW for a validated operation. A new group (or a detached
    child) gets a new job, which it is in before it runs; JoinGroup puts
    the child in that group's job."""
    if cgroup_procs_fds:
        raise Unsupported("cgroups are Linux-only")
    if op.pass_fds:
        raise Unsupported("pass_fds is POSIX-only: Windows children inherit handles, not fd numbers")
    if op.changes_credentials:
        raise Unsupported("user, group, extra_groups and umask are POSIX-only")
    _close_emptied_jobs()
    path = resolve_command(op)
    keep: List[Any] = []  # cffi buffers that must outlive the call
    attr = ffi.new("struct osl_win_spawn_attr *")
    attr.application = _wstr(path, keep)
    attr.command_line = _wstr(subprocess.list2cmdline([op.command, *op.args]), keep)
    block = _env_block(op)
    attr.environment = _wstr(block, keep) if block is not None else ffi.NULL
    attr.cwd = _wstr(op.cwd, keep) if op.cwd is not None else ffi.NULL
    group = op.process_group
    leads = op.detach_from_terminal or isinstance(group, NewGroup)
    flags = 0
    if leads:
        flags |= lib.OSL_WIN_NEW_GROUP  # a console process group: ctrl events can target it
    if op.detach_from_terminal:
        flags |= lib.OSL_WIN_DETACHED
    attr.flags = flags
    new_job = None
    stdio = _Stdio()
    out_pid = ffi.new("unsigned long *")
    out_handle = ffi.new("void **")
    out_fallback = ffi.new("int *")
    joined = None
    applied: Dict[str, str] = {}
    try:
        if leads or op.kill_on_parent_death and not isinstance(group, JoinGroup):
            new_job = _new_job()
            applied = _apply_limits(new_job, op)
            attr.job = new_job
        elif isinstance(group, JoinGroup):
            joined = _jobs.get(group.pgid)
            if joined is None:
                raise join_error(group.pgid)
            attr.job = joined
        stdio.setup(op)
        for i in range(3):
            attr.std_handles[i] = stdio.child[i]
        err = lib.osl_win_spawn(attr, out_pid, out_handle, out_fallback)
        if err:
            raise _spawn_error(err, op, path)
        stdio.close_child_ends()
    except BaseException:
        stdio.close_child_ends()
        stdio.close_parent_ends()
        if new_job is not None:
            ffi.release(new_job)  # no other code has seen it: close it now
        raise
    pid = int(out_pid[0])
    handle = _handles[pid] = _owned_handle(out_handle[0])
    if new_job is not None:
        if leads:
            _leaders[pid] = handle
            if applied:
                _limits[pid] = applied
            if op.detach_from_terminal:
                _consoleless.add(pid)
            _jobs[pid] = new_job
        else:
            _kept_jobs.append(new_job)  # Inherit + kill_on_parent_death
    elif isinstance(group, JoinGroup) and joined is not None and _jobs.get(group.pgid) is not joined:
        # The group was released while the child joined it: its job may
        # have been let go of as empty, and closing it would kill the child.
        _keep_while_busy(joined)
    if leads:
        pgid: Optional[int] = pid
    elif isinstance(group, JoinGroup):
        pgid = group.pgid
    else:
        pgid = None
    return Spawned(pid, pgid, stdio.parent, bool(out_fallback[0]))


def _wstr(text: str, keep: List[Any]) -> Any:
    """A NUL-terminated wchar_t (UTF-16) copy of `text`, which may itself
    hold NULs (an environment block)."""
    buf = ffi.new("wchar_t[]", text)
    keep.append(buf)
    return buf


def _spawn_error(err: int, op: ProcessSpawnOperation, path: str) -> OSError:
    """Name what failed; CreateProcess reports one code for every input,
    so the cause is found by looking at them (on this error path only)."""
    if op.cwd is not None and (err == ERROR_DIRECTORY or not os.path.isdir(op.cwd)):
        code = ERROR_PATH_NOT_FOUND if not os.path.exists(op.cwd) else err
        return _winerror(code, f'cannot use working directory "{op.cwd}"', op.cwd)
    if err in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND):
        return _winerror(err, f'command not found: "{op.command}" ({path})', op.command)
    if err in (ERROR_ACCESS_DENIED, ERROR_BAD_EXE_FORMAT):
        return _winerror(err, f'cannot execute "{op.command}" ({path})', op.command)
    return _winerror(err, f"spawning {op.command!r} failed")


def join_error(pgid: int) -> OSError:
    return ProcessNotFound(errno.ESRCH, f"cannot join process group {pgid}: it is not a job this process "
                                        "created (or it was released)")


# --------------------------------------------------------------------------
# signals and ids


def _exited(handle: Any) -> bool:
    code = ffi.new("unsigned long *")
    err = lib.osl_win_exit_code(handle, code)
    if err:
        raise _winerror(err, "GetExitCodeProcess")
    still_active: bool = code[0] == lib.OSL_WIN_STILL_ACTIVE
    return not still_active


def _unsupported(sig: int, what: str) -> Unsupported:
    return Unsupported(f"{signal_name(sig)} ({sig}) has no Windows equivalent for {what}: use SIGTERM or "
                       "SIGKILL (terminate), or SIGBREAK for a group (a console control event)")


# SIGINT is refused, never sent. Windows delivers Ctrl+C (CTRL_C_EVENT) to
# a whole console, not to a process: GenerateConsoleCtrlEvent(CTRL_C_EVENT,
# pgid) reaches only the console process group `pgid`, and every osl_pg
# group is one made with CREATE_NEW_PROCESS_GROUP, which starts its leader
# with Ctrl+C ignored, a state its descendants inherit. An ordinary child
# never sees the event, yet the call reports success (Microsoft documents
# exactly that; only a child that calls SetConsoleCtrlHandler(NULL, FALSE)
# itself gets it, and we cannot tell which do). For a pid that leads no
# console group it is worse: Windows then sends the event to every process
# on the console, this one included (microsoft/terminal#335), and Wine
# sends it to nobody. CPython's os.kill passes CTRL_C_EVENT through and its
# docs warn only about the group flag; a silent no-op that a caller waits a
# grace period on is worse than an error, so we raise one naming what works:
# SIGBREAK (CTRL_BREAK_EVENT, never disabled; Python children see
# signal.SIGBREAK, other programs end as on Ctrl+Break) or terminate().
def _sigint_refused(target: str) -> Unsupported:
    return Unsupported(f"SIGINT cannot be sent to {target} on Windows: Ctrl+C (CTRL_C_EVENT) is disabled in "
                       "every process of a new console process group (CREATE_NEW_PROCESS_GROUP, which each "
                       "osl_pg group is), so it would report success and reach nothing (unless the child "
                       "re-enabled it), and for a process that leads no group Windows sends it to the whole "
                       "console, this process included. Send SIGBREAK to the group instead (CTRL_BREAK_EVENT: "
                       "Python children see signal.SIGBREAK, other programs end as on Ctrl+Break), or "
                       "terminate() it (TerminateJobObject)")


def kill(pid: int, sig: int) -> None:
    """Signal one process. A child of ours is reached through its handle;
    any other pid through os.kill. Never os.kill(pid, 0): on Windows that
    is TerminateProcess with exit code 0. SIGBREAK reaches a group leader's
    whole console group (as subprocess's send_signal(CTRL_BREAK_EVENT)
    does); any other pid would pass it to the whole console, so it is
    refused, as SIGINT always is."""
    handle = _handles.get(pid)  # held, so still open, until we return
    if sig == 0:
        if handle is not None:
            if _exited(handle):
                raise ProcessNotFound(errno.ESRCH, f"process {pid} has exited")
            return
        import psutil
        if not psutil.pid_exists(pid):
            raise ProcessNotFound(errno.ESRCH, f"process {pid} does not exist")
        return
    if sig in (SIGTERM, SIGKILL):
        if handle is not None:
            if _exited(handle):
                return  # like kill() on a zombie: nothing to do, no error
            try:
                _winapi.TerminateProcess(int(ffi.cast("uintptr_t", handle)), sig)
            except OSError as e:
                # Access denied is what TerminateProcess says when the
                # process has just exited; anything else is real.
                if not _exited(handle):
                    raise _winerror(e.winerror or ERROR_ACCESS_DENIED, f"kill({pid}, {sig})") from None
            return
        _os_kill(pid, sig)
        return
    if sig == SIGINT:
        raise _sigint_refused(f"process {pid}")
    if sig in (SIGBREAK, CTRL_BREAK_EVENT):
        if pid not in _jobs:
            raise Unsupported(f"SIGBREAK cannot be sent to process {pid} alone on Windows: a console control "
                              "event goes to a console process group, and for a process that leads none (only "
                              "osl_pg group leaders do) Windows sends it to the whole console, this process "
                              "included; signal its group, or terminate() it")
        _sigbreak(pid)
        return
    raise _unsupported(sig, "a process")


def _os_kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)  # OpenProcess + TerminateProcess(exit code sig)
    except OSError as e:
        raise _winerror(e.winerror or ERROR_INVALID_PARAMETER, f"kill({pid}, {sig})") from None


def _ctrl_event(event: int, pgid: int) -> None:
    err = lib.osl_win_ctrl_event(event, pgid)
    if err:
        raise _winerror(err, f"signal: GenerateConsoleCtrlEvent({event}, {pgid})")


def signal_group(pgid: int, sig: int) -> None:
    """SIGTERM/SIGKILL end every process in the job at once; SIGBREAK goes
    to the leader's console process group (the leader and the descendants
    that did not start groups of their own, if they share our console); 0
    probes; SIGINT is refused (see _sigint_refused). ProcessNotFound when
    the job has no process left."""
    job = _job_for(pgid)  # held: a release meanwhile cannot close it under us
    if sig in (0, SIGTERM, SIGKILL) and _active(job) == 0:
        raise ProcessNotFound(errno.ESRCH, f"process group {pgid} has no process left")
    if sig == 0:
        return
    if sig in (SIGTERM, SIGKILL):
        err = lib.osl_job_terminate(job, sig)
        if err:
            raise _winerror(err, f"signal: TerminateJobObject(group {pgid})")
    elif sig == SIGINT:
        raise _sigint_refused(f"process group {pgid}")
    elif sig in (SIGBREAK, CTRL_BREAK_EVENT):
        _sigbreak(pgid)
    else:
        raise _unsupported(sig, "a job")


def _sigbreak(pgid: int) -> None:
    """CTRL_BREAK_EVENT to our console process group `pgid`. A detached
    group has no console: Windows would report success and deliver nothing."""
    if pgid in _consoleless:
        raise Unsupported(f"SIGBREAK cannot reach process group {pgid}: it was started detached from the "
                          "terminal (DETACHED_PROCESS), so it has no console to deliver console control events "
                          "on; terminate() it instead")
    _ctrl_event(lib.OSL_WIN_CTRL_BREAK, pgid)


def children_autoreaped() -> bool:
    """Windows keeps a process object while a handle to it is open."""
    return False


def group_signaller(pgid: int) -> Callable[[int], None]:
    """signal_group(pgid, ·) for a handle's hot path (see _posix)."""
    return functools.partial(signal_group, pgid)


def signal_error(e: OSError, pgid: int, sig: int) -> OSError:
    """signal_group() raises osl_pg's own errors already."""
    return e


def killpg(pgid: int, sig: int, check: bool = True) -> int:
    try:
        signal_group(pgid, sig)
    except ProcessNotFound:
        if check:
            raise
        return errno.ESRCH
    return 0


def pgid_or_none(pid: int) -> Optional[int]:
    """The id of the group (job of ours) that `pid` is in, or None."""
    for pgid, job in list(_jobs.items()):  # a copy: other threads may change the table
        if pid in _job_pids(job):
            return pgid
    return None


def set_child_subreaper(on: bool) -> None:
    raise Unsupported("PR_SET_CHILD_SUBREAPER is Linux-only; on Windows a job already holds every descendant")


def own_pgid() -> int:
    """What an Inherit child reports as its group: this process's pid (this
    process leads no job; the child shares its console process group)."""
    return os.getpid()


def list_pids() -> List[int]:
    import psutil
    return psutil.pids()


# --------------------------------------------------------------------------
# waiting


def wait(pid: int, nohang: bool, nowait: bool) -> Optional[int]:
    """The exit code of child `pid`, or None if `nohang` and it still runs.
    Without `nowait` the handle is closed ("reaped"): from then on the pid
    may be reused and this module no longer knows it."""
    handle = _handles.get(pid)  # held, so still open, until we return
    if handle is None:
        raise ProcessNotFound(errno.ECHILD, f"process {pid} is not an unreaped child of this process")
    while True:
        err = lib.osl_win_wait(handle, 0 if nohang else _WAIT_SLICE_MS)
        if err == 0:
            break
        if err != lib.OSL_WIN_WAIT_TIMEOUT:
            raise _winerror(err, f"WaitForSingleObject(process {pid})")
        if nohang:
            return None
    code = ffi.new("unsigned long *")
    err = lib.osl_win_exit_code(handle, code)
    if err:
        raise _winerror(err, f"GetExitCodeProcess({pid})")
    if not nowait:
        # The entry is this handle's: while it is open no other process
        # can have the pid. It closes when the last waiter lets go of it.
        _handles.pop(pid, None)
    return int(code[0])


def open_exit_fd(pid: int) -> None:
    """Windows has no fd for a process exit; callers poll."""
    return None


def child_exit_fd(pid: int) -> None:
    """Windows has no fd for a process exit; callers poll."""
    return None


def _wait_job(pgid: Optional[int], deadline: Optional[float]) -> bool:
    """Sleep in osl_job_wait_empty for at most one slice; True if the job
    was found (the caller rescans either way)."""
    job = _jobs.get(pgid) if pgid is not None else None
    if job is None:
        return False
    slice_ms = _WAIT_SLICE_MS
    if deadline is not None:
        slice_ms = max(0, min(slice_ms, int((deadline - time.monotonic()) * 1000) + 1))
    err = lib.osl_job_wait_empty(job, slice_ms)
    if err and err != lib.OSL_WIN_WAIT_TIMEOUT:
        raise _winerror(err, "waiting for the job to empty")
    return True


def wait_exits(pids: List[int], deadline: Optional[float], pgid: Optional[int] = None) -> None:
    """Return when the group's job may have changed: it emptied, a slice
    passed, or `deadline` came. The caller rescans, so an early return is
    only a wasted scan. Without a job (pids of no group of ours) it sleeps
    a short step."""
    if _wait_job(pgid, deadline):
        return
    step = 0.002 if deadline is None else max(0.0, min(0.002, deadline - time.monotonic()))
    time.sleep(step)


async def wait_exits_async(pids: List[int], deadline: Optional[float], pgid: Optional[int] = None) -> None:
    """wait_exits for asyncio or trio: polls the job's active count with a
    growing sleep (no thread: a cancelled wait leaves nothing behind)."""
    from . import _aio  # only async callers pay for it (import osl_pg does not)
    step = 0.002 if deadline is None else max(0.0, min(0.002, deadline - time.monotonic()))
    job = _jobs.get(pgid) if pgid is not None else None
    if job is None:
        await _aio.sleep(step)
        return
    delay = 0.001
    while _active(job):
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        await _aio.sleep(delay if deadline is None else min(delay, deadline - now))
        delay = min(delay * 2, 0.05)
