"""The executor: every operation goes validate -> policy -> backend -> audit,
in that order, with the audit record written in ``finally``. No flag skips a
step; the audit logger's level decides what is written, never what runs.
"""
from __future__ import annotations

import errno
import os
import sys
import time
import warnings

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence

    from .operations import Operation

from . import audit, watchdog
from ._backend import backend
from .context import ExecutionContext, resolve_context
from .errors import (ChildrenAutoReapedWarning, InvalidOperation, LimitUnavailable, NamespaceUnavailable,
                     ProcessNotFound, SecurityViolation, caller_stacklevel)
from .group import Member, ProcessGroup, owned_group, scan_group, sweep_dropped
from .operations import JoinGroup, ProcessKillOperation, ProcessSignalOperation, ProcessSpawnOperation, signal_name
from .policy import Decision, DefaultPolicy, SecurityPolicy
from .process import Process, child_by_pid, reaped_and_reused, sweep_abandoned
from .result import ExecutionResult
from .tiers import ExitWatch, make_tier

SIGKILL = 9
_LIMITS_IN_SPAWN = getattr(backend, "LIMITS_IN_SPAWN", False)  # Windows: the job applies op.limits
_GROUPS_DIE_WITH_PARENT = getattr(backend, "GROUPS_DIE_WITH_PARENT", False)
_HAS_PIDNS = sys.platform.startswith("linux")


class TargetFacts:
    """What policies may want to know about an operation's target, looked
    up lazily and at most once per execution (the handler reuses it)."""

    def __init__(self, op: Operation, executor: str = ""):
        self.op = op
        self.executor = executor
        self._members: Optional[List[Member]] = None

    @property
    def pgid(self) -> Optional[int]:
        """The process group the operation targets: the group a spawn
        joins (JoinGroup), a group signal's pgid; None otherwise."""
        op = self.op
        if isinstance(op, ProcessSpawnOperation):
            return op.process_group.pgid if isinstance(op.process_group, JoinGroup) else None
        if isinstance(op, ProcessSignalOperation) and op.target_group:
            return op.pid
        return None

    @property
    def owned_group(self) -> bool:
        """True when the target group is open and was created by this executor."""
        pgid = self.pgid
        group = owned_group(pgid) if pgid is not None else None
        return group is not None and group.owner == self.executor

    @property
    def members(self) -> List[Member]:
        """The target group's members now (pid, name, uid...), read from
        the process table on first access and kept for the rest of this
        execution; empty when the operation targets no group."""
        if self._members is None:
            self._members = scan_group(self.pgid) if self.pgid is not None else []
        return self._members

    def running_members(self) -> int:
        """How many members run now (zombies not counted). From the member
        records when a policy already read them; else membership by getpgid
        and liveness by pidfd, without reading each member's /proc files."""
        if self._members is not None:
            return sum(1 for m in self._members if not m.zombie)
        if self.pgid is None:
            return 0
        group = owned_group(self.pgid)
        if group is not None:
            return group.running_count()
        with ExitWatch() as exits:
            return len(exits.live(backend.group_pids(self.pgid)))

    def foreign_members(self, uid: int) -> List[Member]:
        """The target group's members that run as a user other than `uid`
        (members whose uid could not be read are not counted)."""
        return [m for m in self.members if m.uid is not None and m.uid != uid]

    @property
    def is_own_group_or_session(self) -> bool:
        """True when the target group is this process's own process group
        or its session's (signalling it would signal the caller). Always
        False on Windows."""
        pgid = self.pgid
        if pgid is None or not hasattr(os, "getpgrp"):
            return False
        return pgid in (os.getpgrp(), os.getsid(0))

    @property
    def own_child(self) -> bool:
        """True when the operation's pid is a child this process spawned
        and has not reaped (so the pid cannot have been reused)."""
        proc = child_by_pid(getattr(self.op, "pid", 0))
        return proc is not None and not proc.reaped

    @property
    def process_uid(self) -> Optional[int]:
        """The real uid of the process the operation targets (by its pid),
        or None when there is none or it cannot be read (read with psutil,
        imported only here)."""
        import psutil
        try:
            # Only signal and kill operations (their pid) get this far; uids()
            # is POSIX-only (AttributeError on Windows).
            uid: int = psutil.Process(getattr(self.op, "pid")).uids().real
            return uid
        except (psutil.Error, AttributeError):
            return None


