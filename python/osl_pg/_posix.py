"""POSIX backend: the only Python code that touches the C module.

It turns a validated ProcessSpawnOperation into one osl_spawn() call and maps
the C layer's errno results to typed exceptions.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import signal
import stat
import struct
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._native import ffi, lib
from ._spawned import SLOTS, PipeEnds, Spawned
from .errors import (CommandNotFound, NameNotFound, OslError, OslPermissionError, ProcessNotFound, Unsupported,
                     from_errno)
from .operations import DEVNULL, PIPE, STDOUT, JoinGroup, NewGroup, ProcessSpawnOperation

# Type checkers check this module for POSIX only (_windows.py is the backend
# on Windows): the assert tells them; _backend imports it only there anyway.
assert sys.platform != "win32"

NAME = "posix"
FEATURES = lib.osl_features()
HAS_PDEATHSIG = bool(FEATURES & lib.OSL_FEAT_PDEATHSIG)
# How children are created (OSL_SPAWN_*): AUTO, the fastest path that can do
# the request (the vfork child on Linux, see csrc/osl_pg_posix.c). Tests set
# it to exercise both paths.
SPAWN_PATH = lib.OSL_SPAWN_AUTO
HAS_PIDFD = hasattr(os, "pidfd_open")
_P_PIDFD = getattr(os, "P_PIDFD", None)  # waitid() on a pidfd: Linux 5.4, Python 3.9

_FD_INHERIT = lib.OSL_FD_INHERIT
_NOHANG = lib.OSL_WAIT_NOHANG
_NOWAIT = lib.OSL_WAIT_NOWAIT


# --------------------------------------------------------------------------
# command lookup

_which_cache: Dict[Tuple[str, Optional[str]], str] = {}


def _search_path(op: ProcessSpawnOperation) -> Optional[str]:
    """PATH as the child will see it (subprocess does the same)."""
    for key, value in reversed(op.env_overrides):
        if key == "PATH":
            return value if value is not None else os.defpath
    if not op.inherit_env:
        return os.defpath
    return os.environ.get("PATH", os.defpath)


def resolve_command(op: ProcessSpawnOperation) -> str:
    """The executable's path: op.executable if given, else the command. One
    with a slash is used as given; a bare name is looked up in PATH, and the
    answer is cached per (name, PATH)."""
    command = op.executable if op.executable is not None else op.command
    if "/" in command:
        return command
    path = _search_path(op)
    key = (command, path)
    hit = _which_cache.get(key)
    if hit is not None:
        return hit
    # As subprocess's child tries execve() on each entry: ENOENT and ENOTDIR
    # go on to the next, the first EACCES is what is raised when no entry
    # has the command (a PATH directory we may not search, a directory or
    # a file without x permission at the name).
    denied = None
    for d in (path or "").split(os.pathsep):
        candidate = os.path.join(d or ".", command)
        try:
            st = os.stat(candidate)
        except PermissionError:
            denied = denied or (candidate, "a PATH directory on the way may not be searched")
            continue
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            if os.path.isabs(candidate):  # a relative PATH entry depends on the cwd: not cached
                if len(_which_cache) > 256:
                    _which_cache.clear()
                _which_cache[key] = candidate
            return candidate
        denied = denied or (candidate, "it is not executable")
    if denied:
        raise OslPermissionError(errno.EACCES, f"cannot execute {command!r} found at {denied[0]}: {denied[1]}",
                                 command)
    raise CommandNotFound(errno.ENOENT, f"command not found: {command!r} (searched PATH={path})", command)


# --------------------------------------------------------------------------
# environment


def _encode_env(op: ProcessSpawnOperation) -> Optional[List[bytes]]:
    """None means "the parent's environ as it is now" (no copy is made)."""
    if op.inherit_env and not op.env_overrides:
        return None
    env: Dict[bytes, bytes] = dict(os.environb) if op.inherit_env else {}
    for key, value in op.env_overrides:
        k = os.fsencode(key)
        if value is None:
            env.pop(k, None)
        else:
            env[k] = os.fsencode(value)
    return [k + b"=" + v for k, v in env.items()]


# --------------------------------------------------------------------------
# stdio


class _Stdio(PipeEnds):
    """The fds the child gets, the parent's ends of pipes, and what to close
    after the spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.child = [_FD_INHERIT, _FD_INHERIT, _FD_INHERIT]

    def setup(self, op: ProcessSpawnOperation) -> None:
        if op.stdin is None and op.stdout is None and op.stderr is None:
            return  # all three inherited: nothing to make or move
        for i, spec in enumerate((op.stdin, op.stdout, op.stderr)):
            if spec is None:
                continue
            if spec == PIPE:
                self.child[i] = self.pipe(i)  # both ends O_CLOEXEC
            elif spec == DEVNULL:
                self.child[i] = self.devnull()
            elif spec == STDOUT:
                self.child[2] = self.child[1] if self.child[1] != _FD_INHERIT else 1
            else:
                fd = spec if isinstance(spec, int) else spec.fileno()
                self.child[i] = fd
        for i in range(3):
            fd = self.child[i]
            if fd == i and os.get_inheritable(fd):
                # Already in place and inherited as it is.
                self.child[i] = _FD_INHERIT
            elif 0 <= fd < 3:
                # fd == i but close-on-exec (a pipe or /dev/null that landed
                # on a free fd 0-2): dup2() onto itself would not clear the
                # flag. fd != i: an earlier dup2 may overwrite it. Either
                # way, move it above 2 and let the child dup2 it down.
                try:
                    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                except OSError as e:
                    raise from_errno(e.errno or 0, f"{SLOTS[i]}: cannot use fd {fd}") from None
                self.close_after.append(moved)
                self.child[i] = moved


