"""osl_pg: spawn process trees and control or kill all of them.

Process groups and sessions on POSIX, Job Objects on Windows. See README.md.
"""
from .audit import write_audit_log
from .context import ExecutionContext, SecurityContext
from .errors import (CalledProcessError, CgroupPermissionError, CgroupUnavailable, ChildrenAutoReapedWarning, CommandNotFound,
                     InvalidOperation,
                     LimitUnavailable, NamespaceUnavailable, OslError, OslOSError, OslPermissionError,
                     OslTimeoutError, ProcessNotFound, SecurityViolation, TimeoutExpired, Unsupported)
from .executor import OSLFramework, ProcessExecutor, TargetFacts
from .group import Member, MemberOutcome, ProcessGroup, TerminateReport, set_child_subreaper
from .operations import (DEVNULL, INHERIT, PIPE, STDOUT, Inherit, JoinGroup, Limits, NewGroup, OperationType,
                         Permission, ProcessGroupConfig, ProcessKillOperation, ProcessSignalOperation,
                         ProcessSpawnOperation)
from .policy import AllowListPolicy, Decision, DefaultPolicy, SecurityPolicy
from .process import Process, WaitTimeout
from .result import ExecutionResult
from .tiers import Escapee
from .run import CompletedRun, Leftover, LeftoverProcessWarning, run, run_async
from .popen import Popen

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from ._jsonlines import JsonLinesHandler

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # JsonLinesHandler subclasses logging.Handler: made when first asked for,
    # so `import osl_pg` does not import logging.
    if name == "JsonLinesHandler":
        from .audit import _json_lines_handler
        return _json_lines_handler()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AllowListPolicy", "CommandNotFound", "DEVNULL", "Decision", "DefaultPolicy", "ExecutionContext",
    "ExecutionResult", "INHERIT", "Inherit", "InvalidOperation", "JoinGroup", "JsonLinesHandler", "Member",
    "MemberOutcome", "NewGroup", "OSLFramework", "OperationType", "OslError", "OslOSError", "OslPermissionError",
    "OslTimeoutError", "PIPE", "Permission", "Process", "ProcessExecutor", "ProcessGroup", "ProcessGroupConfig",
    "ProcessKillOperation", "ProcessNotFound", "ProcessSignalOperation", "ProcessSpawnOperation", "STDOUT",
    "SecurityContext", "SecurityPolicy", "SecurityViolation", "TargetFacts", "TerminateReport", "Unsupported",
    "WaitTimeout", "set_child_subreaper", "write_audit_log",
    "CgroupPermissionError", "CgroupUnavailable", "Escapee", "LimitUnavailable", "Limits", "NamespaceUnavailable",
    "CompletedRun", "Leftover", "LeftoverProcessWarning", "Popen", "run", "run_async", "ChildrenAutoReapedWarning",
    "CalledProcessError", "TimeoutExpired",
]
