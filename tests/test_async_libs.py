"""run_async() and the async waits under asyncio, trio, and anyio on both
of its backends: results, cancellation that ends the whole tree (SIGTERM,
grace, SIGKILL) while the loop keeps running, timeouts, the group's waits,
with and without pidfds. Checked against the OS (psutil, getpgid)."""
import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

import osl_pg
import osl_pg._posix
from osl_pg import ProcessExecutor, ProcessSpawnOperation
from osl_pg.process import WaitTimeout
from conftest import alive, pgid_of, py, wait_for

trio = pytest.importorskip("trio")
anyio = pytest.importorskip("anyio")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process trees (sh, getpgid)")

SH = "/bin/sh"
LIBS = ["asyncio", "trio", "anyio-asyncio", "anyio-trio"]


@pytest.fixture(params=["pidfd", "polling"])
def pidfd(request, monkeypatch):
    """Each test both ways: the loop watching pidfds, and the polling of
    systems without them (Linux < 5.3, macOS), as OSL_PG_TEST_NO_PIDFD."""
    if request.param == "pidfd":
        if not osl_pg._posix.HAS_PIDFD:
            pytest.skip("no pidfd_open here (or OSL_PG_TEST_NO_PIDFD)")
    else:
        monkeypatch.setattr(osl_pg._posix, "HAS_PIDFD", False)
    return request.param


class Harness:
    """One way to write a test for every library: run(main), sleep(),
    start() a task and later cancel() it (Task.cancel for asyncio, a cancel
    scope for trio and anyio) and await its outcome()."""

    def __init__(self, lib):
        self.lib = lib
        self.mod = {"asyncio": asyncio, "trio": trio}.get(lib, anyio)

    def run(self, main):
        if self.lib == "asyncio":
            return asyncio.run(self._asyncio_main(main))
        if self.lib == "trio":
            return trio.run(self._structured_main, main)
        return anyio.run(self._structured_main, main, backend=self.lib.split("-")[1])

    async def _asyncio_main(self, main):
        self.tasks = []
        try:
            return await main(self)
        finally:
            for t in self.tasks:
                t.cancel()

    async def _structured_main(self, main):
        opener = trio.open_nursery if self.lib == "trio" else anyio.create_task_group
        async with opener() as self.nursery:
            try:
                return await main(self)
            finally:
                self.nursery.cancel_scope.cancel()  # the tickers

    async def sleep(self, seconds):
        await self.mod.sleep(seconds)

    def start(self, fn, *args, **kwargs):
        if kwargs:
            return self.start(lambda: fn(*args, **kwargs))
        if self.lib == "asyncio":
            task = asyncio.ensure_future(fn(*args))
            self.tasks.append(task)
            return AsyncioTask(task)
        return ScopedTask(self, fn, args)

    async def ticker(self, ticks):
        while True:
            await self.sleep(0.005)
            ticks.append(1)


class AsyncioTask:
    def __init__(self, task):
        self.task = task

    def cancel(self):
        self.task.cancel()

    async def outcome(self):
        try:
            return "done", await self.task
        except asyncio.CancelledError:
            return "cancelled", None
        except Exception as e:
            return "raised", e


class ScopedTask:
    def __init__(self, h, fn, args):
        self.scope = h.mod.CancelScope()
        self.finished = h.mod.Event()
        self.result = None
        h.nursery.start_soon(self._body, fn, args)

    async def _body(self, fn, args):
        try:
            with self.scope:
                try:
                    self.result = "done", await fn(*args)
                except Exception as e:
                    self.result = "raised", e
            if self.scope.cancelled_caught:
                self.result = "cancelled", None
        finally:
            self.finished.set()

    def cancel(self):
        self.scope.cancel()

    async def outcome(self):
        await self.finished.wait()
        return self.result


def group_members(pgid):
    return [p.pid for p in psutil.process_iter() if pgid_of(p.pid) == pgid and alive(p.pid)]