# --------------------------------------------------------------------------
# user, groups, umask


def _uid(user: Any) -> int:
    if not isinstance(user, str):
        return int(user)
    import pwd
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError as e:  # subprocess's KeyError, with getpwnam()'s message
        raise NameNotFound(*e.args) from None


def _gid(group: Any) -> int:
    if not isinstance(group, str):
        return int(group)
    import grp
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as e:
        raise NameNotFound(*e.args) from None


def _set_ids(attr: Any, op: ProcessSpawnOperation) -> List[Any]:
    """Fill in the credentials the child changes; names are looked up here,
    in the parent, as subprocess does. Returns what must stay alive until
    the C call returns."""
    keep: List[Any] = []
    ids = 0
    if op.extra_groups is not None:
        gids = [_gid(g) for g in op.extra_groups]
        if gids:
            groups_c = ffi.new("gid_t[]", gids)
            keep.append(groups_c)
            attr.groups = groups_c
        attr.n_groups = len(gids)
        ids |= lib.OSL_SET_GROUPS
    if op.primary_group is not None:
        attr.gid = _gid(op.primary_group)
        ids |= lib.OSL_SET_GID
    if op.user is not None:
        attr.uid = _uid(op.user)
        ids |= lib.OSL_SET_UID
    if op.umask is not None:
        attr.umask = op.umask
        ids |= lib.OSL_SET_UMASK
    attr.set_ids = ids
    return keep


_SIGNAL_RESETS = {"restore": lib.OSL_SIGNALS_RESTORE, "inherit": lib.OSL_SIGNALS_INHERIT, "all": lib.OSL_SIGNALS_ALL}


# --------------------------------------------------------------------------
# spawn


# The encoded path and argv per command line: an operation spawned again (or
# another with the same command line) reuses them. C only reads them.
_argv_cache: Dict[Tuple[str, str, Tuple[str, ...]], Tuple[Any, Any, List[Any]]] = {}


