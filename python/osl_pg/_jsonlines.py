"""osl_pg.JsonLinesHandler: its own module because it subclasses
logging.Handler, and `import osl_pg` must not import logging (a few ms);
osl_pg and osl_pg.audit import this module when it is first asked for."""
from __future__ import annotations

import logging
import threading

from .audit import INFO


class JsonLinesHandler(logging.Handler):
    """A logging handler that appends each audit record to `path` as one
    JSON object per line (keys sorted; flushed per record, so a crash loses
    nothing already logged). Records of other loggers (without audit
    fields) are ignored. Safe to share between threads. Opens `path` for
    appending at creation (OSError if it cannot)."""

    def __init__(self, path: str) -> None:
        super().__init__(INFO)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._write_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the audit fields of `record` as one JSON line; records
        without them are skipped."""
        data = getattr(record, "audit", None)
        if data is None:
            return
        import json
        line = json.dumps(data, default=str, sort_keys=True)
        with self._write_lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file and the handler (a second call does nothing).
        Remove the handler from its logger first: a record emitted after
        close() raises ValueError."""
        with self._write_lock:
            if not self._file.closed:
                self._file.close()
        super().close()


# Its public name (repr, pickling): where users find it.
JsonLinesHandler.__module__ = "osl_pg.audit"
