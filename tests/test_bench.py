"""osl-pg bench: its plumbing, never its timings. The programs it spawns,
the trees it kills, the C floors, the statistics and the report shape."""
import json
import os
import platform
import struct
import subprocess
import sys

import psutil
import pytest

from osl_pg import bench, set_child_subreaper
from osl_pg._backend import backend
from osl_pg.bench_programs import TreeShape, await_ready, exit_program, pause_program, static_elf

LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(not LINUX, reason="static ELF programs and subreapers are Linux-only")


# Runs argv as its child and reaps every orphan that comes to it, as init
# does on a host: the bench's crowds (processes a shell starts and leaves)
# would otherwise go to pytest, the leak plugin's subreaper, and stay its
# zombies until the test ends, and Crowd.close() would wait 30 s for them to
# go. An orphan still running when the bench exits goes on to pytest, whose
# leak checks see it.
REAPER = """
import os, subprocess, sys
from osl_pg import set_child_subreaper
set_child_subreaper(True)
child = subprocess.Popen(sys.argv[1:])
while True:
    pid, status = os.wait()
    if pid == child.pid:
        child.returncode = code = os.waitstatus_to_exitcode(status)
        sys.exit(code if code >= 0 else 128 - code)
"""


def run_bench(*args, timeout=300):
    cmd = [sys.executable, "-m", "osl_pg", "bench", *args]
    if LINUX:
        cmd = [sys.executable, "-c", REAPER, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------
# the programs


@pytest.mark.parametrize("machine,e_machine", [("x86_64", 62), ("aarch64", 183), ("arm64", 183)])
@pytest.mark.parametrize("kind", ["exit", "pause"])
def test_static_elf_is_a_complete_static_executable(machine, e_machine, kind):
    data = static_elf(machine, kind)
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    e_type, e_mach = struct.unpack_from("<HH", data, 16)
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phnum = struct.unpack_from("<H", data, 56)[0]
    assert (e_type, e_mach, phoff, phnum) == (2, e_machine, 64, 1)
    p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, 64)
    assert p_type == 1 and p_offset == 0 and p_filesz == len(data)  # one PT_LOAD, no PT_INTERP: static
    assert p_vaddr < entry < p_vaddr + len(data)


def test_static_elf_unknown_machine_is_none():
    assert static_elf("sparc64", "exit") is None
    assert static_elf("x86_64", "dance") is None


@needs_linux
def test_exit_program_runs_and_exits_zero():
    prog = exit_program()
    if platform.machine() in ("x86_64", "amd64", "aarch64", "arm64"):
        assert prog.static, prog.notes
    pid = os.posix_spawn(prog.path, prog.argv, os.environ)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@needs_linux
def test_pause_program_sleeps_until_killed():
    prog = pause_program()
    pid = os.posix_spawn(prog.path, prog.argv, os.environ)
    try:
        assert psutil.Process(pid).status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


# --------------------------------------------------------------------------
# trees and the kill floor


def group_members(pgid):
    out = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except (OSError, psutil.NoSuchProcess):
            continue
    return out


def depth_below(pid, root):
    depth = 0
    p = psutil.Process(pid)
    while p.pid != root:
        p = p.parent()
        depth += 1
    return depth


@pytest.fixture
def subreaper():
    set_child_subreaper(True)
    try:
        yield
    finally:
        set_child_subreaper(False)


@needs_linux
@pytest.mark.parametrize("shape,levels", [(TreeShape("flat", 10), 2), (TreeShape("tree", 2, 4), 3)])
def test_tree_has_every_member_then_the_c_floor_leaves_none(subreaper, shape, levels):
    builder = bench.TreeBuilder(shape, pause_program())
    leader = builder.raw()
    try:
        members = group_members(leader)
        assert len(members) == shape.members == 11
        assert max(depth_below(pid, leader) for pid in members) == levels - 1
        ns = backend.bench_kill_group(leader)
        assert ns > 0
    finally:
        bench._kill_and_reap(leader)
    with pytest.raises(ProcessLookupError):  # not even a zombie is left in the group
        os.killpg(leader, 0)