def tree_of(marker):
    """(pgid, live members) of the run whose command line has `marker`."""
    for p in psutil.Process().children():
        try:
            if marker in " ".join(p.cmdline()):
                return p.pid, group_members(p.pid)
        except psutil.NoSuchProcess:
            continue
    return None, []


def osl_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("osl_pg")]


@pytest.mark.parametrize("lib", LIBS)
def test_run_async_returns_the_completed_run(lib, pidfd):
    code = "import os, sys; print(os.getpid(), os.getpgid(0)); sys.stdout.write(sys.stdin.read()); sys.stderr.write('e')"

    async def main(h):
        return await osl_pg.run_async(py(code), input="in\n", capture_output=True, text=True)

    r = Harness(lib).run(main)
    assert isinstance(r, osl_pg.CompletedRun) and isinstance(r, subprocess.CompletedProcess)
    first, rest = r.stdout.split("\n", 1)
    pid, pgid = map(int, first.split())
    assert (r.returncode, rest, r.stderr, r.leftovers) == (0, "in\n", "e", [])
    assert pid == pgid == r.pgid  # the child led a group of its own
    assert osl_threads() == []


# The shell writes a file when SIGTERM comes (the graceful step); both
# sleeps are its children, in its group.
GRACEFUL = "trap 'echo term > {f}; exit 143' TERM; sleep 300 & sleep 300 & wait # {m}"
# Ignores SIGTERM (so do the sleeps: an ignored signal stays ignored across
# exec): only the SIGKILL after the grace ends it.
DEAF = "trap '' TERM; sleep 300 & sleep 300 & wait # {m}{f}"


async def _cancel_mid_run(h, script, grace, marker, flag=""):
    """Start run_async, wait for the tree (shell + 2 sleeps), cancel the
    task; return its outcome, the pgid and members, the ticks while it ran
    and while it was torn down, and the thread count before and after."""
    ticks = []
    h.start(h.ticker, ticks)
    before = threading.active_count()
    run = h.start(osl_pg.run_async, [SH, "-c", script.format(m=marker, f=flag)], capture_output=True, grace=grace)
    members = []
    for _ in range(1000):
        await h.sleep(0.01)
        pgid, members = tree_of(marker)
        if len(members) == 3 and len(ticks) >= 3:  # the ticker ran meanwhile: the loop was not blocked
            break
    assert len(members) == 3, members
    running_ticks = len(ticks)
    run.cancel()
    at_cancel = len(ticks)
    outcome = await run.outcome()
    return outcome, pgid, members, running_ticks, len(ticks) - at_cancel, before, threading.active_count()


@pytest.mark.parametrize("lib", LIBS)
def test_cancelled_run_async_ends_the_tree_gracefully(lib, pidfd, tmp_path):
    marker = f"graceful-{lib}-{pidfd}"
    outcome, pgid, members, running_ticks, _, before, after = Harness(lib).run(
        lambda h: _cancel_mid_run(h, GRACEFUL, 30.0, marker, tmp_path / "got-term"))
    assert outcome == ("cancelled", None)
    assert running_ticks > 0  # the loop ran while run_async awaited the tree
    assert wait_for(lambda: not any(alive(p) for p in members), timeout=10)
    assert group_members(pgid) == []
    # SIGTERM came first: the shell's trap ran (SIGKILL would have come
    # only after the 30 s grace, and runs no trap).
    assert (tmp_path / "got-term").read_text() == "term\n"
    assert after == before and osl_threads() == []


@pytest.mark.parametrize("lib", LIBS)
def test_cancelled_run_async_kills_after_the_grace_and_keeps_the_loop_running(lib, pidfd):
    marker = f"deaf-{lib}-{pidfd}"
    outcome, pgid, members, _, teardown_ticks, before, after = Harness(lib).run(
        lambda h: _cancel_mid_run(h, DEAF, 0.3, marker))
    assert outcome == ("cancelled", None)
    # The teardown waited out the 0.3 s grace, then SIGKILL: the ticker
    # kept ticking meanwhile (a blocked loop would not have ticked at all).
    assert teardown_ticks > 0
    assert not any(alive(p) for p in members)  # gone when the cancellation came through
    assert group_members(pgid) == []
    assert after == before and osl_threads() == []


