"""Picks the platform backend once, at import (psutil's pattern)."""
import sys

if sys.platform == "win32":
    from . import _windows as backend  # noqa: F401
else:
    from . import _posix as backend  # noqa: F401
