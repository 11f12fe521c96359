"""osl_pg.Popen: subprocess.Popen whose child leads a process group.

``Popen`` *is* a ``subprocess.Popen`` (a subclass): ``isinstance(p,
subprocess.Popen)`` holds, and the constructor's checks, the pipes, text
mode, ``communicate()`` and its timeouts are subprocess's own code. What is
replaced:

- ``_execute_child`` spawns through osl_pg's ProcessExecutor (policy,
  audit log, posix_spawn/vfork: never fork(), never Python in the child)
  with the fds subprocess's ``_get_handles`` made. The child leads a new
  process group (a new session with ``start_new_session=True``); ``.group``
  is its ProcessGroup.
- ``_internal_poll``/``_wait``/``_try_wait`` read the leader's status through
  osl_pg's Process handle, never ``os.waitpid``: the ProcessGroup pins the
  leader unreaped (WNOWAIT) while it runs, so the pgid cannot be reused
  under a signal. ``poll()``/``wait()`` return the leader's status as
  subprocess does and hand the leader to the group, which reaps it and
  releases itself when no member is left (one killpg(pgid, 0)); members that
  are left stay reachable through the handle (osl_pg.group).
- ``send_signal``/``terminate``/``kill`` signal the whole group, through the
  handle, which refuses a released pgid; ``with`` exit waits for the leader
  as subprocess does, then ends what is left of the group (SIGTERM,
  ``grace`` seconds, SIGKILL). An exception in the block ends the whole
  tree the same way instead of waiting (subprocess would wait for the
  child however long it runs).

Why a subclass rather than a wrapper: code that type-checks or
isinstance-checks ``subprocess.Popen`` (asyncio's, pexpect's, typeshed's
stubs) keeps working, and subprocess's tested I/O code is reused instead of
re-implemented. The cost is depending on private method names; their
signatures differ between versions (3.11 added ``process_group``), which
``_execute_child`` absorbs with a defaulted last parameter. CPython's own
test_subprocess runs against this class (.ci/cpython-subprocess-tests.sh).

What cannot be had without fork or Python in the child: ``preexec_fn``
raises TypeError. A dropped, still-running Popen warns (ResourceWarning) and
waits on ``subprocess._active`` to be polled by the next Popen, as
subprocess's does; its tree is left running. Its finalizer takes no lock.
"""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
import warnings

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, AnyStr, Dict, List, Literal, Mapping, Optional, Sequence, Union, overload

    from typing_extensions import TypedDict, Unpack

    # What run(), run_async() and Popen take as `args`, as subprocess.
    CommandArgs = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]",
                        Sequence[Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]]]

    class _PopenOptions(TypedDict, total=False):
        """Popen()'s keyword-only arguments besides the text/bytes ones."""
        user: Union[str, int, None]
        group: Union[str, int, None]
        extra_groups: Optional[Sequence[Union[str, int]]]
        umask: int
        pipesize: int
        process_group: Optional[int]
        containment: Optional[str]
        grace: float
        executor: Optional[ProcessExecutor]
        context: Optional[ExecutionContext]
else:
    AnyStr = "AnyStr"  # subprocess.Popen[...] below needs a value at run time, any value

    def overload(func):  # typing.overload without importing typing: the implementation, defined last, wins
        return func

from .context import ExecutionContext
from .errors import OslPermissionError, SecurityViolation, TimeoutExpired, Unsupported, caller_stacklevel
from .executor import ProcessExecutor
from .group import DEFAULT_GRACE, ProcessGroup
from .operations import NEW_GROUP, JoinGroup, ProcessSpawnOperation
from .process import Process, WaitTimeout

PREEXEC_FN_REFUSED = ("preexec_fn is not supported: osl_pg spawns with posix_spawn/vfork and runs no Python in the "
                      "child (a fork-based preexec_fn can deadlock in a threaded parent); use cwd=, env=, "
                      "start_new_session=, process_group=, user=, group=, umask= instead")

_default_executor: Optional[ProcessExecutor] = None


def default_executor() -> ProcessExecutor:
    """The executor run() and Popen use when given none."""
    global _default_executor
    if _default_executor is None:
        _default_executor = ProcessExecutor("osl_pg.run")
    return _default_executor