@needs_linux
def test_tree_builder_times_out_instead_of_hanging():
    r, w = os.pipe()
    try:
        with pytest.raises(TimeoutError):
            await_ready(r, 1, timeout=0.05)
    finally:
        os.close(r)
        os.close(w)


@needs_linux
def test_c_spawn_floor_reaps_its_child():
    prog = exit_program()
    call, total = backend.bench_spawn(prog.path, True)
    assert 0 < call <= total
    assert psutil.Process().children() == []


# --------------------------------------------------------------------------
# statistics, ratios, targets


def test_percentile_is_nearest_rank():
    values = list(range(1, 11))
    assert bench.percentile(values, 90) == 9
    assert bench.percentile(values, 50) == 5
    assert bench.percentile([7], 90) == 7


def test_section_ratios_come_from_the_medians():
    contenders = [bench.Contender("ours", "ours", lambda: {}, ours=True), bench.Contender("theirs", "t", lambda: {})]
    section = bench.make_section("s", "title", contenders, {"ours": [1000, 3000, 2000], "theirs": [4000, 4000, 8000]})
    rows = {r["id"]: r for r in section["contenders"]}
    assert rows["ours"]["median_us"] == 2.0 and rows["theirs"]["median_us"] == 4.0
    assert rows["theirs"]["p90_us"] == 8.0 and rows["ours"]["n"] == 3
    assert section["ratios"] == {"ours": {"ours": 1.0, "theirs": 0.5}}


def test_targets_compare_the_named_medians():
    def section(sid, **medians):
        return {"id": sid, "contenders": [{"id": k, "median_us": v} for k, v in medians.items()]}
    sections = [section("spawn.wait", osl_sync=120.0, c_floor=100.0, popen_pgroup=100.0),
                section("spawn_big.wait", osl_sync=126.0),
                section("startup", bare=10000.0, import_osl_pg=30000.0, cli_run_true=50000.0)]
    targets = {t["id"]: t for t in bench.evaluate_targets(sections)}
    assert targets["spawn_vs_floor"]["ratio"] == pytest.approx(1.2) and not targets["spawn_vs_floor"]["met"]
    assert targets["spawn_vs_popen"]["ratio"] == pytest.approx(1.2) and not targets["spawn_vs_popen"]["met"]
    assert targets["big_parent"]["ratio"] == pytest.approx(1.05) and targets["big_parent"]["met"]
    # absolute targets, in milliseconds: a difference, or one median alone
    assert targets["import_cost"]["value_ms"] == pytest.approx(20.0) and not targets["import_cost"]["met"]
    assert targets["cli_run_true"]["value_ms"] == pytest.approx(50.0) and targets["cli_run_true"]["met"]
    assert "run_vs_subprocess" not in targets  # sections that were not run are skipped


def test_ratios_read_as_speedups():
    assert bench.speedup(0.25) == "4.00x faster"
    assert bench.speedup(1.5) == "1.50x slower"
    assert bench.speedup(1.01) == "same"
    assert bench.speedup(float("nan")) == "?"


def test_the_chart_has_a_row_per_compared_scenario_and_no_fork_rows():
    def section(sid, title, ours, **medians):
        return {"id": sid, "title": title, "ours": ours,
                "contenders": [{"id": k, "label": k, "median_us": v} for k, v in medians.items()],
                "ratios": {o: {k: medians[o] / v for k, v in medians.items()} for o in ours}}
    report = {"sections": [section("run", "run", ["osl_run"], osl_run=100.0, subprocess_run=200.0),
                           section("fork.wait", "fork", [], popen_fork=1000.0),
                           section("signal", "signal", ["executor", "group_signal"], executor=50.0,
                                   group_signal=1.2, os_killpg=1.0)]}
    rows = bench.plot_rows(report)
    assert [(r[1], r[2]) for r in rows] == [(0.5, "2.00x faster"), (1.2, "1.20x slower")]


# --------------------------------------------------------------------------
# the command, end to end with tiny iteration counts

SECTIONS = {
    "spawn.call", "spawn.wait", "fork.call", "fork.wait", "spawn_big.call", "spawn_big.wait",
    "fork_big.call", "fork_big.wait", "signal", "kill.flat11", "kill.tree11", "kill.flat101", "kill.tree101",
    "run", "run_capture", "run_crowd", "group_wait_crowd", "kill_crowd.flat101", "startup",
}