def _native_argv(path: str, op: ProcessSpawnOperation) -> Tuple[Any, Any, List[Any]]:
    """(path, argv, the argv strings). The caller must hold the whole tuple
    until the C call returns: the char* array does not keep its strings
    alive, and another thread may evict the cache entry meanwhile (the call
    releases the GIL)."""
    key = (path, op.command, op.args)
    hit = _argv_cache.get(key)
    if hit is None:
        strings = [ffi.new("char[]", os.fsencode(a)) for a in (op.command, *op.args)]
        hit = (ffi.new("char[]", os.fsencode(path)), ffi.new("char *[]", strings + [ffi.NULL]), strings)
        if len(_argv_cache) >= 64:
            _argv_cache.clear()
        _argv_cache[key] = hit
    return hit


def _spawn_attr(op: ProcessSpawnOperation, path_c: Any, argv: Any, stdio: "_Stdio", pass_fds: Sequence[int],
                cgroup_procs_fds: Sequence[int]) -> Tuple[Any, List[Any]]:
    """The struct osl_spawn_attr fields both spawns (osl_spawn and
    osl_spawn_pidns) fill alike, and the cdata they point into, which the
    caller keeps alive until the call returns. Unset fields are zero: NULL
    env and cwd (inherited), the caller's group."""
    attr = ffi.new("struct osl_spawn_attr *")
    keep: List[Any] = []
    attr.path = path_c
    attr.argv = argv
    env = _encode_env(op)
    if env is not None:
        env_c = [ffi.new("char[]", e) for e in env]
        envp = ffi.new("char *[]", env_c + [ffi.NULL])
        keep += (env_c, envp)
        attr.envp = envp
    if op.cwd is not None:
        cwd_c = ffi.new("char[]", os.fsencode(op.cwd))
        keep.append(cwd_c)
        attr.cwd = cwd_c
    attr.fds = stdio.child
    # ffi.new zeroes the struct: zero fields (the usual values) are not set.
    if op.detach_from_terminal:
        attr.new_session = 1
    if op.close_fds:
        attr.close_fds = 1
    if pass_fds:
        pass_fds_c = ffi.new("int[]", pass_fds)  # sorted and unique
        keep.append(pass_fds_c)
        attr.pass_fds = pass_fds_c
        attr.n_pass_fds = len(pass_fds)
    reset = _SIGNAL_RESETS[op.signal_reset]
    if reset:
        attr.signal_reset = reset
    if cgroup_procs_fds:
        attr.n_cgroups = len(cgroup_procs_fds)
        for i, fd in enumerate(cgroup_procs_fds):
            attr.cgroup_procs_fds[i] = fd
    return attr, keep