def test_cancellation_during_the_teardown_does_not_stop_it():
    # anyio's cancel scopes (asyncio backend) cancel the task again at every
    # loop iteration; a second Task.cancel() does the same once. The
    # teardown (TERM, grace, KILL) still runs to its end.
    marker = "twice"

    async def main(h):
        ticks = []
        h.start(h.ticker, ticks)
        run = h.start(osl_pg.run_async, [SH, "-c", DEAF.format(m=marker, f="")], grace=0.3)
        members = []
        while len(members) != 3:
            await h.sleep(0.01)
            pgid, members = tree_of(marker)
        run.cancel()
        await h.sleep(0.1)
        run.cancel()
        return await run.outcome(), members

    outcome, members = Harness("asyncio").run(main)
    assert outcome == ("cancelled", None)
    assert not any(alive(p) for p in members)


@pytest.mark.parametrize("lib", LIBS)
def test_timeout_ends_the_tree(lib, pidfd):
    async def main(h):
        with pytest.raises(subprocess.TimeoutExpired) as e:
            await osl_pg.run_async([SH, "-c", "echo started; sleep 300 & sleep 300"], capture_output=True,
                                   timeout=0.3)
        return e.value

    exc = Harness(lib).run(main)
    assert exc.timeout == 0.3 and exc.stdout == b"started\n"
    assert group_members(exc.pgid) == []
    assert {x.name for x in exc.leftovers} == {"sleep"}


@pytest.mark.parametrize("lib", LIBS)
def test_idle_timeout(lib):
    async def main(h):
        with pytest.raises(subprocess.TimeoutExpired) as e:
            await osl_pg.run_async([SH, "-c", "echo a; exec sleep 300"], capture_output=True, idle_timeout=0.3,
                                   timeout=120)
        return e.value

    exc = Harness(lib).run(main)
    assert exc.timeout == 0.3 and exc.stdout == b"a\n"
    assert group_members(exc.pgid) == []


@pytest.mark.parametrize("lib", LIBS)
def test_group_waits(lib, pidfd):
    executor = ProcessExecutor("async-libs")
    tree = ProcessSpawnOperation("sh").with_args(["-c", "sleep 300 & sleep 300 & wait"]).with_new_process_group()

    async def main(h):
        quick = await executor.execute_async(ProcessSpawnOperation("sh").with_args(["-c", "exit 3"]))
        assert await quick.process.wait_async() == 3
        r = await executor.execute_async(tree)
        group = r.group
        while len(group_members(group.pgid)) != 3:
            await h.sleep(0.01)
        members = group_members(group.pgid)
        with pytest.raises(WaitTimeout):
            await group.wait_async(timeout=0.2)
        with pytest.raises(WaitTimeout):
            await r.process.wait_async(timeout=0.05)
        # A cancelled wait leaves the group as it was: open, every member running.
        waiter = h.start(group.wait_async)
        await h.sleep(0.05)
        waiter.cancel()
        assert await waiter.outcome() == ("cancelled", None)
        assert not group.released and sorted(group_members(group.pgid)) == sorted(members)
        report = await group.terminate_async(grace=5)
        assert report.all_gone and not report.escalated and group.released
        assert {m.outcome for m in report.members} == {"terminated"}
        assert not any(alive(p) for p in members)

        r2 = await executor.execute_async(tree)
        while len(group_members(r2.group.pgid)) != 3:
            await h.sleep(0.01)
        members2 = group_members(r2.group.pgid)
        assert await r2.group.close_async() is True
        assert not any(alive(p) for p in members2) and r2.process.returncode == -9
        return group.pgid, r2.group.pgid

    for pgid in Harness(lib).run(main):
        assert group_members(pgid) == []


