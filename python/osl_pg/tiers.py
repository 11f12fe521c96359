"""Containment tiers: how a ProcessGroup finds, signals, kills and waits for
its members. The handle delegates to one of these strategies:

- ``process_group`` / ``session`` (PgidTier): members are the processes whose
  pgid is the group's. Advisory: a member that calls setsid() or setpgid()
  leaves, and group signals miss it from then on; ``escaped()`` reports such
  processes (best effort, see DescendantTracker).
- ``cgroup`` (CgroupTier, Linux): members are the processes in the group's
  cgroup v2 directory, which none of them can leave. Kill is one write to
  cgroup.kill; "gone" is cgroup.events saying ``populated 0``.

Both may carry a CgroupSet for per-group limits (osl_pg.cgroup).
"""
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set

import psutil

from . import cgroup as _cg
from ._backend import backend
from .errors import Unsupported

SIGKILL = 9
SIGCONT = int(getattr(signal, "SIGCONT", 18))
_HAS_PGID = hasattr(os, "getpgid")


# --------------------------------------------------------------------------
# the process table, in one pass


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    pgid: int
    sid: int
    start: float  # start time: tells a process from a later one with its pid
    zombie: bool
    name: str


def proc_table() -> Dict[int, ProcInfo]:
    """Every process with its parent, group, session and start time. On
    Linux one read of /proc/PID/stat each (about 12 us per process here);
    elsewhere psutil."""
    if os.path.isdir("/proc/self/task"):
        return _proc_table_linux()
    table = {}
    for p in psutil.process_iter(["ppid", "create_time", "status", "name"]):
        try:
            table[p.pid] = ProcInfo(p.info["ppid"] or 0, os.getpgid(p.pid), os.getsid(p.pid),
                                    p.info["create_time"] or 0.0, p.info["status"] == psutil.STATUS_ZOMBIE,
                                    p.info["name"] or "?")
        except OSError:
            continue
    return table


def _proc_table_linux() -> Dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp session ... starttime(22nd)": comm may
        # hold spaces and parentheses, so split after the last ")".
        close = data.rfind(b")")
        fields = data[close + 2:].split()
        try:
            table[int(entry)] = ProcInfo(int(fields[1]), int(fields[2]), int(fields[3]), float(fields[19]),
                                         fields[0] in (b"Z", b"X"),
                                         data[data.find(b"(") + 1:close].decode(errors="replace"))
        except (IndexError, ValueError):
            continue
    return table


# --------------------------------------------------------------------------
# escape detection


@dataclass(frozen=True)
class Escapee:
    """A descendant of a group that is no longer in it: it left the process
    group (setpgid) or the session (setsid), or it was moved out of the
    cgroup. `pgid` and `sid` are where it is now."""

    pid: int
    ppid: int
    name: str
    pgid: int
    sid: int


class DescendantTracker:
    """Remembers every process ever seen in a group, and every descendant
    of those, at each scan; `escaped()` lists the remembered ones still
    alive outside the group.

    Best effort, by nature: the kernel keeps no record of where a process
    came from once its parent is gone. A member that forks, whose child
    calls setsid() and forks again, then exits ("double fork"), leaves a
    grandchild reparented to init that nothing links to the group. It is
    found only if a scan saw it, or an ancestor of it that is still alive,
    before that link broke. Scans happen in members(), alive, wait() and
    terminate(), so a group that is watched finds more. Only a cgroup (the
    "cgroup" tier) or a subreaper that adopts the orphans closes the gap.
    Pids are remembered with their start time, so a recycled pid is never
    mistaken for an escapee."""

    def __init__(self) -> None:
        self._known: Dict[int, float] = {}  # pid -> start time

    def observe(self, members: List[int], table: Dict[int, ProcInfo]) -> None:
        known = {pid: start for pid, start in self._known.items()
                 if pid in table and table[pid].start == start}
        for pid in members:
            if pid in table:
                known[pid] = table[pid].start
        children: Dict[int, List[int]] = {}
        for pid, info in table.items():
            children.setdefault(info.ppid, []).append(pid)
        stack = list(known)
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in known:
                    known[child] = table[child].start
                    stack.append(child)
        self._known = known

    def escaped(self, is_member: Callable[[int, ProcInfo], bool], table: Dict[int, ProcInfo]) -> List[Escapee]:
        out = []
        for pid in sorted(self._known):
            info = table.get(pid)
            if info is None or info.zombie or is_member(pid, info):
                continue
            out.append(Escapee(pid, info.ppid, info.name, info.pgid, info.sid))
        return out


# --------------------------------------------------------------------------
# the strategies