def spawn(op: ProcessSpawnOperation, cgroup_procs_fds: Sequence[int] = (), pid_namespace: bool = False) -> Spawned:
    """Spawn the child described by a validated operation. The child joins
    the cgroups whose open cgroup.procs files are `cgroup_procs_fds` before
    it executes (osl_pg.cgroup makes them). With `pid_namespace` the child
    is the pid_namespace tier's init (osl_pg.pidns), which runs the command
    as pid 2 of new user + PID namespaces; Spawned.init_status_fd is then
    its status pipe, whose first record has been read (the command runs)."""
    if len(cgroup_procs_fds) > lib.OSL_MAX_CGROUPS:
        raise Unsupported(f"a child can join at most {lib.OSL_MAX_CGROUPS} cgroups")
    if op.kill_on_parent_death and not HAS_PDEATHSIG:
        raise Unsupported("kill on parent death needs Linux's PR_SET_PDEATHSIG")
    path = resolve_command(op)
    if pid_namespace:
        return _spawn_in_pid_namespace(op, path, cgroup_procs_fds)
    path_c, argv, argv_strings = _native_argv(path, op)  # all three live until osl_spawn returns
    stdio = _Stdio()
    try:
        stdio.setup(op)
        attr, keep = _spawn_attr(op, path_c, argv, stdio, op.pass_fds, cgroup_procs_fds)
        group = op.process_group
        if isinstance(group, NewGroup):
            attr.pgroup_mode = lib.OSL_PGROUP_NEW
        elif isinstance(group, JoinGroup):
            attr.pgroup_mode = lib.OSL_PGROUP_JOIN
            attr.pgid = group.pgid
        if op.kill_on_parent_death:
            attr.pdeathsig = int(signal.SIGKILL)
        if SPAWN_PATH:
            attr.spawn_path = SPAWN_PATH
        ids_c = _set_ids(attr, op) if op.changes_credentials else None
        out = ffi.new("int[3]")  # pid, step, used_vfork
        err = lib.osl_spawn(attr, out, out + 1, out + 2)
        del argv_strings, ids_c, keep  # kept alive across the GIL-free call above
        if err:
            stdio.close_parent_ends()
            if err == errno.ENOENT or err == errno.ENOEXEC:
                _which_cache.pop((op.executable or op.command, _search_path(op)), None)
            raise _spawn_error(err, out[1], op, path)
        stdio.close_child_ends()
    except BaseException:
        stdio.close_child_ends()
        stdio.close_parent_ends()
        raise
    pid = out[0]
    if op.detach_from_terminal or isinstance(group, NewGroup):
        pgid: Optional[int] = pid
    elif isinstance(group, JoinGroup):
        pgid = group.pgid
    else:
        pgid = None  # the caller's group; filled in by the caller if wanted
    return Spawned(pid, pgid, stdio.parent, bool(out[2]))


INIT_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_osl_pg_init")
# struct osl_init_record (csrc/osl_pg.h), and the kinds osl_pg.pidns reads.
INIT_RECORD = struct.Struct("=ii")
INIT_EXITED, INIT_STOPPED = lib.OSL_INIT_EXITED, lib.OSL_INIT_STOPPED


def _spawn_in_pid_namespace(op: ProcessSpawnOperation, path: str, cgroup_procs_fds: Sequence[int]) -> Spawned:
    """spawn() of the pid_namespace tier: osl_spawn_pidns() runs
    INIT_PROGRAM STATUS_FD PATH ARGV... as pid 1 of new namespaces, then the
    init's first record says whether PATH was executed. Parent death needs
    no PR_SET_PDEATHSIG here: the init exits when the status pipe's read
    end (ours) is closed, whichever thread spawned it."""
    if op.changes_credentials:
        raise Unsupported("user, group and extra_groups cannot change in the pid_namespace tier: its user "
                          "namespace maps only the caller's own uid and gid")
    try:
        status_r, status_w = os.pipe()  # both O_CLOEXEC; the child makes status_w inheritable (pass_fds)
    except OSError as e:  # EMFILE, ENFILE: ours, with what it was for (never a fallback)
        raise from_errno(e.errno or 0, "cannot make the pid_namespace init's status pipe") from None
    strings = [ffi.new("char[]", os.fsencode(a))
               for a in (INIT_PROGRAM, str(status_w), path, op.command, *op.args)]
    argv = ffi.new("char *[]", strings + [ffi.NULL])
    stdio = _Stdio()
    try:
        try:
            stdio.setup(op)
            attr, keep = _spawn_attr(op, strings[0], argv, stdio, sorted({*op.pass_fds, status_w}), cgroup_procs_fds)
            # The init leads a new host group (or session): the handle's pgid.
            attr.pgroup_mode = lib.OSL_PGROUP_NEW
            out = ffi.new("int[2]")  # pid, step
            err = lib.osl_spawn_pidns(attr, out, out + 1)
            del strings, keep  # kept alive across the GIL-free call above
        finally:
            os.close(status_w)
        if err:
            stdio.close_parent_ends()
            raise _pidns_spawn_error(err, out[1], op, path)
        stdio.close_child_ends()
        pid = out[0]
        kind, value = _first_init_record(status_r)
        if kind != lib.OSL_INIT_STARTED:
            stdio.close_parent_ends()
            _reap(pid)
            raise _spawn_error(value or errno.EIO, lib.OSL_STEP_EXEC, op, path)
    except BaseException:
        stdio.close_child_ends()
        stdio.close_parent_ends()
        os.close(status_r)
        raise
    return Spawned(pid, pid, stdio.parent, True, init_status_fd=status_r)


