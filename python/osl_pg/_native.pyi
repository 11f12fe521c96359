# Types for the cffi extension built from csrc/: one attribute of `lib` per
# declaration of csrc/cdef_posix.h (POSIX) and csrc/cdef_windows.h (Windows),
# in their order; keep them in step. Only osl_pg._posix and osl_pg._windows
# import it. Constants are ints (their `#define X ...` values come from the
# compiler); pointer parameters take a cdata (ffi.new(...), ffi.NULL),
# `const char *` ones bytes as well. The C functions return 0 or an errno
# (GetLastError on Windows), except where the comment says otherwise.
import sys
from typing import Any, Callable, ClassVar, Literal, Sequence, overload

from _cffi_backend import _CDataBase as CData

class _SpawnAttr:
    """struct osl_spawn_attr * (csrc/cdef_posix.h)."""
    path: CData
    argv: CData
    envp: CData
    cwd: CData
    fds: CData | Sequence[int]  # int[3]; Python assigns a list
    pgroup_mode: int
    pgid: int
    new_session: int
    close_fds: int
    pass_fds: CData
    n_pass_fds: int
    pdeathsig: int
    n_cgroups: int
    cgroup_procs_fds: CData  # int[OSL_MAX_CGROUPS]
    signal_reset: int
    spawn_path: int
    set_ids: int
    uid: int
    gid: int
    groups: CData
    n_groups: int
    umask: int

class _WinSpawnAttr:
    """struct osl_win_spawn_attr * (csrc/cdef_windows.h)."""
    application: CData
    command_line: CData
    environment: CData
    cwd: CData
    std_handles: CData  # void *[3]
    flags: int
    job: CData

class _FFI:
    """The part of cffi's FFI the backends use (types-cffi types the rest);
    new() of the two structs gives their fields' types."""
    NULL: ClassVar[CData]
    errno: int
    # A literal overlapping str in a later overload is unsafe only for a
    # caller passing a str variable equal to the literal; typeshed ignores
    # the same warning for the same pattern (e.g. open()'s modes).
    @overload
    def new(  # type: ignore[overload-overlap]
        self, cdecl: Literal["struct osl_spawn_attr *"], init: Any = ...) -> _SpawnAttr: ...
    @overload
    def new(  # type: ignore[overload-overlap]
        self, cdecl: Literal["struct osl_win_spawn_attr *"], init: Any = ...) -> _WinSpawnAttr: ...
    @overload
    def new(self, cdecl: str, init: Any = ...) -> CData: ...
    def cast(self, cdecl: str, value: CData | int, /) -> CData: ...
    def gc(self, cdata: CData, destructor: Callable[[CData], object], size: int = ...) -> CData: ...
    def release(self, cdata: CData, /) -> None: ...

ffi: _FFI

