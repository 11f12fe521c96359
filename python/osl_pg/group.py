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
"""
import errno
import os
import signal as _signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, Generator, Iterable, List, Optional

import psutil

from . import watchdog
from ._backend import backend
from .errors import ProcessNotFound
from .tiers import Escapee, ExitWatch, PgidTier, Tier
from .process import Process, WaitTimeout, child_by_pid, number_in_use

DEFAULT_GRACE = 5.0
DEFAULT_KILL_TIMEOUT = 10.0  # SIGKILL normally ends a process within milliseconds

SIGTERM = int(getattr(_signal, "SIGTERM", 15))
SIGKILL = int(getattr(_signal, "SIGKILL", 9))
SIGCONT = getattr(_signal, "SIGCONT", None)


@dataclass(frozen=True)
class Member:
    pid: int
    ppid: Optional[int]
    name: str
    zombie: bool
    uid: Optional[int] = None


@dataclass
class MemberOutcome:
    """How one member ended under terminate(): "exited" (before any signal
    or on its own), "terminated" (after SIGTERM, within the grace) or
    "killed" (by SIGKILL after the grace). `returncode` is known for
    processes this program reaped (the leader; adopted orphans under a
    subreaper)."""

    pid: int
    name: str
    outcome: str = "exited"
    returncode: Optional[int] = None


@dataclass
class TerminateReport:
    pgid: int
    members: List[MemberOutcome] = field(default_factory=list)
    escalated: bool = False  # SIGKILL was needed
    duration: float = 0.0
    # False when members outlived `kill_timeout` after SIGKILL (stuck in the
    # kernel, uninterruptible): they are left "running" and the handle stays
    # open (and pinned) so the caller can wait, retry or close().
    all_gone: bool = True

    def by_outcome(self, outcome: str) -> List[MemberOutcome]:
        return [m for m in self.members if m.outcome == outcome]


# Groups created by this process, by pgid: how a group "this process
# created" is found again, and what the default security policy trusts.
_owned: Dict[int, "weakref.ref[ProcessGroup]"] = {}
_owned_lock = threading.Lock()

# Set by set_child_subreaper(): only then are orphans of our groups that
# were reparented to us ours to reap.
_adopting = False


# pgids of groups this program released after reaping their leader. The
# number may now name someone else's group: a process whose pid is that
# number was born after our leader died (see released_and_reused()).
_released_reaped: Dict[int, bool] = {}


def released_and_reused(pgid: int) -> bool:
    """True when this program released group `pgid` after reaping its
    leader and a process has the leader's pid again: the number names an
    unrelated group, which the executor must not signal. (POSIX only: on
    Windows the job registry decides.) Nobody having the number means only
    our old members can be left: not a reuse."""
    return bool(_released_reaped.get(pgid)) and number_in_use(pgid)


def _forget(pgid: int, ref: "weakref.ref[ProcessGroup]") -> None:
    """A dropped handle's registry entry goes with it."""
    with _owned_lock:
        if _owned.get(pgid) is ref:
            del _owned[pgid]


def owned_group(pgid: int) -> Optional["ProcessGroup"]:
    ref = _owned.get(pgid)
    group = ref() if ref is not None else None
    return group if group is not None and not group.released else None


def _scan(pgid: int) -> List[Member]:
    """Current members of group `pgid`: the backend says who (getpgid over
    the process list on POSIX, the job's pid list on Windows), psutil
    describes them."""
    return _describe_all(backend.group_pids(pgid))


def _describe_all(pids: Iterable[int]) -> List[Member]:
    """Member records for `pids`; processes gone meanwhile are left out."""
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


def _name(p: psutil.Process) -> str:
    """p.name(); under Wine psutil's name() fails with a bare OSError (the
    NtQuerySystemInformation class it uses is not implemented), so fall
    back to the command line's first word."""
    try:
        return p.name()
    except OSError:  # psutil's own errors are not OSErrors: they propagate
        cmdline = p.cmdline()
        return os.path.basename(cmdline[0]) if cmdline else "?"


def _member_name(pid: int) -> str:
    """The process name for reports, or "?" once it is gone."""
    try:
        return _name(psutil.Process(pid))
    except (psutil.Error, OSError):
        return "?"


def _uid(p: psutil.Process) -> Optional[int]:
    try:
        return p.uids().real
    except (AttributeError, psutil.AccessDenied):  # no uids on Windows
        return None


def scan_group(pgid: int) -> List[Member]:
    return _scan(pgid)


