"""Audit: exactly one structured record per executed operation, on the
stdlib logger ``osl_pg.audit``.

Each record's ``audit`` attribute is a dict with: operation_id,
operation_type, executor, principal, target_pid, target_pgid, signal,
processes_affected, decision ("allowed"/"denied"), reason, outcome ("ok" or
"error"), errno, error, duration_ms, timestamp. The same operation_id is in
the operation, its ExecutionResult and its record.
"""
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    import logging

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
    """Filled in by the executor as the operation goes through its steps."""

    __slots__ = ("fields",)

    def __init__(self, operation_id: str, operation_type: str, executor: str, principal: str):
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
            "timestamp": time.time(),
        }

    def __setitem__(self, key: str, value: Any) -> None:
        self.fields[key] = value


def emit(record: AuditRecord) -> None:
    f = record.fields
    level = INFO if f["decision"] != "denied" else WARNING
    if _logger is None and "logging" not in sys.modules and (level < WARNING or _quiet_when_unhandled):
        return  # no handler can exist, and the last-resort one prints only WARNING+ (or is not wanted)
    logger = _get_logger()
    if not logger.isEnabledFor(INFO):
        return
    import logging
    last_resort = logging.lastResort
    if (not logger.filters and not logger.hasHandlers()
            and (last_resort is None or level < last_resort.level or _quiet_when_unhandled)):
        # Nobody would see it: no handler up to the root, and the last-resort
        # handler prints only WARNING and up. Building the LogRecord (frame
        # walk included) was ~4 us of every spawn (measured: osl-pg bench).
        return
    logger.log(level, "%s %s %s: %s", f["operation_type"], f["decision"], f["outcome"],
               f["reason"] or f["error"] or "", extra={"audit": dict(f)})


_handler_class: Optional[type] = None


def _json_lines_handler() -> type:
    """JsonLinesHandler, defined on first use (it subclasses logging.Handler,
    and logging is imported only when needed)."""
    global _handler_class
    if _handler_class is None:
        import logging

        class JsonLinesHandler(logging.Handler):
            """A logging handler that appends each audit record to `path`
            as one JSON object per line (keys sorted; flushed per record, so
            a crash loses nothing already logged). Records of other loggers
            (without audit fields) are ignored. Safe to share between
            threads. Opens `path` for appending at creation (OSError if it
            cannot)."""

            def __init__(self, path: str):
                super().__init__(INFO)
                self.path = path
                self._file = open(path, "a", encoding="utf-8")
                self._write_lock = threading.Lock()

            def emit(self, record: logging.LogRecord) -> None:
                """Write the audit fields of `record` as one JSON line;
                records without them are skipped."""
                data = getattr(record, "audit", None)
                if data is None:
                    return
                import json
                line = json.dumps(data, default=str, sort_keys=True)
                with self._write_lock:
                    self._file.write(line + "\n")
                    self._file.flush()

            def close(self) -> None:
                """Close the file and the handler (a second call does
                nothing). Remove the handler from its logger first: a
                record emitted after close() raises ValueError."""
                with self._write_lock:
                    if not self._file.closed:
                        self._file.close()
                super().close()

        JsonLinesHandler.__module__ = __name__
        JsonLinesHandler.__qualname__ = "JsonLinesHandler"
        _handler_class = JsonLinesHandler
    return _handler_class


def write_audit_log(path: str, target: "Optional[logging.Logger]" = None) -> Any:
    """One call to append every audit record to `path` as JSON lines.
    Returns the handler; ``logger.removeHandler(h); h.close()`` stops it."""
    handler = _json_lines_handler()(path)
    (target or _get_logger()).addHandler(handler)
    return handler