class _Lib:
    if sys.platform == "win32":
        OSL_JOB_KILL_ON_CLOSE: int
        OSL_JOB_NO_PORT: int
        OSL_WIN_NEW_GROUP: int
        OSL_WIN_DETACHED: int
        OSL_WIN_FORCE_SUSPEND: int
        OSL_WIN_CTRL_C: int
        OSL_WIN_CTRL_BREAK: int
        OSL_WIN_INFINITE: int
        OSL_WIN_WAIT_TIMEOUT: int
        OSL_WIN_MORE_DATA: int
        OSL_WIN_STILL_ACTIVE: int

        def osl_job_create(self, flags: int, job_out: CData, /) -> int: ...
        def osl_job_close(self, job: CData, /) -> int: ...
        def osl_job_handle(self, job: CData, handle_out: CData, /) -> int: ...
        def osl_job_assign(self, job: CData, process: CData, /) -> int: ...
        def osl_job_terminate(self, job: CData, exit_code: int, /) -> int: ...
        def osl_job_pids(self, job: CData, pids: CData, capacity: int, count_out: CData, /) -> int: ...
        def osl_job_accounting(self, job: CData, active_out: CData, total_out: CData,
                               terminated_out: CData, /) -> int: ...
        def osl_job_set_limits(self, job: CData, active_processes: int, job_memory: int, /) -> int: ...
        def osl_job_wait_empty(self, job: CData, timeout_ms: int, /) -> int: ...
        def osl_win_spawn(self, attr: _WinSpawnAttr, pid_out: CData, process_out: CData, used_fallback: CData, /) -> int: ...
        # 0 when the process ended, OSL_WIN_WAIT_TIMEOUT, or an error code.
        def osl_win_wait(self, process: CData, timeout_ms: int, /) -> int: ...
        def osl_win_exit_code(self, process: CData, code_out: CData, /) -> int: ...
        def osl_win_close_handle(self, handle: CData, /) -> int: ...
        def osl_win_ctrl_event(self, event: int, pgid: int, /) -> int: ...
    else:
        OSL_PGROUP_INHERIT: int
        OSL_PGROUP_NEW: int
        OSL_PGROUP_JOIN: int
        OSL_FD_INHERIT: int
        OSL_STEP_NONE: int
        OSL_STEP_SPAWN: int
        OSL_STEP_PGROUP: int
        OSL_STEP_SESSION: int
        OSL_STEP_CHDIR: int
        OSL_STEP_EXEC: int
        OSL_STEP_CGROUP: int
        OSL_STEP_PASS_FDS: int
        OSL_STEP_GROUPS: int
        OSL_STEP_GID: int
        OSL_STEP_UID: int
        OSL_STEP_USERNS: int
        OSL_SIGNALS_RESTORE: int
        OSL_SIGNALS_INHERIT: int
        OSL_SIGNALS_ALL: int
        OSL_SPAWN_AUTO: int
        OSL_SPAWN_POSIX: int
        OSL_SPAWN_VFORK: int
        OSL_SET_GROUPS: int
        OSL_SET_GID: int
        OSL_SET_UID: int
        OSL_SET_UMASK: int
        OSL_MAX_CGROUPS: int
        OSL_FEAT_SPAWN_SETSID: int
        OSL_FEAT_SPAWN_CHDIR: int
        OSL_FEAT_SPAWN_CLOSEFROM: int
        OSL_FEAT_PDEATHSIG: int
        OSL_WAIT_NOHANG: int
        OSL_WAIT_NOWAIT: int
        OSL_INIT_STARTED: int
        OSL_INIT_EXITED: int
        OSL_INIT_STOPPED: int

        # A bit mask of OSL_FEAT_* (not an errno).
        def osl_features(self) -> int: ...
        def osl_spawn(self, attr: _SpawnAttr, pid_out: CData, step_out: CData, used_vfork: CData, /) -> int: ...
        def osl_spawn_pidns(self, attr: _SpawnAttr, pid_out: CData, step_out: CData, /) -> int: ...
        def osl_kill(self, pid: int, sig: int, /) -> int: ...
        def osl_killpg(self, pgid: int, sig: int, /) -> int: ...
        def osl_getpgid(self, pid: int, pgid_out: CData, /) -> int: ...
        def osl_getsid(self, pid: int, sid_out: CData, /) -> int: ...
        def osl_setpgid(self, pid: int, pgid: int, /) -> int: ...
        def osl_setsid(self, sid_out: CData, /) -> int: ...
        def osl_wait(self, pid: int, flags: int, done: CData, status: CData, /) -> int: ...
        def osl_set_child_subreaper(self, on: int, /) -> int: ...
        def osl_children_autoreaped(self, out: CData, /) -> int: ...
        def osl_bench_spawn_wait(self, path: bytes | CData, n: int, elapsed_ns: CData, /) -> int: ...
        def osl_bench_spawn(self, path: bytes | CData, close_fds: int, call_ns: CData, total_ns: CData, /) -> int: ...
        def osl_bench_killpg(self, pgid: int, sig: int, elapsed_ns: CData, /) -> int: ...
        def osl_bench_kill_group(self, pgid: int, elapsed_ns: CData, /) -> int: ...

lib: _Lib
