"""ProcessGroup lifecycle: terminate, whole-group wait, PID-reuse safety,
kill on close and on parent death, asyncio - checked with psutil and /proc."""
import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

from conftest import alive, in_new_pid_namespace, linux_only, py, wait_for
from osl_pg import ProcessGroup, ProcessSpawnOperation

TREE_3_LEVEL = (  # 1 leader + 10 children + 100 grandchildren = 111 processes
    "for i in 1 2 3 4 5 6 7 8 9 10; do "
    "sh -c 'for j in 1 2 3 4 5 6 7 8 9 10; do sleep 300 & done; wait' & done; wait")


def live_members(group):
    return [m for m in group.members() if not m.zombie]


def spawn_group(executor, *argv):
    r = executor.execute(ProcessSpawnOperation(argv[0]).with_args(list(argv[1:])).with_new_process_group())
    return r


def test_terminate_three_level_tree_of_111(executor):
    r = spawn_group(executor, "sh", "-c", TREE_3_LEVEL)
    group = r.group
    assert wait_for(lambda: len(live_members(group)) == 111, timeout=30)
    pids = [m.pid for m in group.members()]
    parents = {psutil.Process(p).ppid() for p in pids} - {os.getpid()}
    assert r.pid in parents and len(parents) == 11  # leader + 10 parents of grandchildren
    report = group.terminate(grace=10)
    assert not [p for p in pids if alive(p)]
    assert sorted(m.pid for m in report.members) == sorted(pids)
    assert {m.outcome for m in report.members} == {"terminated"}
    assert not report.escalated
    leader = [m for m in report.members if m.pid == r.pid][0]
    assert leader.returncode == -signal.SIGTERM and leader.name == "sh"
    assert group.released
    with pytest.raises(ProcessLookupError):
        group.signal(signal.SIGTERM)


TRAPS_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"


@linux_only
def test_member_that_traps_sigterm_is_killed_after_grace(executor):
    r = executor.execute(ProcessSpawnOperation("sh").with_args(
        ["-c", f"sleep 300 & {sys.executable} -c \"{TRAPS_TERM}\" & wait"]).with_new_process_group())
    group = r.group
    assert wait_for(lambda: any("python" in m.name for m in live_members(group)) and len(live_members(group)) == 3)
    wait_for(lambda: all(psutil.Process(m.pid).status() != "disk-sleep" for m in live_members(group)))
    trapper = [m.pid for m in live_members(group) if "python" in m.name][0]
    assert wait_for(lambda: _ignores_term(trapper))
    report = group.terminate(grace=0.5)
    assert report.escalated
    outcomes = {m.pid: m.outcome for m in report.members}
    assert outcomes[trapper] == "killed"
    assert [o for p, o in outcomes.items() if p != trapper] == ["terminated", "terminated"]
    assert not alive(trapper)


def _ignores_term(pid):
    with open(f"/proc/{pid}/status") as f:
        ign = [int(line.split()[1], 16) for line in f if line.startswith("SigIgn")][0]
    return bool(ign & (1 << (signal.SIGTERM - 1)))


def test_wait_is_for_the_whole_group_not_the_leader(executor):
    r = spawn_group(executor, "sh", "-c", "sleep 0.3 & exit 5")
    group = r.group
    assert r.process.wait(5) == 5
    assert r.process.returncode == 5
    assert psutil.Process(r.pid).status() == psutil.STATUS_ZOMBIE  # pinned by the open handle
    assert group.wait(10) == 5
    assert not live_members(group) and group.released
    assert r.process.reaped


def test_wait_timeout_raises_and_keeps_the_group(executor):
    r = spawn_group(executor, "sleep", "30")
    with pytest.raises(subprocess.TimeoutExpired):
        r.group.wait(0.05)
    assert not r.group.released and alive(r.pid)
    r.group.close()
    assert not alive(r.pid)


NON_REAPING_INIT = textwrap.dedent("""
    # A subreaper that never reaps, standing in for a slow init: orphans of
    # the group below become its zombies and stay so. The osl_pg user runs
    # in a child of it; its wait() must return as soon as the members die.
    import ctypes, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0          # PR_SET_CHILD_SUBREAPER
    user = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True)
    sys.stdout.write(user.stdout); sys.stderr.write(user.stderr); sys.exit(user.returncode)
""")