def text_encoding() -> str:
    """subprocess's default text encoding, with its EncodingWarning under
    -X warn_default_encoding (3.10+), naming the caller's line."""
    if getattr(sys.flags, "warn_default_encoding", 0):
        level = caller_stacklevel()
        frame = sys._getframe(level - 1)  # the first frame outside osl_pg...
        while frame.f_back is not None and frame.f_code.co_filename == subprocess.__file__:
            frame = frame.f_back  # ...and outside subprocess.run(), which may have built our Popen
            level += 1
        warnings.warn("'encoding' argument not specified.", EncodingWarning, stacklevel=level)  # noqa: F821
    if sys.flags.utf8_mode:
        return "utf-8"
    import locale  # when first needed: 1.7 ms of `import osl_pg` otherwise
    getencoding = getattr(locale, "getencoding", None)  # 3.11+
    return getencoding() if getencoding is not None else locale.getpreferredencoding(False)


# --------------------------------------------------------------------------
# subprocess keywords -> ProcessSpawnOperation (shared by run() and Popen)


def argv_of(args: Any, shell: bool) -> List[Any]:
    """The argument list subprocess.Popen would build on POSIX. Each item
    must be str, bytes or os.PathLike (TypeError otherwise, as subprocess)."""
    argv: List[Any]
    if isinstance(args, (str, bytes)):
        argv = [args]
    elif type(args) in (list, tuple):  # the usual case: no os.PathLike ABC check (~1 us)
        argv = list(args)
    elif isinstance(args, os.PathLike):
        if shell:
            raise TypeError("path-like args is not allowed when shell is true")
        argv = [args]
    else:
        argv = list(args)
    if shell:
        argv = ["/system/bin/sh" if hasattr(sys, "getandroidapilevel") else "/bin/sh", "-c"] + argv
    return [a if type(a) is str else os.fspath(a) for a in argv]


def _env_of(env: Mapping[Any, Any]) -> Dict[str, str]:
    """subprocess's env checks: TypeError for a key or value that is not
    str, bytes or os.PathLike (None included), ValueError for '=' in a key."""
    out = {}
    for k, v in env.items():
        kb = os.fsencode(k)
        if b"=" in kb:
            raise ValueError("illegal environment variable name")
        out[os.fsdecode(kb)] = os.fsdecode(os.fsencode(v))
    return out


def _id(value: Any, by_name: Any, what: str, kind: str) -> int:
    if isinstance(value, str):
        return int(by_name(value))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a string or an integer, not {type(value)}")
    if value < 0:
        raise ValueError(f"{kind} ID cannot be negative, got {value}")
    return value


def _fits_id_t(value: int, what: str) -> int:
    """subprocess's OverflowError for a uid/gid beyond the C type."""
    if value > 2**32 - 1:
        raise OverflowError(f"{what} is greater than maximum")
    return value


def resolve_ids(user: Any, group: Any, extra_groups: Any) -> Any:
    """(uid, gid, gids) as subprocess.Popen resolves them (names through
    pwd/grp: KeyError for an unknown one), None where not given."""
    if user is None and group is None and extra_groups is None:
        return None, None, None
    uid = None if user is None else _id(user, lambda n: _pwd().getpwnam(n).pw_uid, "User", "User")
    gid = None if group is None else _id(group, lambda n: _grp().getgrnam(n).gr_gid, "Group", "Group")
    gids = None
    if extra_groups is not None:
        if isinstance(extra_groups, str):
            raise ValueError("Groups must be a list, not a string")
        gids = [_id(g, lambda n: _grp().getgrnam(n).gr_gid, "Items in extra_groups", "Group") for g in extra_groups]
    return uid, gid, gids


def _pwd() -> Any:
    try:
        import pwd
    except ImportError:  # Windows
        raise ValueError("The user parameter cannot be a string on systems without the pwd module") from None
    return pwd


def _grp() -> Any:
    try:
        import grp
    except ImportError:
        raise ValueError("The group parameter cannot be a string on systems without the grp module") from None
    return grp


def _builder(op: ProcessSpawnOperation, name: str, keyword: str) -> Any:
    method = getattr(op, name, None)
    if method is None:
        raise Unsupported(f"{keyword}= needs ProcessSpawnOperation.{name}(), which this build lacks")
    return method