class Tier:
    """What every tier offers. `cgroups` holds limit (and, for the cgroup
    tier, containment) cgroups; they are removed on close()."""

    name = "?"
    cgroup_path: Optional[str] = None  # the containing cgroup v2 directory

    def __init__(self, pgid: int, cgroups: Optional[_cg.CgroupSet]):
        self.pgid = pgid
        self.cgroups = cgroups
        self.tracker = DescendantTracker()

    # membership
    def pids(self) -> List[int]:
        """Member pids now (scans also feed the escape tracker)."""
        raise NotImplementedError

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        raise NotImplementedError

    def escaped(self) -> List[Escapee]:
        table = proc_table()
        members = [pid for pid, info in table.items() if self.is_member(pid, info)]
        self.tracker.observe(members, table)
        return self.tracker.escaped(self.is_member, table)

    # signals
    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        self.signal(SIGKILL)

    def freeze(self) -> None:
        raise Unsupported(f"freeze() needs the cgroup tier; this group's tier is {self.name} "
                          f"(osl_pg.jobcontrol can stop it with SIGSTOP)")

    def thaw(self) -> None:
        self.freeze()

    # waiting
    def wait_exits(self, live: List[int], deadline: Optional[float]) -> None:
        backend.wait_exits(live, deadline)

    async def wait_exits_async(self, live: List[int], deadline: Optional[float]) -> None:
        await backend.wait_exits_async(live, deadline)

    # limits and lifetime
    @property
    def limits_applied(self) -> Dict[str, str]:
        return dict(self.cgroups.limits_applied) if self.cgroups is not None else {}

    def limit_events(self) -> Dict[str, int]:
        return self.cgroups.limit_events() if self.cgroups is not None else {}

    def close(self) -> None:
        """Remove the cgroup directories; processes still in them (a
        detached group, escapees in a limit cgroup) are moved out first."""
        if self.cgroups is not None:
            self.cgroups.remove()


class PgidTier(Tier):
    """process_group and session: membership is the pgid."""

    def __init__(self, pgid: int, name: str, cgroups: Optional[_cg.CgroupSet] = None):
        super().__init__(pgid, cgroups)
        self.name = name

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return info.pgid == self.pgid

    def pids(self) -> List[int]:
        if not _HAS_PGID:  # Windows: the backend knows who is in the job
            return [pid for pid in backend.list_pids() if backend.pgid_or_none(pid) == self.pgid]
        table = proc_table()
        members = [pid for pid, info in table.items() if info.pgid == self.pgid]
        self.tracker.observe(members, table)
        return members

    def signal(self, sig: int) -> None:
        backend.signal_group(self.pgid, sig)