class ProcessGroup:
    """A process group this program created (or found with `for_pgid`).

    ``with group:`` terminates the group on exit unless it was detached;
    ``async with`` does the same with ``terminate_async``.
    """

    def __init__(self, pgid: int, leader: Optional[Process] = None, tier: str = "process_group",
                 owner: str = "", strategy: Optional[Tier] = None):
        self.pgid = pgid
        self.leader = leader
        # How members are found, signalled and waited for (osl_pg.tiers);
        # `tier` names it: process_group, session or cgroup.
        self._strategy = strategy if strategy is not None else PgidTier(pgid, tier)
        self.tier = self._strategy.name
        self._signal = self._strategy.signaller()  # bound once: signal() is the hot path
        self.owner = owner
        self.detached = False
        self._released = False
        # Held while the handle is released and its leader reaped (which
        # frees the pgid), and by terminate()/close() around each signal
        # they send: none of those can reach a recycled pgid. signal()
        # itself stays lock-free (see _finish()). Reentrant: a Python signal
        # handler (osl-pg run forwards SIGINT) may call signal() or close()
        # on the thread that holds it.
        self._release_lock = threading.RLock()
        self._seen: Dict[int, MemberOutcome] = {}
        self._sigkilled = False  # SIGKILL sent: nothing can leave any more
        self._kill_on_parent_death = False
        if leader is not None:
            leader._pin()
        with _owned_lock:
            _owned[pgid] = weakref.ref(self, lambda ref, pgid=pgid: _forget(pgid, ref))
            _released_reaped.pop(pgid, None)

    def __del__(self) -> None:
        # Dropped without close(): stop pinning the leader so it is reaped
        # (never a zombie left, never a process killed), remove the cgroup
        # directories (processes still in them are moved out, not killed),
        # and take the group off the watchdog's list. __del__ rather than
        # weakref.finalize: it costs nothing per spawn.
        if getattr(self, "_released", True):
            return
        try:
            if self.leader is not None:
                self.leader._release()
            self._strategy.close()
            if self._kill_on_parent_death:
                watchdog.unregister(self.pgid)
        except Exception:  # at interpreter shutdown modules may be gone
            pass

    @classmethod
    def for_pgid(cls, pgid: int) -> "ProcessGroup":
        """The open handle of a group this process created."""
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
        return self.pgid

    @property
    def released(self) -> bool:
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
        """Freeze every member (cgroup tier; Unsupported otherwise)."""
        self._check_open()
        self._strategy.freeze()

    def thaw(self) -> None:
        self._check_open()
        self._strategy.thaw()

    def running_count(self) -> int:
        """How many members run now, by the tier's own membership (pgid or
        cgroup) and its pidfds: no per-member /proc reads."""
        if self._released:
            return 0
        with ExitWatch() as exits:
            return len(self._strategy.live(self._strategy.pids(), exits))

    @property
    def alive(self) -> bool:
        """True while any member is running (zombies do not count)."""
        return any(not m.zombie for m in self.members())

    # -- signals ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._released:
            raise ProcessNotFound(errno.ESRCH, f"process group {self.pgid} is gone and its handle was released")

    def signal(self, sig: int) -> None:
        """Send `sig` to every member. Safe against pgid reuse (see the
        module docstring): raises ProcessLookupError once released."""
        if self._released:  # inline _check_open(): this is the hot path
            self._check_open()
        try:
            self._signal(sig)
        except OSError as e:
            raise self._strategy.signal_error(e, sig) from None
        if sig == SIGKILL:
            self._sigkilled = True

    if sys.version_info < (3, 11):
        # Before 3.11 the interpreter may switch threads between any two
        # bytecodes, so between the released check and the killpg call
        # another thread's _finish() could reap the leader: take the lock
        # that _finish() holds (~0.2 us). From 3.11 on no switch can fall
        # there (see _finish()), and the hot path stays lock-free.
        _unlocked_signal = signal

        def signal(self, sig: int) -> None:  # type: ignore[no-redef]
            """Send `sig` to every member. Safe against pgid reuse (see the
            module docstring): raises ProcessLookupError once released."""
            with self._release_lock:
                self._unlocked_signal(sig)

    def kill(self) -> None:
        self.signal(SIGKILL)

    # -- waiting --------------------------------------------------------------------------
    def _until_empty(self, deadline: Optional[float], phase: str, exits: ExitWatch, names: bool = False,
                     observe: bool = True) -> Generator[List[int], None, bool]:
        """Scan, record who died in this phase, yield the live pids for the
        driver to wait on; return True once no member is running.

        A scan is the tier's member list (getpgid over the process list, or
        cgroup.procs) and one liveness check for all of them (pidfds on
        Linux): no per-member file is read unless `names` are wanted for a
        report. `observe` keeps the escape tracker fed (at most every
        100 ms, and only while members run); it is off once SIGKILL went
        out, when speed is all."""
        while True:
            pids = self._strategy.pids()
            for pid in pids:
                if pid not in self._seen:
                    self._seen[pid] = MemberOutcome(pid, _member_name(pid) if names else "", outcome="running")
            live = self._strategy.live(pids, exits)
            if _adopting and len(live) < len(pids):
                live_set = set(live)
                for pid in pids:
                    if pid not in live_set:
                        self._reap_adopted(pid)
            live_set = set(live)
            for pid, seen in self._seen.items():
                if seen.outcome == "running" and pid not in live_set:
                    seen.outcome = phase
            if not live:
                return True
            if observe and not self._sigkilled:  # only while members could still escape
                self._strategy.observe_now_and_then()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            yield live

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

    def _watch(self, deadline: Optional[float], phase: str, exits: ExitWatch, **scan: bool) -> bool:
        """Wait (sleeping on exits) until the group is empty or `deadline`."""
        gen = self._until_empty(deadline, phase, exits, **scan)
        try:
            live = next(gen)
            while True:
                self._strategy.wait_exits(live, deadline, exits)
                live = gen.send(None)  # type: ignore[arg-type]
        except StopIteration as stop:
            return bool(stop.value)

    async def _watch_async(self, deadline: Optional[float], phase: str, exits: ExitWatch, **scan: bool) -> bool:
        gen = self._until_empty(deadline, phase, exits, **scan)
        try:
            live = next(gen)
            while True:
                await self._strategy.wait_exits_async(live, deadline, exits)
                live = gen.send(None)  # type: ignore[arg-type]
        except StopIteration as stop:
            return bool(stop.value)

    def _finish(self) -> Optional[int]:
        """The group is empty: reap the leader and release the handle."""
        rc = None
        # Released *before* the leader is reaped (which frees the pgid):
        # a signal() in another thread either checks the flag after this
        # and raises, or is already past it; on CPython 3.11+ nothing can
        # switch threads between that check and the killpg() C call, so the
        # signal has gone out before this line runs.
        with self._release_lock:
            first = not self._released
            self._released = True
            if self.leader is not None:
                self.leader._release()
        if not first:  # another thread's wait()/terminate() released it
            return self._released_returncode()
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
        watchdog.register(self.pgid, kill_file)
        self._kill_on_parent_death = True

    def _release(self) -> None:
        self._released = True
        if self.leader is not None and self.leader.reaped:
            if len(_released_reaped) >= 4096:
                _released_reaped.pop(next(iter(_released_reaped)))
            _released_reaped[self.pgid] = True
        self._strategy.close()
        if self._kill_on_parent_death:
            watchdog.unregister(self.pgid)
        with _owned_lock:
            ref = _owned.get(self.pgid)
            if ref is not None and ref() is self:
                del _owned[self.pgid]

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait until every member of the group has died (not just the
        leader). Returns the leader's returncode when this program spawned
        it. Raises WaitTimeout if members still run after `timeout`."""
        if self._released:
            return self._released_returncode()
        deadline = None if timeout is None else time.monotonic() + timeout
        # One ExitWatch per call: its pidfds are never shared with another
        # thread's wait (closing one under a poller could hit a reused fd).
        with ExitWatch() as exits:
            if not self._watch(deadline, "exited", exits):
                raise WaitTimeout([f"process group {self.pgid}"], timeout or 0.0)
        return self._finish()

    async def wait_async(self, timeout: Optional[float] = None) -> Optional[int]:
        if self._released:
            return self._released_returncode()
        deadline = None if timeout is None else time.monotonic() + timeout
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
        start = time.monotonic()
        if self._released:
            return TerminateReport(self.pgid, sorted(self._seen.values(), key=lambda m: m.pid))
        escalated, all_gone = False, True
        with ExitWatch() as exits:
            self._watch(start, "exited", exits, names=True)  # snapshot who is there
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
        start = time.monotonic()
        if self._released:
            return TerminateReport(self.pgid, sorted(self._seen.values(), key=lambda m: m.pid))
        escalated, all_gone = False, True
        with ExitWatch() as exits:
            await self._watch_async(start, "exited", exits, names=True)
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

    def close(self) -> None:
        """Release the handle. Unless detached, members still running are
        killed first (kill on close) and waited for."""
        if self._released:
            return
        if not self.detached:
            self._kill_quietly()
            with ExitWatch() as exits:
                self._watch(None, "killed", exits, observe=False)
            self._finish()
        else:
            with self._release_lock:
                self._released = True  # before the reap: see _finish()
                if self.leader is not None:
                    self.leader._release()
            self._release()

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
        # As __exit__: a cancellation during the grace still ends the group.
        try:
            if not self.detached and not self._released:
                await self.terminate_async()
        finally:
            self.close()


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