def _pidns_spawn_error(err: int, step: int, op: ProcessSpawnOperation, path: str) -> Exception:
    """What failed before the init ran: the namespaces (NamespaceUnavailable
    naming the cause), the init's own exec (it is missing: the same), or a
    step the command's spawn shares (cwd, stdio, cgroups)."""
    from .errors import NamespaceUnavailable
    if err in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN):
        # Short of fds (the id maps are opened), memory or processes: not a
        # refusal of namespaces, and never a reason to fall back.
        return from_errno(err, f"spawning {op.command!r} in new user + PID namespaces failed")
    if step == lib.OSL_STEP_USERNS:
        from .pidns import refusal_cause
        return NamespaceUnavailable(err, f"no user + PID namespace for {op.command!r}: {refusal_cause(err)}")
    if step == lib.OSL_STEP_EXEC:
        return NamespaceUnavailable(err, f"the pid_namespace tier's init program {INIT_PROGRAM} cannot be executed "
                                        f"({os.strerror(err)}): osl_pg was installed without it")
    return _spawn_error(err, step, op, path)


def _first_init_record(fd: int) -> Tuple[int, int]:
    """The init's first record (csrc/osl_pg_init.c): STARTED, or
    EXEC_FAILED with the errno; (0, 0) if it died before writing one."""
    data = b""
    while len(data) < INIT_RECORD.size:
        try:
            chunk = os.read(fd, INIT_RECORD.size - len(data))
        except InterruptedError:
            continue
        if not chunk:
            return 0, 0
        data += chunk
    kind, value = INIT_RECORD.unpack(data)
    return kind, value


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _spawn_error(err: int, step: int, op: ProcessSpawnOperation, path: str) -> OSError:
    """Name what failed. posix_spawn reports one errno for every step, so
    the cause is found by looking at the inputs (only on this error path)."""
    if step == lib.OSL_STEP_SPAWN and op.cwd is not None and err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
        if not os.path.isdir(op.cwd) or not os.access(op.cwd, os.X_OK):
            step = lib.OSL_STEP_CHDIR
    if step == lib.OSL_STEP_CHDIR:
        return from_errno(err, f"cannot use working directory {op.cwd!r}", op.cwd)
    group = op.process_group
    if isinstance(group, JoinGroup) and err in (errno.EPERM, errno.ESRCH) and step in (
            lib.OSL_STEP_SPAWN, lib.OSL_STEP_PGROUP):
        return join_error(group.pgid)
    if err in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR):
        program = op.executable if op.executable is not None else op.command
        if err == errno.ENOENT:
            return CommandNotFound(err, f"command not found: {program!r} ({path})", program)
        return from_errno(err, f"cannot execute {program!r} ({path})", program)
    if err == errno.EBADF and step in (lib.OSL_STEP_SPAWN, lib.OSL_STEP_EXEC):
        for slot, spec in zip(SLOTS, (op.stdin, op.stdout, op.stderr)):
            fd = spec if isinstance(spec, int) else getattr(spec, "fileno", lambda: -1)()
            if fd >= 0 and not _is_open(fd):
                return from_errno(err, f"{slot}: fd {fd} is not open")
    if step == lib.OSL_STEP_PASS_FDS:
        closed = [fd for fd in op.pass_fds if not _is_open(fd)]
        if err == errno.EBADF and closed:
            return from_errno(err, f"pass_fds: fd {closed[0]} is not open")
        return from_errno(err, f"pass_fds {list(op.pass_fds)} could not be passed")
    if step == lib.OSL_STEP_CGROUP:
        return from_errno(err, "the child could not join its cgroup (write to cgroup.procs)")
    if step == lib.OSL_STEP_SESSION:
        return from_errno(err, "setsid() failed in the child")
    if step == lib.OSL_STEP_GROUPS:
        return from_errno(err, f"the child could not set its supplementary groups to {list(op.extra_groups or ())}")
    if step == lib.OSL_STEP_GID:
        return from_errno(err, f"the child could not set its group to {op.primary_group!r}")
    if step == lib.OSL_STEP_UID:
        return from_errno(err, f"the child could not set its user to {op.user!r}")
    return from_errno(err, f"spawning {op.command!r} failed")


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def join_error(pgid: int) -> OSError:
    """Why setpgid(0, pgid) cannot work: the group is gone, or it lives in
    another session (a process may only join a group of its own session)."""
    if killpg(pgid, 0, check=False) == errno.ESRCH:
        return ProcessNotFound(errno.ESRCH, f"process group {pgid} does not exist")
    try:
        theirs = getsid(pgid)
    except OSError:
        theirs = None
    return OslPermissionError(
        errno.EPERM,
        f"cannot join process group {pgid}: it is in session {theirs if theirs is not None else '?'}, "
        f"ours is {os.getsid(0)}; setpgid() only joins a group of the caller's own session")