@needs_linux
def test_bench_json_end_to_end():
    out = run_bench("--quick", "--json", "--iterations", "2", "--parent-mib", "8")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["schema"] == bench.SCHEMA and report["mode"] == "iterations"
    assert report["leftover_children"] == []
    assert {"cpus", "kernel", "python", "machine"} <= set(report["machine"])
    sections = {s["id"]: s for s in report["sections"]}
    pidns = bench.pidns_refused() is None  # the pid_namespace rows run where the tier can
    assert set(sections) == SECTIONS | ({"pidns", "pidns_kill.flat101"} if pidns else set())
    if pidns:
        assert {r["id"] for r in sections["pidns"]["contenders"]} == {"osl_pgroup", "osl_pidns", "c_floor"}
        assert {r["id"] for r in sections["pidns_kill.flat101"]["contenders"]} == {"osl_pgroup", "osl_pidns"}
    spawn = {r["id"] for r in sections["spawn.wait"]["contenders"]}
    assert {"osl_sync", "osl_async", "popen_pgroup", "posix_spawn", "asyncio", "c_floor"} <= spawn
    assert {r["id"] for r in sections["fork_big.wait"]["contenders"]} == {"popen_fork"}
    assert {r["id"] for r in sections["signal"]["contenders"]} == {"executor", "group_signal", "os_killpg",
                                                                    "c_floor"}
    assert {r["id"] for r in sections["kill.tree101"]["contenders"]} == {"osl_group", "psutil", "c_floor"}
    for s in sections.values():
        medians = {r["id"]: r["median_us"] for r in s["contenders"]}
        for r in s["contenders"]:
            assert r["n"] == 2 and 0 < r["median_us"] <= r["p90_us"]
        for ours, ratios in s["ratios"].items():
            assert ours in s["ours"]
            for other, ratio in ratios.items():
                assert ratio == pytest.approx(medians[ours] / medians[other])
    for t in report["targets"]:
        num = next(r for r in sections[t["numerator"][0]]["contenders"] if r["id"] == t["numerator"][1])
        if t["denominator"] is None:
            assert t["value_ms"] == pytest.approx(num["median_us"] / 1000) and t["met"] == (t["value_ms"] <= t["limit_ms"])
            continue
        den = next(r for r in sections[t["denominator"][0]]["contenders"] if r["id"] == t["denominator"][1])
        if "ratio" in t:
            assert t["ratio"] == pytest.approx(num["median_us"] / den["median_us"])
            assert t["met"] == (t["ratio"] <= t["limit"])
        else:
            assert t["value_ms"] == pytest.approx((num["median_us"] - den["median_us"]) / 1000)
    assert {t["id"] for t in report["targets"]} == {t[0] for t in bench.TARGETS
                                                    if pidns or not t[0].startswith("pidns_")}
    sizes = {r["id"]: r for r in report["parent_size"]["rows"]}
    assert {"osl_sync", "popen_fork", "c_floor"} <= set(sizes)


@needs_linux
def test_bench_prints_tables_and_targets():
    out = run_bench("--quick", "--iterations", "1", "--parent-mib", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("osl-pg bench (iterations")
    for text in ("spawn + wait", "os.posix_spawn", "asyncio.create_subprocess_exec", "psutil: children",
                 "C floor", "big/small", "targets (ratio of medians", "osl_pg.run()",
                 "subprocess.run()", "other processes running", "import osl_pg"):
        assert text in out.stdout
    assert "... spawn, small parent" in out.stderr  # progress goes to stderr


def test_bench_help_has_examples():
    out = run_bench("--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout and "osl-pg bench --quick" in out.stdout
    assert "--iterations" not in out.stdout  # the test knob stays hidden


@needs_linux
def test_plot_needs_matplotlib_or_draws_a_png(tmp_path):
    target = tmp_path / "bench.png"
    out = run_bench("--iterations", "1", "--parent-mib", "8", "--plot", str(target))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert out.returncode == 2 and "needs matplotlib" in out.stderr
        assert not target.exists()
    else:
        assert out.returncode == 0, out.stderr
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