def spawn_operation(args: Any, *, shell: bool = False, executable: Any = None, cwd: Any = None,
                    env: Optional[Mapping[Any, Any]] = None, start_new_session: bool = False,
                    process_group: Optional[int] = None, close_fds: bool = True, pass_fds: Sequence[int] = (),
                    stdin: Any = None, stdout: Any = None, stderr: Any = None, restore_signals: bool = True,
                    uid: Optional[int] = None, gid: Optional[int] = None, gids: Optional[Sequence[int]] = None,
                    umask: int = -1, containment: Optional[str] = None) -> ProcessSpawnOperation:
    """The ProcessSpawnOperation for subprocess.Popen's keywords (POSIX
    meaning; ids already resolved by resolve_ids). The child leads a new
    group, a new session with `start_new_session`, or joins group
    `process_group` when that is > 0 (0 and None: a new group, as
    setpgid(0, 0)). `containment` other than None and "process_group" is
    with_containment's (a new group or session must be made for it).
    Builders are called only for non-default values."""
    argv = argv_of(args, shell)
    if not argv:
        raise ValueError("empty command")  # subprocess: IndexError deep inside; ours says what
    if shell and executable is not None:
        argv[0] = executable  # subprocess: the shell to run, and its argv[0]
    # The usual fields are given to the constructor, which checks them as
    # the builders would: each builder is a copy (and a new validation).
    fields: Dict[str, Any] = {}
    if stdin is not None:
        fields["stdin"] = stdin
    if stdout is not None:
        fields["stdout"] = stdout
    if stderr is not None:
        fields["stderr"] = stderr
    if process_group is not None and process_group > 0:
        if start_new_session:  # subprocess's child fails setpgid() after setsid() the same way
            raise OslPermissionError(errno.EPERM, f"start_new_session=True and process_group={process_group}: "
                                                  "a new session's leader cannot join another group")
        op = ProcessSpawnOperation(argv, **fields).with_process_group(process_group)
    else:
        if start_new_session:
            fields["detach_from_terminal"] = True
        else:
            fields["process_group"] = NEW_GROUP
        op = ProcessSpawnOperation._of_argv(argv, fields)
    if executable is not None and not shell:
        op = op.with_executable(executable)
    if pass_fds:
        op = op.with_pass_fds(pass_fds)
    elif not close_fds:
        op = op.with_close_fds(False)
    if cwd is not None:
        op = op.working_dir(os.fspath(cwd))
    if env is not None:
        op = op.with_clean_env().with_env(_env_of(env))
    if not restore_signals:
        op = _builder(op, "with_restore_signals", "restore_signals")(False)
    if gids is not None:
        op = _builder(op, "with_extra_groups", "extra_groups")(list(gids))
    if gid is not None:
        op = _builder(op, "with_group", "group")(_fits_id_t(gid, "gid"))
    if uid is not None:
        op = _builder(op, "with_user", "user")(_fits_id_t(uid, "uid"))
    if umask >= 0:
        op = _builder(op, "with_umask", "umask")(umask)
    if containment is not None and containment != "process_group":
        if isinstance(op.process_group, JoinGroup):
            raise ValueError(f"containment={containment!r} needs a new group: not with process_group=N")
        op = op.with_containment(containment)
    return op


def _as_subprocess_raises(e: OSError, cwd: Any, program: Any) -> OSError:
    """A spawn failure as subprocess reports it: the errno's strerror, and
    as filename the working directory when that is unusable (subprocess's
    child chdirs before it looks for the program), else the program. The
    exception keeps its osl_pg type when the errno stays the same."""
    if isinstance(e, SecurityViolation) or e.errno is None:
        return e  # a policy denial, not the OS
    err, filename = e.errno, program
    if cwd is not None:
        cwd_err = _dir_error(cwd)
        if cwd_err:
            err, filename = cwd_err, cwd
    cls = type(e) if err == e.errno else type(OSError(err, ""))
    return cls(err, os.strerror(err), filename)


