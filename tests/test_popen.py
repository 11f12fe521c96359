"""osl_pg.Popen: subprocess.Popen whose child leads a process group;
signals and `with` exit reach the whole tree. (CPython's own
test_subprocess runs against it too: .ci/cpython-subprocess-tests.sh.)"""
import gc
import os
import signal
import subprocess

import psutil
import pytest

import osl_pg
from osl_pg import AllowListPolicy, Permission, ProcessExecutor, ProcessSpawnOperation
from conftest import alive, py, wait_for

pytestmark = pytest.mark.skipif(os.name == "nt", reason="osl_pg.Popen is POSIX-only")

SH = "/bin/sh"
# The leader starts a grandchild in its group and prints the grandchild's pid.
TREE = [SH, "-c", "sleep 300 & echo $!; wait"]


def reaped(pid):
    """True once `pid` is neither running nor a zombie."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def test_is_a_subprocess_popen_whose_child_leads_a_group():
    with osl_pg.Popen(["sleep", "300"]) as p:
        assert isinstance(p, subprocess.Popen)
        assert os.getpgid(p.pid) == p.pid != os.getpgrp()
        assert os.getsid(p.pid) == os.getsid(0)
        assert p.group.pgid == p.pid and not p.group.released
        p.kill()
    assert p.returncode == -signal.SIGKILL


def test_start_new_session_leads_a_session():
    with osl_pg.Popen(["sleep", "300"], start_new_session=True) as p:
        assert os.getsid(p.pid) == p.pid == os.getpgid(p.pid)
        assert p.group.tier == "session"
        p.terminate()
    assert p.returncode == -signal.SIGTERM


def test_terminate_reaches_the_whole_group():
    with osl_pg.Popen(TREE, stdout=subprocess.PIPE) as p:
        grandchild = int(p.stdout.readline())
        assert os.getpgid(grandchild) == p.pid
        p.terminate()
        assert p.wait() == -signal.SIGTERM
        assert wait_for(lambda: not alive(grandchild))


def test_with_exit_waits_for_the_leader_then_ends_what_it_left():
    # The leader exits 3 and leaves a sleeper in its group: `with` exit
    # returns the leader's status (as subprocess) and the sleeper is gone.
    with osl_pg.Popen([SH, "-c", "sleep 300 & echo $!; exit 3"], stdout=subprocess.PIPE) as p:
        grandchild = int(p.stdout.readline())
    assert p.returncode == 3
    assert not alive(grandchild)
    assert p.group.released and reaped(p.pid)


def test_an_exception_in_the_block_ends_the_whole_tree():
    with pytest.raises(RuntimeError):
        with osl_pg.Popen(TREE, stdout=subprocess.PIPE) as p:
            grandchild = int(p.stdout.readline())
            raise RuntimeError("boom")
    assert p.returncode == -signal.SIGTERM
    assert not alive(grandchild) and not alive(p.pid)


def test_grace_bounds_the_wait_before_sigkill():
    # The leader ignores SIGTERM: after the grace it is killed.
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(300)"
    with pytest.raises(RuntimeError):
        with osl_pg.Popen(py(code), stdout=subprocess.PIPE, grace=0.2) as p:
            p.stdout.readline()
            raise RuntimeError
    assert p.returncode == -signal.SIGKILL


def test_wait_returns_the_leaders_status_and_signals_still_reach_what_it_left():
    p = osl_pg.Popen([SH, "-c", "sleep 300 & echo $!; exit 5"], stdout=subprocess.PIPE)
    try:
        grandchild = int(p.stdout.readline())
        assert p.wait() == 5 and p.poll() == 5
        assert not p.group.released and alive(grandchild)  # a member is left: the handle stays open
        p.send_signal(signal.SIGKILL)  # still reaches the group
        assert wait_for(lambda: not alive(grandchild))
    finally:
        p.__exit__(None, None, None)
        p.stdout.close()
    assert p.group.released and reaped(p.pid) and p.returncode == 5


def test_a_finished_group_is_released_and_signals_are_no_ops():
    p = osl_pg.Popen(["true"])
    assert p.wait() == 0
    assert p.group.released and reaped(p.pid)
    p.terminate()  # as subprocess: a dead child is not signalled


def test_dropped_while_running_warns_like_subprocess():
    p = osl_pg.Popen(["sleep", "300"])
    pid = p.pid
    with pytest.warns(ResourceWarning, match=f"subprocess {pid} is still running"):
        del p
        gc.collect()
    # As subprocess, it waits on subprocess._active to be reaped.
    kept = [q for q in subprocess._active if q.pid == pid]
    assert len(kept) == 1
    kept[0].kill()
    kept[0].wait()
    subprocess._active.remove(kept[0])
    assert reaped(pid)


def test_preexec_fn_is_refused_before_anything_runs():
    before = {c.pid for c in psutil.Process().children()}
    with pytest.raises(TypeError, match="no Python in the child"):
        osl_pg.Popen(["true"], preexec_fn=lambda: None)
    assert {c.pid for c in psutil.Process().children()} == before


def test_positional_arguments_as_subprocess():
    # bufsize, executable, stdin, stdout in subprocess.Popen's order.
    with osl_pg.Popen(["ignored-argv0", "-c", "echo $0"], 0, SH, None, subprocess.PIPE) as p:
        assert p.stdout.read() == b"ignored-argv0\n"
    assert p.returncode == 0


@pytest.mark.parametrize("kwargs", [
    dict(text=True),
    dict(encoding="latin-1"),
    dict(universal_newlines=True, bufsize=1),
    dict(),
], ids=["text", "encoding", "line-buffered", "binary"])
def test_communicate_matches_subprocess(kwargs):
    cmd = [SH, "-c", r"cat; printf 'caf\351\r\n' >&2; exit 4"]
    data = "in\r\n" if kwargs else b"in\r\n"
    expected = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                **{**kwargs, **({"errors": "replace"} if "encoding" not in kwargs and kwargs else {})})
    got = osl_pg.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       **{**kwargs, **({"errors": "replace"} if "encoding" not in kwargs and kwargs else {})})
    with expected, got:
        assert got.communicate(data) == expected.communicate(data)
    assert got.returncode == expected.returncode == 4


def test_spawn_failures_raise_what_subprocess_raises(tmp_path):
    for kwargs in (dict(args=["osl-pg-no-such-command"]), dict(args=["true"], cwd=str(tmp_path / "nope")),
                   dict(args=["osl-pg-no-such-command"], cwd=str(tmp_path / "nope")),
                   dict(args=[str(tmp_path)])):
        with pytest.raises(OSError) as expected:
            subprocess.Popen(**kwargs)
        with pytest.raises(OSError) as got:
            osl_pg.Popen(**kwargs)
        assert isinstance(got.value, type(expected.value)), (got.value, expected.value)
        assert (got.value.errno, got.value.strerror, got.value.filename) == (
            expected.value.errno, expected.value.strerror, expected.value.filename)


def test_process_group_joins_an_existing_group():
    with osl_pg.Popen(["sleep", "300"]) as leader:
        with osl_pg.Popen(["sleep", "300"], process_group=leader.pid) as member:
            assert os.getpgid(member.pid) == leader.pid
            assert member.group is None  # not a group of its own: signals reach the child alone
            member.terminate()
        assert member.returncode == -signal.SIGTERM and alive(leader.pid)
        leader.kill()


def test_the_spawn_goes_through_the_executors_policy():
    denying = ProcessExecutor("deny", [AllowListPolicy(allow={"nobody-here": [Permission.PROCESS_SPAWN]})])
    with pytest.raises(PermissionError):
        osl_pg.Popen(["true"], executor=denying)


def test_argv_list_for_a_spawn_operation():
    op = ProcessSpawnOperation(["sleep", "1"])
    assert (op.command, op.args) == ("sleep", ("1",))
    assert ProcessSpawnOperation(["echo"], args=["x"]).args == ("x",)
    with pytest.raises(ValueError):
        ProcessSpawnOperation([])


def test_status_comes_from_the_process_handle_never_os_waitpid(monkeypatch):
    def waitpid(*args):
        raise AssertionError("os.waitpid called: it would reap the leader behind the group handle")
    monkeypatch.setattr(os, "waitpid", waitpid)
    with osl_pg.Popen([SH, "-c", "exit 9"]) as p:
        assert p.wait() == 9
    p = osl_pg.Popen(["sleep", "300"])
    assert p.poll() is None
    p.kill()
    assert p.wait() == -signal.SIGKILL and reaped(p.pid)


def test_threads_polling_and_waiting_all_see_the_leaders_status():
    import threading
    wrong = []
    for _ in range(100):
        p = osl_pg.Popen([SH, "-c", "exit 7"])
        seen = []

        def poll_until_done():
            while (rc := p.poll()) is None:
                pass
            seen.append(rc)
        threads = [threading.Thread(target=poll_until_done), threading.Thread(target=lambda: seen.append(p.wait())),
                   threading.Thread(target=poll_until_done),
                   threading.Thread(target=lambda: seen.append(p.wait(timeout=60)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if seen != [7] * 4 or p.returncode != 7:
            wrong.append(seen)
    assert wrong == []


def test_communicate_timeout_is_ours_and_keeps_what_was_read():
    code = "import sys, time; print('early', flush=True); time.sleep(300)"
    with osl_pg.Popen(py(code), stdout=subprocess.PIPE) as p, subprocess.Popen(py(code), stdout=subprocess.PIPE) as q:
        for proc in (p, q):
            assert proc.stdout.readline() == b"early\n"
        got = {}
        for name, proc in (("osl", p), ("stdlib", q)):
            with pytest.raises(subprocess.TimeoutExpired) as e:
                proc.communicate(timeout=0.2)
            got[name] = e.value
        assert isinstance(got["osl"], osl_pg.TimeoutExpired) and got["osl"].pgid == os.getpgid(p.pid)
        assert str(got["osl"]) == str(got["stdlib"]).replace(repr(q.args), repr(p.args))
        assert got["osl"].timeout == got["stdlib"].timeout == 0.2
        q.kill()
        p.kill()
        assert p.communicate()[0] == q.communicate()[0] == b""  # nothing more came: both give the same rest


def test_wait_timeouts_as_subprocess():
    with osl_pg.Popen(["sleep", "300"]) as p:
        for timeout in (0, -1, 0.05):
            with pytest.raises(subprocess.TimeoutExpired) as e:
                p.wait(timeout)
            assert e.value.timeout == timeout and e.value.cmd == ["sleep", "300"]
            # Ours as well: except osl_pg.OslError catches it; it names the group.
            assert isinstance(e.value, osl_pg.TimeoutExpired) and isinstance(e.value, osl_pg.OslError)
            assert e.value.pgid == p.group.pgid == os.getpgid(p.pid)
            assert str(e.value) == str(subprocess.TimeoutExpired(["sleep", "300"], timeout))
        p.kill()
        assert p.wait(float("inf")) == -signal.SIGKILL  # inf: no limit, as subprocess
