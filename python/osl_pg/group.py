"""ProcessGroup: one handle for a whole process tree.

The PID-reuse guarantee
-----------------------
A process group's id is its leader's pid. The kernel cannot hand that number
to a new process while any process, zombie or not, still has it as pid or
pgid. The group handle keeps the leader *unreaped* (it reads the leader's
status with WNOWAIT), so as long as the handle is open the pgid names this
group and no other: ``signal()`` can never reach an unrelated group that
happened to get the same number. Once the whole group is gone (``wait()``
saw it empty, or ``terminate()``/``close()`` ended it) the leader is reaped
and the handle is *released*: from then on ``signal()`` raises
ProcessLookupError instead of signalling whatever group might reuse the id.

"Gone" means dead: a member that has exited counts as gone even while a slow
or non-reaping init keeps it a zombie. On Linux the handle waits on a pidfd
per live member, so ``wait()`` and ``terminate()`` return within
milliseconds of the last death; elsewhere it polls with a short backoff.

Knowing the group is empty without reading the process table
-------------------------------------------------------------
A pgid is free only once no process has it as pid or pgid. So once every
member the handle knows of has died, it reaps the leader and asks the kernel
``killpg(pgid, 0)``: ESRCH means no member is left, exactly, at the cost of
one syscall whatever else the host runs (a member left behind would have kept
the number from being reused, so the answer cannot be about another group).
Only when the kernel says something is left does the handle list the process
table to find out who. From the leader's reap on the pgid is no longer
pinned, so signals stop going to the number: each member found is signalled
through a pidfd opened first and then checked to be in the group, while the
number is nobody's pid (a process with that pid would mean the group was
gone and the number reused). See ``_reap_leader``.

A handle dropped without ``close()`` (garbage-collected) kills nothing, like
a dropped subprocess.Popen: it warns (ResourceWarning) if the leader still
runs, stops pinning the leader (which is then reaped once it exits), and its
cgroup directories and watchdog entry are cleaned up at the next spawn. The
tree keeps running; signalling its pgid through the executor is refused once
the leader was reaped and the number belongs to another process.
"""
from __future__ import annotations

import errno
import os
import signal as _signal
import collections
import threading
from _thread import RLock as _RLock  # threading.RLock() is a Python call in front of it
import time
import warnings
from _weakref import ref as _weakref_ref  # weakref.ref itself; the weakref module costs ~0.3 ms to import

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Dict, Generator, Iterable, List, Optional, Tuple
    import weakref

from . import watchdog
from ._backend import backend
from ._record import Record, Value, field
from ._timeouts import check_grace, check_timeout
from .errors import ProcessNotFound
from .tiers import Escapee, ExitWatch, PgidTier, Tier
from .process import Process, WaitTimeout, _abandon, child_by_pid

DEFAULT_GRACE = 5.0
DEFAULT_KILL_TIMEOUT = 10.0  # SIGKILL normally ends a process within milliseconds

SIGTERM = int(getattr(_signal, "SIGTERM", 15))
SIGKILL = int(getattr(_signal, "SIGKILL", 9))
SIGCONT = getattr(_signal, "SIGCONT", None)


class Member(Value):
    """One process of a group, as ProcessGroup.members() found it: `pid`,
    `ppid` (None if it could not be read), `name` (the command name, as
    in /proc/PID/comm), `zombie` (it has exited and awaits its reap) and
    `uid` (its real user id, None where unknown). A snapshot: the process
    may be gone by the time it is read."""

    pid: int
    ppid: Optional[int]
    name: str
    zombie: bool
    uid: Optional[int] = None


class MemberOutcome(Record):
    """How one member ended under terminate(): "exited" (before any signal
    or on its own), "terminated" (after SIGTERM, within the grace) or
    "killed" (by SIGKILL after the grace). `returncode` is known for
    processes this program reaped (the leader; adopted orphans under a
    subreaper)."""

    pid: int
    name: str
    outcome: str = "exited"
    returncode: Optional[int] = None

    def __init__(self, pid: int, name: str, outcome: str = "exited", returncode: Optional[int] = None) -> None:
        # Written out: one is made per spawned group (Record's general
        # __init__ costs ~1 us more).
        self.pid, self.name, self.outcome, self.returncode = pid, name, outcome, returncode