class CgroupTier(Tier):
    """cgroup: membership is the cgroup v2 directory."""

    name = "cgroup"

    def __init__(self, pgid: int, cgroups: _cg.CgroupSet):
        super().__init__(pgid, cgroups)
        assert cgroups.v2 is not None
        self.cg: _cg.Cgroup = cgroups.v2
        self.cgroup_path = self.cg.path
        self._frozen_by_user = False
        self._members_now: Set[int] = set()

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return pid in self._members_now

    def pids(self) -> List[int]:
        return self.cg.pids()

    def escaped(self) -> List[Escapee]:
        self._members_now = set(self.cg.pids())
        return super().escaped()

    def signal(self, sig: int) -> None:
        if sig == SIGKILL:
            return self.kill()
        # Signalling pid by pid races with forks: a child forked after the
        # list was read would miss the signal. Frozen, nobody forks.
        # An empty cgroup is not an error while the handle is open: like a
        # process group whose pinned leader is a zombie, it is there and
        # empty (the kernel lists no zombie in cgroup.procs). SIGCONT needs
        # no freeze: a member that forks meanwhile is running, not stopped,
        # and the freeze would cost a cgroup.events round trip (which the
        # kernel rate-limits to one notification per 10 ms).
        frozen_here = sig not in (0, SIGCONT) and self._freeze_quietly()
        try:
            for pid in self.cg.pids():
                try:
                    backend.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if frozen_here:
                self._thaw_quietly()

    def kill(self) -> None:
        """SIGKILL to every process in the cgroup at once (cgroup.kill,
        Linux 5.14); else freeze, kill each, thaw (cgroup.freeze, 5.2)."""
        if self.cg.has("cgroup.kill"):
            self.cg.write("cgroup.kill", "1")
            return
        self._kill_each()

    def _kill_each(self) -> None:
        frozen_here = self._freeze_quietly()
        try:
            # Without a freezer a member may fork while we go: repeat until a
            # pass finds nobody new (each pass kills what it saw).
            done: Set[int] = set()
            while True:
                todo = [p for p in self.cg.pids() if p not in done]
                if not todo:
                    break
                for pid in todo:
                    try:
                        backend.kill(pid, SIGKILL)
                    except ProcessLookupError:
                        pass
                    done.add(pid)
        finally:
            if frozen_here:
                self._thaw_quietly()

    def freeze(self) -> None:
        """Stop every member (cgroup.freeze): unlike SIGSTOP they cannot
        notice, catch or be continued by anyone else. Returns once frozen."""
        self._set_frozen(True)
        self._frozen_by_user = True

    def thaw(self) -> None:
        self._set_frozen(False)
        self._frozen_by_user = False

    def _set_frozen(self, on: bool) -> None:
        if not self.cg.has("cgroup.freeze"):
            raise Unsupported("cgroup.freeze needs Linux 5.2")
        self.cg.write("cgroup.freeze", "1" if on else "0")
        _cg.wait_event(self.cg, "frozen", 1 if on else 0, None)

    def _freeze_quietly(self) -> bool:
        """Freeze for a signal round unless already frozen by the user."""
        if self._frozen_by_user or not self.cg.has("cgroup.freeze"):
            return False
        self._set_frozen(True)
        return True

    def _thaw_quietly(self) -> None:
        self._set_frozen(False)

    # Waiting: "gone" is cgroup.events saying populated 0, and a change of
    # that file wakes us. But the kernel sends at most one notification per
    # file per 10 ms (CGROUP_FILE_NOTIFY_MIN_INTV), so the exits of the
    # members we know about are watched too, through pidfds, which fire at
    # once; the caller rescans cgroup.procs after either.
    def wait_exits(self, live: List[int], deadline: Optional[float]) -> None:
        with _cg.EventsWatch(self.cg) as watch, _ExitFds(live) as exits:
            poller = select.poll()
            poller.register(watch.fd, select.POLLPRI)
            for fd in exits.pending:
                poller.register(fd, select.POLLIN)
            while watch.read().get("populated") and not exits.all_done:
                timeout = None if deadline is None else int((deadline - time.monotonic()) * 1000) + 1
                if timeout is not None and timeout <= 0:
                    return
                for fd, _ in poller.poll(timeout):
                    if fd != watch.fd:
                        exits.done(fd)
                        poller.unregister(fd)

    async def wait_exits_async(self, live: List[int], deadline: Optional[float]) -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        with _cg.EventsWatch(self.cg) as watch, _ExitFds(live) as exits:
            while watch.read().get("populated") and not exits.all_done:
                woke = loop.create_future()

                def wake(fd: int) -> None:
                    if fd != watch.epoll.fileno():
                        exits.done(fd)
                    if not woke.done():
                        woke.set_result(None)

                watched = [watch.epoll.fileno(), *exits.pending]
                for fd in watched:
                    loop.add_reader(fd, wake, fd)
                try:
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        return
                    try:
                        await asyncio.wait_for(woke, timeout)
                    except asyncio.TimeoutError:
                        return
                finally:
                    for fd in watched:
                        loop.remove_reader(fd)


class _ExitFds:
    """pidfds of `pids` (Linux 5.3+); `all_done` once each has fired. With
    no pidfd support it is empty and never done: cgroup.events decides."""

    def __init__(self, pids: List[int]):
        self.pending: Set[int] = set()
        self._all: List[int] = []
        self._supported = True
        for pid in pids:
            try:
                fd = backend.open_exit_fd(pid)
            except ProcessLookupError:
                continue  # exited already
            if fd is None:
                self._supported = False
                continue
            self._all.append(fd)
            self.pending.add(fd)

    @property
    def all_done(self) -> bool:
        return self._supported and not self.pending

    def done(self, fd: int) -> None:
        self.pending.discard(fd)

    def __enter__(self) -> "_ExitFds":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._all:
            os.close(fd)


def make_tier(pgid: int, session: bool, cgroups: Optional[_cg.CgroupSet], contained: bool) -> Tier:
    """The strategy for a new group: the cgroup tier when containment was
    asked for and a cgroup v2 directory was made, else its pgid. On
    Windows the group is always its Job Object (osl_pg.job_tier)."""
    if backend.NAME == "windows":
        from .job_tier import JobTier
        return JobTier(pgid, backend.limits_applied(pgid))
    if contained and cgroups is not None and cgroups.v2 is not None:
        return CgroupTier(pgid, cgroups)
    return PgidTier(pgid, "session" if session else "process_group", cgroups)
