"""Timeouts and graces as subprocess takes them, checked before anything
is spawned or signalled: None or +inf mean no limit, a NaN or a negative
value is refused (ValueError), a non-number is a TypeError."""
from __future__ import annotations

import math
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Optional

from .errors import InvalidOperation, InvalidOperationType


def _is_real(value: Any) -> bool:
    import numbers  # only for the rare Fraction or Decimal: ~0.3 ms of import osl_pg
    return isinstance(value, numbers.Real)


def _seconds(value: Any, what: str) -> float:
    # float and int first: the numbers.Real ABC check costs ~1 us, twice
    # per run() (its timeout and grace).
    if type(value) is not float and type(value) is not int and (
            isinstance(value, bool) or not _is_real(value)):
        raise InvalidOperationType(f"{what} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise InvalidOperation(f"{what} must be a non-negative number of seconds or inf, not {value!r}")
    return seconds


def check_timeout(value: Any, what: str = "timeout") -> Optional[float]:
    """`value` as the waits take it: None for no limit (None or inf)."""
    if value is None:
        return None
    seconds = _seconds(value, what)
    return None if math.isinf(seconds) else seconds


def check_grace(value: Any, what: str = "grace") -> float:
    """A grace period: inf waits for as long as the members take."""
    return _seconds(value, what)


def poll_ms(deadline: Optional[float]) -> Optional[int]:
    """poll()'s timeout until `deadline` (a time.monotonic() value): None
    for none (None or inf, a grace of float("inf")), at most INT_MAX ms
    (poll() refuses more; the caller polls again)."""
    if deadline is None or math.isinf(deadline):
        return None
    return min(int((deadline - time.monotonic()) * 1000) + 1, 2**31 - 1)
