"""Containment tiers: how a ProcessGroup finds, signals, kills and waits for
its members. The handle delegates to one of these strategies:

- ``process_group`` / ``session`` (PgidTier): members are the processes whose
  pgid is the group's. Advisory: a member that calls setsid() or setpgid()
  leaves, and group signals miss it from then on; ``escaped()`` reports such
  processes (best effort, see DescendantTracker).
- ``cgroup`` (CgroupTier, Linux): members are the processes in the group's
  cgroup v2 directory, which none of them can leave. Kill is one write to
  cgroup.kill; "gone" is cgroup.events saying ``populated 0``.
- ``pid_namespace`` (osl_pg.pidns.PidNamespaceTier, Linux): members are the
  processes of a user + PID namespace whose pid 1 is osl_pg's init.

Both may carry a CgroupSet for per-group limits (osl_pg.cgroup).
"""
from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Set, Tuple

from ._backend import backend
from ._record import Value
from ._timeouts import poll_ms
from .errors import ProcessNotFound, Unsupported
from .process import number_in_use

if TYPE_CHECKING:
    from . import cgroup as _cg  # imported when a cgroup is first used (most groups never do)
    from .process import Process

SIGKILL = 9
SIGCONT = int(getattr(signal, "SIGCONT", 18))


# --------------------------------------------------------------------------
# the process table, in one pass


class ProcInfo(Value):
    """One process of a table scan (made per process: its __init__ is
    written out, which is ~3x faster than Value's general one)."""

    ppid: int
    pgid: int
    sid: int
    start: float  # start time: tells a process from a later one with its pid
    zombie: bool
    name: str

    def __init__(self, ppid: int, pgid: int, sid: int, start: float, zombie: bool, name: str) -> None:
        d = self.__dict__
        d["ppid"], d["pgid"], d["sid"], d["start"], d["zombie"], d["name"] = ppid, pgid, sid, start, zombie, name


_PROC_STAT = os.path.exists("/proc/self/stat")


def proc_table() -> Dict[int, ProcInfo]:
    """Every process with its parent, group, session and start time. On
    Linux one read of /proc/PID/stat each (which has all of them), about
    8 times cheaper than psutil's per-process objects; elsewhere psutil
    plus getpgid/getsid. Still O(processes on the host): read for escape
    tracking only, never in the loops that wait for a group to die."""
    if _PROC_STAT:
        return _linux_proc_table()
    import psutil
    table = {}
    for p in psutil.process_iter(["ppid", "create_time", "status", "name"]):
        try:
            table[p.pid] = ProcInfo(p.info["ppid"] or 0, os.getpgid(p.pid), os.getsid(p.pid),
                                    p.info["create_time"] or 0.0, p.info["status"] == psutil.STATUS_ZOMBIE,
                                    p.info["name"] or "?")
        except OSError:
            continue
    return table


def _linux_proc_table() -> Dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited since the listing
            continue
        # "pid (comm) state ppid pgrp session ... starttime(22nd) ...": comm
        # may hold spaces and parentheses, so split after its last ')'.
        close = stat.rfind(b")")
        fields = stat[close + 2:].split()
        try:
            table[int(entry)] = ProcInfo(int(fields[1]), int(fields[2]), int(fields[3]), float(fields[19]),
                                         fields[0] == b"Z",
                                         stat[stat.find(b"(") + 1:close].decode("utf-8", "replace"))
        except (IndexError, ValueError):
            continue
    return table


# --------------------------------------------------------------------------
# escape detection


class Escapee(Value):
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
# who is still running


def _exited_without_fd(pid: int) -> bool:
    """Whether `pid` has exited, when there is no pidfd for it (no fd left,
    or no pidfd_open): our own child is asked with waitid(WNOWAIT), which
    needs no fd (a close() with a full fd table must still see its leader
    die); anyone else through psutil (/proc, or the OS's own call)."""
    waitid = getattr(os, "waitid", None)
    if waitid is not None:
        try:
            info = waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return info is not None and info.si_pid == pid
        except ChildProcessError:
            pass  # not our child
        except OSError:
            return False
    try:
        import psutil
    except OSError:  # no fd to import it with: ask again later
        return False
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):  # Wine: psutil fails with bare OSErrors
        return False