# --------------------------------------------------------------------------
# signals and ids


def kill(pid: int, sig: int) -> None:
    err = lib.osl_kill(pid, sig)
    if err:
        raise from_errno(err, f"kill({pid}, {sig})")


def killpg(pgid: int, sig: int, check: bool = True) -> int:
    err = lib.osl_killpg(pgid, sig)
    if err and check:
        raise _killpg_error(err, pgid, sig)
    return err


def _killpg_error(err: int, pgid: int, sig: int) -> OSError:
    if err == errno.ESRCH:
        return ProcessNotFound(err, f"process group {pgid} does not exist")
    return from_errno(err, f"killpg({pgid}, {sig})")


def getsid(pid: int) -> int:
    out = ffi.new("int *")
    err = lib.osl_getsid(pid, out)
    if err:
        raise from_errno(err, f"getsid({pid})")
    sid: int = out[0]
    return sid


def pgid_or_none(pid: int) -> Optional[int]:
    """getpgid() for scans: None when the process is gone. Thread-safe
    enough: a racing writer only affects a scan's single read."""
    out = ffi.new("int *")
    return out[0] if lib.osl_getpgid(pid, out) == 0 else None


def set_child_subreaper(on: bool) -> None:
    err = lib.osl_set_child_subreaper(1 if on else 0)
    if err == errno.ENOSYS:
        raise Unsupported("PR_SET_CHILD_SUBREAPER is Linux-only")
    if err:
        raise from_errno(err, "prctl(PR_SET_CHILD_SUBREAPER)")


# --------------------------------------------------------------------------
# waiting


def wait(pid: int, nohang: bool, nowait: bool) -> Optional[int]:
    """The exit status of child `pid` (subprocess's convention: -N for death
    by signal N), or None if `nohang` and it still runs. With `nowait` the
    child stays a zombie. EINTR is returned to Python as InterruptedError so
    signal handlers (KeyboardInterrupt) run between retries."""
    out = ffi.new("int[2]")
    err = lib.osl_wait(pid, (_NOHANG if nohang else 0) | (_NOWAIT if nowait else 0), out, out + 1)
    if err:
        raise from_errno(err, f"waitid({pid})")
    return out[1] if out[0] else None