def _dir_error(path: Any) -> int:
    """The errno chdir(path) would give (0: none); only on the error path."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.errno or errno.ENOENT
    if not stat.S_ISDIR(st.st_mode):
        return errno.ENOTDIR
    return 0 if os.access(path, os.X_OK) else errno.EACCES


# --------------------------------------------------------------------------
# Popen


_HAS_PIPESIZE = sys.version_info >= (3, 10)
_HAS_PROCESS_GROUP = sys.version_info >= (3, 11)


class Popen(subprocess.Popen[AnyStr]):
    """subprocess.Popen whose child leads a new process group (a new
    session with `start_new_session=True`), spawned through a
    ProcessExecutor without fork. `isinstance(p, subprocess.Popen)` holds;
    pipes, text mode and communicate() are subprocess's own code.

    send_signal(), terminate() and kill() reach the whole group; `p.group`
    is its ProcessGroup. poll()/wait() return the leader's status and
    release the group handle when no member is left. `with` exit closes the
    pipes and waits for the leader, as Popen does, then ends what is left
    of the group (SIGTERM, `grace`, SIGKILL); an exception in the block ends
    the whole tree instead of waiting. `process_group=N` joins group N
    (`p.group` is None, signals reach the child alone). `preexec_fn` raises
    TypeError: no Python can run in a child that is never forked. POSIX
    only for now: raises Unsupported on Windows. Extra keywords: `grace` (seconds between SIGTERM and
    SIGKILL when `with` exit ends the tree), `containment` (as run()'s:
    "cgroup", "pid_namespace", "best_available"), `executor`/`context` (whose
    policy and audit log the spawn goes through). Generic as
    subprocess.Popen: Popen[str] in text mode, else Popen[bytes]."""

    group: Optional[ProcessGroup] = None
    _osl_proc: Optional[Process] = None
    # subprocess.Popen's internals this class uses (typeshed leaves them out).
    _waitpid_lock: threading.Lock
    _child_created: bool
    if TYPE_CHECKING:
        def _close_pipe_fds(self, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int,
                            errwrite: int) -> None: ...

    # Text or bytes, as typeshed's subprocess.Popen: text=True, an encoding
    # or errors, or universal_newlines=True make the pipes str (Popen[str]).
    @overload
    def __init__(self: Popen[str], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Optional[bool] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (), *,
                 text: Literal[True], encoding: Optional[str] = None, errors: Optional[str] = None,
                 **options: Unpack[_PopenOptions]) -> None: ...
    @overload
    def __init__(self: Popen[str], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Optional[bool] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (), *,
                 encoding: str, errors: Optional[str] = None, text: Optional[bool] = None,
                 **options: Unpack[_PopenOptions]) -> None: ...
    @overload
    def __init__(self: Popen[str], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Optional[bool] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (), *,
                 errors: str, encoding: Optional[str] = None, text: Optional[bool] = None,
                 **options: Unpack[_PopenOptions]) -> None: ...
    @overload
    def __init__(self: Popen[str], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None, *,
                 universal_newlines: Literal[True], startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (),
                 encoding: Optional[str] = None, errors: Optional[str] = None, text: Optional[bool] = None,
                 **options: Unpack[_PopenOptions]) -> None: ...
    @overload
    def __init__(self: Popen[bytes], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Literal[False, None] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (), *,
                 text: Literal[False, None] = None, encoding: None = None, errors: None = None,
                 **options: Unpack[_PopenOptions]) -> None: ...
    @overload
    def __init__(self: Popen[Any], args: CommandArgs, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: None = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Optional[bool] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (), *,
                 text: Optional[bool] = None, encoding: Optional[str] = None, errors: Optional[str] = None,
                 **options: Unpack[_PopenOptions]) -> None: ...

    def __init__(self, args: Any, bufsize: int = -1, executable: Any = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, preexec_fn: Any = None, close_fds: bool = True,
                 shell: bool = False, cwd: Any = None, env: Optional[Mapping[Any, Any]] = None,
                 universal_newlines: Optional[bool] = None, startupinfo: Any = None, creationflags: int = 0,
                 restore_signals: bool = True, start_new_session: bool = False, pass_fds: Sequence[int] = (),
                 *, user: Any = None, group: Any = None, extra_groups: Any = None, encoding: Optional[str] = None,
                 errors: Optional[str] = None, text: Optional[bool] = None, umask: int = -1, pipesize: int = -1,
                 process_group: Optional[int] = None, containment: Optional[str] = None,
                 grace: float = DEFAULT_GRACE, executor: Optional[ProcessExecutor] = None,
                 context: Optional[ExecutionContext] = None):
        if preexec_fn is not None:
            raise TypeError(PREEXEC_FN_REFUSED)
        self._osl_containment = containment
        if os.name == "nt":
            raise Unsupported("osl_pg.Popen is POSIX-only for now; use osl_pg.run() or the executor on Windows")
        self.grace = grace
        self._osl_executor = executor if executor is not None else default_executor()
        self._osl_context = context
        self._osl_process_group = process_group  # 3.9/3.10 do not pass it to _execute_child
        self._osl_pipesize = pipesize if pipesize is not None else -1
        if encoding is None and (errors or text or universal_newlines):
            encoding = text_encoding()  # here, so that its EncodingWarning names the caller's line
        extra: Dict[str, Any] = {}
        if _HAS_PIPESIZE:
            extra["pipesize"] = pipesize
        if _HAS_PROCESS_GROUP:
            extra["process_group"] = process_group
        super().__init__(args, bufsize, executable, stdin, stdout, stderr, None, close_fds, shell, cwd, env,
                         universal_newlines, startupinfo, creationflags, restore_signals, start_new_session,
                         pass_fds, user=user, group=group, extra_groups=extra_groups, encoding=encoding,
                         errors=errors, text=text, umask=umask, **extra)

    # -- spawn -------------------------------------------------------------------
    def _execute_child(self, args: Any, executable: Any, preexec_fn: Any, close_fds: bool,
                       pass_fds: Sequence[int], cwd: Any, env: Any, startupinfo: Any, creationflags: int,
                       shell: bool, p2cread: int, p2cwrite: int, c2pread: int, c2pwrite: int, errread: int,
                       errwrite: int, restore_signals: bool, gid: Optional[int], gids: Optional[List[int]],
                       uid: Optional[int], umask: int, start_new_session: bool, process_group: int = -1) -> None:
        if not _HAS_PROCESS_GROUP:
            process_group = self._osl_process_group if self._osl_process_group is not None else -1
        if not _HAS_PIPESIZE and self._osl_pipesize > 0 and sys.platform == "linux":
            import fcntl
            for fd in (p2cwrite, c2pread, errread):  # our ends of the pipes (3.10+ does this itself)
                if fd != -1:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, self._osl_pipesize)
        op: ProcessSpawnOperation = spawn_operation(args, shell=shell, executable=executable, cwd=cwd, env=env,
                             start_new_session=start_new_session, process_group=process_group,
                             close_fds=close_fds, pass_fds=pass_fds, stdin=p2cread if p2cread != -1 else None,
                             stdout=c2pwrite if c2pwrite != -1 else None,
                             stderr=errwrite if errwrite != -1 else None, restore_signals=restore_signals,
                             uid=uid, gid=gid, gids=gids, umask=umask, containment=self._osl_containment)
        sys.audit("subprocess.Popen", op.executable or op.command, [op.command, *op.args], cwd, env)
        try:
            result = self._osl_executor.execute(op, self._osl_context)
        except OSError as e:
            raise _as_subprocess_raises(e, cwd, executable if executable is not None else op.command) from None
        proc = result.process
        assert proc is not None
        self._osl_proc = proc
        self.group = result.group
        self.pid: int = proc.pid
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    # -- status: through the Process handle, never os.waitpid -----------------------
    def _leader_exited(self, rc: int) -> None:
        self.returncode = rc
        group = self.group
        if group is None or group.released:
            return
        group.release_if_empty()  # one killpg(pgid, 0); members left: they stay reachable through the handle

    # subprocess's _waitpid_lock discipline: a poll() that finds another
    # thread waiting knows nothing yet (None); waits take turns.
    def _internal_poll(self, _deadstate: Optional[int] = None, **_: Any) -> Optional[int]:
        proc = self._osl_proc
        if self.returncode is None and proc is not None:
            if not self._waitpid_lock.acquire(False):
                return None
            try:
                if self.returncode is None:
                    rc = proc.poll()
                    if rc is not None:
                        self._leader_exited(rc)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def _wait(self, timeout: Optional[float]) -> int:
        if self.returncode is not None:
            return self.returncode
        proc = self._osl_proc
        assert proc is not None
        limit = None if timeout is None or timeout == float("inf") else max(0.0, timeout)  # inf: no limit
        deadline = None if limit is None else time.monotonic() + limit
        if not self._waitpid_lock.acquire(timeout=-1 if limit is None else min(limit, threading.TIMEOUT_MAX)):
            raise self._timeout_expired(timeout)
        try:
            if self.returncode is None:  # else another thread waited
                try:
                    rc = proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except WaitTimeout:
                    raise self._timeout_expired(timeout) from None
                self._leader_exited(rc)
        finally:
            self._waitpid_lock.release()
        status = self.returncode
        assert status is not None  # _leader_exited() set it, here or in the thread that waited
        return status

    def _timeout_expired(self, timeout: Optional[float], output: Optional[bytes] = None,
                         stderr: Optional[bytes] = None) -> TimeoutExpired:
        """osl_pg.TimeoutExpired (a subprocess.TimeoutExpired and an
        OslError, so `except osl_pg.OslError` catches it too) with the
        group's pgid; nothing of the tree is ended, as with Popen."""
        assert timeout is not None  # only a wait with a limit runs out of time
        group = self.group
        return TimeoutExpired(self.args, timeout, output, stderr, pgid=group.pgid if group is not None else 0)

    def _check_timeout(self, *args: Any, **kwargs: Any) -> None:
        # communicate(timeout=...) raises from subprocess's own
        # _check_timeout (all versions since 3.3); re-raised as ours, with
        # what was read so far, as subprocess attaches it.
        try:
            getattr(super(), "_check_timeout")(*args, **kwargs)  # private: not in typeshed
        except TimeoutExpired:
            raise
        except subprocess.TimeoutExpired as e:
            raise self._timeout_expired(e.timeout, e.output, e.stderr) from None

    def _try_wait(self, wait_flags: int) -> Any:
        """subprocess's (pid, wait status), from the handle."""
        proc = self._osl_proc
        assert proc is not None
        rc = proc.poll() if wait_flags & os.WNOHANG else proc.wait()
        if rc is None:
            return 0, 0
        return self.pid, (rc << 8 if rc >= 0 else -rc)

    # -- signals: the whole group ---------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        """Signal every member of the group (the child alone when it joined
        someone else's group). Once the leader has exited and the group is
        gone (the handle released) nothing is sent, as subprocess skips a
        child it knows has died."""
        self.poll()
        group = self.group
        try:
            if group is None:
                if self.returncode is None and self._osl_proc is not None:
                    self._osl_proc.send_signal(sig)
            elif not group.released:
                group.signal(sig)
        except ProcessLookupError:
            pass  # exited meanwhile (subprocess's bpo-40550 rule)

    # -- lifetime ------------------------------------------------------------------------------
    def _end_tree(self) -> None:
        """SIGTERM the whole group, wait up to `grace` seconds, SIGKILL what
        is left (ProcessGroup.terminate); the leader's status becomes
        `returncode`. A no-op once the group is released, or without one."""
        group = self.group
        if group is None or group.released:
            return
        try:
            group.terminate(self.grace)
        except BaseException:
            group.close()  # interrupted (a second Ctrl-C in the grace): SIGKILL what is left
            raise
        if self.returncode is None and self._osl_proc is not None:
            self.returncode = self._osl_proc.poll()

    def __exit__(self, exc_type: Any, value: Any, traceback: Any) -> None:
        if exc_type is None or self.group is None:
            try:
                super().__exit__(exc_type, value, traceback)  # closes the pipes, waits for the leader
            finally:
                self._end_tree()  # what the leader left in its group (all of it if the wait was interrupted)
            return
        # An exception in the block: end the whole tree, bounded by the
        # grace, where subprocess would wait for the child (for ever).
        try:
            for f in (self.stdout, self.stderr, self.stdin):
                if f:
                    try:
                        f.close()
                    except OSError:  # flushing stdin into a dead child
                        pass
        finally:
            self._end_tree()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not self._child_created:
            return
        if self.returncode is None:
            _warn(f"subprocess {self.pid} is still running", ResourceWarning, source=self)
            # As subprocess: kept alive on subprocess._active, whose next
            # Popen() polls it (our _internal_poll, outside any finalizer).
            # No poll here: it may take a lock.
            active: Optional[List[Popen[Any]]] = getattr(subprocess, "_active", None)  # private: not in typeshed
            if active is not None:
                active.append(self)