class TerminateReport(Record):
    """What ProcessGroup.terminate() did: `members`, one MemberOutcome per
    process it saw in the group (sorted by pid), `escalated` (True when
    SIGKILL was needed after the grace), `duration` (seconds), and
    `all_gone`: False when members outlived `kill_timeout` after SIGKILL
    (stuck in the kernel, uninterruptible); they are left "running" and the
    handle stays open (and pinned) so the caller can wait, retry or
    close()."""

    pgid: int
    members: List[MemberOutcome] = field(default_factory=list)
    escalated: bool = False  # SIGKILL was needed
    duration: float = 0.0
    # False when members outlived `kill_timeout` after SIGKILL (stuck in the
    # kernel, uninterruptible): they are left "running" and the handle stays
    # open (and pinned) so the caller can wait, retry or close().
    all_gone: bool = True

    def by_outcome(self, outcome: str) -> List[MemberOutcome]:
        """The members that ended as `outcome` ("exited", "terminated",
        "killed", or "running" for survivors), in pid order."""
        return [m for m in self.members if m.outcome == outcome]


# Open groups created by this process, by pgid: how a group "this process
# created" is found again, and what the default security policy trusts. A
# plain dict of weak references without callbacks: no lock, and nothing of
# ours runs from the garbage collector; an entry goes when its handle is
# released or dropped, and only if it is still that handle's.
_owned: "Dict[int, weakref.ref[ProcessGroup]]" = {}

# Set by set_child_subreaper(): only then are orphans of our groups that
# were reparented to us ours to reap.
_adopting = False

# Handles dropped while open: __del__ only appends here (atomic, no lock: it
# may run from the garbage collector at any allocation, on any thread, even
# inside one of the locks below); the next spawn cleans them up.
_dropped: "collections.deque[Tuple[Tier, int, bool]]" = collections.deque()
_dropped_lock = threading.Lock()

# Pauses between kernel probes (killpg(pgid, 0)) when members the handle
# did not know of are still there after the leader's reap: usually they are
# dying right now (a SIGKILLed group), and a few probes, O(group) each, beat
# a scan of the host's whole process table. Then the table is read.
_PROBE_DELAYS = (0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016)


def sweep_dropped() -> None:
    """Clean up after handles dropped without close(): remove their cgroup
    directories (processes still in them are moved out, not killed) and
    take them off the watchdog's list. Never blocks: if another thread is
    at it, the next spawn sweeps."""
    if not _dropped or not _dropped_lock.acquire(blocking=False):
        return
    try:
        while _dropped:
            strategy, pgid, watched = _dropped.popleft()
            try:
                strategy.close()
                if watched:
                    watchdog.unregister(pgid)
            except OSError:
                pass
    finally:
        _dropped_lock.release()


def owned_group(pgid: int) -> Optional["ProcessGroup"]:
    ref = _owned.get(pgid)
    group = ref() if ref is not None else None
    return group if group is not None and not group.released else None


def open_groups() -> List["ProcessGroup"]:
    """The handles of this process's groups that are not released."""
    groups = [ref() for ref in list(_owned.values())]
    return [g for g in groups if g is not None and not g.released]


def _scan(pgid: int) -> List[Member]:
    """Current members of group `pgid`: the backend says who (getpgid over
    the process list on POSIX, the job's pid list on Windows), psutil
    describes them."""
    return _describe_all(backend.group_pids(pgid))


def _describe_all(pids: Iterable[int]) -> List[Member]:
    """Member records for `pids`; processes gone meanwhile are left out."""
    import psutil
    members = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                members.append(Member(pid, p.ppid(), _name(p), p.status() == psutil.STATUS_ZOMBIE,
                                      _uid(p)))
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            members.append(Member(pid, None, "?", False))
    return members


def _name(p: Any) -> str:
    """p.name(); under Wine psutil's name() fails with a bare OSError (the
    NtQuerySystemInformation class it uses is not implemented), so fall
    back to the command line's first word."""
    try:
        return str(p.name())
    except OSError:  # psutil's own errors are not OSErrors: they propagate
        cmdline = p.cmdline()
        return os.path.basename(cmdline[0]) if cmdline else "?"


def _member_name(pid: int) -> str:
    """The process name for reports, or "?" once it is gone."""
    import psutil
    try:
        return _name(psutil.Process(pid))
    except (psutil.Error, OSError):
        return "?"


def _uid(p: Any) -> Optional[int]:
    import psutil
    try:
        return int(p.uids().real)
    except (AttributeError, psutil.AccessDenied):  # no uids on Windows
        return None


def scan_group(pgid: int) -> List[Member]:
    return _scan(pgid)


