"""Audit: exactly one structured record per executed operation, on the
stdlib logger ``osl_pg.audit``.

Each record's ``audit`` attribute is a dict with: operation_id,
operation_type, executor, principal, target_pid, target_pgid, signal,
processes_affected, decision ("allowed"/"denied"), reason, outcome ("ok" or
"error"), errno, error, duration_ms, timestamp. The same operation_id is in
the operation, its ExecutionResult and its record.
"""
from __future__ import annotations

import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    import logging
    from typing import Any, Dict, Optional

    from ._jsonlines import JsonLinesHandler

INFO, WARNING = 20, 30  # logging's levels, without importing it

_logger: "Optional[logging.Logger]" = None


def _get_logger() -> "logging.Logger":
    """The logger, made on first use: importing logging costs a few ms of
    every `import osl_pg`, and a program that never imported it cannot have
    attached a handler."""
    global _logger
    if _logger is None:
        import logging
        logger = logging.getLogger("osl_pg.audit")
        # INFO so records reach handlers an application attaches; with none
        # attached nothing is printed (the last-resort handler is WARNING+).
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        _logger = logger
    return _logger


_quiet_when_unhandled = False


def quiet_when_unhandled() -> None:
    """Drop a record no handler would take instead of letting logging's
    last-resort handler print it (a denial is a WARNING): for a program
    that reports refusals itself, such as osl-pg. Costs no logging import."""
    global _quiet_when_unhandled
    _quiet_when_unhandled = True


if "logging" in sys.modules:  # already paid for: set up now, as if imported here
    _get_logger()


def __getattr__(name: str) -> Any:
    if name == "logger":  # osl_pg.audit.logger, as before
        return _get_logger()
    if name == "JsonLinesHandler":
        return _json_lines_handler()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AuditRecord:
    """One operation's record: its fields in the order the module docstring
    lists them."""

    __slots__ = ("fields",)

    def __init__(self, operation_id: str, operation_type: str, executor: str, principal: str, timestamp: float):
        self.fields: Dict[str, Any] = {
            "operation_id": operation_id,
            "operation_type": operation_type,
            "executor": executor,
            "principal": principal,
            "target_pid": None,
            "target_pgid": None,
            "signal": None,
            "processes_affected": None,
            "decision": None,
            "reason": None,
            "outcome": None,
            "errno": None,
            "error": None,
            "duration_ms": None,
            "timestamp": timestamp,
        }

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value


def listener(denied: bool) -> "Optional[logging.Logger]":
    """The logger when a record (a denial's is a WARNING, others INFO) would
    reach a handler or filter; None when nobody would see it, so that the
    executor builds no record at all (the usual case: no logging set up)."""
    level = WARNING if denied else INFO
    if _logger is None and "logging" not in sys.modules and (level < WARNING or _quiet_when_unhandled):
        return None  # no handler can exist, and the last-resort one prints only WARNING+ (or is not wanted)
    logger = _get_logger()
    if not logger.isEnabledFor(INFO):
        return None
    import logging
    last_resort = logging.lastResort
    if (not logger.filters and not logger.hasHandlers()
            and (last_resort is None or level < last_resort.level or _quiet_when_unhandled)):
        # Nobody would see it: no handler up to the root, and the last-resort
        # handler prints only WARNING and up. Building the LogRecord (frame
        # walk included) was ~4 us of every spawn (measured: osl-pg bench).
        return None
    return logger


def emit(record: AuditRecord, logger: "logging.Logger") -> None:
    """Log `record` to `logger`, which listener() returned for it."""
    f = record.fields
    logger.log(WARNING if f["decision"] == "denied" else INFO, "%s %s %s: %s", f["operation_type"], f["decision"], f["outcome"],
               f["reason"] or f["error"] or "", extra={"audit": dict(f)})


def _json_lines_handler() -> type[JsonLinesHandler]:
    """JsonLinesHandler, imported on first use (it subclasses
    logging.Handler, and logging is imported only when needed)."""
    from ._jsonlines import JsonLinesHandler
    return JsonLinesHandler


def write_audit_log(path: str, target: Optional[logging.Logger] = None) -> JsonLinesHandler:
    """One call to append every audit record to `path` as JSON lines.
    Returns the handler; ``logger.removeHandler(h); h.close()`` stops it."""
    handler = _json_lines_handler()(path)
    (target or _get_logger()).addHandler(handler)
    return handler
