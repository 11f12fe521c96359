"""Who is asking: the security context an operation runs under."""
from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, Optional

from ._record import Value, field


def _current_user() -> str:
    """getpass.getuser()'s answer, without importing getpass (and termios
    with it: ~0.5 ms of import osl_pg, which makes the default context)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except Exception:  # no passwd entry (or no pwd: Windows): fall back to the uid
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


class SecurityContext(Value):
    """Who the caller is. `principal` names the caller for policy and audit
    (default: the current OS user's login name, else the uid). `elevated`
    lets a policy allow what it refuses to ordinary callers (signalling
    groups of other users, or the caller's own group); it grants nothing by
    itself, the OS still decides. `roles` is for policies of your own.
    Immutable."""

    principal: str = field(default_factory=_current_user)
    elevated: bool = False
    roles: FrozenSet[str] = frozenset()

    def with_elevated(self, elevated: bool = True) -> "SecurityContext":
        """A copy of this context with `elevated` set (the principal and
        roles kept)."""
        return SecurityContext(self.principal, elevated, self.roles)


class ExecutionContext(Value):
    """What an operation runs under: a SecurityContext, free-form string
    `metadata` for your policies and audit consumers (not compared), and
    when the context was made (`created_at`, time.time()). Every execute()
    takes one; omitted, it is the current OS user's (current()).
    Immutable."""

    security_context: SecurityContext = field(default_factory=SecurityContext)
    metadata: Dict[str, str] = field(default_factory=dict, compare=False)
    created_at: float = field(default_factory=time.time, compare=False)

    @property
    def principal(self) -> str:
        """The security context's principal: who the caller is."""
        return self.security_context.principal

    @classmethod
    def current(cls) -> "ExecutionContext":
        """The context of the current OS user (used when none is given)."""
        return _DEFAULT_CONTEXT


_DEFAULT_CONTEXT = ExecutionContext(SecurityContext())


def resolve_context(ctx: Optional[ExecutionContext]) -> ExecutionContext:
    return ctx if ctx is not None else _DEFAULT_CONTEXT