def _still_running(pid: int) -> bool:
    """For __del__: a lock-free look (waitid WNOHANG|WNOWAIT)."""
    try:
        return backend.wait(pid, nohang=True, nowait=True) is None
    except OSError:
        return False


class ProcessGroup:
    """A process group this program created (or found with `for_pgid`).

    ``with group:`` terminates the group on exit unless it was detached;
    ``async with`` does the same with ``terminate_async``.
    """

    # self: ProcessGroup, not Self: weakref.ref(self) goes into a map of ref[ProcessGroup]
    # (refs are invariant).
    def __init__(self: ProcessGroup, pgid: int, leader: Optional[Process] = None, tier: str = "process_group",
                 owner: str = "", strategy: Optional[Tier] = None):
        self.pgid = pgid
        self.leader = leader
        # How members are found, signalled and waited for (osl_pg.tiers);
        # `tier` names it: process_group, session or cgroup.
        self._strategy = strategy if strategy is not None else PgidTier(pgid, tier)
        self.tier: str = self._strategy.name
        self._signal = self._strategy.signaller()  # bound once: signal() is the hot path
        self.owner = owner
        self.detached: bool = False
        self._released = False
        self._leader_reaped = False  # see _reap_leader()
        # Held by signal(), terminate() and close() around each signal they
        # send and while the handle is released or its leader reaped (which
        # frees the pgid): no signal can reach a recycled pgid, on any build
        # (free-threaded included) and whatever Python an audit hook runs
        # inside os.killpg. Reentrant: a Python signal handler (osl-pg run
        # forwards SIGINT) may call signal() or close() on the thread that
        # holds it.
        self._release_lock = _RLock()
        self._seen: Dict[int, MemberOutcome] = {}
        if leader is not None:
            self._seen[pgid] = MemberOutcome(pgid, "", outcome="running")
        self._sigkilled = False  # SIGKILL sent: nothing can leave any more
        self._kill_on_parent_death = False
        if leader is not None:
            leader._pin()
        self._wref = _weakref_ref(self)
        _owned[pgid] = self._wref

    def __del__(self) -> None:
        # Dropped without close(): see the module docstring. Nothing here
        # takes a lock or waits; the rest is queued for sweep_dropped().
        if getattr(self, "_released", True):
            return
        try:
            if _owned.get(self.pgid) is self._wref:
                _owned.pop(self.pgid, None)  # one dict operation: no lock
            running = False
            leader = self.leader
            if leader is not None and not self._leader_reaped:
                leader._pinned = False
                running = leader.returncode is None and not self.detached and _still_running(leader.pid)
                _abandon(leader._state)  # reaped by the next spawn once it has exited
            _dropped.append((self._strategy, self.pgid, self._kill_on_parent_death))
            if running:  # last: under -W error this raises (and is printed, as Popen's is)
                warnings.warn(f"process group {self.pgid} is still running", ResourceWarning, source=self)
        except Exception:  # at interpreter shutdown modules may be gone
            pass

    @classmethod
    def for_pgid(cls, pgid: int) -> "ProcessGroup":
        """The open handle of group `pgid`, if this process created it and
        has not released it. Raises ProcessNotFound (a ProcessLookupError)
        otherwise: a handle is never made for a group found by number,
        whose id could not be pinned."""
        group = owned_group(pgid)
        if group is None:
            raise ProcessNotFound(errno.ESRCH, f"no open group {pgid} was created by this process")
        return group

    def __repr__(self) -> str:
        state = "released" if self._released else "open"
        return f"<ProcessGroup pgid={self.pgid} tier={self.tier} {state}>"

    # -- queries -------------------------------------------------------------------
    @property
    def leader_pid(self) -> int:
        """The pid of the group's leader: the same number as `pgid` (on
        Windows, the pid the Job Object is named by)."""
        return self.pgid

    @property
    def released(self) -> bool:
        """True once the handle let go of the group (it ended, or close()
        ran): the pgid is no longer pinned, signal() raises
        ProcessLookupError and members() is empty."""
        return self._released

    def members(self) -> List[Member]:
        """Processes in the group now (by pgid; by cgroup in the cgroup
        tier); zombies are marked."""
        if self._released:
            return []
        self._strategy.observe_now_and_then()
        return _describe_all(self._strategy.pids())

    def escaped(self) -> List[Escapee]:
        """Live descendants of the group that left it (setsid, setpgid):
        signals to the group miss them. Best effort: see
        osl_pg.tiers.DescendantTracker. Empty in the cgroup tier unless a
        privileged process moved a member out of the cgroup."""
        return self._strategy.escaped()

    @property
    def cgroup_path(self) -> Optional[str]:
        """The group's cgroup v2 directory in the cgroup tier, else None."""
        return self._strategy.cgroup_path

    @property
    def limits_applied(self) -> Dict[str, str]:
        """Each limit and the mechanism that applies it, e.g.
        {"max_processes": "cgroup1:pids", "max_memory": "cgroup2:memory"}."""
        return self._strategy.limits_applied

    def limit_events(self) -> Dict[str, int]:
        """What the limits did: "oom_kills" (members the OOM killer ended at
        max_memory), "fork_failures" (forks refused at max_processes)."""
        return self._strategy.limit_events()

    def freeze(self) -> None:
        """Freeze every member at once (cgroup v2's cgroup.freeze): unlike
        SIGSTOP they cannot notice, catch or be continued by anyone else,
        until thaw(). cgroup tier only: raises Unsupported (a
        NotImplementedError) in the other tiers and before Linux 5.2,
        ProcessLookupError once released. Returns once the kernel reports
        the cgroup frozen. (osl_pg.jobcontrol stops other tiers with
        SIGSTOP.)"""
        self._check_open()
        self._strategy.freeze()

    def thaw(self) -> None:
        """Undo freeze(): every member runs again. cgroup tier only (raises
        Unsupported otherwise); ProcessLookupError once released."""
        self._check_open()
        self._strategy.thaw()

    def running_count(self) -> int:
        """How many members run now, by the tier's own membership (pgid or
        cgroup) and its pidfds: no per-member /proc reads."""
        if self._released:
            return 0
        with ExitWatch() as exits:
            return len(self._strategy.live(self._strategy.pids(), exits))

    def terminal_pgid(self) -> int:
        """The process group to make a terminal's foreground group so that
        the command reads it and Ctrl-C / Ctrl-Z reach it: `pgid`, but in
        the pid_namespace tier the command's own group (the host pid of
        pid 2 there), which the init is not in."""
        return self._strategy.terminal_pgid()

    def _wait_exit_or_stop(self, pid: int, deadline: Optional[float]) -> Optional[int]:
        """The leader's exit (0) or stop (its signal), or None at
        `deadline`, as the tier sees them (osl_pg.terminal)."""
        return self._strategy.wait_exit_or_stop(pid, deadline)

    @property
    def alive(self) -> bool:
        """True while any member is running (zombies do not count)."""
        return any(not m.zombie for m in self.members())

    # -- signals ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._released:
            raise ProcessNotFound(errno.ESRCH, f"process group {self.pgid} is gone and its handle was released")

    def signal(self, sig: int) -> None:
        """Send `sig` to every member of the group.

        Safe against pgid reuse (see the module docstring): while the leader
        is unreaped (the pgid pinned) this is one killpg(); after the leader's reap each
        member is signalled through a pidfd checked to be in the group; in
        the cgroup tier the cgroup's members are signalled. Raises
        ProcessLookupError (ProcessNotFound) once the handle is released or
        no member is left, PermissionError when the OS refuses, and
        Unsupported on Windows for a signal that has no equivalent there
        (see the Windows guide)."""
        # acquire()/release() rather than `with`: this is the hot path, and
        # the context-manager protocol cost ~0.1 us of its ~0.9 (osl-pg bench).
        lock = self._release_lock
        lock.acquire()
        try:
            if self._released:
                self._check_open()
            self._signal(sig)
        except OSError as e:
            if self._leader_reaped and isinstance(e, ProcessLookupError) and not self._released:
                self._finish()  # no member is left: release, and say so
                self._check_open()
            if isinstance(e, ProcessNotFound) and self._released:
                raise
            raise self._strategy.signal_error(e, sig) from None
        finally:
            lock.release()
        if sig == SIGKILL:
            self._sigkilled = True

    def kill(self) -> None:
        """SIGKILL every member (see signal(); in the cgroup tier
        cgroup.kill, which also reaches members forked meanwhile; on
        Windows TerminateJobObject). Does not wait: follow with wait() or
        use terminate()/close()."""
        self.signal(SIGKILL)

    # -- waiting --------------------------------------------------------------------------
    def _note(self, pids: Iterable[int], names: bool) -> None:
        for pid in pids:
            seen = self._seen.get(pid)
            if seen is None:
                self._seen[pid] = MemberOutcome(pid, _member_name(pid) if names else "", outcome="running")
            elif names and not seen.name and seen.outcome == "running":
                seen.name = _member_name(pid)

    def _mark_dead(self, pids: List[int], live: List[int], phase: str) -> None:
        """Those of `pids` not in `live` died in this phase (and, under our
        subreaper, adopted ones are reaped)."""
        if len(live) == len(pids):
            return
        live_set = set(live)
        for pid in pids:
            if pid in live_set:
                continue
            seen = self._seen.get(pid)
            if seen is not None and seen.outcome == "running":
                seen.outcome = phase
            if _adopting and pid != self.pgid and seen is not None:
                self._reap_adopted(pid)

    def _leader_exited(self) -> None:
        seen = self._seen.get(self.pgid)
        if seen is not None and seen.outcome == "running":
            seen.outcome = "exited"

    def _all_gone(self, phase: str) -> bool:
        for seen in self._seen.values():
            if seen.outcome == "running":
                seen.outcome = phase
        return True

    def _reap_leader(self) -> None:
        """Every member this handle knows of has exited: reap the leader, so
        that the kernel's own answer (killpg(pgid, 0)) can say whether
        anything else is left; a zombie leader would always count. From here
        on the pgid is not pinned, so the tier signals verified members one
        by one instead of the number (PgidTier). Under the release lock: no
        signal() can fall between the switch and the reap."""
        with self._release_lock:
            if self._leader_reaped or self.leader is None or self._released:
                return
            self._leader_reaped = True
            self._strategy.leader_reaped()
            self._signal = self._strategy.signal
            self.leader._release()

    def release_if_empty(self) -> bool:
        """After the leader has exited: True, with the handle released, when
        no other member is left, by the tier's exact cheap test (one
        killpg(pgid, 0) after the leader's reap in the pgid tiers, whatever
        else the host runs); False when something is left (then the leader
        is reaped and signals go to verified members, see _reap_leader)."""
        if self._released:
            return True
        leader = self.leader
        if leader is not None and leader.returncode is None and leader.poll() is None:
            return False
        self._leader_exited()
        if self._strategy.reaps_leader_to_probe:
            self._reap_leader()
        if self._released or self._strategy.confirm_empty():
            self._finish()
            return True
        return False

    def _until_empty(self, deadline: Optional[float], phase: str, exits: ExitWatch, names: bool = False,
                     observe: bool = True, snapshot: bool = False
                     ) -> Generator[Tuple[List[int], float], None, bool]:
        """Record who dies in this phase; yield (live pids, 0) for the driver
        to wait on, or ([], pause) to sleep; return True once no member is
        running, False at `deadline`.

        It watches only the members it knows of (the leader; after
        `snapshot` or a scan, those listed): their pidfds (Linux) say who
        has exited. Once all of them have, the tier's cheap exact test
        (kernel probe after the leader's reap, cgroup.events) says whether
        anything is left; only then is the membership listed (the host's
        process table in the pgid tiers). `names` are read for a report
        only. `observe` keeps the escape tracker fed (at most every 100 ms,
        only while members run); it is off once SIGKILL went out."""
        tier = self._strategy
        if snapshot:
            self._note(tier.pids(), names)
        probes = 0
        while True:
            if self._released:
                return self._all_gone(phase)
            known = [pid for pid, seen in self._seen.items() if seen.outcome == "running"]
            if self.leader is not None and not self._leader_reaped and self.pgid in known \
                    and self.leader.poll() is not None:
                # The leader is our child: waitid() tells, with no fd (a
                # full fd table must not keep a close() from ending).
                known.remove(self.pgid)
                self._seen[self.pgid].outcome = phase
            live = tier.live(known, exits) if known else []
            self._mark_dead(known, live, phase)
            if not live:
                if tier.reaps_leader_to_probe:
                    self._reap_leader()
                    if _adopting:
                        self._reap_adopted_zombies(phase)
                if self._released or tier.confirm_empty():
                    return self._all_gone(phase)
                if tier.probes_first and probes < len(_PROBE_DELAYS):
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    yield [], _PROBE_DELAYS[probes]
                    probes += 1
                    continue
                pids = tier.pids()
                self._note(pids, names)
                live = tier.live(pids, exits)
                self._mark_dead(pids, live, phase)
                if not live:  # only zombies that nobody reaps yet: dead is gone
                    return self._all_gone(phase)
                probes = 0
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if observe and not self._sigkilled:  # only while members could still escape
                tier.observe_now_and_then()
            yield live, 0.0

    def _reap_adopted_zombies(self, phase: str) -> None:
        """Under our subreaper, the group's dead orphans are our zombies, and
        a zombie keeps the kernel's probe saying "not empty": reap them
        (each found with one waitid(P_PGID), no scan). Stops at a child that
        has a Process handle: that one's handle reaps it."""
        exited = getattr(backend, "exited_child_in_group", None)
        if exited is None:
            return
        for _ in range(100000):
            pid = exited(self.pgid)
            if pid is None or child_by_pid(pid) is not None:
                return
            if pid not in self._seen:
                self._seen[pid] = MemberOutcome(pid, "", outcome="running")
            self._reap_adopted(pid)
            if self._seen[pid].outcome == "running":
                self._seen[pid].outcome = phase

    def _reap_adopted(self, pid: int) -> None:
        """Under our subreaper (set_child_subreaper), reap orphans of this
        group that were reparented to us. Never a child with a Process
        handle (the leader, or anything spawned elsewhere in this program
        via osl_pg), and never a child outside this group (a
        subprocess.Popen child, say)."""
        if child_by_pid(pid) is not None:
            return
        try:
            # A member that is not our child gives ECHILD: no need to read
            # its parent first.
            code = backend.wait(pid, nohang=True, nowait=False)
        except OSError:
            return
        if code is not None:
            self._seen[pid].returncode = code

    @staticmethod
    def _pause_until(pause: float, deadline: Optional[float]) -> float:
        return pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic()))

    def _watch(self, deadline: Optional[float], phase: str, exits: ExitWatch, **scan: bool) -> bool:
        """Wait (sleeping on exits) until the group is empty or `deadline`."""
        gen = self._until_empty(deadline, phase, exits, **scan)
        try:
            live, pause = next(gen)
            while True:
                if live:
                    self._strategy.wait_exits(live, deadline, exits)
                else:
                    time.sleep(self._pause_until(pause, deadline))
                live, pause = gen.send(None)
        except StopIteration as stop:
            return bool(stop.value)

    async def _watch_async(self, deadline: Optional[float], phase: str, exits: ExitWatch, **scan: bool) -> bool:
        from . import _aio
        gen = self._until_empty(deadline, phase, exits, **scan)
        try:
            live, pause = next(gen)
            while True:
                if live:
                    await self._strategy.wait_exits_async(live, deadline, exits)
                else:
                    await _aio.sleep(self._pause_until(pause, deadline))
                live, pause = gen.send(None)
        except StopIteration as stop:
            return bool(stop.value)

    def _finish(self) -> Optional[int]:
        """The group is empty: reap the leader and release the handle."""
        # Released, and out of the registry, *before* the leader is reaped
        # (which frees the pgid): a signal() holds the same lock, so it
        # either went out before this or sees the flag and raises.
        with self._release_lock:
            first = not self._released
            self._released = True
            if first:
                self._unregister()
            if self.leader is not None and not self._leader_reaped:
                self.leader._release()
        if not first:  # another thread's wait()/terminate() released it
            return self._released_returncode()
        rc = None
        if self.leader is not None:
            rc = self.leader.returncode
            seen = self._seen.get(self.pgid)
            if seen is not None:
                seen.returncode = rc
        self._release()
        return rc

    def _released_returncode(self) -> Optional[int]:
        """wait() on a released handle: the leader's code. Another thread's
        _finish() may be reaping the leader right now (the flag goes up
        first), so wait for it; a detached leader may still run: no wait."""
        if self.leader is None:
            return None
        if self.detached:
            return self.leader.returncode
        return self.leader.wait()

    def _kill_with_parent(self) -> None:
        """Have the watchdog kill this whole group if this process dies."""
        kill_file = None
        if self._strategy.cgroup_path is not None:
            candidate = os.path.join(self._strategy.cgroup_path, "cgroup.kill")
            kill_file = candidate if os.path.exists(candidate) else None
        cgroups = getattr(self._strategy, "cgroups", None)
        dirs = [cg.path for cg in cgroups.all] if cgroups is not None else []
        # Set first: whatever register() did before failing, release unregisters.
        self._kill_on_parent_death = True
        watchdog.register(self.pgid, kill_file, dirs)

    def _unregister(self) -> None:
        if _owned.get(self.pgid) is self._wref:
            _owned.pop(self.pgid, None)

    def _release(self) -> None:
        self._released = True
        self._strategy.close()
        if self._kill_on_parent_death:
            watchdog.unregister(self.pgid)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait until every member of the group has died (not just the
        leader). Returns the leader's returncode when this program spawned
        it. Raises WaitTimeout if members still run after `timeout`."""
        timeout = check_timeout(timeout)
        if self._released:
            return self._released_returncode()
        deadline = None if timeout is None else time.monotonic() + timeout
        leader = self.leader
        if leader is not None and not self._leader_reaped:
            # The group cannot be empty while its leader runs: wait for the
            # leader alone first (one waitid, no pidfd, no scan), then ask
            # the kernel whether anything else is left.
            try:
                leader.wait(timeout)
            except WaitTimeout:
                raise WaitTimeout([f"process group {self.pgid}"], timeout or 0.0) from None
            if self.release_if_empty():  # the usual end: one probe, no scan, no pidfd
                return leader.returncode
        # One ExitWatch per call: its pidfds are never shared with another
        # thread's wait (closing one under a poller could hit a reused fd).
        with ExitWatch() as exits:
            if not self._watch(deadline, "exited", exits):
                raise WaitTimeout([f"process group {self.pgid}"], timeout or 0.0)
        return self._finish()

    async def wait_async(self, timeout: Optional[float] = None) -> Optional[int]:
        """wait() for asyncio or trio: the loop watches the pidfds (no thread)."""
        timeout = check_timeout(timeout)
        if self._released:
            return self._released_returncode()
        deadline = None if timeout is None else time.monotonic() + timeout
        leader = self.leader
        if leader is not None and not self._leader_reaped:
            try:
                await leader.wait_async(timeout)
            except WaitTimeout:
                raise WaitTimeout([f"process group {self.pgid}"], timeout or 0.0) from None
            if self.release_if_empty():
                return leader.returncode
        with ExitWatch() as exits:
            if not await self._watch_async(deadline, "exited", exits):
                raise WaitTimeout([f"process group {self.pgid}"], timeout or 0.0)
        return self._finish()

    # -- terminate --------------------------------------------------------------------
    def _term_signals(self) -> bool:
        """SIGTERM (and SIGCONT, so stopped members can act on it).
        False when the group had no member left to signal."""
        with self._release_lock:
            if self._released:  # another thread's wait() ended it
                return False
            try:
                self._strategy.signal(SIGTERM)
                if SIGCONT is not None:
                    self._strategy.signal(int(SIGCONT))
            except ProcessLookupError:
                return False
        return True

    def _kill_quietly(self) -> None:
        self._sigkilled = True
        with self._release_lock:
            if self._released:
                return
            try:
                self._strategy.kill()
            except ProcessLookupError:
                pass

    def _report(self, start: float, escalated: bool, all_gone: bool = True) -> TerminateReport:
        if all_gone:
            self._finish()
        for seen in self._seen.values():
            if not seen.name:
                seen.name = "?"
        return TerminateReport(self.pgid, sorted(self._seen.values(), key=lambda m: m.pid), escalated,
                               time.monotonic() - start, all_gone)

    def terminate(self, grace: float = DEFAULT_GRACE, kill_timeout: float = DEFAULT_KILL_TIMEOUT) -> TerminateReport:
        """SIGTERM the whole group, wait up to `grace` seconds until every
        member has died, SIGKILL what is left, wait up to `kill_timeout` for
        that too. Returns a report naming each member and how it ended;
        `all_gone` is False (and the handle stays open) when a member
        survived SIGKILL, e.g. stuck in uninterruptible sleep."""
        grace, kill_timeout = check_grace(grace), check_grace(kill_timeout, "kill_timeout")
        start = time.monotonic()
        if self._released:
            return TerminateReport(self.pgid, sorted(self._seen.values(), key=lambda m: m.pid))
        escalated, all_gone = False, True
        with ExitWatch() as exits:
            self._watch(start, "exited", exits, names=True, snapshot=True)  # who is there
            if self._term_signals():
                deadline = time.monotonic() + grace
                if not self._watch(deadline, "terminated", exits, names=True):
                    escalated = True
                    self._kill_quietly()
                    all_gone = self._watch(time.monotonic() + kill_timeout, "killed", exits, names=True,
                                           observe=False)
        return self._report(start, escalated, all_gone)

    async def terminate_async(self, grace: float = DEFAULT_GRACE,
                              kill_timeout: float = DEFAULT_KILL_TIMEOUT) -> TerminateReport:
        """terminate() for asyncio or trio: never blocks the event loop."""
        grace, kill_timeout = check_grace(grace), check_grace(kill_timeout, "kill_timeout")
        start = time.monotonic()
        if self._released:
            return TerminateReport(self.pgid, sorted(self._seen.values(), key=lambda m: m.pid))
        escalated, all_gone = False, True
        with ExitWatch() as exits:
            await self._watch_async(start, "exited", exits, names=True, snapshot=True)
            if self._term_signals():
                deadline = time.monotonic() + grace
                if not await self._watch_async(deadline, "terminated", exits, names=True):
                    escalated = True
                    self._kill_quietly()
                    all_gone = await self._watch_async(time.monotonic() + kill_timeout, "killed", exits,
                                                       names=True, observe=False)
        return self._report(start, escalated, all_gone)

    # -- lifetime ----------------------------------------------------------------------------
    def detach(self) -> None:
        """Let the group outlive this handle: close() and the context
        managers then release it without killing anything."""
        self.detached = True

    def _release_detached(self) -> None:
        with self._release_lock:
            self._released = True  # before the reap: see _finish()
            self._unregister()
            if self.leader is not None and not self._leader_reaped:
                self.leader._release()
        self._release()

    def _released_or_let_go(self) -> bool:
        """close()'s first step: True when there is nothing to wait for (the
        handle was released, or it is detached and is released now); else
        SIGKILL goes out and the caller waits."""
        if self._released:
            return True
        if self.detached:
            self._release_detached()
            return True
        self._kill_quietly()
        return False

    def close(self, kill_timeout: float = DEFAULT_KILL_TIMEOUT) -> bool:
        """Release the handle. Unless detached, members still running are
        killed first (kill on close) and waited for, at most `kill_timeout`
        seconds. Returns True once released; False when a member outlived
        SIGKILL that long (stuck in the kernel): the handle then stays open,
        its pgid pinned, for a later close(), wait() or terminate()."""
        if self._released_or_let_go():
            return True
        with ExitWatch() as exits:
            if not self._watch(time.monotonic() + kill_timeout, "killed", exits, observe=False):
                return False
        self._finish()
        return True

    async def close_async(self, kill_timeout: float = DEFAULT_KILL_TIMEOUT) -> bool:
        """close() for asyncio or trio: the wait for the killed members is
        awaited. A cancellation meanwhile stops the wait, not the SIGKILL,
        and leaves the handle open; run_async() shields its close()."""
        if self._released_or_let_go():
            return True
        with ExitWatch() as exits:
            if not await self._watch_async(time.monotonic() + kill_timeout, "killed", exits, observe=False):
                return False
        self._finish()
        return True

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        # close() even when terminate() is interrupted (Ctrl-C in the grace):
        # it kills what is left, so the block never leaks the group.
        try:
            if not self.detached and not self._released:
                self.terminate()
        finally:
            self.close()

    async def __aenter__(self) -> "ProcessGroup":
        return self

    async def __aexit__(self, *exc: object) -> None:
        # As __exit__: a cancellation during the grace still ends the group,
        # and the last wait is awaited (never blocks the loop). A cancellation
        # cuts the grace short (under trio or an anyio cancel scope, a block
        # left by cancellation skips it), but the close that follows is
        # shielded: there every await of a cancelled task would raise again,
        # leaving the SIGKILLed group unwaited for and its handle open.
        try:
            if not self.detached and not self._released:
                await self.terminate_async()
        finally:
            if not self._released:
                from . import _aio
                await _aio.shielded(self.close_async)


def set_child_subreaper(enabled: bool = True) -> None:
    """Opt in (Linux) to adopting orphaned descendants.

    What it changes for the whole process: every orphaned descendant of any
    child of this process (osl_pg's, subprocess's, anyone's) is reparented to
    this process instead of init, and stays a zombie until this process
    reaps it. osl_pg reaps only adopted orphans that are members of groups
    it is waiting on or terminating, and reports their exit status; it never
    reaps a child that has an osl_pg Process handle or that is outside its
    groups (a subprocess.Popen child keeps its own waitpid()). Other orphans
    stay zombies until something calls wait for them. Code that calls
    os.wait() (any child) may steal children osl_pg would have reaped.
    """
    global _adopting
    backend.set_child_subreaper(enabled)
    _adopting = bool(enabled)
