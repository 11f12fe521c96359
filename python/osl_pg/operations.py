"""Operations: immutable values that describe what to do. No I/O here.

Builders return a new operation; the id and creation time of the first one
are carried along, so a chain of builders yields one logical operation.
Shape is checked when an operation is built, and again by the executor.
"""
from __future__ import annotations

import enum
import os
import signal as _signal
import subprocess
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import IO, Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

    _Op = TypeVar("_Op", bound="_Operation")  # builders return the operation's own type

from ._record import Value
from .errors import InvalidOperation, InvalidOperationType, Unsupported

PID_MAX = 2**31 - 1

# Stdio choices: the subprocess module's own constants, so code moving from
# subprocess keeps working. INHERIT is ours (subprocess spells it None).
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
INHERIT = None
if TYPE_CHECKING:
    StdioSpec = Union[None, int, IO[Any]]


class Permission(str, enum.Enum):
    """What an operation needs a policy to grant (see AllowListPolicy):
    PROCESS_SPAWN to start a process, PROCESS_MANAGE to signal or kill one,
    or to put a new process into an existing group."""

    PROCESS_SPAWN = "ProcessSpawn"
    PROCESS_MANAGE = "ProcessManage"


class OperationType(str, enum.Enum):
    """An operation's kind, as its `operation_type` and the audit records
    and metadata name it: process_spawn, process_signal (one process),
    process_group_signal (every member of a group), process_kill."""

    PROCESS_SPAWN = "process_spawn"
    PROCESS_SIGNAL = "process_signal"
    PROCESS_GROUP_SIGNAL = "process_group_signal"
    PROCESS_KILL = "process_kill"


# --------------------------------------------------------------------------
# shape checks


def check_pid(value: Any, what: str = "pid") -> int:
    """A pid or pgid must be an int in 1..2**31-1: 0 and negatives mean
    "my group" or "everyone" to kill(2), and a wrapped 2**32-1 is -1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOperation(f"{what} must be an int, not {type(value).__name__}")
    if not 1 <= value <= PID_MAX:
        raise InvalidOperation(f"{what} {value} is outside 1..{PID_MAX}")
    return value


def check_pgid(value: Any) -> int:
    pgid = check_pid(value, "pgid")
    if pgid == 1:
        raise InvalidOperation("pgid 1 is init's group; signalling it is refused")
    return pgid


def check_signal(value: Any) -> int:
    """Signal 0 probes liveness; anything else must be a signal this OS has."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOperation(f"signal must be an int, not {type(value).__name__}")
    if value != 0 and value not in _VALID_SIGNALS:
        raise InvalidOperation(f"unknown signal number {value}")
    return int(value)


def signal_name(sig: int) -> str:
    if sig == 0:
        return "0"
    try:
        return _signal.Signals(sig).name
    except ValueError:
        if sig == SIGKILL:
            return "SIGKILL"
        rtmin = getattr(_signal, "SIGRTMIN", None)
        if rtmin is not None and sig >= rtmin:
            return f"SIGRTMIN+{sig - rtmin}"
        return f"SIG{sig}"


# Windows has no SIGKILL; osl_pg takes 9 there too and terminates (see
# osl_pg._windows for how each signal maps to Windows).
SIGKILL = int(getattr(_signal, "SIGKILL", 9))
_VALID_SIGNALS = frozenset(int(s) for s in _signal.valid_signals()) | {SIGKILL}


