"""pytest plugin: find the processes a test leaves running, show them, end them.

Off unless asked for: ``--leaked-processes=fail|warn|kill`` (or the ini option
``leaked_processes``; ``-p osl_pg.pytest_plugin`` alone means ``fail``). With
no option pytest only registers the option: no hook runs per test. A test
may set its own mode with ``@pytest.mark.leaked_processes("warn")``;
``"off"`` runs it as without the plugin (no subreaper, no check), for a test
that watches what happens to its own orphans.

For each test, from the start of its setup to the end of its teardown, this
process is a child subreaper (Linux), so the orphans of a tree the test
started (double forks, setsid daemons) are reparented to it rather than to
init. A *leak* is a live process that descends from this one, did not exist
when the test began (same pid *and* start time: a recycled pid is a new
process), and is not owned by a fixture of a wider scope; processes sharing a
new process group or session with a leak are leaks too. Leaks are printed as
a tree, sent SIGTERM (and SIGCONT), then SIGKILL after a grace, and the mode
decides the rest: ``fail`` reports the test's teardown as failed, ``warn``
issues a LeakedProcessWarning, ``kill`` only ends them.

A fixture of class, module, package or session scope owns the processes that
appear while it sets up, and their descendants (or group mates) seen later;
they are checked when the fixture is finalized and charged to it then.
Zombies that were reparented to us are reaped, unless a live Popen object or
osl_pg handle could still wait for them; children that existed before the
test are never touched. Only at the end of a test: until then an orphan that
exited is a zombie of pytest's (init would have reaped it at once) unless an
osl_pg group it is in is waited on, since a reaper running during the test
(a thread, a SIGCHLD handler) could not tell adopted orphans from children
the test spawned and waits for itself.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import warnings

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Generator, Iterable, List, Optional, Set, Tuple

    _Key = Tuple[int, float]  # (pid, start time): one process, never a later one with the same pid

import pytest

if TYPE_CHECKING:
    import psutil  # imported where used: every pytest run imports this module, most never use it

MODES = ("fail", "warn", "kill", "off")
GRACE = 1.0         # seconds between SIGTERM and SIGKILL
SETTLE = 1.0        # seconds a process already dying (a signal pending) gets to finish before it counts
KILL_TIMEOUT = 5.0  # SIGKILL ends a process within milliseconds unless it is stuck in the kernel
_LINUX = sys.platform.startswith("linux")
_PR_GET_CHILD_SUBREAPER = 37



class LeakedProcessWarning(UserWarning):
    """A test or fixture left processes running (``--leaked-processes=warn``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """The --leaked-processes option and the leaked_processes ini setting."""
    help = ("find processes a test leaves running and end them; fail (the test's teardown fails), "
            "warn (LeakedProcessWarning) or kill (end them only); off by default")
    parser.getgroup("osl_pg").addoption("--leaked-processes", choices=MODES, dest="leaked_processes", help=help)
    parser.addini("leaked_processes", help + " (" + "|".join(MODES) + ")", default="")


def pytest_configure(config: pytest.Config) -> None:
    """Registers the per-test hooks (LeakWatcher) only when a mode is on."""
    config.addinivalue_line("markers", "leaked_processes(mode): this test's own mode (fail, warn, kill or off; "
                                       "off: no subreaper and no check, for a test of orphan behaviour)")
    mode = config.getoption("leaked_processes") or config.getini("leaked_processes") or _mode_of_p(config)
    if mode not in MODES:
        raise pytest.UsageError(f"leaked_processes = {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "off":
        config.pluginmanager.register(LeakWatcher(mode), "osl_pg-leak-watcher")


def _mode_of_p(config: pytest.Config) -> str:
    """"fail" when ``-p osl_pg.pytest_plugin`` was given, which with the
    entry point installed would otherwise mean nothing."""
    plugins = getattr(config.known_args_namespace, "plugins", None) or []
    return "fail" if __name__ in plugins else "off"


# --------------------------------------------------------------------------
# what runs: our descendants, and who owns them


class _Proc:
    """One process as a scan saw it. `start` is its start time: in clock
    ticks since boot from /proc, else psutil's create_time()."""

    __slots__ = ("pid", "ppid", "pgid", "sid", "start", "zombie", "_handle")

    def __init__(self, pid: int, ppid: int, pgid: int, sid: int, start: float, zombie: bool,
                 handle: Optional[psutil.Process] = None):
        self.pid, self.ppid, self.pgid, self.sid, self.start, self.zombie = pid, ppid, pgid, sid, start, zombie
        self._handle = handle

    @property
    def key(self) -> _Key:
        return (self.pid, self.start)

    def handle(self) -> Optional[psutil.Process]:
        """A psutil handle on this very process (psutil checks its start
        time again before it signals), or None once it is gone."""
        import psutil
        if self._handle is None:
            try:
                p = psutil.Process(self.pid)
                # Read after psutil pinned its create_time: same start time,
                # same process as the scan saw.
                if _stat(self.pid).start == self.start:
                    self._handle = p
            except (psutil.Error, OSError, ValueError, IndexError):
                pass
        return self._handle


def _stat(pid: int) -> _Proc:
    """/proc/<pid>/stat, parsed. The command name may hold spaces and
    parentheses: the fields start after the last ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return _Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), float(fields[19]), fields[0] == b"Z")


_PF_EXITING = 0x4  # include/linux/sched.h: the task is in do_exit()


def _dying(pid: int) -> bool:
    """Whether `pid` is on its way out: exiting, or a signal is pending
    (kill() queues it before it returns, so a process the test's teardown
    has just signalled shows it). Unknown (no /proc) counts as dying."""
    if not _FAST:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            return False
        if int(fields[6]) & _PF_EXITING:
            return True
        with open(f"/proc/{pid}/status", "rb") as f:
            pending = [line.split()[1] for line in f if line.startswith((b"SigPnd:", b"ShdPnd:"))]
        return any(int(mask, 16) for mask in pending)
    except (OSError, ValueError, IndexError):
        return False  # gone


def _settle(pids: List[int]) -> None:
    """Up to SETTLE seconds for those of `pids` already dying to be gone:
    a process the teardown killed is not a leak for being slow to die."""
    deadline = time.monotonic() + SETTLE
    while any(_dying(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _children_files() -> bool:
    """Whether the kernel lists children in /proc/<pid>/task/<tid>/children
    (CONFIG_PROC_CHILDREN; Linux 3.5+): then a scan costs what our own
    tree holds, not what the machine runs."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


_FAST = _LINUX and _children_files()


def _descendants() -> List[Optional[_Proc]]:
    import psutil
    if not _FAST:
        return [_from_psutil(p) for p in psutil.Process().children(recursive=True)]
    found: List[Optional[_Proc]] = []
    todo = [os.getpid()]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone (and its children with it, or reparented: the next scan sees them)
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            for child in children:
                try:
                    found.append(_stat(child))
                except (OSError, ValueError, IndexError):
                    continue
                todo.append(child)
    return found


def _everyone() -> List[Optional[_Proc]]:
    import psutil
    if not _FAST:
        return [_from_psutil(p) for p in psutil.process_iter()]
    found: List[Optional[_Proc]] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append(_stat(int(entry)))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _from_psutil(p: psutil.Process) -> Optional[_Proc]:
    import psutil
    try:
        with p.oneshot():
            ids = (os.getpgid(p.pid), os.getsid(p.pid)) if os.name == "posix" else (0, 0)
            return _Proc(p.pid, p.ppid(), ids[0], ids[1], p.create_time(), p.status() == psutil.STATUS_ZOMBIE, p)
    except (psutil.Error, OSError):
        return None  # gone since the listing


def _scan(new_ids: Iterable[int] = ()) -> Dict[int, _Proc]:
    """Our descendants now, zombies included; with `new_ids` (process groups
    and sessions made during the test), also every process in one of them:
    members a setsid'd tree has outside our line of descent, whose orphans
    went to init (no subreaper here, or the test switched it off). Only
    descendants of the group's or session's maker can be in it."""
    me = os.getpid()
    ids = set(new_ids)
    found = {p.pid: p for p in _descendants() if p is not None}
    if ids:
        found.update({p.pid: p for p in _everyone()
                      if p is not None and p.pid != me and p.pid not in found and (p.pgid in ids or p.sid in ids)})
    return found


def _command(proc: _Proc) -> str:
    import psutil
    p = proc.handle()
    try:
        return (" ".join(p.cmdline()) or p.name()) if p is not None else "?"
    except (psutil.Error, OSError):
        return "?"


def _running(p: psutil.Process) -> bool:
    import psutil
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Owners:
    """Processes owned by fixtures wider than a test. A process belongs to
    the fixture that owns it, an ancestor of it, or a process of its group
    or session (unless that is pytest's own); once seen, it stays the
    fixture's after its parent dies."""

    def __init__(self) -> None:
        self.by_fixture: Dict[Any, Set[_Key]] = {}

    def claimed(self) -> Set[_Key]:
        return set().union(*self.by_fixture.values()) if self.by_fixture else set()

    def assign(self, table: Dict[int, _Proc], own_ids: Set[int]) -> Dict[int, Any]:
        """{pid: owning fixture} over `table`, claiming what is new."""
        owner_of_key = {k: f for f, keys in self.by_fixture.items() for k in keys}
        if not owner_of_key:
            return {}
        owner_of_id = {}
        for each in table.values():
            f = owner_of_key.get(each.key)
            if f is not None:
                owner_of_id.update({i: f for i in (each.pgid, each.sid) if i not in own_ids})
        owners: Dict[int, Any] = {}
        for pid in table:
            line, proc = [], table.get(pid)
            f = None
            while proc is not None and f is None and proc.pid not in line:
                line.append(proc.pid)
                f = (owners.get(proc.pid) or owner_of_key.get(proc.key)
                     or owner_of_id.get(proc.pgid) or owner_of_id.get(proc.sid))
                proc = table.get(proc.ppid)
            if f is not None:
                owners[pid] = f
                self.by_fixture[f].add(table[pid].key)
        return owners


# --------------------------------------------------------------------------
# ending them


def _end(leaks: Dict[int, _Proc]) -> Dict[int, str]:
    """SIGTERM (and SIGCONT, for stopped ones), SIGKILL after GRACE; how
    each ended. Signals go through psutil handles, which refuse a pid whose
    start time changed (a later process with the same number)."""
    import psutil
    from .tiers import ExitWatch
    how = {pid: "exited" for pid in leaks}
    procs = {pid: h for pid, h in ((pid, p.handle()) for pid, p in leaks.items()) if h is not None}

    def live() -> List[int]:
        return [pid for pid, p in procs.items() if _running(p)]

    def send(action: str, pids: List[int], note: str = "") -> None:
        """psutil's terminate(), kill() or resume() (SIGTERM, SIGKILL, SIGCONT;
        TerminateProcess for the first two on Windows)."""
        for pid in pids:
            try:
                getattr(procs[pid], action)()
                if note:
                    how[pid] = note
            except psutil.NoSuchProcess:
                pass
            except psutil.AccessDenied:
                how[pid] = "not ours to signal"

    def wait(seconds: float) -> List[int]:
        deadline = time.monotonic() + seconds
        with ExitWatch() as exits:
            while live() and time.monotonic() < deadline:
                exits.wait(live(), deadline)
        return live()

    termed = live()
    send("terminate", termed, "SIGTERM")
    if os.name == "posix":
        send("resume", termed)  # a stopped process gets SIGTERM only once it runs
    if wait(GRACE):
        send("kill", live(), "SIGKILL")
        for pid in wait(KILL_TIMEOUT):
            how[pid] = "still running after SIGKILL"
    return how


def _held_pids() -> Set[int]:
    """Pids some Popen object of this program (subprocess's, multiprocessing's,
    asyncio's) may still wait for: reaping them would steal their status."""
    held = set()
    for obj in gc.get_objects():
        if type(obj).__name__ == "Popen":
            attrs = getattr(obj, "__dict__", {})
            if isinstance(attrs.get("pid"), int) and attrs.get("returncode") is None:
                held.add(attrs["pid"])
    return held


def _reap(zombies: List[_Proc]) -> None:
    """Reap our zombie children nobody else will wait for: orphans reparented
    to us as subreaper, which init would have reaped."""
    from .process import child_by_pid
    if os.name != "posix":
        return  # no zombies: a Windows process is gone once it exits
    me = os.getpid()
    zombies = [z for z in zombies if z.ppid == me and child_by_pid(z.pid) is None]
    held = _held_pids() if zombies else set()
    for z in zombies:
        if z.pid not in held:
            try:
                os.waitpid(z.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _tree(leaks: Dict[int, _Proc], commands: Dict[int, str], how: Dict[int, str]) -> List[str]:
    lines = [f"{'PID':>8} {'PPID':>8}  {'ENDED BY':<10} COMMAND"]
    children: Dict[Optional[int], List[int]] = {}
    for pid, proc in leaks.items():
        children.setdefault(proc.ppid if proc.ppid in leaks else None, []).append(pid)

    def show(parent: Optional[int], depth: int) -> None:
        for pid in sorted(children.get(parent, [])):
            lines.append(f"{pid:>8} {leaks[pid].ppid:>8}  {how[pid]:<10} {'  ' * depth}{commands[pid]}")
            show(pid, depth + 1)

    show(None, 0)
    return lines


# --------------------------------------------------------------------------
# the per-test machinery, registered only when a mode is on


class LeakWatcher:
    """The plugin's active half (see the module docstring)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.owners: _Owners = _Owners()
        # pytest's own group and session (0 stands for "none": Windows, or
        # a session leader outside our pid namespace).
        self.own_ids: Set[int] = {0} | ({os.getpgrp(), os.getsid(0)} if os.name == "posix" else set())
        self.baseline: Set[_Key] = set()   # what ran when the current test began
        self.old_ids: Set[int] = set()    # process groups and sessions that existed then
        self.item: Optional[pytest.Item] = None
        self.found: List[str] = []        # the current test's leak reports (fail mode)
        self.summary: List[str] = []      # one line per offender, for the terminal summary
        self.late: List[str] = []         # fail-mode reports made after the last test ran
        self.test_mode: str = mode            # the current test's (see _mode_for)

    # -- the span of one test: subreaper on, baseline taken

    def _mode_for(self, item: pytest.Item) -> str:
        """The session's mode, or the test's own (@pytest.mark.leaked_processes)."""
        marker = item.get_closest_marker("leaked_processes")
        if marker is None:
            return self.mode
        mode = marker.args[0] if marker.args else marker.kwargs.get("mode")
        if mode not in MODES:
            raise pytest.UsageError(f"{item.nodeid}: leaked_processes({mode!r}): expected one of {', '.join(MODES)}")
        return str(mode)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, Any, None]:
        self.test_mode = self._mode_for(item)
        previous = _get_subreaper()
        if previous is not None:
            # "off": the test sees the system as without the plugin (no
            # subreaper, even one an enclosing pytest set: orphans go to init).
            _set_subreaper(self.test_mode != "off")
        if self.test_mode == "off":
            try:
                yield
            finally:
                if previous is not None:
                    _set_subreaper(previous)
            return
        self.item, self.found = item, []
        table = _scan()
        self.baseline = {p.key for p in table.values()}
        self.old_ids = self.own_ids | {i for p in table.values() for i in (p.pgid, p.sid)}
        try:
            yield
        finally:
            self.item = None
            if previous is not None:
                _set_subreaper(previous)

    # -- fixtures wider than a test own what they start

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any) -> Generator[None, Any, None]:
        if fixturedef.scope == "function":
            yield
            return
        before = {p.key for p in _scan().values()}
        yield
        taken = self.owners.claimed()  # by fixtures it set up itself (request.getfixturevalue)
        new = {p.key for p in _scan().values() if p.key not in before and p.key not in taken}
        if new:
            self.owners.by_fixture.setdefault(fixturedef, set()).update(new)

    def pytest_fixture_post_finalizer(self, fixturedef: Any) -> None:
        if fixturedef not in self.owners.by_fixture:
            return

        def mine(table: Dict[int, _Proc]) -> Dict[int, _Proc]:
            owners = self.owners.assign(table, self.own_ids)
            return {pid: p for pid, p in table.items() if owners.get(pid) is fixturedef}

        who = f"The {fixturedef.scope}-scoped fixture {fixturedef.argname!r}"
        name = f"fixture {fixturedef.argname!r} ({fixturedef.scope} scope, {fixturedef.baseid or 'root conftest'})"
        self._handle(who, name, mine, _fixture_location(fixturedef), self.mode)
        del self.owners.by_fixture[fixturedef]

    # -- the check, once the test's teardown is over

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, None]:
        yield
        if self.test_mode == "off":
            return

        def mine(table: Dict[int, _Proc]) -> Dict[int, _Proc]:
            new = {pid: p for pid, p in table.items() if p.key not in self.baseline}
            ids = {i for p in new.values() if not p.zombie for i in (p.pgid, p.sid)} - self.old_ids
            if ids:
                table = _scan(ids)
                new = {pid: p for pid, p in table.items() if p.key not in self.baseline}
            owners = self.owners.assign(table, self.own_ids)
            return {pid: p for pid, p in new.items() if pid not in owners}

        self._handle("The test", item.nodeid, mine, (str(item.path), (item.location[1] or 0) + 1), self.test_mode)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Generator[None, Any, None]:
        outcome = yield
        if call.when != "teardown" or not self.found or item is not self.item:
            return
        report = outcome.get_result()
        text = "\n\n".join(self.found)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = text
        else:
            report.sections.append(("osl_pg: leaked processes", text))

    def _handle(self, who: str, name: str, select: Callable[[Dict[int, _Proc]], Dict[int, _Proc]],
                where: Tuple[str, int], mode: str) -> bool:
        """End the live processes select() picks from a scan, and what they
        start while being ended; reap the zombies it picks; report them per
        mode. True if there were any."""
        leaks: Dict[int, _Proc] = {}
        commands: Dict[int, str] = {}
        how: Dict[int, str] = {}
        chosen = select(_scan())
        if any(not p.zombie for p in chosen.values()):
            _settle([pid for pid, p in chosen.items() if not p.zombie])
            chosen = select(_scan())
        for _ in range(4):  # each round: children forked while the previous one was ended
            live = {pid: p for pid, p in chosen.items() if not p.zombie and pid not in leaks}
            if not live:
                break
            commands.update({pid: _command(p) for pid, p in live.items()})
            how.update(_end(live))
            leaks.update(live)
            chosen = select(_scan())
        _reap([p for p in chosen.values() if p.zombie])
        # Gone before any signal: it was exiting on its own, not a leak.
        leaks = {pid: p for pid, p in leaks.items() if how[pid] != "exited"}
        if not leaks:
            return False
        n = len(leaks)
        s = "es" if n > 1 else ""
        text = "\n".join([f"{who} left {n} process{s} running; osl_pg ended {'them' if n > 1 else 'it'}:"]
                         + _tree(leaks, commands, how))
        shown = sorted({commands[pid][:60] for pid in leaks})
        self.summary.append(f"{name}: {n} process{s} ({'; '.join(shown[:3])}{'; ...' if len(shown) > 3 else ''})")
        if mode == "warn":
            warnings.warn_explicit(LeakedProcessWarning(text), LeakedProcessWarning, where[0], where[1])
        elif mode == "fail":
            # After the last test (-x, Ctrl-C) there is no report to fail.
            (self.found if self.item is not None else self.late).append(text)
        return True

    # -- the session

    @pytest.hookimpl(trylast=True)  # after the runner finalized the fixtures left
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for f in list(self.owners.by_fixture):  # fixtures pytest never finalized
            self.pytest_fixture_post_finalizer(f)
        if self.late and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary:
            terminalreporter.write_sep("-", f"osl_pg ended leaked processes ({self.mode} mode)")
            for line in self.summary:
                terminalreporter.write_line(line)
            for text in self.late:
                terminalreporter.write_line(text)


def _fixture_location(fixturedef: Any) -> Tuple[str, int]:
    code = getattr(getattr(fixturedef, "func", None), "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code else ("<fixture>", 0)


# --------------------------------------------------------------------------
# PR_SET_CHILD_SUBREAPER (Linux)


def _get_subreaper() -> Optional[bool]:
    """Whether this process is a child subreaper now; None where there is
    no such thing (not Linux)."""
    if not _LINUX:
        return None
    import ctypes
    value = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        return None
    return bool(value.value)


def _set_subreaper(on: bool) -> None:
    # osl_pg's own switch, not the bare prctl: the groups osl_pg waits on
    # then reap their members adopted by us, as init would have.
    from .group import set_child_subreaper
    set_child_subreaper(on)