def wait_exit_or_stop(pid: int, deadline: Optional[float]) -> Optional[int]:
    """Until child `pid` exits (0, nothing reaped: WNOWAIT) or stops (the
    stop signal's number; the stop is consumed), or `deadline` passes
    (None). waitid() has no timeout: with a deadline it polls with a
    growing pause (at most 50 ms), as a terminal's user would not notice."""
    import time
    flags = os.WEXITED | os.WSTOPPED | os.WNOWAIT
    delay = 0.0005
    while True:
        nohang = deadline is not None
        try:
            info = os.waitid(os.P_PID, pid, flags | (os.WNOHANG if nohang else 0))
        except ChildProcessError:
            return 0  # reaped already: exited
        if info is not None and info.si_pid:
            if info.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED):
                try:
                    os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG)  # consume the stop
                except ChildProcessError:
                    pass
                return info.si_status
            return 0
        if deadline is None:  # waitid() blocked until it returned an exit or a stop
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def open_exit_fd(pid: int) -> Optional[int]:
    """A pidfd that becomes readable when `pid` exits (Linux 5.3+), or None
    where there is none."""
    if not HAS_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessNotFound(e.errno, f"process {pid} is gone") from None
        return None  # ENOSYS (old kernel), EMFILE...: callers poll instead


