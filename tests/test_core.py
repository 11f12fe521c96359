"""The everyday objects under threads, the garbage collector, audit hooks,
dropped handles and stuck members: each test reproduces a way the handles
used to break (a lost exit status, a deadlock, a signal to a reaped pgid,
a hang) and checks the outcome against the OS."""
import os
import signal
import subprocess
import textwrap
import threading

import pytest

from conftest import alive, in_new_pid_namespace, linux_only, py, wait_for
import osl_pg
from osl_pg import ProcessGroup, ProcessSpawnOperation


def spawn(executor, *argv, group=False):
    op = ProcessSpawnOperation(argv[0]).with_args(list(argv[1:]))
    return executor.execute(op.with_new_process_group() if group else op)


def race(targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


def test_threads_polling_one_process_all_get_its_status(executor):
    # Four threads poll one child that exits 7. The status used to be read
    # outside the lock and an ECHILD (another thread had just reaped) taken
    # for 0: 42 of 300 rounds ended with returncode 0.
    for _ in range(100):
        p = spawn(executor, "sh", "-c", "exit 7").process
        seen = []

        def poller():
            while True:
                rc = p.poll()
                if rc is not None:
                    seen.append(rc)
                    return

        race([poller] * 4)
        assert seen == [7, 7, 7, 7] and p.returncode == 7 and p.reaped
        assert not alive(p.pid)


def test_wait_beside_a_timed_wait_gets_the_status(executor):
    for _ in range(100):
        p = spawn(executor, "sh", "-c", "exit 7").process
        seen = []
        race([lambda: seen.append(p.wait()), lambda: seen.append(p.wait(timeout=5))])
        assert seen == [7, 7] and p.reaped


def test_threads_waiting_for_one_group_all_get_the_leaders_status(executor):
    for _ in range(40):
        g = spawn(executor, "sh", "-c", "exit 7", group=True).group
        seen = []
        race([lambda: seen.append(g.wait(30))] * 4)
        assert seen == [7, 7, 7, 7] and g.released and not alive(g.pgid)


FINALIZERS_TAKE_NO_LOCK = textwrap.dedent("""
    # A garbage collection can start at any allocation, also while this
    # thread holds one of osl_pg's locks (a spawn registering its group, the
    # watchdog list, a reap). The finalizers of dropped groups then run
    # right there: if one of them took that (non-reentrant) lock, the thread
    # would deadlock. The registry lock used to be taken by a weakref
    # callback: spawning groups held in reference cycles hung after ~4,000
    # spawns. Each lock is held here while a collection finalizes groups.
    import gc, threading
    import osl_pg.cgroup, osl_pg.group, osl_pg.process, osl_pg.watchdog
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    ex = ProcessExecutor("gc")
    def dropped_in_a_cycle(op):
        r = ex.execute(op)
        cycle = [r.group, r.process]
        cycle.append(cycle)
        r.group.cycle = cycle
        return r.process._state.lock
    op = ProcessSpawnOperation("sleep").arg("0.2").with_new_process_group()
    locks = {"registry": getattr(osl_pg.group, "_owned_lock", None),
             "watchdog": osl_pg.watchdog._lock,
             "cgroup subtree": getattr(osl_pg.cgroup, "_subtree_lock", None),
             "sweep": osl_pg.process._sweep_lock}
    gc.disable()
    for name, lock in locks.items():
        if lock is None:  # no such lock (any more)
            print(name, "ok")
            continue
        dropped_in_a_cycle(op)
        dropped_in_a_cycle(op.with_kill_on_parent_death())
        with lock:
            gc.collect()
        print(name, "ok")
    leader_lock = dropped_in_a_cycle(op)  # the leader's own reap lock
    with leader_lock:
        gc.collect()
    print("leader ok")
    import time
    time.sleep(0.3)
    ex.execute(ProcessSpawnOperation("true")).process.wait()  # sweeps what the finalizers queued
""")


@linux_only
def test_finalizers_of_dropped_groups_take_no_lock():
    try:
        out = subprocess.run(py(FINALIZERS_TAKE_NO_LOCK), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"deadlocked after: {e.stdout!r}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["registry", "ok", "watchdog", "ok", "cgroup", "subtree", "ok", "sweep", "ok",
                                  "leader", "ok"]


AUDIT_HOOK = textwrap.dedent("""
    # An audit hook runs Python inside os.killpg, before the syscall. There
    # another thread's wait() must not be able to reap the leader (freeing
    # the pgid for reuse) before the signal goes out.
    import sys, threading
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("audit").execute(ProcessSpawnOperation("true").with_new_process_group())
    r.process.wait()  # exited: a zombie the handle pins
    g, state = r.group, {}
    def hook(event, args):
        if event == "os.killpg" and state.get("armed") and "waiter" not in state:
            state["waiter"] = threading.Thread(target=g.wait)
            state["waiter"].start()
            state["waiter"].join(0.5)  # every chance to reap now
            state["reaped_before_the_syscall"] = r.process.reaped
    sys.addaudithook(hook)
    state["armed"] = True
    g.signal(0)
    state["waiter"].join(30)
    print(state["reaped_before_the_syscall"], g.released, r.process.reaped)
""")


def test_signal_holds_off_a_reap_while_an_audit_hook_runs_inside_killpg():
    out = subprocess.run(py(AUDIT_HOOK), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def test_a_dropped_running_group_warns_and_is_left_running(executor):
    r = spawn(executor, "sleep", "30", group=True)
    proc, pgid = r.process, r.pgid
    with pytest.warns(ResourceWarning, match=f"process group {pgid} is still running"):
        del r
        import gc
        gc.collect()
    assert alive(proc.pid) and os.getpgid(proc.pid) == pgid  # dropping kills nothing, like Popen
    assert osl_pg.group.owned_group(pgid) is None
    proc.kill()
    assert proc.wait(10) == -signal.SIGKILL and proc.reaped  # no longer pinned: the handle reaps it


DROPPED_AND_REUSED = textwrap.dedent("""
    # pid 1 of a new pid namespace: the number of a dropped group is given
    # to an unrelated group; signalling the old number must be refused.
    import gc, os, signal, subprocess, warnings
    from osl_pg import ProcessExecutor, ProcessSignalOperation, ProcessSpawnOperation
    ex = ProcessExecutor("drop")
    r = ex.execute(ProcessSpawnOperation("true").with_new_process_group())
    pgid = r.pid
    r.process.wait()
    del r
    gc.collect()                                             # dropped while open
    ex.execute(ProcessSpawnOperation("true")).process.wait()  # the sweep reaps its leader
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pgid - 1))
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    assert victim.pid == pgid, (victim.pid, pgid)
    try:
        ex.execute(ProcessSignalOperation.signal_group(pgid, signal.SIGTERM))
        print("signalled")
    except ProcessLookupError:
        print("refused")
    victim.kill()
    print(victim.wait())
""")


@linux_only
def test_the_number_of_a_dropped_group_is_refused_once_reused():
    assert in_new_pid_namespace(DROPPED_AND_REUSED).stdout.split() == ["refused", "-9"]


REAPED_BEHIND_AND_REUSED = textwrap.dedent("""
    # pid 1 of a new pid namespace: our child is reaped behind our back and
    # its number goes to a process that is not our child (a shell's
    # background job). The pidfd a waiter gets must not name that stranger.
    import os, signal, subprocess
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("100")                                    # room below for the shell
    p = ProcessExecutor("reuse").execute(ProcessSpawnOperation("sleep").arg("30")).process
    os.kill(p.pid, signal.SIGKILL)
    os.waitpid(p.pid, 0)                                  # a foreign os.wait()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(p.pid - 2))
    sh = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    stranger = int(sh.stdout.readline())
    assert stranger == p.pid, (stranger, p.pid)
    print(p.exit_fd(), p.wait(5), p.reaped)
    os.kill(stranger, signal.SIGKILL)
    print(sh.wait())
""")


@linux_only
def test_a_waiter_gets_no_pidfd_for_a_stranger_with_our_reaped_childs_number():
    assert in_new_pid_namespace(REAPED_BEHIND_AND_REUSED).stdout.split() == ["None", "0", "True", "0"]


def test_exit_fd_names_our_child_until_it_is_reaped(executor):
    if not getattr(osl_pg._backend.backend, "HAS_PIDFD", False):
        pytest.skip("no pidfds here")
    proc = spawn(executor, "sleep", "30", group=True).process
    fd = proc.exit_fd()
    try:
        assert fd is not None
        with open(f"/proc/self/fdinfo/{fd}") as f:
            assert f"Pid:\t{proc.pid}\n" in f.read()
    finally:
        if fd is not None:
            os.close(fd)
        proc.kill()
        proc.wait(10)
    assert proc.exit_fd() is None  # reaped: no pidfd for whoever gets the number next


def test_close_is_bounded_when_a_member_outlives_sigkill(executor, monkeypatch):
    # SIGKILL taken away from the tier stands for a member stuck in the
    # kernel (D state): close() gives up after kill_timeout, says so, and
    # keeps the handle, and so the pgid, pinned.
    r = spawn(executor, "sleep", "30", group=True)
    monkeypatch.setattr(r.group._strategy, "kill", lambda: None)
    assert r.group.close(kill_timeout=0.2) is False
    assert not r.group.released and alive(r.pid)
    monkeypatch.undo()
    assert r.group.close() is True and r.group.released and r.process.reaped


STUCK_ASYNC = textwrap.dedent("""
    # run_async() cancelled while a member outlives SIGKILL: the teardown is
    # bounded and awaited, so the event loop keeps running meanwhile.
    import asyncio, os, warnings
    import osl_pg, osl_pg.group as G, osl_pg.tiers as T
    real_kill = T.PgidTier.kill
    T.PgidTier.kill = lambda self: None
    real_close = G.ProcessGroup.close_async
    async def close_async(self, kill_timeout=0.5):
        return await real_close(self, kill_timeout)
    G.ProcessGroup.close_async = close_async
    real_terminate = G.ProcessGroup.terminate_async
    async def terminate_async(self, grace=5.0, kill_timeout=0.5):
        return await real_terminate(self, grace, kill_timeout)
    G.ProcessGroup.terminate_async = terminate_async
    ticks = 0
    async def ticker():
        global ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
    async def main():
        tick = asyncio.ensure_future(ticker())
        task = asyncio.ensure_future(osl_pg.run_async(["sh", "-c", "trap '' TERM; sleep 30"], grace=0.2))
        await asyncio.sleep(0.3)
        task.cancel()
        before = ticks
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                await task
            except asyncio.CancelledError:
                pass
        stuck = [w for w in caught if "outlived SIGKILL" in str(w.message)]
        print(ticks - before > 10, len(stuck) == 1)
        tick.cancel()
        return int(str(stuck[0].message).split()[2].rstrip(":"))
    pgid = asyncio.run(main())
    os.killpg(pgid, 9)  # the test's own cleanup: SIGKILL does work
    print(pgid > 1)
""")


@linux_only
def test_run_async_teardown_is_bounded_and_never_blocks_the_loop():
    out = subprocess.run(py(STUCK_ASYNC), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


WAIT_ASYNC_RACE = textwrap.dedent("""
    # With SIGCHLD ignored the kernel reaps the child itself. Made certain
    # here: the first status check finds it running, then it exits and is
    # reaped before the waiter could open a pidfd for it.
    import asyncio, signal, time, warnings
    import osl_pg._posix as backend
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    warnings.simplefilter("ignore")  # ChildrenAutoReapedWarning
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    p = ProcessExecutor("race").execute(ProcessSpawnOperation("sleep").arg("0.05")).process
    real_wait, calls = backend.wait, []
    def first_look_is_slow(pid, nohang, nowait):
        calls.append(pid)
        if len(calls) == 1:
            time.sleep(0.3)
            return None
        return real_wait(pid, nohang, nowait)
    backend.wait = first_look_is_slow
    print(asyncio.run(p.wait_async()), p.reaped)
""")


@linux_only
def test_wait_async_survives_a_reap_behind_its_back():
    out = subprocess.run(py(WAIT_ASYNC_RACE), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"]


@pytest.mark.leaked_processes("off")  # it waits for the orphan to vanish, as it does without a subreaper
def test_a_leftover_that_exits_before_it_is_signalled_is_reported_exited(monkeypatch):
    real_terminate = ProcessGroup.terminate
    leftover = []

    def late_terminate(self, *args, **kwargs):
        # The survey named the leftover; it exits, and is reaped, before
        # terminate() runs, so terminate() never sees it.
        assert wait_for(lambda: not os.path.exists(f"/proc/{leftover[0]}"), timeout=10)
        return real_terminate(self, *args, **kwargs)

    monkeypatch.setattr(ProcessGroup, "terminate", late_terminate)

    r_holder = {}
    real_survey = osl_pg.run.__globals__["_Survey"]

    class Survey(real_survey):
        def __init__(self, proc, group, open_pipes):
            super().__init__(proc, group, open_pipes)
            leftover.extend(self.found)

    monkeypatch.setitem(osl_pg.run.__globals__, "_Survey", Survey)
    with pytest.warns(osl_pg.LeftoverProcessWarning):
        r_holder["r"] = osl_pg.run(["sh", "-c", "sleep 0.5 >/dev/null 2>&1 & exit 0"])
    r = r_holder["r"]
    assert [x.pid for x in r.leftovers] == leftover and len(leftover) == 1
    assert r.leftovers[0].outcome == "exited"