class ExitWatch:
    """Tells which processes have exited, and sleeps until they do.

    On Linux each process gets one pidfd, opened the first time it is asked
    about and kept until it fires: a pidfd becomes readable when its process
    exits, whether or not anyone reaps it, so a dead member counts as gone
    even while a slow init keeps it a zombie, and no per-process file has to
    be read to find out. Where there is no pidfd (other systems, or no fd
    left) the process's state is read through psutil and waiting is a short
    sleep before the caller rescans."""

    _POLL_STEP = 0.002
    # At most this many pidfds open at once: a huge group must not use up
    # the process's fd limit (other threads would get EMFILE). Past it,
    # members are checked through psutil, with short sleeps.
    MAX_PIDFDS = 256

    def __init__(self) -> None:
        self._fds: Dict[int, Optional[int]] = {}  # pid -> pidfd (None: no pidfd)
        self._dead: Set[int] = set()
        self._open = 0

    def _fd(self, pid: int) -> Optional[int]:
        fd = self._fds.get(pid)
        if fd is None and pid not in self._dead and self._open < self.MAX_PIDFDS:
            try:
                fd = backend.open_exit_fd(pid)
            except ProcessLookupError:  # reaped already
                self._dead.add(pid)
            if fd is not None:
                self._open += 1
            self._fds[pid] = fd
        return fd

    def _mark_dead(self, pid: int) -> None:
        self._dead.add(pid)
        fd = self._fds.get(pid)
        if fd is not None:
            os.close(fd)
            self._open -= 1
            self._fds[pid] = None

    def live(self, pids: List[int]) -> List[int]:
        """Which of `pids` (a group's whole member list) still run."""
        # A dead pid no longer listed was reaped: forget it, in case the
        # number comes back as a new member.
        listed = set(pids)
        for pid in [p for p in self._fds if p not in listed]:
            self._mark_dead(pid)
            del self._fds[pid]
        self._dead &= listed
        polled = {}
        unknown = []
        for pid in pids:
            if pid in self._dead:
                continue
            fd = self._fd(pid)
            if fd is not None:
                polled[fd] = pid
            elif pid not in self._dead:
                unknown.append(pid)
        if polled:
            poller = select.poll()
            for fd in polled:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(0):
                self._mark_dead(polled[fd])
        for pid in unknown:
            if _exited_without_fd(pid):
                self._dead.add(pid)
        return [pid for pid in pids if pid not in self._dead]

    def pidfds(self, pids: List[int]) -> Tuple[Dict[int, int], bool]:
        """{pidfd: pid} for those of `pids` not known to have exited, and
        whether that covers them all (False when some have no pidfd)."""
        by_fd: Dict[int, int] = {}
        complete = True
        for pid in pids:
            if pid in self._dead:
                continue
            fd = self._fd(pid)
            if fd is not None:
                by_fd[fd] = pid
            elif pid not in self._dead:
                complete = False
        return by_fd, complete

    def fired(self, pid: int) -> None:
        """Its pidfd became readable: it has exited. Unregister the fd from
        any poller first: this closes it."""
        self._mark_dead(pid)

    def wait(self, pids: List[int], deadline: Optional[float]) -> None:
        """Until every one of `pids` has exited, or `deadline`. Some without
        a pidfd: one short sleep, then the caller rescans."""
        by_fd, complete = self.pidfds(pids)
        if not complete:
            time.sleep(self._step(deadline))
            return
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while by_fd:
            timeout = poll_ms(deadline)
            if timeout is not None and timeout <= 0:
                return
            for fd, _ in poller.poll(timeout):
                poller.unregister(fd)
                self._mark_dead(by_fd.pop(fd))

    async def wait_async(self, pids: List[int], deadline: Optional[float]) -> None:
        """wait() for asyncio or trio: the running loop watches the pidfds."""
        from . import _aio
        by_fd, complete = self.pidfds(pids)
        if not complete:
            await _aio.sleep(self._step(deadline))
            return
        while by_fd:
            ready, _ = await _aio.wait_fds(list(by_fd), (), deadline)
            if not ready:
                return  # the deadline
            for fd in ready:
                self._mark_dead(by_fd.pop(fd))

    def _step(self, deadline: Optional[float]) -> float:
        if deadline is None:
            return self._POLL_STEP
        return max(0.0, min(self._POLL_STEP, deadline - time.monotonic()))

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()
        self._open = 0

    def __enter__(self) -> "ExitWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# the strategies