class ProcessExecutor:
    """Executes operations. ``policies`` all have to allow an operation
    (the first denial wins); the default is ``[DefaultPolicy()]``."""

    def __init__(self, name: str = "osl-executor", policies: Optional[Sequence[SecurityPolicy]] = None):
        self.name = name
        self.policies: List[SecurityPolicy] = list(policies) if policies is not None else [DefaultPolicy()]
        self._handlers: Dict[type, Callable[..., ExecutionResult]] = {
            ProcessSpawnOperation: self._spawn,
            ProcessSignalOperation: self._signal,
            ProcessKillOperation: self._kill,
        }

    def __repr__(self) -> str:
        return f"<ProcessExecutor {self.name!r}>"

    # -- the template --------------------------------------------------------------
    def execute(self, op: Operation, ctx: Optional[ExecutionContext] = None) -> ExecutionResult:
        """Run one operation under `ctx` (default: the current OS user):
        validate its shape, ask every policy, call the backend, and write an
        audit record (logger osl_pg.audit) whatever happened.

        Returns an ExecutionResult: for a spawn its `process` handle, its
        `group` (a ProcessGroup when the child leads a new group or session)
        and the spawn metadata; for a signal or kill the target and
        `processes_affected`.

        Raises InvalidOperation (a ValueError) for a malformed operation or
        one this executor does not run, SecurityViolation (a
        PermissionError) when a policy refuses, CommandNotFound (a
        FileNotFoundError) for a missing command or working directory,
        ProcessNotFound (a ProcessLookupError) for a gone, released or
        reused target, OslPermissionError for EPERM/EACCES from the OS,
        OslOSError for other OS failures (a full fd table, say),
        Unsupported (a NotImplementedError) for what the platform lacks. A
        spawn while SIGCHLD is ignored warns ChildrenAutoReapedWarning. If
        the child exists but its group handle cannot be made, the child is
        ended before the error propagates."""
        ctx = resolve_context(ctx)
        # What the steps find, for the audit record. The record itself is
        # built only if a handler would take it (audit.listener): most
        # programs set up no logging, and building it before the spawn was
        # ~4 us of run()'s path.
        steps: Dict[str, Any] = {}
        start = time.perf_counter()
        try:
            # 1. shape
            handler = self._handlers.get(type(op))
            if handler is None:
                raise InvalidOperation(f"{type(op).__name__} is not an operation this executor runs")
            op.validate()
            facts = TargetFacts(op, self.name)
            # 2. policy
            decision = self.authorize(op, ctx, facts)
            steps["decision"] = "allowed" if decision.allowed else "denied"
            steps["reason"] = decision.reason or None
            if not decision.allowed:
                raise SecurityViolation(decision.reason, decision.policy)
            # 3. backend
            result = handler(op, ctx, facts, steps)
            elapsed = time.perf_counter() - start
            result.started_at = time.time() - elapsed
            result.duration = elapsed
            steps["outcome"] = "ok"
            return result
        except BaseException as e:
            steps["outcome"] = "error"
            steps["errno"] = getattr(e, "errno", None)
            steps["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            # 4. audit
            elapsed = time.perf_counter() - start
            logger = audit.listener(steps.get("decision") == "denied")
            if logger is not None:
                record = audit.AuditRecord(getattr(op, "operation_id", "?"), _op_type(op), self.name,
                                           ctx.principal, time.time() - elapsed)
                _describe_target(op, record)
                record.fields.update(steps)
                record.fields["duration_ms"] = round(elapsed * 1000, 3)
                audit.emit(record, logger)

    async def execute_async(self, op: Operation, ctx: Optional[ExecutionContext] = None) -> ExecutionResult:
        """execute() for asyncio: the same steps, result and errors. Nothing
        in it blocks (a spawn returns as soon as the child exists), so it
        runs inline on the loop's thread; await the handles' async
        methods (wait_async, terminate_async...) to wait."""
        # Every step is non-blocking (a spawn returns as soon as the child
        # exists), so the coroutine runs it inline: no thread hop.
        return self.execute(op, ctx)

    def authorize(self, op: Operation, ctx: ExecutionContext, facts: Optional[TargetFacts] = None) -> Decision:
        """The policy step of execute() alone: the Decision for `op` under
        `ctx`, without running it. An operation that requires elevated
        privileges is denied to a context that is not elevated; otherwise
        the first policy that denies decides, and if none does the result
        allows. Raises nothing for a refusal (look at `.allowed`)."""
        facts = facts or TargetFacts(op, self.name)
        if op.requires_elevated_privileges() and not ctx.security_context.elevated:
            return Decision.deny(f"{op.operation_type.value} as requested needs an elevated context", "executor")
        for policy in self.policies:
            decision = policy.evaluate(op, ctx, facts)
            if not decision.allowed:
                return decision
        return Decision.allow()

    # -- handlers ---------------------------------------------------------------------
    def _spawn(self, op: ProcessSpawnOperation, ctx: ExecutionContext, facts: TargetFacts,
               steps: Dict[str, Any]) -> ExecutionResult:
        # The cgroups (containment, limits) exist before the child does: it
        # joins them before it executes (osl_pg.cgroup).
        # A backend with LIMITS_IN_SPAWN (Windows: the job) applies op.limits itself.
        limits = None if _LIMITS_IN_SPAWN else op.limits
        # pid_namespace: its init ends the namespace when we die (osl_pg.pidns).
        watched = op.kill_on_parent_death and op.makes_group and not _GROUPS_DIE_WITH_PARENT \
            and op.containment != "pid_namespace"
        if watched:
            # Before the child exists: a watchdog that cannot start (no fd
            # for its pipe) then leaves nothing to kill with fds still short.
            watchdog.ready()
        cgroups = None
        try:
            if op.containment is not None or limits is not None:
                cgroups = _prepare_cgroups(op, limits)
            fds = cgroups.open_join_fds() if cgroups is not None else ()
            # best_available's second choice, when no cgroup could be made
            # for it ("cgroup" itself raises then).
            no_cgroup = cgroups is None or cgroups.v2 is None
            if op.containment == "pid_namespace" or (op.containment == "best_available" and no_cgroup):
                spawned = _spawn_namespaced(op, fds)
            else:
                spawned = backend.spawn(op, fds)
        except BaseException:
            if cgroups is not None:
                cgroups.remove()
            if watched:
                watchdog.release_if_idle()
            raise
        finally:
            if cgroups is not None:
                cgroups.close_join_fds()
            # After the spawn, while the child execs (this work is hidden
            # behind it), not before: neither sweep blocks or raises.
            sweep_abandoned()
            sweep_dropped()
        argv = (op.command, *op.args)
        proc = Process(spawned.pid, argv, spawned.stdin, spawned.stdout, spawned.stderr)
        if backend.children_autoreaped():  # one sigaction() read, ~0.3 us
            warnings.warn(ChildrenAutoReapedWarning(
                f"SIGCHLD is ignored in this process: the kernel reaps {op.command!r} (pid {spawned.pid}) itself, "
                "so its exit status will read as 0 and its pid (and a group's pgid) can be reused while our "
                "handle is open; restore it with signal.signal(signal.SIGCHLD, signal.SIG_DFL)"),
                stacklevel=caller_stacklevel())
        pgid = spawned.pgid if spawned.pgid is not None else backend.own_pgid()
        group = None
        try:
            if op.makes_group:
                group = ProcessGroup(pgid, proc, owner=self.name, strategy=make_tier(
                    pgid, op.detach_from_terminal, cgroups, contained=op.containment is not None,
                    init_status_fd=getattr(spawned, "init_status_fd", None), leader=proc))
                if watched:
                    group._kill_with_parent()
        except BaseException:
            # The child exists but the caller gets no handle for it: end it
            # rather than leave it running unowned.
            _end_unowned(proc, group, cgroups)
            raise
        steps["target_pid"] = spawned.pid
        steps["target_pgid"] = pgid
        pid, name = spawned.pid, self.name

        def metadata() -> Dict[str, str]:  # built when first read: not on run()'s path
            return {
                "operation_type": op_type,
                "operation_id": op.operation_id,
                "pid": str(pid),
                "pgid": str(pgid),
                "is_group_leader": "true" if pgid == pid else "false",
                "command": op.command,
                "args": " ".join(_quote(a) for a in op.args),
                "executor": name,
                "user": ctx.principal,
                **_containment_metadata(group),
            }
        op_type = _op_type(op)
        return ExecutionResult(op.operation_id, op_type, metadata, process=proc, group=group)

    def _signal(self, op: ProcessSignalOperation, ctx: ExecutionContext, facts: TargetFacts,
                steps: Dict[str, Any]) -> ExecutionResult:
        meta = {
            "operation_type": op.operation_type.value,
            "operation_id": op.operation_id,
            "signal": str(op.signal),
            "signal_name": op.signal_name,
            "executor": self.name,
            "user": ctx.principal,
        }
        if op.target_group:
            # Best effort: the members running when the signal was sent;
            # a member forked in between is signalled but not counted.
            affected = facts.running_members()
            group = owned_group(op.pid)
            if group is not None:
                group.signal(op.signal)  # refuses a released (reusable) pgid
            elif reaped_and_reused(op.pid):
                raise ProcessNotFound(errno.ESRCH, f"process group {op.pid} was released by this program and "
                                                   "its number now belongs to another process: not signalled")
            else:
                backend.signal_group(op.pid, op.signal)
            meta["target_pgid"] = str(op.pid)
        else:
            _signal_one(op.pid, op.signal)
            affected = 1
            meta["target_pid"] = str(op.pid)
        meta["processes_affected"] = str(affected)
        steps["processes_affected"] = affected
        return ExecutionResult(op.operation_id, op.operation_type.value, meta)

    def _kill(self, op: ProcessKillOperation, ctx: ExecutionContext, facts: TargetFacts,
              steps: Dict[str, Any]) -> ExecutionResult:
        _signal_one(op.pid, SIGKILL)
        steps["processes_affected"] = 1
        return ExecutionResult(op.operation_id, op.operation_type.value, {
            "operation_type": op.operation_type.value,
            "operation_id": op.operation_id,
            "target_pid": str(op.pid),
            "signal": str(SIGKILL),
            "signal_name": signal_name(SIGKILL),
            "processes_affected": "1",
            "executor": self.name,
            "user": ctx.principal,
        })


def _prepare_cgroups(op: ProcessSpawnOperation, limits: Any) -> Any:
    """The CgroupSet of a spawn (osl_pg.cgroup.prepare). For pid_namespace
    it holds only the limits; a limit no cgroup here can apply is refused
    with LimitUnavailable saying why, not emulated with rlimits (those are
    per process, not a total for the group)."""
    from . import cgroup  # imported when first needed: most spawns never use it
    if op.containment != "pid_namespace":
        return cgroup.prepare(op.containment, limits)
    try:
        return cgroup.prepare(None, limits)
    except (PermissionError, NotImplementedError) as e:  # LimitUnavailable, CgroupPermissionError...
        raise LimitUnavailable(f"with_limits in the pid_namespace tier needs a cgroup this process may create, "
                               f"and there is none ({e}); rlimits would limit each process, not the group, "
                               "so no limit is applied") from e


# The pid_namespace tier was refused in this process (best_available then
# goes straight to the process group); the kernel's answer does not change.
_namespaces_refused: List[BaseException] = []


def _spawn_namespaced(op: ProcessSpawnOperation, fds: Sequence[int]) -> Any:
    """The spawn of "pid_namespace", and of "best_available" without a
    cgroup: in new user + PID namespaces (osl_pg.pidns); best_available
    falls back to the process group where they are refused."""
    if op.containment == "best_available" and (_namespaces_refused or not _HAS_PIDNS):
        return backend.spawn(op, fds)
    if not _HAS_PIDNS:
        raise NamespaceUnavailable(errno.ENOSYS, "the pid_namespace tier needs Linux's user and PID namespaces")
    try:
        return backend.spawn(op, fds, pid_namespace=True)
    except NamespaceUnavailable as e:
        if op.containment != "best_available":
            raise
        _namespaces_refused.append(e)
        return backend.spawn(op, fds)


def _containment_metadata(group: Optional[ProcessGroup]) -> Dict[str, str]:
    """"containment": the tier the group got (process_group, session,
    cgroup); "limits": each limit and its mechanism, e.g.
    "max_processes=cgroup1:pids,max_memory=cgroup2:memory"."""
    if group is None:
        return {}
    meta = {"containment": group.tier}
    if group.limits_applied:
        meta["limits"] = ",".join(f"{k}={v}" for k, v in sorted(group.limits_applied.items()))
    return meta


def _end_unowned(proc: Process, group: Optional[ProcessGroup], cgroups: Any) -> None:
    try:
        if group is not None:
            group.close()  # kills and waits for the whole group
            return
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        if cgroups is not None:
            cgroups.remove()
    except Exception:  # keep the original error
        pass


def _signal_one(pid: int, sig: int) -> None:
    """A child we spawned is signalled through its handle, which refuses
    once it has been reaped (the pid may belong to someone else by then)."""
    proc = child_by_pid(pid)
    if proc is not None:
        proc.send_signal(sig)
    elif reaped_and_reused(pid):
        raise ProcessNotFound(errno.ESRCH, f"process {pid} was spawned and reaped by this program and its number "
                                           "now belongs to another process: not signalled")
    else:
        backend.kill(pid, sig)


def _describe_target(op: Operation, record: audit.AuditRecord) -> None:
    if isinstance(op, ProcessSignalOperation):
        record.fields["target_pgid" if op.target_group else "target_pid"] = op.pid
        record.fields["signal"] = op.signal
    elif isinstance(op, ProcessKillOperation):
        record.fields["target_pid"] = op.pid
        record.fields["signal"] = SIGKILL
    elif isinstance(op, ProcessSpawnOperation) and isinstance(op.process_group, JoinGroup):
        record.fields["target_pgid"] = op.process_group.pgid


def _op_type(op: object) -> str:
    """The operation type's text: the enum member's _value_ attribute (its
    .value is a Python property call, twice per operation on run()'s path).
    Per operation, not per class: a signal operation may target a group."""
    kind = getattr(op, "operation_type", None)
    return str(getattr(kind, "_value_", None) or type(op).__name__)


def _quote(a: str) -> str:
    import shlex
    return shlex.quote(a)


class OSLFramework:
    """A facade owning one executor and one context, so that callers pass
    only operations. Each method is ProcessExecutor.execute() (or
    execute_async()) with that context, with its results and errors."""

    def __init__(self, executor: Optional[ProcessExecutor] = None, context: Optional[ExecutionContext] = None):
        self.executor: ProcessExecutor = executor or ProcessExecutor("osl-framework")
        self.context: ExecutionContext = resolve_context(context)

    def execute(self, op: Operation) -> ExecutionResult:
        """Execute any operation with this framework's executor and context."""
        return self.executor.execute(op, self.context)

    def spawn(self, op: ProcessSpawnOperation) -> ExecutionResult:
        """Execute a spawn operation; the result carries its process and,
        for a new group or session, its ProcessGroup."""
        return self.executor.execute(op, self.context)

    def signal_process_group(self, pgid: int, sig: int) -> ExecutionResult:
        """Send `sig` to every member of group `pgid`, after the policy
        checks (ProcessSignalOperation.signal_group). Raises
        ProcessLookupError for a group that is gone or whose number this
        program released and another process now has."""
        return self.executor.execute(ProcessSignalOperation.signal_group(pgid, sig), self.context)

    async def spawn_async(self, op: ProcessSpawnOperation) -> ExecutionResult:
        """spawn() for asyncio."""
        return await self.executor.execute_async(op, self.context)

    async def signal_process_group_async(self, pgid: int, sig: int) -> ExecutionResult:
        """signal_process_group() for asyncio."""
        return await self.executor.execute_async(ProcessSignalOperation.signal_group(pgid, sig), self.context)
