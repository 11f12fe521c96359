"""Timeouts and graces as subprocess takes them: inf is no limit, NaN and
negative values are refused before anything is spawned or signalled."""
import math
import sys

import pytest

import osl_pg
from conftest import alive, py
from osl_pg import OslError, ProcessSpawnOperation

BAD = [float("nan"), -1, -0.5, float("-inf")]


@pytest.fixture
def spawns(monkeypatch):
    """The pids the backend spawned during the test."""
    from osl_pg._backend import backend
    spawned = []
    real = backend.spawn

    def spawn(*args, **kwargs):
        s = real(*args, **kwargs)
        spawned.append(s.pid)
        return s
    monkeypatch.setattr(backend, "spawn", spawn)
    return spawned


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("keyword", ["timeout", "grace"])
def test_run_refuses_nan_and_negative_before_spawning(spawns, keyword, value):
    with pytest.raises(ValueError) as e:
        osl_pg.run(py("pass"), **{keyword: value})
    assert isinstance(e.value, OslError) and keyword in str(e.value)
    with pytest.raises(ValueError):
        import asyncio
        asyncio.run(osl_pg.run_async(py("pass"), **{keyword: value}))
    assert spawns == []


def test_run_refuses_a_timeout_that_is_not_a_number(spawns):
    with pytest.raises(TypeError):
        osl_pg.run(py("pass"), timeout="5")
    assert spawns == []


def test_infinite_timeout_and_grace_mean_no_limit(executor):
    assert osl_pg.run(py("pass"), timeout=math.inf, grace=math.inf).returncode == 0
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "import time; time.sleep(0.2)"])
                         .with_new_process_group())
    assert r.process.wait(math.inf) == 0
    assert r.group.wait(math.inf) == 0


def test_terminate_with_an_infinite_grace_waits_for_a_member_that_ignores_sigterm(executor):
    if sys.platform == "win32":
        pytest.skip("no SIGTERM to ignore")
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); " \
           "time.sleep(1)"
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code]).with_new_process_group()
                         .with_stdout(osl_pg.PIPE))
    try:
        assert r.process.stdout.readline() == b"1\n"  # SIGTERM is ignored from here on
        report = r.group.terminate(grace=math.inf)
        assert not report.escalated and report.all_gone and not alive(r.pid)
        assert [m.returncode for m in report.members] == [0]  # survived SIGTERM, ran to its end
    finally:
        r.process.stdout.close()
        r.group.close()


@pytest.mark.parametrize("value", BAD)
def test_waits_and_terminate_refuse_nan_and_negative(executor, value):
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "import time; time.sleep(30)"])
                         .with_new_process_group())
    try:
        for call in (lambda: r.process.wait(value), lambda: r.group.wait(value),
                     lambda: r.group.terminate(grace=value), lambda: r.group.terminate(kill_timeout=value)):
            with pytest.raises(ValueError):
                call()
        assert alive(r.pid)  # nothing was signalled
    finally:
        r.group.close()