class Tier:
    """What every tier offers. `cgroups` holds limit (and, for the cgroup
    tier, containment) cgroups; they are removed on close()."""

    name = "?"
    cgroup_path: Optional[str] = None  # the containing cgroup v2 directory
    # Whether confirm_empty() needs the leader reaped first (a zombie leader
    # keeps a process group non-empty), and whether a few cheap probes are
    # worth trying before pids() (which reads the host's process table).
    reaps_leader_to_probe = False
    probes_first = False

    def __init__(self, pgid: int, cgroups: "Optional[_cg.CgroupSet]"):
        self.pgid = pgid
        self.cgroups = cgroups
        self._tracker: Optional[DescendantTracker] = None  # made at the first scan: run() rarely scans
        # The first escape-tracking read of the process table waits until a
        # wait has lasted a while: a command that ends at once costs none.
        self._observed_at = time.monotonic()
        self._observe_cost = 0.0

    @property
    def tracker(self) -> DescendantTracker:
        """What the scans saw of the group's descendants (escaped())."""
        if self._tracker is None:
            self._tracker = DescendantTracker()
        return self._tracker

    # membership
    def pids(self) -> List[int]:
        """Member pids now, zombies included. Cheap: called in wait loops."""
        raise NotImplementedError

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        raise NotImplementedError

    def confirm_empty(self) -> bool:
        """Exact and cheap where the tier can: is no member left (zombies
        count: callers ask once the members they know of have exited)?"""
        return not self.pids()

    def leader_reaped(self) -> None:
        """Hook: the group's leader was reaped while the handle is open."""

    def terminal_pgid(self) -> int:
        """The group a terminal is given to (ProcessGroup.terminal_pgid)."""
        return self.pgid

    def wait_exit_or_stop(self, pid: int, deadline: Optional[float]) -> Optional[int]:
        """Until the leader `pid` exits (0) or stops (the signal), or
        `deadline` (None): osl_pg.terminal's wait at a terminal."""
        return backend.wait_exit_or_stop(pid, deadline)

    def observe(self) -> Dict[int, ProcInfo]:
        """Read the process table and remember the group's descendants for
        escaped() (see DescendantTracker); returns the table."""
        began = time.monotonic()
        table = proc_table()
        self._prepare_membership()
        members = [pid for pid, info in table.items() if self.is_member(pid, info)]
        self.tracker.observe(members, table)
        self._observed_at = time.monotonic()
        self._observe_cost = self._observed_at - began
        return table

    def observe_now_and_then(self, every: float = 0.1) -> None:
        """observe(), at most once per `every` seconds, and at most 5% of
        the time (a host with thousands of processes makes a read cost
        milliseconds): wait loops call it so a long wait keeps tracking
        descendants at bounded cost."""
        if time.monotonic() - self._observed_at >= max(every, 20 * self._observe_cost):
            self.observe()

    def _prepare_membership(self) -> None:
        """Hook: refresh what is_member() needs before a table pass."""

    def escaped(self) -> List[Escapee]:
        table = self.observe()
        return self.tracker.escaped(self.is_member, table)

    def live(self, pids: List[int], exits: "ExitWatch") -> List[int]:
        """Which of `pids` are still running (not exited, zombie or not)."""
        return exits.live(pids)

    # signals
    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def signaller(self) -> Callable[[int], None]:
        """signal(), as thin as the tier can make it, for ProcessGroup's hot
        path; its OSErrors go through signal_error()."""
        return self.signal

    def signal_error(self, e: OSError, sig: int) -> OSError:
        return e

    def kill(self) -> None:
        self.signal(SIGKILL)

    def freeze(self) -> None:
        raise Unsupported(f"freeze() needs the cgroup tier; this group's tier is {self.name} "
                          f"(osl_pg.jobcontrol can stop it with SIGSTOP)")

    def thaw(self) -> None:
        self.freeze()

    # waiting
    def wait_exits(self, live: List[int], deadline: Optional[float], exits: "ExitWatch") -> None:
        exits.wait(live, deadline)

    async def wait_exits_async(self, live: List[int], deadline: Optional[float], exits: "ExitWatch") -> None:
        await exits.wait_async(live, deadline)

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
    """process_group and session: membership is the pgid.

    While the handle pins the leader (an unreaped zombie at worst) the pgid
    names this group and no other, and signals go to the number (killpg).
    After leader_reaped() they go member by member: see signal_members()."""

    reaps_leader_to_probe = True
    probes_first = True

    def __init__(self, pgid: int, name: str, cgroups: "Optional[_cg.CgroupSet]" = None):
        super().__init__(pgid, cgroups)
        self.name = name
        self._unpinned = False

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return info.pgid == self.pgid

    def pids(self) -> List[int]:
        pids = backend.group_pids(self.pgid)
        if pids and self._unpinned and number_in_use(self.pgid):
            # Someone has the leader's pid again, which the kernel allows
            # only once nothing had it as pgid: whoever is in a group of
            # that number now is not ours.
            return []
        return pids

    def leader_reaped(self) -> None:
        self._unpinned = True

    def confirm_empty(self) -> bool:
        """killpg(pgid, 0) fails with ESRCH once no process is in the group
        (zombies count), and a number with a member left cannot be reused:
        exact, one syscall. A live process with the leader's pid means the
        number was free at some point since the reap: ours are gone too."""
        return not backend.group_exists(self.pgid) or (self._unpinned and number_in_use(self.pgid))

    def signal(self, sig: int) -> None:
        if self._unpinned:
            self.signal_members(sig)
        else:
            backend.signal_group(self.pgid, sig)

    def signaller(self) -> Callable[[int], None]:
        return backend.group_signaller(self.pgid)

    def signal_error(self, e: OSError, sig: int) -> OSError:
        return backend.signal_error(e, self.pgid, sig)

    def signal_members(self, sig: int) -> None:
        """With the leader reaped the number is not pinned, so it is never
        signalled: each member found is signalled through a pidfd opened
        first and checked to be in the group after (a pidfd never names a
        later process; see backend.signal_if_member), while the number is
        nobody's pid (pids()). Members forked meanwhile get a second and
        third pass. Raises ProcessLookupError when none was left."""
        done: Set[int] = set()
        reached = 0
        for _ in range(3):
            todo = [pid for pid in self.pids() if pid not in done]
            if not todo:
                break
            for pid in todo:
                done.add(pid)
                reached += backend.signal_if_member(pid, self.pgid, sig)
            if sig == 0:
                break
        if not reached:
            raise ProcessNotFound(errno.ESRCH, f"process group {self.pgid} has no member left")


