"""osl-pg run, ps and kill. Runs the real console script."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import alive, pgid_of, wait_for

SH = "/bin/sh"

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "spawn-children.sh")


def osl_pg(*args, timeout=60):
    exe = shutil.which("osl-pg") or None
    cmd = [exe] if exe else [sys.executable, "-m", "osl_pg"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def pids_named(stderr):
    return [int(p) for p in re.findall(r"(\d+) \(", stderr)]


def test_run_example_kills_and_names_leftovers():
    out = osl_pg("run", "--", "sh", EXAMPLE)
    assert out.returncode == 0, out.stderr
    assert "leaving its children running" in out.stdout
    named = pids_named(out.stderr)
    # sleep 300, sleep 301, the inner sh and its sleep 302 and sleep 303
    assert len(named) == 5, out.stderr
    assert out.stderr.count("(sleep)") == 4 and "(sh)" in out.stderr
    assert not any(alive(p) for p in named)


def test_run_timeout_ends_whole_tree_with_124():
    # No clock: 124 and the message show the timeout path ran; osl_pg()'s own
    # subprocess timeout fails the test if the sleeps were waited out instead.
    out = osl_pg("run", "--timeout", "1", "--grace", "1", "--", "sh", "-c", "sleep 300 & sleep 300 & sleep 300")
    assert out.returncode == 124, out.stderr
    assert "timeout" in out.stderr
    # Only this run's group: other test runs on the machine may have sleeps of their own.
    pgid = int(re.search(r"terminating process group (\d+)", out.stderr).group(1))
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if pgid_of(p.pid) == pgid
                 and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers


def test_run_exit_status_follows_timeout_command():
    assert osl_pg("run", "--", "sh", "-c", "exit 3").returncode == 3
    assert osl_pg("run", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    missing = osl_pg("run", "--", "no-such-cmd-osl")
    assert missing.returncode == 127
    # One line that says what failed, naming the command once (no "[Errno 2]").
    assert missing.stderr.startswith("osl-pg: command not found: 'no-such-cmd-osl'")
    assert missing.stderr.count("no-such-cmd-osl") == 1 and "Errno" not in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    assert osl_pg("run", "--", "/etc/passwd").returncode == 126


def test_run_forwards_sigterm_to_the_group(tmp_path):
    exe = shutil.which("osl-pg")
    cmd = [exe] if exe else [sys.executable, "-m", "osl_pg"]
    marker = tmp_path / "pids"
    p = subprocess.Popen(cmd + ["run", "--grace", "2", "--", "sh", "-c",
                                f"sleep 300 & echo $! > {marker}; wait"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(marker.read_text())
    assert alive(child)
    p.send_signal(15)
    p.wait(20)
    assert not alive(child)
    assert p.returncode in (128 + 15, 0)


def test_help_shows_examples():
    out = osl_pg("run", "--help")
    assert out.returncode == 0 and "examples:" in out.stdout


# --------------------------------------------------------------------------
# osl-pg ps / kill on real groups

@pytest.fixture
def tree(executor):
    """A real group: sh with a sleeping child in the group and one that
    left it (setsid). Yields (pgid, in-group child, escaped child)."""
    from osl_pg import ProcessSpawnOperation
    op = ProcessSpawnOperation("sh").with_args(["-c", "sleep 300 & setsid sleep 300 & wait"]).with_new_process_group()
    result = executor.execute(op)
    leader = psutil.Process(result.pid)
    assert wait_for(lambda: len(leader.children()) == 2 and all(
        c.cmdline() == ["sleep", "300"] for c in leader.children()))
    kids = leader.children()
    member = [c.pid for c in kids if os.getpgid(c.pid) == result.pgid]
    escaped = [c.pid for c in kids if os.getpgid(c.pid) != result.pgid]
    assert len(member) == 1 and len(escaped) == 1
    yield result.pgid, member[0], escaped[0]
    for pid in escaped:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    result.group.close()


def group_pids(pgid):
    return {p.pid for p in psutil.process_iter() if pgid_of(p.pid) == pgid}


def test_ps_prints_the_group_as_a_tree(tree):
    pgid, member, escaped = tree
    out = osl_pg("ps", str(pgid))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PID", "PPID", "STATE", "USER", "COMMAND"]
    rows = {int(line.split()[0]): line for line in lines[1:]}
    assert set(rows) == group_pids(pgid) | {escaped}
    leader_line = rows[pgid]
    assert leader_line.split()[1] == str(os.getpid()) and "sh -c sleep 300" in leader_line
    # children are indented under the leader; the escaped one is marked
    assert rows[member].endswith("  sleep 300") and rows[member].split()[1] == str(pgid)
    assert f"[escaped to group {escaped}] sleep 300" in rows[escaped]
    assert "[escaped" not in rows[member]


def test_ps_json_matches_the_os(tree):
    pgid, member, escaped = tree
    out = osl_pg("ps", "--json", str(pgid))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["pgid"] == pgid
    assert {m["pid"] for m in data["members"]} == group_pids(pgid) == {pgid, member}
    assert [(e["pid"], e["ppid"], e["pgid"]) for e in data["escaped"]] == [(escaped, pgid, os.getpgid(escaped))]
    for row in data["members"] + data["escaped"]:
        p = psutil.Process(row["pid"])
        assert row["user"] == p.username() and row["command"] == " ".join(p.cmdline())


def test_ps_of_a_missing_group_is_one_line_and_non_zero():
    out = osl_pg("ps", "999999999")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["osl-pg: no process group 999999999"]


def test_kill_terminates_a_real_group(tree):
    pgid, member, escaped = tree
    out = osl_pg("kill", "--grace", "10", str(pgid))
    assert out.returncode == 0, out.stderr
    assert f"sent SIGTERM to process group {pgid}" in out.stdout and "is gone" in out.stdout
    assert not alive(member) and not alive(pgid)
    assert alive(escaped)  # it left the group: a group signal does not reach it


def test_kill_escalates_to_sigkill_and_reports_json(executor):
    from osl_pg import ProcessSpawnOperation
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(300)"
    result = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code])
                              .with_new_process_group().with_stdout(subprocess.PIPE))
    try:
        assert result.process.stdout.readline() == b"ready\n"
        out = osl_pg("kill", "--json", "--grace", "0.5", str(result.pgid))
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report == {"pgid": result.pgid, "signal": "SIGTERM", "processes_affected": 1, "outcome": "killed"}
        assert result.process.wait(10) == -signal.SIGKILL
    finally:
        result.group.close()


def test_kill_refuses_its_own_group():
    """The CLI runs as the leader of a fresh session and is asked to signal
    its own group: the policy refuses before anything is sent (had SIGUSR1
    been sent, the CLI would have died of it)."""
    exe = shutil.which("osl-pg")
    cmd = [exe] if exe else [sys.executable, "-m", "osl_pg"]
    p = subprocess.run([SH, "-c", 'exec "$@" "$$"', "sh", *cmd, "kill", "-s", "USR1"],
                       capture_output=True, text=True, timeout=60, start_new_session=True)
    assert p.returncode == 1, (p.returncode, p.stderr)
    [line] = p.stderr.strip().splitlines()
    assert line.startswith("osl-pg: denied") and "own group or session" in line


@pytest.mark.parametrize("args,message", [
    (["kill", "-s", "NOPE", "4242"], "unknown signal 'NOPE'"),
    (["kill", "-s", "200", "4242"], "unknown signal number 200"),
    (["kill", "1"], "pgid 1 is init's group"),
    (["kill", "999999999"], "process group 999999999 does not exist"),
])
def test_kill_errors_are_one_clear_line(args, message):
    out = osl_pg(*args)
    assert out.returncode != 0
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("osl-pg: ") and message in line


@pytest.mark.parametrize("command", ["run", "ps", "kill"])
def test_help_of_each_command_shows_examples(command):
    out = osl_pg(command, "--help")
    assert out.returncode == 0 and "examples:" in out.stdout and f"osl-pg {command} " in out.stdout


def test_run_names_descendants_that_escaped_the_group():
    # The leader starts a child that leaves for a session of its own and
    # lingers; the leader waits long enough for a scan to see it first.
    out = osl_pg("run", "--grace", "1", "--", "sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & sleep 0.5")
    try:
        assert out.returncode == 0, out.stderr
        assert "left group" in out.stderr and "(sleep, now group" in out.stderr
    finally:
        for pid in [int(p) for p in re.findall(r"(\d+) \(sleep, now group", out.stderr)]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
