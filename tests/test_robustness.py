"""Regressions found in review: each test failed before its fix."""
import os
import signal
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

from conftest import alive, in_new_pid_namespace, linux_only, py, wait_for
from osl_pg import PIPE, InvalidOperation, ProcessSignalOperation, ProcessSpawnOperation, watchdog

GC_DURING_SWEEP = textwrap.dedent("""
    # Dropped handles in reference cycles are collected at arbitrary
    # allocations, including inside the sweep of abandoned children that
    # every spawn runs: their __del__ must not take the sweep's lock.
    import faulthandler, gc, os, signal
    faulthandler.dump_traceback_later(50, exit=True)
    gc.set_threshold(50)
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    ex = ProcessExecutor("gc")
    keep = ex.execute(ProcessSpawnOperation("sleep").arg("30"))   # stays abandoned, unreaped
    keep_pid = keep.pid
    del keep
    for _ in range(1500):
        p = ex.execute(ProcessSpawnOperation("true")).process
        p.cycle = p
        del p
    os.kill(keep_pid, signal.SIGKILL)
    print("done")
""")


def test_gc_of_dropped_handles_during_a_sweep_does_not_deadlock():
    out = subprocess.run(py(GC_DURING_SWEEP), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"


STDIN_WITH_FD0_CLOSED = textwrap.dedent("""
    from osl_pg import DEVNULL, PIPE, ProcessExecutor, ProcessSpawnOperation
    ex = ProcessExecutor("fd0")
    r = ex.execute(ProcessSpawnOperation("cat").with_stdin(PIPE).with_stdout(PIPE))
    out, _ = r.process.communicate(b"through the pipe")
    r2 = ex.execute(ProcessSpawnOperation("sh").with_args(["-c", "readlink /proc/self/fd/0"])
                    .with_stdin(DEVNULL).with_stdout(PIPE))
    out2, _ = r2.process.communicate()
    print(out.decode(), "|", out2.decode().strip())
""")


@linux_only
def test_stdin_pipe_and_devnull_when_the_parents_fd0_is_closed():
    # A daemon has no fd 0: the pipe (or /dev/null) lands on fd 0, O_CLOEXEC.
    out = subprocess.run(["sh", "-c", 'exec "$0" -c "$1" 0<&-', sys.executable, STDIN_WITH_FD0_CLOSED],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "through the pipe | /dev/null"


TRAPPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"


def _group_with_trapper(executor):
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", TRAPPER])
                         .with_new_process_group().with_stdout(PIPE))
    assert r.process.stdout.readline() == b"up\n"
    return r


def test_with_block_interrupted_during_the_grace_still_kills_the_group(executor):
    r = _group_with_trapper(executor)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with r.group:
                pass  # __exit__: SIGTERM (ignored), then a 5 s grace, interrupted
    finally:
        timer.cancel()
    assert r.group.released and not alive(r.pid)


def test_async_with_cancelled_during_the_grace_still_kills_the_group(executor):
    import asyncio
    r = _group_with_trapper(executor)

    async def main():
        async def body():
            async with r.group:
                pass
        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert r.group.released and not alive(r.pid)


@linux_only
def test_a_dead_watchdog_is_replaced_and_nothing_leaks(executor):
    op = ProcessSpawnOperation("sleep").arg("300").with_new_process_group().with_kill_on_parent_death()
    first = executor.execute(op)
    dead = watchdog._proc.pid
    os.kill(dead, signal.SIGKILL)
    assert wait_for(lambda: psutil.Process(dead).status() == psutil.STATUS_ZOMBIE)
    second = executor.execute(op)  # must not raise BrokenPipeError nor orphan its child
    assert watchdog._proc is not None and watchdog._proc.pid != dead
    assert set(watchdog._groups) == {first.pgid, second.pgid}  # both re-registered
    first.group.close()
    second.group.close()
    assert not alive(first.pid) and not alive(second.pid)
    assert watchdog._proc is None  # the last unregister ended it


RELEASED_THEN_REUSED = textwrap.dedent("""
    # pid 1 of a new pid namespace; ns_last_pid makes the next process get
    # the released leader's pid, in a group of its own.
    import os, signal, subprocess
    from osl_pg import ProcessExecutor, ProcessSignalOperation, ProcessSpawnOperation
    ex = ProcessExecutor("reuse")
    r = ex.execute(ProcessSpawnOperation("true").with_new_process_group())
    leader = r.pid
    r.group.wait()                       # gone, leader reaped, handle released
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(leader - 1))
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    assert other.pid == leader, (other.pid, leader)
    try:
        ex.execute(ProcessSignalOperation.signal_group(leader, signal.SIGTERM))
        print("signalled")
    except ProcessLookupError:
        print("refused", other.poll() is None)
    other.kill(); other.wait()
""")


@linux_only
def test_executor_refuses_a_released_pgid_that_now_names_another_group():
    assert in_new_pid_namespace(RELEASED_THEN_REUSED).stdout.split() == ["refused", "True"]


REAPED_THEN_REUSED = textwrap.dedent("""
    # pid 1 of a new pid namespace: a child is spawned, reaped and its handle
    # dropped; ns_last_pid hands its number to an unrelated process, which a
    # signal sent by the old result's pid must not reach. Then one of our own
    # spawns gets the number back, and the pid is signalled normally.
    import gc, os, signal, subprocess
    from osl_pg import ProcessExecutor, ProcessKillOperation, ProcessSignalOperation, ProcessSpawnOperation
    ex = ProcessExecutor("reuse")
    r = ex.execute(ProcessSpawnOperation("true"))
    pid = int(r.get_metadata("pid"))
    r.process.wait()
    del r; gc.collect()                   # no handle left anywhere
    def next_pid_is(n):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(n - 1))
    next_pid_is(pid)
    other = subprocess.Popen(["sleep", "30"])
    assert other.pid == pid, (other.pid, pid)
    for op in (ProcessSignalOperation(pid, signal.SIGTERM), ProcessKillOperation(pid)):
        try:
            ex.execute(op)
            print("signalled")
        except ProcessLookupError as e:
            print("refused" if "another process" in str(e) else e)
    print(other.poll() is None)
    other.kill(); other.wait()
    next_pid_is(pid)
    again = ex.execute(ProcessSpawnOperation("sleep").arg("30"))
    assert again.pid == pid, (again.pid, pid)
    ex.execute(ProcessSignalOperation(pid, signal.SIGTERM))
    print(again.process.wait())
""")


@linux_only
def test_executor_refuses_a_reaped_pid_that_now_names_another_process():
    out = in_new_pid_namespace(REAPED_THEN_REUSED).stdout.split()
    assert out == ["refused", "refused", "True", str(-signal.SIGTERM)]


def test_communicate_sends_what_was_written_before_the_input(executor):
    r = executor.execute(ProcessSpawnOperation("cat").with_stdin(PIPE).with_stdout(PIPE))
    r.process.stdin.write(b"first\n")
    out, _ = r.process.communicate(b"second\n")
    assert out == b"first\nsecond\n"


def test_args_keyword_must_be_a_list():
    with pytest.raises(InvalidOperation):
        ProcessSpawnOperation("echo", args="abc")
    op = ProcessSpawnOperation("env", env_overrides=[["A", "1"]])
    assert op.env_overrides == (("A", "1"),)
    with pytest.raises(InvalidOperation):
        ProcessSpawnOperation("env", env_overrides=[("A=B", "1")])
    assert ProcessSignalOperation.signal_group(4242, 0).pid == 4242