class CgroupTier(Tier):
    """cgroup: membership is the cgroup v2 directory."""

    name = "cgroup"

    def __init__(self, pgid: int, cgroups: "_cg.CgroupSet"):
        super().__init__(pgid, cgroups)
        assert cgroups.v2 is not None
        self.cg: _cg.Cgroup = cgroups.v2
        self.cgroup_path: Optional[str] = self.cg.path
        self._frozen_by_user = False
        self._members_now: Set[int] = set()

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return pid in self._members_now

    def pids(self) -> List[int]:
        return self.cg.pids()

    def confirm_empty(self) -> bool:
        """cgroup.events says populated 0 (zombies are not counted)."""
        return not self.cg.keyed("cgroup.events").get("populated")

    def _prepare_membership(self) -> None:
        self._members_now = set(self.cg.pids())

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
            try:
                self.cg.write("cgroup.kill", "1")
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                # No fd left to open cgroup.kill with: killpg needs none and
                # reaches every member still in the group (the leader at
                # least, pinned); the error then says the rest is unconfirmed.
                try:
                    backend.signal_group(self.pgid, SIGKILL)
                except ProcessLookupError:
                    pass
                raise
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
        from . import cgroup as _cg
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
    def wait_exits(self, live: List[int], deadline: Optional[float], exits: ExitWatch) -> None:
        from . import cgroup as _cg
        by_fd, complete = exits.pidfds(live)
        with _cg.EventsWatch(self.cg) as watch:
            poller = select.poll()
            poller.register(watch.fd, select.POLLPRI)
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            while watch.read().get("populated") and not (complete and not by_fd):
                timeout = poll_ms(deadline)
                if timeout is not None and timeout <= 0:
                    return
                for fd, _ in poller.poll(timeout):
                    if fd != watch.fd:
                        poller.unregister(fd)
                        exits.fired(by_fd.pop(fd))

    async def wait_exits_async(self, live: List[int], deadline: Optional[float], exits: ExitWatch) -> None:
        # As wait_exits; the epoll fd stands for cgroup.events (an event
        # loop watches readability only, and cgroup.events raises POLLPRI).
        from . import _aio
        from . import cgroup as _cg
        by_fd, complete = exits.pidfds(live)
        with _cg.EventsWatch(self.cg) as watch:
            events_fd = watch.epoll.fileno()
            while watch.read().get("populated") and not (complete and not by_fd):
                ready, _ = await _aio.wait_fds([events_fd, *by_fd], (), deadline)
                if not ready:
                    return  # the deadline
                for fd in ready:
                    if fd != events_fd:
                        exits.fired(by_fd.pop(fd))


def make_tier(pgid: int, session: bool, cgroups: "Optional[_cg.CgroupSet]", contained: bool,
              init_status_fd: Optional[int] = None, leader: Optional[Process] = None) -> Tier:
    """The strategy for a new group: the pid_namespace tier when the child
    is its init (it has a status pipe: osl_pg.pidns), the cgroup tier when
    containment was asked for and a cgroup v2 directory was made, else its
    pgid. On Windows the group is always its Job Object (osl_pg.job_tier)."""
    if sys.platform == "win32":  # backend is _windows (a test type checkers understand)
        from .job_tier import JobTier
        return JobTier(pgid, backend.limits_applied(pgid))
    if init_status_fd is not None:
        from .pidns import InitStatus, PidNamespaceTier
        status = InitStatus(init_status_fd)
        if leader is not None:
            leader._decode = status.decode  # the init's status stands for the command's
        return PidNamespaceTier(pgid, status, cgroups)
    if contained and cgroups is not None and cgroups.v2 is not None:
        return CgroupTier(pgid, cgroups)
    return PgidTier(pgid, "session" if session else "process_group", cgroups)
