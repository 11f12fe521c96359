"""osl_pg.JsonLinesHandler: its own module because it subclasses
logging.Handler, and `import osl_pg` must not import logging (a few ms);
osl_pg and osl_pg.audit import this module when it is first asked for."""
from __future__ import annotations

import logging
import threading

from .audit import INFO


class JsonLinesHandler(logging.Handler):
    """Writes each audit record as one JSON object per line."""

    def __init__(self, path: str) -> None:
        super().__init__(INFO)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._write_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, "audit", None)
        if data is None:
            return
        import json
        line = json.dumps(data, default=str, sort_keys=True)
        with self._write_lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._write_lock:
            if not self._file.closed:
                self._file.close()
        super().close()


# Its public name (repr, pickling): where users find it.
JsonLinesHandler.__module__ = "osl_pg.audit"