def _check_text(value: Any, what: str) -> str:
    if type(value) is str:  # the usual case, without the os.PathLike ABC check (~1 us)
        if "\0" in value:
            raise InvalidOperation(f"{what} contains a NUL byte: {value!r}")
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise InvalidOperation(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidOperation(f"{what} contains a NUL byte: {value!r}")
    return value


def _check_stdio(value: Any, slot: str) -> StdioSpec:
    spec: StdioSpec = value  # checked below
    if value is None or value in (PIPE, DEVNULL):
        return spec
    if value == STDOUT:
        if slot != "stderr":
            raise InvalidOperation("STDOUT is only meaningful for stderr")
        return spec
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidOperation(f"{slot}: invalid fd {value}")
        return value
    if hasattr(value, "fileno"):
        return spec
    raise InvalidOperation(f"{slot} must be PIPE, DEVNULL, an fd or a file, not {value!r}")


def _check_pass_fds(fds: Any) -> Tuple[int, ...]:
    """Ascending and without duplicates (what the C layer relies on); 0-2
    are refused because with_stdin/stdout/stderr say what they become."""
    if isinstance(fds, (str, bytes, int)) or not hasattr(fds, "__iter__"):
        raise InvalidOperation(f"pass_fds must be a collection of fds, not {fds!r}")
    out = set()
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise InvalidOperation(f"pass_fds: {fd!r} is not an fd number")
        if not 3 <= fd <= PID_MAX:
            raise InvalidOperation(f"pass_fds: fd {fd} is not >= 3 (stdio is set with with_stdin/stdout/stderr)")
        out.add(fd)
    return tuple(sorted(out))


# Largest uid/gid setreuid()/setregid() take: (uid_t)-1 means "unchanged".
ID_MAX = 2**32 - 2

if TYPE_CHECKING:
    IdSpec = Union[int, str]


def _check_id(value: Any, what: str) -> IdSpec:
    """A user or group as subprocess takes it: a name (looked up with
    pwd/grp by the backend, at spawn) or a non-negative id. The errors are
    subprocess's: TypeError for another type, ValueError for a negative id."""
    if isinstance(value, str):
        if not value or "\0" in value:
            raise InvalidOperation(f"{what} name {value!r} is empty or contains a NUL byte")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOperationType(f"{what} must be a string or an integer, not {type(value).__name__}")
    if value < 0:
        raise InvalidOperation(f"{what} ID cannot be negative, got {value}")
    if value > ID_MAX:
        raise InvalidOperation(f"{what} ID {value} is above {ID_MAX}")
    return int(value)


def _check_extra_groups(groups: Any) -> Tuple[IdSpec, ...]:
    if isinstance(groups, (str, bytes)):
        raise InvalidOperation("extra groups must be a list, not a string")
    if not hasattr(groups, "__iter__"):
        raise InvalidOperationType(f"extra groups must be a list of groups, not {type(groups).__name__}")
    return tuple(_check_id(g, "group") for g in groups)


def _check_umask(mask: Any) -> int:
    if isinstance(mask, bool) or not isinstance(mask, int):
        raise InvalidOperationType(f"umask must be an int, not {type(mask).__name__}")
    if not 0 <= mask <= 2**31 - 1:
        raise InvalidOperation(f"umask must be a non-negative mode, not {mask!r} (subprocess's -1 means: do "
                               "not call with_umask)")
    return int(mask) & 0o777  # what umask(2) keeps of it


# How the child's signal dispositions start (handled signals are reset in
# every mode: exec does that, and the vfork child before it unblocks):
#   "restore" (default, subprocess's restore_signals=True): SIGPIPE and
#       SIGXFSZ, which Python ignores, back to default; every other ignored
#       signal stays ignored (a child of a program under nohup keeps SIGHUP
#       ignored).
#   "inherit" (restore_signals=False): every ignored signal stays ignored.
#   "all": every signal back to its default, ignored ones included.
SIGNAL_RESETS = ("restore", "inherit", "all")


def _check_signal_reset(value: Any) -> str:
    if value not in SIGNAL_RESETS:
        raise InvalidOperation(f"signal reset must be one of {', '.join(SIGNAL_RESETS)}, not {value!r}")
    reset: str = value
    return reset


# --------------------------------------------------------------------------
# process group configuration


class ProcessGroupConfig(Value):
    """Where a spawned child's process group is. Variants: NewGroup(),
    JoinGroup(pgid), Inherit() (the default), also reachable as
    ProcessGroupConfig.NewGroup() etc."""

    __slots__ = ()
    NewGroup: ClassVar[type[NewGroup]]
    JoinGroup: ClassVar[type[JoinGroup]]
    Inherit: ClassVar[type[Inherit]]


class NewGroup(ProcessGroupConfig):
    """The child leads a new process group whose pgid is its pid."""


class JoinGroup(ProcessGroupConfig):
    """The child joins the existing group `pgid` (same session only)."""

    pgid: int = 0

    def __post_init__(self) -> None:
        check_pgid(self.pgid)


class Inherit(ProcessGroupConfig):
    """The child stays in the caller's process group."""


NEW_GROUP = NewGroup()  # immutable, and equal to any other: one will do
ProcessGroupConfig.NewGroup = NewGroup
ProcessGroupConfig.JoinGroup = JoinGroup
ProcessGroupConfig.Inherit = Inherit


# --------------------------------------------------------------------------
# common operation fields


# Operation ids, made 64 at a time from one getrandom(): taking one is one
# list operation. Made one by one, each cost ~4 us of run()'s path before the
# spawn (measured with timestamps in the real loop, where the caches are
# cold); a batch runs hot. Emptied in a forked child, which must not hand out
# the same ids as its parent.
_random_ids: List[str] = []


def _uuid4_text(raw: bytes) -> str:
    """16 random bytes as a version 4 UUID's text, as str(uuid.uuid4())."""
    b = bytearray(raw)
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _new_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) gives, in a
    fraction of its time: every operation, run() included, gets one."""
    try:
        return _random_ids.pop()  # one list operation: safe between threads
    except IndexError:
        block = os.urandom(16 * 64)
        ids = [_uuid4_text(block[i:i + 16]) for i in range(0, len(block), 16)]
        _random_ids.extend(ids[1:])
        return ids[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_ids.clear)


class _Operation(Value):
    operation_id: str = ""
    created_at: float = 0.0
    operation_type: OperationType = OperationType.PROCESS_SPAWN

    def with_operation_id(self: _Op, operation_id: str) -> _Op:
        """A copy with `operation_id` as its id (audit records and results
        carry it), instead of the random UUID every operation gets at
        creation. Raises InvalidOperation for an empty id or one with a NUL
        byte."""
        operation_id = _check_text(operation_id, "operation_id")
        if not operation_id:
            raise InvalidOperation("empty operation_id")
        return self._with(operation_id=operation_id)

    def _with(self: _Op, **changes: Any) -> _Op:
        """A copy with `changes`; the id and creation time are kept. The
        instance dict is copied whole (a Value only guards setattr): a
        builder chain is on run()'s path, and a field-by-field copy cost
        ~8 us of it."""
        new = object.__new__(type(self))
        d = new.__dict__
        d.update(self.__dict__)
        d.update(changes)
        d.pop("_valid", None)  # the changed copy is validated again (by the executor)
        return new

    def required_permissions(self) -> Tuple[Permission, ...]:
        """The permissions a policy must grant for this operation."""
        raise NotImplementedError

    def requires_elevated_privileges(self) -> bool:
        """True when the executor must refuse this operation to a context
        that is not elevated, whatever the policies say."""
        return False

    def validate(self) -> None:
        """Raise InvalidOperation when the operation is malformed."""


# --------------------------------------------------------------------------
# containment and limits

CONTAINMENT = ("cgroup", "pid_namespace", "best_available")


def _check_containment(value: Any) -> str:
    if value not in CONTAINMENT:
        raise InvalidOperation(f"containment must be one of {', '.join(CONTAINMENT)}, not {value!r}")
    containment: str = value
    return containment


class Limits(Value):
    """Per-group limits (Linux cgroups): at most `max_processes` processes
    at once (forks beyond fail with EAGAIN), `max_memory` bytes of RAM plus
    swap for the whole group (beyond it the OOM killer ends a member), and
    `cpu_quota` CPUs of time (0.5: half of one CPU). None: no such limit."""

    max_processes: Optional[int] = None
    max_memory: Optional[int] = None
    cpu_quota: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("max_processes", "max_memory"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidOperation(f"{name} must be a positive int, not {v!r}")
        q = self.cpu_quota
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.01 <= q <= 4096):
            raise InvalidOperation(f"cpu_quota must be a number of CPUs in 0.01..4096, not {q!r}")

    def requested(self) -> Dict[str, Any]:
        """The limits that were set, by name (those left None omitted)."""
        d = self.__dict__
        return {k: d[k] for k in self._fields if d[k] is not None}


# --------------------------------------------------------------------------
# spawn


class ProcessSpawnOperation(_Operation):
    """Spawn `command` with arguments. Group membership is `process_group`
    (None means Inherit); `detach_from_terminal` makes the child a session
    leader (setsid), which also makes it a group leader."""

    command: str = ""
    args: Tuple[str, ...] = ()
    env_overrides: Tuple[Tuple[str, Optional[str]], ...] = ()
    inherit_env: bool = True
    cwd: Optional[str] = None
    process_group: Optional[ProcessGroupConfig] = None
    detach_from_terminal: bool = False
    kill_on_parent_death: bool = False
    containment: Optional[str] = None  # see with_containment
    limits: Optional[Limits] = None
    close_fds: bool = True
    pass_fds: Tuple[int, ...] = ()
    executable: Optional[str] = None
    stdin: StdioSpec = None
    stdout: StdioSpec = None
    stderr: StdioSpec = None
    user: Optional[IdSpec] = None  # POSIX: run as this user (setreuid), see with_user
    primary_group: Optional[IdSpec] = None  # setregid, see with_group
    extra_groups: Optional[Tuple[IdSpec, ...]] = None  # setgroups; None: unchanged
    umask: Optional[int] = None  # None: the parent's
    signal_reset: str = "restore"  # one of SIGNAL_RESETS
    operation_type: OperationType = OperationType.PROCESS_SPAWN

    def __init__(self, command: Union[str, "os.PathLike[str]", Sequence[Any]] = "", *args: Any, **kwargs: Any):
        # Positional form of the contract: ProcessSpawnOperation("sleep"),
        # or an argv list: ProcessSpawnOperation(["sleep", "1"]).
        kind = type(command)
        if kind is list or kind is tuple or (kind is not str and not isinstance(command, (bytes, os.PathLike))
                                             and hasattr(command, "__iter__")):
            iterable: Any = command  # an argv: `kind` says so, in a way type checkers do not follow
            argv = list(iterable)
            if not argv:
                raise InvalidOperation("empty command")
            command = argv[0]
            kwargs["args"] = (*argv[1:], *kwargs.get("args", ()))
        _init_fields(self, dict(kwargs, command=command), args)
        self.validate()

    @classmethod
    def _of_argv(cls, argv: List[Any], fields: Dict[str, Any]) -> "ProcessSpawnOperation":
        """ProcessSpawnOperation(argv, **fields) for the argv lists run()
        and Popen make: one dict fill and one validate(), which checks the
        command and arguments too, when every item is a str (else the
        constructor converts them). `fields` are plain field values."""
        for a in argv:
            if type(a) is not str:
                return cls(argv, **fields)
        op = object.__new__(cls)
        d = _fill(op, fields)
        d["command"] = argv[0]
        d["args"] = tuple(argv[1:])
        op.validate()
        return op

    # builders --------------------------------------------------------------
    def arg(self, a: str) -> "ProcessSpawnOperation":
        """A copy with one more argument. A str, bytes (decoded with the
        filesystem encoding) or path; InvalidOperation for anything else or
        a NUL byte."""
        return self._with(args=self.args + (_check_text(a, "argument"),))

    def with_args(self, args: Iterable[str]) -> "ProcessSpawnOperation":
        """A copy with `args` appended to the arguments (argv[1:]). One
        string is refused (InvalidOperation): it would be split into
        characters; pass a list."""
        if isinstance(args, (str, bytes)):
            raise InvalidOperation("with_args takes a list of arguments, not one string")
        return self._with(args=self.args + tuple(_check_text(a, "argument") for a in args))

    def env(self, key: str, value: Optional[str]) -> "ProcessSpawnOperation":
        """Set (or, with None, remove) one variable on top of the inherited
        environment."""
        return self._with(env_overrides=self.env_overrides + (_env_pair(key, value),))

    def with_env(self, env: Mapping[str, Optional[str]]) -> "ProcessSpawnOperation":
        """A copy that sets each variable of `env` on top of the inherited
        environment (a None value removes it), as env() for each. Keys must
        be non-empty, without "=" or NUL (InvalidOperation)."""
        return self._with(env_overrides=self.env_overrides + tuple(_env_pair(k, v) for k, v in env.items()))

    def with_clean_env(self) -> "ProcessSpawnOperation":
        """Start from an empty environment instead of the caller's."""
        return self._with(inherit_env=False)

    def working_dir(self, d: Union[str, "os.PathLike[str]"]) -> "ProcessSpawnOperation":
        """A copy whose child starts in directory `d` (subprocess's `cwd`).
        A missing directory fails at spawn with FileNotFoundError
        (CommandNotFound), a file with NotADirectoryError."""
        return self._with(cwd=_check_text(d, "working directory"))

    def with_new_process_group(self) -> "ProcessSpawnOperation":
        """A copy whose child leads a new process group (its pgid is its
        pid: POSIX_SPAWN_SETPGROUP; on Windows a new Job Object). The
        result then has a ProcessGroup handle for the whole tree."""
        return self._with(process_group=NEW_GROUP)

    def with_process_group(self, pgid: int) -> "ProcessSpawnOperation":
        """A copy whose child joins the existing group `pgid` (POSIX: one of
        this session; Windows: a group this process made). No handle is
        made for that group. The default policy allows it for groups this
        executor created or whose members all run as the caller; needs the
        PROCESS_MANAGE permission. InvalidOperation for pgid < 2."""
        return self._with(process_group=JoinGroup(pgid))

    def with_group_config(self, config: Optional[ProcessGroupConfig]) -> "ProcessSpawnOperation":
        """A copy with the group given as a value: NewGroup(), JoinGroup(pgid)
        or Inherit() (None: inherit, the default)."""
        return self._with(process_group=config)

    def with_detach_from_terminal(self) -> "ProcessSpawnOperation":
        """A copy whose child leads a new session (setsid: no controlling
        terminal, so a terminal hangup does not reach it) and so a new
        group too; the group's tier is "session". On Windows, a job whose
        leader has no console (DETACHED_PROCESS)."""
        return self._with(detach_from_terminal=True)

    def with_kill_on_parent_death(self) -> "ProcessSpawnOperation":
        """Linux: when this process dies, the child is killed (SIGKILL).

        The child gets PR_SET_PDEATHSIG, set in the C child before exec with
        a getppid() re-check for the race where the parent died first. The
        kernel ties that signal to the spawning *thread*: spawn from a
        long-lived thread (the main thread), not from a pool worker. When the
        child leads a new group or session, the rest of its tree (which the
        kernel does not signal) is killed by a watchdog process (see
        osl_pg.watchdog) when this process dies."""
        return self._with(kill_on_parent_death=True)

    def with_containment(self, tier: str) -> "ProcessSpawnOperation":
        """Linux: a containment no member can leave the way setsid() or
        setpgid() leave a process group. "cgroup": a fresh cgroup (v2); it
        fails (NotImplementedError/PermissionError) without a cgroup this
        process may create. "pid_namespace": new user + PID namespaces
        whose pid 1 is osl_pg's init (osl_pg.pidns), no root needed; it
        raises NamespaceUnavailable (a NotImplementedError) naming the cause
        where user namespaces are refused. "best_available" tries cgroup,
        then pid_namespace, then falls back to the process group. The tier
        obtained is `group.tier` and the "containment" metadata. The child
        leads a new group unless it is detached."""
        return self._with(containment=_check_containment(tier), process_group=self._leading_group())

    def with_limits(self, max_processes: Optional[int] = None, max_memory: Optional[int] = None,
                    cpu_quota: Optional[float] = None) -> "ProcessSpawnOperation":
        """Linux: limits for the whole group (see Limits), applied through a
        cgroup v2 controller or, where v2 lacks it, the cgroup v1 one. Which
        one is `group.limits_applied`; LimitUnavailable when neither."""
        limits = Limits(max_processes, max_memory, cpu_quota)
        if not limits.requested():
            raise InvalidOperation("with_limits needs at least one limit")
        return self._with(limits=limits, process_group=self._leading_group())

    def _leading_group(self) -> Optional[ProcessGroupConfig]:
        """Containment and limits belong to a group: default to a new one."""
        if self.process_group is None and not self.detach_from_terminal:
            return NEW_GROUP
        return self.process_group

    def with_stdin(self, spec: StdioSpec) -> "ProcessSpawnOperation":
        """A copy whose child's stdin is `spec`: PIPE (then
        `result.process.stdin` is the writable end), DEVNULL, an fd, a file
        object with fileno(), or INHERIT/None (ours)."""
        return self._with(stdin=_check_stdio(spec, "stdin"))

    def with_stdout(self, spec: StdioSpec) -> "ProcessSpawnOperation":
        """A copy whose child's stdout is `spec`: PIPE (then
        `result.process.stdout` is the readable end), DEVNULL, an fd, a
        file object with fileno(), or INHERIT/None (ours)."""
        return self._with(stdout=_check_stdio(spec, "stdout"))

    def with_stderr(self, spec: StdioSpec) -> "ProcessSpawnOperation":
        """A copy whose child's stderr is `spec`: as with_stdout(), plus
        STDOUT (the same file as stdout)."""
        return self._with(stderr=_check_stdio(spec, "stderr"))

    def with_close_fds(self, close: bool) -> "ProcessSpawnOperation":
        """A copy that closes (True, the default) or keeps (False) the fds
        >= 3 the child would inherit, as subprocess's `close_fds`. With
        False only inheritable fds reach the child (Python makes its fds
        non-inheritable). Windows always passes the three std handles
        alone."""
        return self._with(close_fds=bool(close))

    def with_pass_fds(self, fds: Iterable[int]) -> "ProcessSpawnOperation":
        """POSIX: fds (>= 3) the child keeps, at the same numbers and
        inheritable, even though every other fd >= 3 is closed
        (subprocess's pass_fds). Adds to those given before."""
        return self._with(pass_fds=tuple(sorted(set(self.pass_fds).union(_check_pass_fds(fds)))))

    def with_executable(self, path: Union[str, "os.PathLike[str]"]) -> "ProcessSpawnOperation":
        """Execute `path` (looked up in PATH when it has no slash) while
        the program sees `command` as its argv[0], e.g. "-sh" for a login
        shell or a busybox applet name (subprocess's `executable`)."""
        return self._with(executable=_check_text(path, "executable"))

    def with_user(self, user: IdSpec) -> "ProcessSpawnOperation":
        """POSIX: the child runs as `user` (a name or a uid; subprocess's
        `user`): real and effective uid are set before exec, after the
        groups. Needs privilege (CAP_SETUID) unless it is our own uid. A
        name is looked up (pwd.getpwnam: KeyError when unknown) at spawn."""
        return self._with(user=_check_id(user, "user"))

    def with_group(self, group: IdSpec) -> "ProcessSpawnOperation":
        """POSIX: the child's real and effective gid (a name or a gid;
        subprocess's `group`). Needs CAP_SETGID unless it is ours."""
        return self._with(primary_group=_check_id(group, "group"))

    def with_extra_groups(self, groups: Sequence[IdSpec]) -> "ProcessSpawnOperation":
        """POSIX: the child's supplementary groups, replacing ours (names or
        gids; subprocess's `extra_groups`); an empty list drops them all.
        Needs CAP_SETGID."""
        return self._with(extra_groups=_check_extra_groups(groups))

    def with_umask(self, mask: int) -> "ProcessSpawnOperation":
        """POSIX: the child's umask (subprocess's `umask`, whose default -1
        is "do not call" here); as with umask(2), only the bits 0o777 count."""
        return self._with(umask=_check_umask(mask))

    def with_restore_signals(self, on: bool = True) -> "ProcessSpawnOperation":
        """subprocess's `restore_signals`: True (the default) puts SIGPIPE
        and SIGXFSZ, which Python ignores, back to default in the child;
        False leaves them ignored. Other ignored signals stay ignored either
        way (see with_signal_reset for a full reset)."""
        return self._with(signal_reset="restore" if on else "inherit")

    def with_signal_reset(self, which: str) -> "ProcessSpawnOperation":
        """How much of the signal dispositions to reset: "restore" (the
        default), "inherit" or "all" (every ignored signal back to default
        too). See SIGNAL_RESETS."""
        return self._with(signal_reset=_check_signal_reset(which))

    # properties ----------------------------------------------------------------
    @property
    def group_config(self) -> ProcessGroupConfig:
        """The group setting as a value: NewGroup(), JoinGroup(pgid) or
        Inherit() (what None means)."""
        return self.process_group if self.process_group is not None else Inherit()

    @property
    def makes_group(self) -> bool:
        """True when the child will lead a new group (or session)."""
        return self.detach_from_terminal or isinstance(self.process_group, NewGroup)

    def required_permissions(self) -> Tuple[Permission, ...]:
        """PROCESS_SPAWN, plus PROCESS_MANAGE when the child joins an
        existing group."""
        if isinstance(self.process_group, JoinGroup):
            # Putting a process into an existing group manages that group.
            return (Permission.PROCESS_SPAWN, Permission.PROCESS_MANAGE)
        return (Permission.PROCESS_SPAWN,)

    def validate(self) -> None:
        """Check the operation's shape (done at creation and again by the
        executor): a non-empty command, text without NUL bytes, valid stdio,
        fds and ids, a group setting that fits (a detached child cannot join
        a group; containment and limits need a new group or session).
        Raises InvalidOperation (a ValueError). Nothing is looked up: a
        missing command is found at spawn."""
        d = self.__dict__
        if d.get("_valid"):  # checked at creation; a builder's copy drops the mark
            return
        # The usual values are tested inline: a call per field was ~3 us of
        # run()'s path before the spawn.
        command = d["command"]
        if not command:
            raise InvalidOperation("empty command")
        if type(command) is not str or "\0" in command:
            _check_text(command, "command")
        for a in d["args"]:
            if type(a) is not str or "\0" in a:
                _check_text(a, "argument")
        for k, v in self.env_overrides:
            _env_pair(k, v)
        if self.cwd is not None:
            _check_text(self.cwd, "working directory")
        if self.executable is not None and not _check_text(self.executable, "executable"):
            raise InvalidOperation("empty executable")
        if self.pass_fds:
            _check_pass_fds(self.pass_fds)
        if self.process_group is not None and not isinstance(self.process_group, ProcessGroupConfig):
            raise InvalidOperation(f"process_group must be a ProcessGroupConfig, not {self.process_group!r}")
        if self.detach_from_terminal and isinstance(self.process_group, JoinGroup):
            raise InvalidOperation("a detached child leads its own session; it cannot join a group")
        if self.containment is not None:
            _check_containment(self.containment)
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise InvalidOperation(f"limits must be a Limits, not {self.limits!r}")
        if (self.containment is not None or self.limits is not None) and not self.makes_group:
            raise InvalidOperation("containment and limits need a child that leads a new group or session")
        for slot in ("stdin", "stdout", "stderr"):
            if d[slot] is not None:
                _check_stdio(d[slot], slot)
        if self.user is not None:
            _check_id(self.user, "user")
        if self.primary_group is not None:
            _check_id(self.primary_group, "group")
        if self.extra_groups is not None:
            _check_extra_groups(self.extra_groups)
        if self.umask is not None:
            _check_umask(self.umask)
        if d["signal_reset"] != "restore":
            _check_signal_reset(d["signal_reset"])
        d["_valid"] = True

    @property
    def changes_credentials(self) -> bool:
        """True when the child changes its user, groups or umask: POSIX
        only, and the vfork path (posix_spawn has no action for them)."""
        return (self.user is not None or self.primary_group is not None or self.extra_groups is not None
                or self.umask is not None)


