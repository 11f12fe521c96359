"""Security policies: they see the operation, the caller's context and the
facts about the target, and return allow or deny-with-reason.

A denial becomes SecurityViolation (a PermissionError), which is final:
nothing in osl_pg retries it. Policies never depend on logging: switching the
audit logger off changes what is recorded, never what is allowed.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Protocol, Sequence
else:
    # A plain base class at run time (no isinstance() checks against it
    # anywhere); type checkers see the Protocol.
    Protocol = object

from ._record import Value
from .context import ExecutionContext
from .operations import (JoinGroup, Permission, ProcessKillOperation, ProcessSignalOperation,
                         ProcessSpawnOperation)

if TYPE_CHECKING:
    from .executor import TargetFacts
    from .operations import Operation
    from .group import Member


class Decision(Value):
    """A policy's answer: `allowed`, and for a denial the `reason` (the
    SecurityViolation's message) and the `policy` that gave it. Immutable;
    make one with Decision.allow() or Decision.deny()."""

    allowed: bool
    reason: str = ""
    policy: str = ""

    @classmethod
    def allow(cls, policy: str = "") -> "Decision":
        """An allowing Decision from `policy` (one shared instance per
        policy name: decisions are immutable)."""
        hit = _ALLOWED.get(policy)  # immutable: one per policy name, not one per operation
        if hit is None:
            hit = _ALLOWED[policy] = cls(True, "", policy)
        return hit

    @classmethod
    def deny(cls, reason: str, policy: str = "") -> "Decision":
        """A denying Decision from `policy`; `reason` says why, in words a
        caller can act on (the executor raises it as SecurityViolation)."""
        return cls(False, reason, policy)


_ALLOWED: Dict[str, Decision] = {}


class SecurityPolicy(Protocol):
    """What a policy given to ProcessExecutor(policies=[...]) provides: a
    `name` (recorded in audit records and denials) and evaluate(). Any
    object with both will do; every policy must allow an operation for it
    to run."""

    name: str

    def evaluate(self, op: Operation, ctx: ExecutionContext, target: "TargetFacts") -> Decision:
        """Decide on `op` for the caller in `ctx`, given the facts the
        executor gathered about its target (`target`: group ownership,
        members' uids, whether it is the caller's own group). Return
        Decision.allow() or Decision.deny(reason); never raise for a
        refusal. Called on every execute(): keep it cheap."""
        ...


class DefaultPolicy:
    """Safe by default.

    - Spawning in the caller's group, a new group or a new session: allowed.
    - JoinGroup(pgid): allowed into a group this executor created, or one whose
      members all run as the caller's uid; otherwise only when elevated.
    - Signalling a group: allowed when this executor created it, or when every
      current member runs as the caller's uid; a group with a process of
      another user needs an elevated context. The caller's own group and its
      session's group are refused unless the operation says
      ``with_allow_own_group()`` *and* the context is elevated (it would
      signal the caller itself). pgid <= 1 never gets this far (operation
      shape check).
    - Signalling or killing one process: pid 1 and processes of another user
      need an elevated context.
    """

    name = "default"

    def __init__(self, uid: Optional[int] = None):
        self._uid = uid

    @property
    def uid(self) -> int:
        """The uid whose processes count as the caller's: the one given to
        the constructor, else this process's effective uid (0 on
        Windows, which has no uids)."""
        if self._uid is not None:
            return self._uid
        return os.geteuid() if hasattr(os, "geteuid") else 0

    def evaluate(self, op: object, ctx: ExecutionContext, target: "TargetFacts") -> Decision:
        """Apply the rules in the class docstring to `op`. Returns a
        Decision; a denial's reason names the processes of other users
        (their pids and uids) or the rule that refused. An operation type
        it does not know is denied."""
        elevated = ctx.security_context.elevated
        if isinstance(op, ProcessSpawnOperation):
            if isinstance(op.process_group, JoinGroup) and not target.owned_group and not elevated:
                foreign = target.foreign_members(self.uid)
                if foreign:
                    return self._deny(f"cannot join process group {op.process_group.pgid}: it has processes of "
                                      f"other users ({_pids(foreign)}) and was not created by this program")
            return Decision.allow(self.name)
        if isinstance(op, ProcessSignalOperation) and op.target_group:
            pgid = op.pid
            if target.is_own_group_or_session:
                if not (op.allow_own_group and elevated):
                    return self._deny(f"process group {pgid} holds this process (own group or session); "
                                      "use with_allow_own_group() with an elevated context")
                return Decision.allow(self.name)
            if target.owned_group or elevated:
                return Decision.allow(self.name)
            foreign = target.foreign_members(self.uid)
            if foreign:
                return self._deny(f"process group {pgid} has processes of other users ({_pids(foreign)}); "
                                  "an elevated context is needed")
            return Decision.allow(self.name)
        if isinstance(op, (ProcessSignalOperation, ProcessKillOperation)):
            if elevated or target.own_child:
                return Decision.allow(self.name)
            if op.pid == 1:
                return self._deny("pid 1 (init) needs an elevated context")
            owner = target.process_uid
            if owner is not None and owner != self.uid:
                return self._deny(f"process {op.pid} belongs to uid {owner}; an elevated context is needed")
            return Decision.allow(self.name)
        return self._deny(f"unknown operation {type(op).__name__}")

    def _deny(self, reason: str) -> Decision:
        return Decision.deny(reason, self.name)


def _pids(members: Sequence[Member]) -> str:
    shown = ", ".join(f"pid {m.pid} uid {m.uid}" for m in members[:5])
    return shown + (f" and {len(members) - 5} more" if len(members) > 5 else "")


class AllowListPolicy:
    """Allow or deny by principal and permission.

    ``allow`` maps a principal to the permissions it may use (``"*"`` as a
    principal matches everyone); principals not listed are denied when an
    allow map is given. ``deny`` maps principals to permissions always refused.
    """

    name = "allow-list"

    def __init__(self, allow: Optional[Mapping[str, Iterable[Permission]]] = None,
                 deny: Optional[Mapping[str, Iterable[Permission]]] = None):
        self.allow: Optional[Dict[str, FrozenSet[Permission]]] = (
            {k: frozenset(Permission(p) for p in v) for k, v in allow.items()} if allow is not None else None)
        self.deny: Dict[str, FrozenSet[Permission]] = {k: frozenset(Permission(p) for p in v) for k, v in (deny or {}).items()}

    def evaluate(self, op: Operation, ctx: ExecutionContext, target: "TargetFacts") -> Decision:
        """Deny when any permission `op.required_permissions()` lists is in
        the deny map for the context's principal (or "*"), or, when an allow
        map was given, is not granted there; else allow. The facts about
        the target are not used."""
        who = ctx.principal
        needed = op.required_permissions()
        refused = self.deny.get(who, frozenset()) | self.deny.get("*", frozenset())
        for perm in needed:
            if perm in refused:
                return Decision.deny(f"principal {who!r} is denied {perm.value}", self.name)
        if self.allow is not None:
            granted = self.allow.get(who, frozenset()) | self.allow.get("*", frozenset())
            for perm in needed:
                if perm not in granted:
                    return Decision.deny(f"principal {who!r} is not granted {perm.value}", self.name)
        return Decision.allow(self.name)
