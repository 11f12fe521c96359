"""Per-group limits through cgroup controllers (v2 where it has them, else
v1), checked against the OS: the control files the kernel reads, its event
counters, fork failures seen by the child, and how the child died."""
import os
import signal
import sys
import textwrap

import pytest

from conftest import alive, read, wait_for
from osl_pg import PIPE, InvalidOperation, Limits, ProcessSpawnOperation
from osl_pg import cgroup as cg_module
from osl_pg.errors import LimitUnavailable
from test_containment import cgroup_dir, needs_cgroup2, parent_death_ends_the_cgroup_tier_group


def _controller_problem(controller):
    cgs = None
    try:
        cgs = cg_module.prepare(None, Limits(**{_LIMIT_OF[controller]: _SMALL[controller]}))
    except (OSError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        if cgs is not None:
            cgs.remove()
    return None


_LIMIT_OF = {"pids": "max_processes", "memory": "max_memory", "cpu": "cpu_quota"}
_SMALL = {"pids": 8, "memory": 64 << 20, "cpu": 0.5}


def needs(controller):
    problem = _controller_problem(controller)
    return pytest.mark.skipif(problem is not None, reason=f"no {controller} controller here: {problem}")


def limit_dir(pid, group, limit, controller):
    """The directory that applies `limit` to `pid`, from /proc/PID/cgroup and
    the mechanism the group reports."""
    mechanism = group.limits_applied[limit]
    assert mechanism in (f"cgroup2:{controller}", f"cgroup1:{controller}")
    return cgroup_dir(pid, "cgroup2" if mechanism.startswith("cgroup2") else controller)


# Bounded: 200 forks, each child sleeps; failures (EAGAIN) are counted.
FORK_BOMB = textwrap.dedent("""
    import os, sys, time
    made = failed = 0
    for _ in range(200):
        try:
            pid = os.fork()
        except BlockingIOError:
            failed += 1
            continue
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        made += 1
    print(made, failed, flush=True)
    time.sleep(120)
""")


@needs("pids")
@pytest.mark.parametrize("containment", [None, pytest.param("cgroup", marks=needs_cgroup2)])
def test_fork_bomb_is_capped_at_max_processes(executor, containment):
    op = (ProcessSpawnOperation(sys.executable).with_args(["-c", FORK_BOMB])
          .with_limits(max_processes=10).with_stdout(PIPE))
    if containment:
        op = op.with_containment(containment)
    r = executor.execute(op)
    g = r.group
    try:
        made, failed = map(int, r.process.stdout.readline().split())
        d = limit_dir(r.pid, g, "max_processes", "pids")
        assert read(os.path.join(d, "pids.max")).strip() == "10"
        assert int(read(os.path.join(d, "pids.current"))) <= 10
        assert made == 9 and failed == 191  # the leader is the 10th
        assert len([m for m in g.members() if not m.zombie]) == 10
        assert g.limit_events()["fork_failures"] >= 1
        assert r.get_metadata("limits") == f"max_processes={g.limits_applied['max_processes']}"
    finally:
        report = g.terminate(grace=5)
    assert len(report.members) == 10 and report.all_gone
    assert not os.path.exists(d)
    assert g.limit_events()["fork_failures"] >= 1  # kept after the cgroup is gone


MEMORY_HOG = textwrap.dedent("""
    chunks = []
    for i in range(64):
        chunks.append(bytearray(b"x") * (8 << 20))  # 8 MiB, every page touched
        print(i, flush=True)
""")


@needs("memory")
def test_memory_hog_is_oom_killed_and_reported(executor):
    limit = 64 << 20
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", MEMORY_HOG])
                         .with_limits(max_memory=limit).with_stdout(PIPE))
    g = r.group
    d = limit_dir(r.pid, g, "max_memory", "memory")
    try:
        out, _ = r.process.communicate(timeout=120)
        assert r.process.returncode == -signal.SIGKILL, "the OOM killer ends the hog"
        assert len(out.split()) < 64 * 8 * (1 << 20) // limit, "it never got its 512 MiB"
        if g.limits_applied["max_memory"] == "cgroup2:memory":
            assert "oom_kill 1" in read(os.path.join(d, "memory.events"))
            assert int(read(os.path.join(d, "memory.peak"))) <= limit
        else:
            assert "oom_kill 1" in read(os.path.join(d, "memory.oom_control"))
            assert int(read(os.path.join(d, "memory.max_usage_in_bytes"))) <= limit
        assert g.limit_events()["oom_kills"] == 1
        g.wait(30)
    finally:
        g.close()
    assert g.limit_events()["oom_kills"] == 1 and not os.path.exists(d)


@needs("cpu")
def test_cpu_quota_throttles(executor):
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "while True: pass"])
                         .with_limits(cpu_quota=0.1))
    g = r.group
    try:
        d = limit_dir(r.pid, g, "cpu_quota", "cpu")
        if g.limits_applied["cpu_quota"] == "cgroup2:cpu":
            assert read(os.path.join(d, "cpu.max")).split() == ["10000", "100000"]
        else:
            assert read(os.path.join(d, "cpu.cfs_quota_us")).strip() == "10000"
            assert read(os.path.join(d, "cpu.cfs_period_us")).strip() == "100000"

        def throttled():
            stat = dict(line.split() for line in read(os.path.join(d, "cpu.stat")).splitlines())
            return int(stat["nr_throttled"]) > 0

        assert wait_for(throttled, timeout=30), "the kernel throttles a busy loop at its quota"
    finally:
        g.close()
    assert not alive(r.pid)


@needs("pids")
@needs("memory")
def test_a_child_joins_every_limit_cgroup_before_it_runs(executor):
    # The first thing the program does is read where it is.
    r = executor.execute(ProcessSpawnOperation("cat").arg("/proc/self/cgroup")
                         .with_limits(max_processes=5, max_memory=256 << 20).with_stdout(PIPE))
    g = r.group
    out, _ = r.process.communicate(timeout=30)
    lines = out.decode().splitlines()
    for limit, ctrl in (("max_processes", "pids"), ("max_memory", "memory")):
        mech = g.limits_applied[limit]
        marker = "0::" if mech.startswith("cgroup2") else f":{ctrl}:"
        line = next(line for line in lines if marker in line)
        assert "/osl_pg/" in line, f"{limit}: the child started outside its cgroup: {line}"
    g.wait(30)


def test_limits_are_validated():
    op = ProcessSpawnOperation("true")
    for bad in ({"max_processes": 0}, {"max_memory": -1}, {"cpu_quota": 0}, {"max_processes": True},
                {"cpu_quota": "1"}):
        with pytest.raises(InvalidOperation):
            op.with_limits(**bad)
    with pytest.raises(InvalidOperation):
        op.with_limits()
    limited = op.with_limits(max_processes=3)
    assert limited.makes_group and limited.limits.max_processes == 3
    with pytest.raises(InvalidOperation):
        limited.with_process_group(4242).validate()


def test_no_controller_anywhere_is_a_clear_error(executor, monkeypatch):
    monkeypatch.setattr(cg_module, "hierarchies", lambda: [])
    with pytest.raises(LimitUnavailable, match="max_processes needs the pids controller") as info:
        executor.execute(ProcessSpawnOperation("sleep").arg("120").with_limits(max_processes=3))
    assert isinstance(info.value, NotImplementedError)


@needs("pids")
@needs_cgroup2
def test_parent_death_removes_the_limit_cgroups_too():
    # pids in the v2 directory where cgroup2 passes it down, else in a v1
    # pids directory of its own: either way the watchdog removes them all.
    parent_death_ends_the_cgroup_tier_group({"max_processes": 50})