def child_exit_fd(pid: int) -> Optional[int]:
    """A pidfd of our unreaped child `pid` (the caller holds the lock that
    reaping takes), or None: no pidfds here, no fd left, or the number is no
    longer our child's. The pidfd names whoever has the number now; while
    our child is unreaped that is our child (a zombie keeps its number), and
    waitid(P_PIDFD, WNOHANG | WNOWAIT), which reaps nothing, fails with
    ECHILD when it is not a child of ours (ours was reaped behind our back
    and the number reused): the caller's next wait then finds that out."""
    if not HAS_PIDFD:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # ESRCH (reaped behind our back), EMFILE, ENOSYS: callers poll
        return None
    if _P_PIDFD is not None:
        try:
            os.waitid(_P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            os.close(fd)
            return None
        except OSError:  # EINVAL: Linux 5.3 has pidfd_open but not P_PIDFD
            pass
    return fd


# --------------------------------------------------------------------------
# groups


_PROC_PIDS = os.path.isdir("/proc/self")


def list_pids() -> List[int]:
    """Every pid on the host: one listing of /proc where there is one (what
    psutil.pids() does, without importing psutil), else psutil's."""
    if _PROC_PIDS:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    import psutil
    return psutil.pids()


def group_pids(pgid: int) -> List[int]:
    """Every process whose pgid is `pgid` now (zombies included): the
    process list, membership from getpgid(). os.getpgid rather than the C
    wrapper: no cffi out-parameter to allocate per process, and this runs
    for every process on the machine at every group scan."""
    getpgid = os.getpgid
    members = []
    for pid in list_pids():
        try:
            if getpgid(pid) == pgid:
                members.append(pid)
        except OSError:  # exited since the listing
            continue
    return members


def group_exists(pgid: int) -> bool:
    """Whether any process (zombies included) has pgid `pgid`: killpg()
    with signal 0 checks without signalling; EPERM still means someone is
    there. O(group) in the kernel, whatever else the host runs."""
    if pgid <= 1:
        raise _killpg_error(errno.EINVAL, pgid, 0)
    # Through the C layer, which returns the errno: ESRCH is the usual
    # answer (run()'s end), and raising and catching ProcessLookupError
    # cost ~2 us of it; EPERM still means someone is there.
    err = lib.osl_killpg(pgid, 0)
    if err == errno.ESRCH:
        return False
    if err and err != errno.EPERM:
        raise _killpg_error(err, pgid, 0)
    return True


def exited_child_in_group(pgid: int) -> Optional[int]:
    """A child of ours in group `pgid` that has exited (a zombie), without
    reaping it, or None: one waitid(P_PGID, WNOWAIT), whatever the host
    runs. Under our subreaper the group's orphans are our children."""
    try:
        info = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    except InterruptedError:
        return None
    return info.si_pid if info is not None and info.si_pid else None


def signal_if_member(pid: int, pgid: int, sig: int) -> bool:
    """Signal `pid` if it is in group `pgid`, with no pid-reuse window: the
    pidfd is opened first, so it names the process that had the pid then;
    the getpgid() after it checks that this very process is a member (had
    it been replaced meanwhile, the pidfd would name a dead process and the
    signal fail with ESRCH). Without pidfds (Linux < 5.3, macOS) a plain
    kill() after the check: a window of one syscall. False if it was not
    a member or is gone."""
    fd = None
    if HAS_PIDFD:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # EMFILE...: fall back to kill()
            fd = None
    try:
        if pgid_or_none(pid) != pgid:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as e:
        raise from_errno(e.errno or errno.EPERM, f"kill({pid}, {sig})") from None
    finally:
        if fd is not None:
            os.close(fd)


def signal_group(pgid: int, sig: int) -> None:
    # Beside the syscall this is ProcessGroup.signal's whole cost, so it is
    # os.killpg (a C function: no cffi argument conversion, ~0.2 us less per
    # call in osl-pg bench) behind the same guard osl_killpg() has: pgid 0
    # or 1 would mean "my own group" or "every process".
    if pgid <= 1:
        raise _killpg_error(errno.EINVAL, pgid, sig)
    try:
        os.killpg(pgid, sig)
    except OSError as e:
        raise _killpg_error(e.errno or errno.EINVAL, pgid, sig) from None


def children_autoreaped() -> bool:
    """True when SIGCHLD is ignored (or SA_NOCLDWAIT is set): the kernel
    then reaps our children itself (see osl_children_autoreaped)."""
    out = ffi.new("int *")
    return lib.osl_children_autoreaped(out) == 0 and out[0] == 1


def group_signaller(pgid: int) -> Callable[[int], None]:
    """signal_group(pgid, ·) for a handle's hot path: os.killpg bound to the
    pgid with functools.partial, so ProcessGroup.signal reaches the syscall
    with no Python frame between (osl-pg bench: 0.92 -> 0.82 us per call
    against os.killpg's 0.69). Its OSErrors are raw; the caller passes them
    through signal_error(). The pgid <= 1 guard is done here, once."""
    if pgid <= 1:
        return functools.partial(signal_group, pgid)
    return functools.partial(os.killpg, pgid)


def signal_error(e: OSError, pgid: int, sig: int) -> OSError:
    """What signal_group() would have raised for `e` (already ours: as is)."""
    if isinstance(e, OslError) or e.errno is None:
        return e
    return _killpg_error(e.errno, pgid, sig)


def own_pgid() -> int:
    return os.getpgrp()


# --------------------------------------------------------------------------
# benchmark floors (osl-pg bench): the same syscalls with no Python between
# the clock reads, which the C layer takes; results are nanoseconds.


def bench_spawn(path: str, close_fds: bool) -> Tuple[int, int]:
    """(call_ns, spawn_and_wait_ns) for one spawn of `path` as a new group's
    leader, as ProcessSpawnOperation(path).with_new_process_group() does."""
    out = ffi.new("long long[2]")
    err = lib.osl_bench_spawn(os.fsencode(path), 1 if close_fds else 0, out, out + 1)
    if err:
        raise from_errno(err, f"bench spawn of {path!r}")
    return out[0], out[1]


def bench_killpg(pgid: int, sig: int) -> int:
    out = ffi.new("long long *")
    err = lib.osl_bench_killpg(pgid, sig, out)
    if err:
        raise from_errno(err, f"killpg({pgid}, {sig})")
    elapsed_ns: int = out[0]
    return elapsed_ns


def bench_kill_group(pgid: int) -> int:
    """SIGKILL group `pgid` and reap until it is gone. Every member must be a
    descendant of this process, which must be their child subreaper."""
    out = ffi.new("long long *")
    err = lib.osl_bench_kill_group(pgid, out)
    if err:
        raise from_errno(err, f"kill group {pgid}")
    elapsed_ns: int = out[0]
    return elapsed_ns