OSL_USER = textwrap.dedent("""
    import os, signal, time, psutil
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("slow-init").execute(ProcessSpawnOperation("sh").with_args(
        ["-c", "sleep 300 & echo $!; exit 0"]).with_new_process_group().with_stdout(-1))
    orphan = int(r.process.stdout.readline())
    r.process.wait()
    init = os.getppid()
    while psutil.Process(orphan).ppid() != init:     # adopted by the non-reaping subreaper
        time.sleep(0.001)
    os.kill(orphan, signal.SIGKILL)
    r.group.wait(60)
    print(psutil.Process(orphan).status(), psutil.Process(orphan).ppid() == init)
""")


@linux_only
def test_wait_returns_while_dead_members_are_unreaped_zombies():
    out = subprocess.run(py(NON_REAPING_INIT) + [OSL_USER], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["zombie", "True"]


SUBREAPER = textwrap.dedent("""
    import os, subprocess, sys, time, psutil
    import osl_pg
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    osl_pg.set_child_subreaper(True)
    popen = subprocess.Popen(["sh", "-c", "exit 3"])
    while psutil.Process(popen.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.001)
    r = ProcessExecutor("sub").execute(ProcessSpawnOperation("sh").with_args(
        ["-c", "(sleep 0.2; exit 7) & echo $!; exit 0"]).with_new_process_group().with_stdout(-1))
    orphan = int(r.process.stdout.readline())
    report = r.group.terminate(grace=5)
    outcome = {m.pid: m.returncode for m in report.members}
    gone = not psutil.pid_exists(orphan)
    # The Popen child is not ours to reap: it is still a zombie for Popen.
    print(outcome[orphan], gone, psutil.Process(popen.pid).status(), popen.wait())
""")


@linux_only
def test_subreaper_reaps_adopted_orphans_of_the_group_only():
    out = subprocess.run(py(SUBREAPER), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rc, gone, popen_status, popen_rc = out.stdout.split()
    assert rc in ("-15", "7")  # terminated by our SIGTERM, or exited first
    assert gone == "True" and popen_status == "zombie" and popen_rc == "3"


PID_REUSE = textwrap.dedent("""
    # Runs as pid 1 of a new pid namespace whose pid_max is 400, so pids are
    # recycled within a few hundred spawns.
    import os, signal, sys
    with open("/proc/sys/kernel/pid_max", "w") as f:
        f.write("400")
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    def cycle(n):
        seen = set()
        for _ in range(n):
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            os.waitpid(pid, 0)
            seen.add(pid)
        return seen
    cycle(400)                      # past the first wrap: pids now cycle in 300..399
    ex = ProcessExecutor("reuse")
    r = ex.execute(ProcessSpawnOperation("true").with_new_process_group())
    leader = r.pid
    assert leader >= 300
    r.process.wait()                                   # exited; the handle pins it
    pinned_cycle = cycle(600)
    print("pinned-reused", leader in pinned_cycle, "cycled", len(pinned_cycle))
    r.group.signal(0)                                  # reaches only our zombie leader
    r.group.wait()                                     # group gone: leader reaped, handle released
    for _ in range(2000):                              # until someone else gets the number
        other = ex.execute(ProcessSpawnOperation("sleep").arg("30").with_new_process_group())
        if other.pid == leader:
            break
        other.group.close()
    assert other.pid == leader, "pid never recycled"
    os.killpg(leader, 0)                               # the number names a live, unrelated group now
    try:
        r.group.signal(signal.SIGTERM)
        print("signalled-unrelated-group")
    except ProcessLookupError:
        print("refused", other.process.poll() is None)
    other.group.close()
""")


@linux_only
def test_pgid_is_not_reused_while_the_handle_is_open_and_refused_after():
    lines = in_new_pid_namespace(PID_REUSE).stdout.splitlines()
    pinned, refused = lines[0].split(), lines[1].split()
    assert pinned[:2] == ["pinned-reused", "False"] and int(pinned[3]) >= 90  # the whole range cycled
    assert refused == ["refused", "True"]


def test_context_manager_terminates_unless_detached(executor):
    r = spawn_group(executor, "sh", "-c", "sleep 300 & sleep 300 & wait")
    assert wait_for(lambda: len(live_members(r.group)) == 3)
    pids = [m.pid for m in r.group.members()]
    with r.group:
        pass
    assert not [p for p in pids if alive(p)]

    r = spawn_group(executor, "sleep", "300")
    with r.group as g:
        g.detach()
    assert alive(r.pid) and r.group.released
    os.kill(r.pid, signal.SIGKILL)
    r.process.wait(5)


def test_close_kills_what_is_left(executor):
    r = spawn_group(executor, "sh", "-c", "sleep 300 & wait")
    assert wait_for(lambda: len(live_members(r.group)) == 2)
    pids = [m.pid for m in r.group.members()]
    r.group.close()
    assert not [p for p in pids if alive(p)]
    assert r.process.returncode == -signal.SIGKILL


def test_signal_failure_is_an_osl_error_that_names_the_call(executor):
    # ProcessGroup.signal reaches os.killpg with no frame between; what the
    # kernel refuses still comes back as osl_pg's error, saying what failed.
    from osl_pg import OslError
    with spawn_group(executor, "sleep", "30").group as g:
        with pytest.raises(OslError, match=f"killpg\\({g.pgid}, 999\\)") as e:
            g.signal(999)
        assert isinstance(e.value, OSError) and e.value.errno == errno.EINVAL
        assert g.alive


def test_for_pgid_finds_open_groups_only(executor):
    r = spawn_group(executor, "sleep", "30")
    assert ProcessGroup.for_pgid(r.pgid) is r.group
    r.group.close()
    with pytest.raises(ProcessLookupError):
        ProcessGroup.for_pgid(r.pgid)


PARENT = textwrap.dedent("""
    import sys
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("parent").execute(ProcessSpawnOperation("sh").with_args(
        ["-c", "sleep 300 & sleep 300 & sh -c 'sleep 300 & wait' & wait"])
        .with_new_process_group().with_kill_on_parent_death())
    print(r.pgid, flush=True)
    sys.stdin.read()          # until the test kills us
""")


@linux_only
def test_tree_dies_with_its_parent():
    parent = subprocess.Popen(py(PARENT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(parent.stdout.readline())
        members = lambda: [p for p in psutil.process_iter() if _pgid(p.pid) == pgid and alive(p.pid)]  # noqa: E731
        assert wait_for(lambda: len(members()) == 5)
        tree = [p.pid for p in members()]
        with open(f"/proc/{pgid}/status") as f:
            assert any(line.startswith("NSpid") for line in f)
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait()
        assert wait_for(lambda: not [p for p in tree if alive(p)], timeout=10)
    finally:
        parent.kill()
        parent.wait()


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_async_spawns_use_no_threads(executor):
    async def main():
        threads_before = threading.active_count(), psutil.Process().num_threads()
        results = await asyncio.gather(*[
            executor.execute_async(ProcessSpawnOperation("sh").with_args(["-c", f"exit {i}"]).with_new_process_group())
            for i in range(30)])
        codes = await asyncio.gather(*[r.process.wait_async() for r in results])
        waits = await asyncio.gather(*[r.group.wait_async() for r in results])
        threads_after = threading.active_count(), psutil.Process().num_threads()
        return codes, waits, threads_before, threads_after
    codes, waits, before, after = asyncio.run(main())
    assert codes == list(range(30)) and waits == list(range(30))
    assert before == after


async def two_sleepers_async(executor):
    """A leader and two sleeping children, spawned and awaited in the loop."""
    r = await executor.execute_async(ProcessSpawnOperation("sh").with_args(
        ["-c", "sleep 300 & sleep 300 & wait"]).with_new_process_group())
    while len(live_members(r.group)) < 3:
        await asyncio.sleep(0.01)
    return r, [m.pid for m in r.group.members()]


def test_async_terminate_and_context_manager(executor):
    async def main():
        r, pids = await two_sleepers_async(executor)
        report = await r.group.terminate_async(grace=5)
        return pids, report
    pids, report = asyncio.run(main())
    assert not [p for p in pids if alive(p)]
    assert sorted(m.pid for m in report.members) == sorted(pids)


def test_cancelled_wait_leaves_nothing_behind(executor):
    async def main():
        r, pids = await two_sleepers_async(executor)
        async with r.group:
            task = asyncio.ensure_future(r.group.wait_async())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return r, pids
    r, pids = asyncio.run(main())
    assert not [p for p in pids if alive(p)]
    assert r.process.reaped and r.pid not in [c.pid for c in psutil.Process().children()]


@linux_only
def test_huge_groups_do_not_use_up_fds(executor, monkeypatch):
    """Past ExitWatch.MAX_PIDFDS members, liveness falls back to psutil:
    the wait still ends when the last member dies."""
    from osl_pg.tiers import ExitWatch
    monkeypatch.setattr(ExitWatch, "MAX_PIDFDS", 3)
    r = spawn_group(executor, "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 300 & done; wait")
    assert wait_for(lambda: len(live_members(r.group)) == 13)
    pids = [m.pid for m in r.group.members()]
    fds_before = len(os.listdir("/proc/self/fd"))
    r.group.signal(signal.SIGTERM)
    peak = []
    import threading as _t
    stop = _t.Event()

    def sample():
        while not stop.is_set():
            peak.append(len(os.listdir("/proc/self/fd")))
    sampler = _t.Thread(target=sample)
    sampler.start()
    try:
        r.group.wait(30)
    finally:
        stop.set()
        sampler.join()
    assert not [p for p in pids if alive(p)]
    assert max(peak, default=fds_before) <= fds_before + 3 + 2  # the pidfds, a poll fd, listdir's own


def test_terminate_reports_members_that_survive_sigkill(executor, monkeypatch):
    """A member stuck in the kernel outlives SIGKILL; terminate() must not
    hang on it, nor release the pgid while it lives. Simulated by taking
    SIGKILL away from the tier."""
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", TRAPS_TERM])
                         .with_new_process_group().with_stdout(-1))
    assert r.process.stdout.readline() == b"ready\n"
    monkeypatch.setattr(r.group._strategy, "kill", lambda: None)
    report = r.group.terminate(grace=0.2, kill_timeout=0.2)
    assert report.escalated and not report.all_gone
    assert [(m.pid, m.outcome) for m in report.members] == [(r.pid, "running")]
    assert alive(r.pid) and not r.group.released
    r.group.signal(signal.SIGKILL)  # the pgid is still pinned, so this is safe
    assert r.group.wait(10) == -signal.SIGKILL


def test_concurrent_waits_and_signals_on_one_handle(executor):
    # Three threads wait for the same group while a fourth probes it with
    # signal 0 until the handle is released: every waiter gets the leader's
    # status, the release happens once, and the prober stops on
    # ProcessLookupError, never on another error.
    r = spawn_group(executor, "sh", "-c", "sleep 0.3 & sleep 0.2; exit 7")
    g = r.group
    results, errors = [], []

    def waiter():
        try:
            results.append(g.wait(30))
        except Exception as e:  # noqa: BLE001 - the test reports any
            errors.append(e)

    def prober():
        try:
            while True:
                g.signal(0)
        except ProcessLookupError as e:
            results.append(type(e).__name__)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(3)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(map(str, results)) == ["7", "7", "7", "ProcessNotFound"]
    assert g.released and r.process.reaped and not alive(r.pid)


def test_the_handle_refuses_signals_before_the_pgid_is_freed(executor, monkeypatch):
    # The moment the leader is reaped its pid (the pgid) may be handed out
    # again: from then on signal() must be refused by the handle itself,
    # never passed to killpg() on a number that may be someone else's.
    r = spawn_group(executor, "true")
    g = r.group
    seen = []
    real_release = r.process._release

    def release_then_probe():
        real_release()  # reaps: the pgid is free from here on
        assert r.process.reaped
        try:
            g.signal(0)
            seen.append("sent")
        except ProcessLookupError as e:
            seen.append(str(e))

    monkeypatch.setattr(r.process, "_release", release_then_probe)
    g.wait(30)
    assert len(seen) == 1 and "handle was released" in seen[0], seen
