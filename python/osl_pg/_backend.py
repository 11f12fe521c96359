"""Picks the platform backend once, at import (psutil's pattern)."""
from __future__ import annotations

import sys

__all__ = ["backend"]

if sys.platform == "win32":
    from . import _windows as backend
else:
    from . import _posix as backend