def _env_pair(key: Any, value: Any) -> Tuple[str, Optional[str]]:
    key = _check_text(key, "environment key")
    if not key or "=" in key:
        raise InvalidOperation(f"invalid environment key {key!r}")
    if value is not None:
        value = _check_text(value, f"environment value of {key}")
    return key, value


def _fill(op: Any, values: Dict[str, Any]) -> Dict[str, Any]:
    """A new operation's instance dict: the defaults, then `values` as
    given, and an id and creation time unless given."""
    d: Dict[str, Any] = op.__dict__
    d.update(op._defaults)
    d.update(values)
    if not d["operation_id"]:
        d["operation_id"] = _new_id()
    if not d["created_at"]:
        d["created_at"] = time.time()
    return d


def _init_fields(op: Any, values: Dict[str, Any], extra_positional: Tuple[Any, ...]) -> None:
    """Fill a new operation's fields: the defaults, then `values`, checked
    and made immutable as the builders make them. On run()'s path: one
    dict update each rather than a loop over the fields."""
    if extra_positional:
        raise TypeError(f"{type(op).__name__}() takes at most one positional argument")
    defaults = op._defaults
    if not values.keys() <= defaults.keys():
        raise TypeError(f"unexpected arguments: {', '.join(sorted(values.keys() - defaults.keys()))}")
    d = _fill(op, values)
    if "command" in values:
        d["command"] = _check_text(values["command"], "command") if values["command"] != "" else ""
    if "args" in values:
        args = values["args"]
        if isinstance(args, (str, bytes)):
            raise InvalidOperation("args takes a list of arguments, not one string")
        d["args"] = tuple([a if type(a) is str and "\0" not in a else _check_text(a, "argument") for a in args])
    if values.get("extra_groups") is not None:
        d["extra_groups"] = _check_extra_groups(values["extra_groups"])
    if "env_overrides" in values:  # immutable, and checked, like .env() makes it
        d["env_overrides"] = tuple(_env_pair(k, v) for k, v in values["env_overrides"])