NO_CHILD_WATCHERS = textwrap.dedent("""
    # Python 3.14 removed asyncio's child watchers; on 3.12 and 3.13 using
    # them is deprecated. Take them away (and make any deprecation an
    # error): run_async() must not notice.
    import asyncio, asyncio.events, sys, warnings
    warnings.simplefilter("error", DeprecationWarning)
    mods = [asyncio, asyncio.events] + ([asyncio.unix_events] if hasattr(asyncio, "unix_events") else [])
    for mod in mods:
        for name in ("get_child_watcher", "set_child_watcher", "AbstractChildWatcher", "ThreadedChildWatcher",
                     "PidfdChildWatcher", "SafeChildWatcher", "FastChildWatcher", "MultiLoopChildWatcher"):
            if hasattr(mod, name):
                delattr(mod, name)
    for cls in (asyncio.AbstractEventLoopPolicy, asyncio.DefaultEventLoopPolicy):
        for name in ("get_child_watcher", "set_child_watcher"):
            for klass in cls.__mro__:
                if name in vars(klass):
                    delattr(klass, name)
    import osl_pg
    r = asyncio.run(osl_pg.run_async(["sh", "-c", "echo hi; sleep 300 & sleep 0.1"], capture_output=True,
                                     text=True))
    print(r.returncode, r.stdout.strip(), len(r.leftovers))
    async def cancelled():
        task = asyncio.ensure_future(osl_pg.run_async(["sh", "-c", "sleep 300 & sleep 300"]))
        await asyncio.sleep(0.3)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            print("cancelled")
    asyncio.run(cancelled())
""")


def test_run_async_needs_no_child_watcher():
    out = subprocess.run(py(NO_CHILD_WATCHERS), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "hi", "1", "cancelled"]


def test_import_osl_pg_imports_no_async_library():
    out = subprocess.run(py("import sys, osl_pg; print(sorted(m for m in ('asyncio', 'trio', 'anyio', "
                            "'sniffio', 'osl_pg._aio') if m in sys.modules))"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("lib", LIBS)
def test_async_with_group_cancelled_still_ends_and_releases_it(lib):
    executor = ProcessExecutor("async-libs")
    op = ProcessSpawnOperation("sh").with_args(["-c", "sleep 300 & wait"]).with_new_process_group()

    async def main(h):
        r = await executor.execute_async(op)
        while len(group_members(r.group.pgid)) != 2:
            await h.sleep(0.01)
        members = group_members(r.group.pgid)

        async def body():
            async with r.group:
                await h.sleep(300)

        task = h.start(body)
        await h.sleep(0.05)
        task.cancel()
        return await task.outcome(), r, members

    outcome, r, members = Harness(lib).run(main)
    assert outcome == ("cancelled", None)
    # asyncio cancels once, so the exit's terminate runs (SIGTERM); trio
    # and anyio cancel every await, so the grace is cut short (SIGKILL).
    # Either way the group was waited for and released.
    assert r.group.released and r.process.returncode in (-15, -9)
    assert not any(alive(p) for p in members) and group_members(r.group.pgid) == []


# Writes its pid (= its pgid) first, so the test can look for its group after.
PID_THEN_TREE = "echo $$ > {f}; sleep 300 & sleep 300 & wait"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_asyncio_timeout_around_run_async_ends_the_tree_and_raises_timeouterror(tmp_path):
    pid_file = tmp_path / "pid"

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await osl_pg.run_async([SH, "-c", PID_THEN_TREE.format(f=pid_file)])
        # The cancellation was accounted for: the task is not left cancelling.
        assert asyncio.current_task().cancelling() == 0

    asyncio.run(main())
    assert group_members(int(pid_file.read_text())) == []


def test_trio_move_on_after_around_run_async_ends_the_tree(tmp_path):
    pid_file = tmp_path / "pid"

    async def main():
        with trio.move_on_after(0.5) as scope:
            await osl_pg.run_async([SH, "-c", PID_THEN_TREE.format(f=pid_file)])
        return scope.cancelled_caught

    assert trio.run(main) is True
    assert group_members(int(pid_file.read_text())) == []
