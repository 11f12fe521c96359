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


CLI = [sys.executable, "-m", "osl_pg"]  # the real command line, from this checkout
HAS_TIMEOUT = shutil.which("timeout") is not None
needs_timeout = pytest.mark.skipif(not HAS_TIMEOUT, reason="coreutils timeout is not installed")


def osl_pg(*args, timeout=60, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, **kw)


def shell_status(returncode):
    """The status a shell shows: 128+N for a process that died of signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
    assert "timeout after 1 s" in out.stderr
    # Only this run's group: other test runs on the machine may have sleeps of their own.
    pgid = int(re.search(r"sending SIGTERM to process group (\d+)", out.stderr).group(1))
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if pgid_of(p.pid) == pgid
                 and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers


def test_run_exit_status_follows_timeout_command():
    assert osl_pg("run", "--", "sh", "-c", "exit 3").returncode == 3
    # As timeout: a command that died of a signal takes osl-pg with it.
    assert osl_pg("run", "--", "sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM
    missing = osl_pg("run", "--", "no-such-cmd-osl")
    assert missing.returncode == 127
    # One line that says what failed, naming the command once (no "[Errno 2]").
    assert missing.stderr.startswith("osl-pg: command not found: 'no-such-cmd-osl'")
    assert missing.stderr.count("no-such-cmd-osl") == 1 and "Errno" not in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    assert osl_pg("run", "--", "/etc/passwd").returncode == 126


def test_run_forwards_sigterm_to_the_group(tmp_path):
    marker = tmp_path / "pids"
    p = subprocess.Popen(CLI + ["run", "--grace", "2", "--", "sh", "-c",
                                f"sleep 300 & echo $! > {marker}; wait"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(marker.read_text())
    assert alive(child)
    p.send_signal(15)
    p.wait(20)
    assert not alive(child)
    assert p.returncode == -signal.SIGTERM  # sh died of it: so does osl-pg, as timeout


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
    assert lines[0].split() == ["PID", "PPID", "SID", "STATE", "USER", "COMMAND"]
    rows = {int(line.split()[0]): line for line in lines[1:]}
    assert set(rows) == group_pids(pgid) | {escaped}
    leader_line = rows[pgid]
    assert leader_line.split()[1] == str(os.getpid()) and "sh -c sleep 300" in leader_line
    # children are indented under the leader; the escaped one is marked
    assert rows[member].endswith("  sleep 300") and rows[member].split()[1] == str(pgid)
    for pid, line in rows.items():
        assert line.split()[2] == str(os.getsid(pid))
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
        assert row["sid"] == os.getsid(row["pid"])


def test_ps_of_a_missing_group_is_one_line_and_non_zero():
    out = osl_pg("ps", "999999999")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["osl-pg: no process group 999999999"]


def test_ps_and_kill_say_the_same_of_a_missing_group_and_of_pgid_0():
    for pgid, status in (("999999999", 1), ("0", 2)):
        ps, kill = osl_pg("ps", pgid), osl_pg("kill", pgid)
        assert ps.returncode == kill.returncode == status
        assert ps.stderr.splitlines()[0] == kill.stderr.splitlines()[0], (ps.stderr, kill.stderr)


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
        out = osl_pg("kill", "--json", "-k", "0.5", str(result.pgid))
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
    for force in ([], ["--force"]):
        p = subprocess.run([SH, "-c", 'exec "$@" "$$"', "sh", *CLI, "kill", *force, "-s", "USR1"],
                           capture_output=True, text=True, timeout=60, start_new_session=True)
        assert p.returncode == 1, (p.returncode, p.stderr)
        [line] = p.stderr.strip().splitlines()
        assert line.startswith("osl-pg: denied") and "own group or session" in line
        assert "()" not in line  # no Python API named to a shell user


@pytest.mark.parametrize("args,message", [
    (["kill", "-s", "NOPE", "4242"], "unknown signal 'NOPE'"),
    (["kill", "-s", "200", "4242"], "unknown signal number 200"),
    (["kill", "1"], "pgid 1 is init's group"),
    (["kill", "999999999"], "no process group 999999999"),
])
def test_kill_errors_are_one_clear_line(args, message):
    out = osl_pg(*args)
    assert out.returncode != 0
    line = out.stderr.splitlines()[0]  # a usage error adds "Try 'osl-pg kill --help'", as coreutils
    assert line.startswith("osl-pg: ") and message in line
    assert out.stderr.splitlines()[1:] in ([], ["Try 'osl-pg kill --help' for more information."])


@pytest.mark.parametrize("command", ["run", "ps", "kill", "bench"])
def test_help_of_each_command_has_a_description_exit_statuses_and_examples(command):
    out = osl_pg(command, "--help")
    assert out.returncode == 0 and "examples:" in out.stdout and f"osl-pg {command} " in out.stdout
    usage, description = out.stdout.split("\n\n")[:2]
    assert usage.startswith("usage: ") and not description.startswith(("positional", "options"))
    statuses = out.stdout.split("exit status:\n")[1].split("\n\n")[0]
    assert re.search(r"^  0 ", statuses, re.M) or command == "run"
    assert re.search(r"^  1 ", statuses, re.M) or command == "run"


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


# --------------------------------------------------------------------------
# osl-pg run side by side with coreutils timeout

def test_no_arguments_prints_usage_and_version_prints_the_version():
    from osl_pg import __version__
    out = osl_pg()
    assert out.returncode == 2 and out.stderr.startswith("usage: osl-pg") and "required" not in out.stderr
    assert "run" in out.stderr and "kill" in out.stderr
    for args in (["--version"], ["run", "--version"]):
        version = osl_pg(*args)
        assert version.returncode == 0 and version.stdout.strip() == f"osl-pg {__version__}"


DURATIONS = ["1", "1s", ".5", "5.", "+1", "0", "0.0", "1m", "1h", "1d", "1.5d", "1e1", "0x1p1", "inf", "INF",
             "infinity", "1e400", " 1", "-0", "-1", "-inf", "nan", "1 ", "1x", "1ss", "1S", "", "s", "1_0", ",5",
             "1e", "0x", "1.2.3"]


@needs_timeout
@pytest.mark.parametrize("duration", DURATIONS)
def test_duration_is_read_as_timeout_reads_it(duration, tmp_path):
    """Valid: the command runs (exit 0). Invalid: 125 from both, and the
    command never started (no marker file)."""
    want = subprocess.run(["timeout", duration, "true"], capture_output=True).returncode
    marker = tmp_path / "ran"
    got = osl_pg("run", f"--timeout={duration}", "--", "touch", str(marker))
    assert got.returncode == want, got.stderr
    assert marker.exists() == (want == 0)
    if want == 125:
        assert f"invalid time interval {duration!r}" in got.stderr
        assert osl_pg("run", f"--kill-after={duration}", "--", "touch", str(marker)).returncode == 125


@needs_timeout
@pytest.mark.parametrize("spec", ["TERM", "term", "SIGTERM", "sigKill", "15", "0", "EXIT", "IOT", "RTMIN",
                                  "RTMIN+1", "SIGRTMAX-1", "RTMAX+1", "RTMIN-1", "65", "200", "NOPE", " 15",
                                  "15x", "SIG_IGN", "-1"])
def test_signal_is_read_as_timeout_reads_it(spec):
    want = subprocess.run(["timeout", "-s", spec, "100", "true"], capture_output=True).returncode
    assert osl_pg("run", "-s", spec, "--timeout", "100", "--", "true").returncode == want


TERM_IGNORED = ["sh", "-c", 'trap "" TERM; exec sleep 300']  # one process that ignores SIGTERM

SIDE_BY_SIDE = [
    # (options both take, DURATION, command): exit statuses must agree
    ([], "0.5", ["sleep", "300"]),                                                   # 124
    (["--preserve-status"], "0.5", ["sleep", "300"]),                                # 143
    (["-s", "KILL"], "0.5", ["sleep", "300"]),                                       # 137
    (["-s", "KILL", "--preserve-status"], "0.5", ["sleep", "300"]),                  # 137
    (["-s", "INT", "--preserve-status"], "0.5", ["sleep", "300"]),                   # 130
    (["-s", "HUP"], "0.5", ["sleep", "300"]),                                        # 124
    (["-k", "0.2"], "0.5", TERM_IGNORED),                                            # 137
    (["--kill-after=0.2", "--preserve-status"], "0.5", TERM_IGNORED),                # 137
    (["--preserve-status"], "0.5", ["sh", "-c", 'trap "exit 7" TERM; sleep 300 & wait']),  # 7
    # -k 0: never SIGKILL. The TERM handler takes its time and exits 5.
    (["-k", "0", "--preserve-status"], "0.5", ["sh", "-c", 'trap "sleep 1; exit 5" TERM; sleep 300 & wait']),
    ([], "100", ["sh", "-c", "exit 3"]),
    ([], "0", ["sh", "-c", "exit 4"]),
    ([], "100", ["sh", "-c", "kill -USR1 $$"]),                                      # dies of USR1, as timeout
    ([], "100", ["sh", "-c", "kill -KILL $$"]),
    ([], "100", ["/etc/passwd"]),                                                    # 126
    ([], "100", ["osl-pg-no-such-command"]),                                         # 127
    (["--foreground"], "0.5", ["sleep", "300"]),                                     # 124
    (["--foreground", "-k", "0.2"], "0.5", TERM_IGNORED),                            # 137
    (["--bogus-option"], "1", ["true"]),                                             # 125
]


@needs_timeout
@pytest.mark.parametrize("options,duration,command", SIDE_BY_SIDE,
                         ids=[" ".join(o + [d] + c) for o, d, c in SIDE_BY_SIDE])
def test_exit_status_is_timeouts(options, duration, command):
    # Only PATH directories this user may search: execvp() reports a
    # command it could not look for in one (EACCES) as 126, not 127.
    path = ":".join(d for d in os.environ["PATH"].split(":") if os.access(d or ".", os.X_OK))
    env = dict(os.environ, PATH=path)
    want = subprocess.run(["timeout", *options, duration, *command], capture_output=True, timeout=60,
                          env=env).returncode
    got = osl_pg("run", *options, "--timeout", duration, "--", *command, env=env)
    # timeout, in the group it signals, dies of its own SIGKILL: a shell
    # shows 137 for both; osl-pg is outside the group and exits with 137.
    assert shell_status(got.returncode) == shell_status(want), got.stderr
    if want < 0 and want != -signal.SIGKILL:
        assert got.returncode == want  # the command's signal, passed on


@needs_timeout
def test_missing_command_is_125_as_timeout():
    assert subprocess.run(["timeout", "1"], capture_output=True).returncode == 125
    out = osl_pg("run", "--timeout", "1")
    assert out.returncode == 125 and "no command given" in out.stderr


@needs_timeout
def test_verbose_names_the_signals_timeout_names():
    want = subprocess.run(["timeout", "-v", "-k", "0.2", "0.5", *TERM_IGNORED], capture_output=True, text=True)
    got = osl_pg("run", "-v", "-k", "0.2", "--timeout", "0.5", "--", *TERM_IGNORED)
    sent = re.findall(r"sending signal (\w+) to", got.stderr)
    assert sent == re.findall(r"sending signal (\w+) to", want.stderr) == ["TERM", "KILL"]


@needs_timeout
@pytest.mark.parametrize("tool", ["timeout", "osl-pg"])
def test_foreground_signals_the_command_only(tool):
    """As timeout --foreground: the command stays in the caller's group,
    and its children are not timed out."""
    cmd = ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!; wait"]
    argv = (["timeout", "--foreground", "0.5"] if tool == "timeout"
            else CLI + ["run", "--foreground", "--timeout", "0.5", "--"]) + cmd
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    try:
        assert out.returncode == 124, out.stderr
        assert alive(child) and os.getpgid(child) == os.getpgrp()
    finally:
        kill_pids([child])


def test_a_signal_osl_pg_receives_starts_the_kill_after_clock():
    """SIGTERM to osl-pg goes to the group; the command ignores it, so
    SIGKILL follows -k later (as timeout). The command died of SIGKILL
    with no timeout: osl-pg dies of it too. Before, it forwarded SIGTERM
    and waited for ever."""
    p = subprocess.Popen(CLI + ["run", "-k", "0.2", "--", "sh", "-c", 'trap "" TERM; echo $$; exec sleep 300'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        leader = int(p.stdout.readline())
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL, err
        assert not alive(leader)
    finally:
        p.kill()
        p.wait()


# --------------------------------------------------------------------------
# osl-pg run beyond timeout: reports, leftovers, containment

# Exits at once; two children stay (off the pipes, which they would hold open).
LEAVES_TWO = ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!; sleep 301 >/dev/null 2>&1 & echo $!"]


def test_json_report_on_stderr_replaces_the_lines():
    out = osl_pg("run", "--json", "--", *LEAVES_TWO)
    assert out.returncode == 0
    left = [int(p) for p in out.stdout.split()]
    report = json.loads(out.stderr)  # nothing else on stderr
    assert sorted(m["pid"] for m in report["leftovers"]) == sorted(left)
    assert {m["outcome"] for m in report["leftovers"]} == {"terminated"}
    assert report["pgid"] == report["pid"] and report["containment"] == "process_group"
    assert (report["timed_out"], report["exit_status"], report["returncode"]) == (False, 0, 0)
    assert not any(alive(p) for p in left)


def test_json_to_a_file_keeps_the_lines(tmp_path):
    path = tmp_path / "report.json"
    out = osl_pg("run", f"--json={path}", "--timeout", "0.5", "--", "sleep", "300")
    assert out.returncode == 124 and "timeout after 0.5 s" in out.stderr
    report = json.loads(path.read_text())
    assert report["timed_out"] is True and report["signals_sent"] == ["TERM"] and report["exit_status"] == 124
    assert report["returncode"] == -signal.SIGTERM and not alive(report["pid"])


def test_json_flag_never_takes_the_command_as_its_file():
    out = osl_pg("run", "--json", "sh", "-c", "exit 6")
    assert out.returncode == 6 and json.loads(out.stderr)["command"] == ["sh", "-c", "exit 6"]


def test_quiet_says_nothing_and_still_ends_leftovers():
    out = osl_pg("run", "--quiet", "--", *LEAVES_TWO)
    left = [int(p) for p in out.stdout.split()]
    assert out.returncode == 0 and out.stderr == "" and len(left) == 2
    assert not any(alive(p) for p in left)


def test_keep_leftovers_leaves_them_running_and_names_them():
    out = osl_pg("run", "--keep-leftovers", "--", *LEAVES_TWO)
    left = [int(p) for p in out.stdout.split()]
    try:
        assert out.returncode == 0 and len(left) == 2
        assert all(alive(p) for p in left)
        assert sorted(pids_named(out.stderr)) == sorted(left) and "leaving 2 leftover" in out.stderr
    finally:
        kill_pids(left)


def test_containment_choices_are_the_tiers_that_exist():
    out = osl_pg("run", "--containment", "job", "--", "true")
    assert out.returncode == 125 and "invalid choice: 'job'" in out.stderr
    assert "{process_group,cgroup,pid_namespace,best_available}" in osl_pg("run", "--help").stdout


def test_containment_cgroup_ends_what_left_the_group():
    """In a cgroup, a descendant that called setsid is still a member: it is
    ended with the rest (with process_group it would be named and left)."""
    out = osl_pg("run", "--containment", "cgroup", "--json", "--", "sh", "-c",
                 "setsid sleep 300 & echo $!; cat /proc/self/cgroup")
    if out.returncode == 125:
        pytest.skip(f"no cgroup for this user here: {out.stderr.strip()}")
    escaped = int(out.stdout.split()[0])
    try:
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stderr)
        assert report["containment"] == "cgroup"
        assert "/osl_pg/" in out.stdout  # the command's own /proc/self/cgroup
        assert [m["pid"] for m in report["leftovers"]] == [escaped] and not alive(escaped)
    finally:
        kill_pids([escaped])


# --------------------------------------------------------------------------
# osl-pg kill: -l, --force

def test_kill_l_lists_every_signal_by_number_and_name():
    out = osl_pg("kill", "-l")
    assert out.returncode == 0
    table = {int(n): name for n, name in (line.split() for line in out.stdout.splitlines())}
    assert set(table) == {int(s) for s in signal.valid_signals()}
    assert table[signal.SIGKILL] == "KILL" and table[signal.SIGTERM] == "TERM"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_kill_force_lets_root_signal_another_users_group(executor):
    from osl_pg import ProcessSpawnOperation
    op = ProcessSpawnOperation("setpriv").with_args(
        ["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"]).with_new_process_group()
    result = executor.execute(op)
    try:
        assert wait_for(lambda: psutil.Process(result.pid).uids().real == 65534)
        refused = osl_pg("kill", str(result.pgid))
        assert refused.returncode == 1 and alive(result.pid)
        [line] = refused.stderr.splitlines()
        assert "other users" in line and "--force" in line and "()" not in line
        forced = osl_pg("kill", "--force", str(result.pgid))
        assert forced.returncode == 0, forced.stderr
        assert result.process.wait(10) == -signal.SIGTERM
    finally:
        result.group.close()


def test_a_signal_while_the_command_starts_is_passed_on():
    """The command signals osl-pg at once, racing its handlers: the signal
    waits (blocked) until they are in, then ends the whole group. Before,
    it could end osl-pg alone and leave the command running."""
    out = osl_pg("run", "--", "sh", "-c", 'echo $$; kill -TERM $PPID; exec sleep 300 >/dev/null 2>&1')
    leader = int(out.stdout.split()[0])
    try:
        assert out.returncode == -signal.SIGTERM, out.stderr
        assert not alive(leader)
    finally:
        kill_pids([leader])