# --------------------------------------------------------------------------
# signals


class ProcessSignalOperation(_Operation):
    """Send `signal` to process `pid`, or to process group `pid` when
    `target_group` is true."""

    pid: int = 0
    signal: int = 0
    target_group: bool = False
    allow_own_group: bool = False
    operation_type: OperationType = OperationType.PROCESS_SIGNAL

    def __init__(self, pid: int, signal: int, *, target_group: bool = False,
                 allow_own_group: bool = False, **kwargs: Any):
        # A signal.Signals member is stored as its number: str() of an
        # IntEnum is "Signals.SIGTERM" before Python 3.11, "15" after, and
        # the metadata must read the same everywhere.
        if isinstance(signal, int) and not isinstance(signal, bool):
            signal = int(signal)
        _init_fields(self, dict(kwargs, pid=pid, signal=signal, target_group=target_group,
                                allow_own_group=allow_own_group,
                                operation_type=OperationType.PROCESS_GROUP_SIGNAL if target_group
                                else OperationType.PROCESS_SIGNAL), ())
        self.validate()

    @classmethod
    def signal_group(cls, pgid: int, signal: int) -> "ProcessSignalOperation":
        """Send `signal` to every member of process group `pgid` (kill(-pgid)
        semantics, with the executor's PID-reuse checks: an open
        ProcessGroup of ours is signalled through its handle). The default
        policy refuses the caller's own group or session and groups with
        other users' processes unless the context is elevated.
        InvalidOperation for pgid < 2 or an unknown signal."""
        return cls(pgid, signal, target_group=True)

    @classmethod
    def new_for_group(cls, pid: int, signal: int) -> "ProcessSignalOperation":
        """Signal the group that `pid` leads (its pgid is its pid)."""
        return cls(pid, signal, target_group=True)

    @classmethod
    def terminate(cls, pid: int) -> "ProcessSignalOperation":
        """SIGTERM to process `pid` alone (on Windows: TerminateProcess)."""
        return cls(pid, int(_signal.SIGTERM))

    @classmethod
    def kill(cls, pid: int) -> "ProcessSignalOperation":
        """SIGKILL to process `pid` alone (9 on Windows too: TerminateProcess)."""
        return cls(pid, SIGKILL)

    @classmethod
    def hangup(cls, pid: int) -> "ProcessSignalOperation":
        """SIGHUP to process `pid` alone. Raises Unsupported on Windows,
        which has no SIGHUP."""
        if not hasattr(_signal, "SIGHUP"):
            raise Unsupported("Windows has no SIGHUP (a console's close event cannot be sent)")
        return cls(pid, int(_signal.SIGHUP))

    def with_allow_own_group(self) -> "ProcessSignalOperation":
        """Permit signalling the caller's own group or session (which would
        signal the caller too). Needs an elevated security context."""
        return self._with(allow_own_group=True)

    @property
    def signal_name(self) -> str:
        """The signal's name ("SIGTERM"; "SIGRTMIN+3" for real-time ones; "0"
        for the liveness probe), as the `signal_name` metadata has it."""
        return signal_name(self.signal)

    def required_permissions(self) -> Tuple[Permission, ...]:
        """PROCESS_MANAGE."""
        return (Permission.PROCESS_MANAGE,)

    def requires_elevated_privileges(self) -> bool:
        """True after with_allow_own_group(): signalling our own group or
        session needs an elevated context."""
        return self.allow_own_group

    def validate(self) -> None:
        """Check the shape: a pid in 1..2**31-1 (a pgid also not 1, init's
        group) and a signal this OS has (or 0). Raises InvalidOperation."""
        if self.target_group:
            check_pgid(self.pid)
        else:
            check_pid(self.pid)
        check_signal(self.signal)


class ProcessKillOperation(_Operation):
    """SIGKILL process `pid` (TerminateProcess on Windows)."""

    pid: int = 0
    operation_type: OperationType = OperationType.PROCESS_KILL

    def __init__(self, pid: int, **kwargs: Any):
        _init_fields(self, dict(kwargs, pid=pid), ())
        self.validate()

    def required_permissions(self) -> Tuple[Permission, ...]:
        """PROCESS_MANAGE."""
        return (Permission.PROCESS_MANAGE,)

    def validate(self) -> None:
        """Check the shape: a pid in 1..2**31-1. Raises InvalidOperation."""
        check_pid(self.pid)


if TYPE_CHECKING:
    Operation = Union[ProcessSpawnOperation, ProcessSignalOperation, ProcessKillOperation]
