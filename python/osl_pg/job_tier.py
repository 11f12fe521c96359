"""The Windows tier: a ProcessGroup whose members are a Job Object's.

A child is in its job before it runs an instruction and every process it
starts is in it too; without JOB_OBJECT_LIMIT_BREAKAWAY_OK (osl_pg never
sets it) no member can leave. So, unlike a process group, nothing escapes:
``escaped()`` is always empty. All calls go through the backend
(osl_pg._windows), which owns the job.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, List, Optional

from ._backend import backend
from .tiers import Escapee, ProcInfo, Tier

# Windows only (tiers.make_tier imports it there); type checkers then check
# it against the Windows backend.
assert sys.platform == "win32"


class JobTier(Tier):
    name = "job"

    def __init__(self, pgid: int, limits: Optional[Dict[str, str]] = None):
        super().__init__(pgid, None)
        self._limits = dict(limits or {})
        # The job close() releases, taken out by the one close() that runs
        # (list.pop is atomic): a second one releases nothing, and never a
        # later group that got the same id.
        self._job = [backend.group_job(pgid)]

    def pids(self) -> List[int]:
        return backend.group_pids(self.pgid)

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return pid in backend.group_pids(self.pgid)

    def escaped(self) -> List[Escapee]:
        return []

    def observe(self) -> Dict[int, ProcInfo]:
        """Nothing to track: no member can leave a job."""
        return {}

    def signal(self, sig: int) -> None:
        backend.signal_group(self.pgid, sig)

    def wait_exits(self, live: List[int], deadline: Optional[float], exits: object = None) -> None:
        backend.wait_exits(live, deadline, pgid=self.pgid)

    async def wait_exits_async(self, live: List[int], deadline: Optional[float], exits: object = None) -> None:
        await backend.wait_exits_async(live, deadline, pgid=self.pgid)

    @property
    def limits_applied(self) -> Dict[str, str]:
        return dict(self._limits)

    def limit_events(self) -> Dict[str, int]:
        return {}

    def close(self) -> None:
        """Forget the job; it is closed once empty and no call uses it,
        else kept open so its members live on (a detached or dropped
        group). Takes no lock: ProcessGroup.__del__ calls it."""
        try:
            job = self._job.pop()
        except IndexError:
            return
        backend.release_group(self.pgid, job)
