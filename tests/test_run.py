"""osl_pg.run() / run_async(): subprocess.run() semantics, whole-tree
timeouts, pipes held by descendants, leftovers, terminal handoff."""
import asyncio
import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

import osl_pg
from osl_pg import AllowListPolicy, LeftoverProcessWarning, Permission, ProcessExecutor, ProcessSpawnOperation
from conftest import Pty, alive, pgid_of, py, wait_for

SH = "/bin/sh"


def run_sync(*args, **kwargs):
    return osl_pg.run(*args, **kwargs)


def run_async(*args, **kwargs):
    return asyncio.run(osl_pg.run_async(*args, **kwargs))


def run_async_trio(*args, **kwargs):
    trio = pytest.importorskip("trio")
    return trio.run(lambda: osl_pg.run_async(*args, **kwargs))


# run_async under trio too: the same pipes, drains and leftovers through
# trio's wait_readable instead of the asyncio loop's add_reader.
RUNNERS = [pytest.param(run_sync, id="run"), pytest.param(run_async, id="run_async"),
           pytest.param(run_async_trio, id="run_async_trio")]


def gone(pids):
    return not any(alive(p) for p in pids)


# --------------------------------------------------------------------------
# the same command through subprocess.run and osl_pg.run: same answer

CRLF = [SH, "-c", r"printf 'a\r\nb\rc\n'; printf 'e\r\n' >&2; exit 3"]
LATIN = py("import sys; sys.stdout.buffer.write(b'caf\\xe9\\n')")
BAD_UTF8 = py("import sys; sys.stdout.buffer.write(b'ok \\xff\\n'); sys.stderr.buffer.write(b'\\xfe')")
BIG_OUT = py("import sys; sys.stdout.write('x' * 3000000); sys.stderr.write('y' * 200000)")
ENV_ECHO = [SH, "-c", 'echo "A=${A-unset} HOME=${HOME-unset} PATH=${PATH-unset}"']

SAME_AS_SUBPROCESS = [
    ("binary", CRLF, dict(capture_output=True)),
    ("text", CRLF, dict(capture_output=True, text=True)),
    ("universal_newlines", CRLF, dict(capture_output=True, universal_newlines=True)),
    ("encoding", LATIN, dict(capture_output=True, encoding="latin-1")),
    ("errors implies text", BAD_UTF8, dict(capture_output=True, errors="replace")),
    ("encoding+errors", BAD_UTF8, dict(capture_output=True, encoding="ascii", errors="backslashreplace")),
    ("input bytes", ["cat"], dict(input=b"x\0y\r\n", capture_output=True)),
    ("input text", ["cat"], dict(input="h\u00e9llo\r\nworld", capture_output=True, text=True)),
    ("input utf-16", ["cat"], dict(input="h\u00e9", stdout=subprocess.PIPE, encoding="utf-16")),
    ("input empty", ["cat"], dict(input=b"", capture_output=True)),
    ("input large", ["cat"], dict(input=b"0123456789" * 300000, capture_output=True)),
    ("output large", BIG_OUT, dict(capture_output=True)),
    ("stdin devnull", ["cat"], dict(stdin=subprocess.DEVNULL, capture_output=True)),
    ("stderr to stdout", [SH, "-c", "echo out; echo err >&2"], dict(stdout=subprocess.PIPE,
                                                                    stderr=subprocess.STDOUT)),
    ("only stderr", [SH, "-c", "echo out; echo err >&2"], dict(stdout=subprocess.DEVNULL,
                                                               stderr=subprocess.PIPE, text=True)),
    ("nothing captured", [SH, "-c", "exit 7"], dict()),
    ("env replaces", ENV_ECHO, dict(env={"A": "1"}, capture_output=True, text=True)),
    ("env empty", ENV_ECHO, dict(env={}, capture_output=True, text=True)),
    ("cwd", ["pwd"], dict(cwd="/", capture_output=True)),
    ("shell string", "echo $((6 * 7)); exit 2", dict(shell=True, capture_output=True, text=True)),
    ("shell list", ["echo \"$0-$1\"", "a", "b"], dict(shell=True, capture_output=True)),
    ("program as string", "pwd", dict(capture_output=True, cwd="/")),
    ("bytes and path-like argv", [os.fsencode(SH), b"-c", "echo $0", pathlib.Path("/")],
     dict(capture_output=True)),
    ("check passes", [SH, "-c", "echo fine"], dict(capture_output=True, check=True)),
    ("signal death", [SH, "-c", "kill -TERM $$"], dict(capture_output=True)),
]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name,args,kwargs", SAME_AS_SUBPROCESS, ids=[c[0] for c in SAME_AS_SUBPROCESS])
def test_same_result_as_subprocess_run(runner, name, args, kwargs):
    expected = subprocess.run(args, **kwargs)
    got = runner(args, **kwargs)
    assert isinstance(got, subprocess.CompletedProcess)
    assert (got.args, got.returncode) == (expected.args, expected.returncode)
    assert type(got.stdout) is type(expected.stdout) and got.stdout == expected.stdout
    assert type(got.stderr) is type(expected.stderr) and got.stderr == expected.stderr
    assert got.leftovers == []


def raised_by(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:  # noqa: B902 - the type is what is compared
        return e
    pytest.fail(f"{fn.__name__} raised nothing")


SAME_ERRORS = [
    ("input and stdin", ["cat"], dict(input=b"x", stdin=subprocess.DEVNULL)),
    ("capture_output and stdout", ["true"], dict(capture_output=True, stdout=subprocess.DEVNULL)),
    ("capture_output and stderr", ["true"], dict(capture_output=True, stderr=subprocess.DEVNULL)),
    ("text vs universal_newlines", ["true"], dict(text=True, universal_newlines=False)),
    ("str input in binary mode", ["cat"], dict(input="text")),
    ("missing command", ["osl-pg-no-such-command"], dict()),
    ("missing cwd", ["true"], dict(cwd="/osl-pg/no/such/dir")),
    ("check fails", [SH, "-c", "echo out; echo err >&2; exit 4"], dict(capture_output=True, check=True)),
    ("check fails text", [SH, "-c", "echo out; exit 4"], dict(stdout=subprocess.PIPE, check=True, text=True)),
]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name,args,kwargs", SAME_ERRORS, ids=[c[0] for c in SAME_ERRORS])
def test_same_error_as_subprocess_run(runner, name, args, kwargs):
    expected = raised_by(subprocess.run, args, **kwargs)
    got = raised_by(runner, args, **kwargs)
    assert isinstance(got, type(expected)), (got, expected)
    if isinstance(expected, subprocess.CalledProcessError):
        # osl_pg's subclass (it adds pgid and leftovers), as the stdlib's prints
        assert type(got) is osl_pg.CalledProcessError and str(got) == str(expected)
        assert (got.returncode, got.cmd, got.output, got.stderr) == (
            expected.returncode, expected.cmd, expected.output, expected.stderr)


@pytest.mark.parametrize("timeout", [1, 0.5], ids=["int", "float"])
def test_timeout_exception_matches_subprocess(timeout):
    cmd = [SH, "-c", "echo partial; exec sleep 300"]
    expected = raised_by(subprocess.run, cmd, capture_output=True, text=True, timeout=timeout)
    got = raised_by(osl_pg.run, cmd, capture_output=True, text=True, timeout=timeout)
    assert type(got) is osl_pg.TimeoutExpired and type(expected) is subprocess.TimeoutExpired
    # The timeout as given (1, not 1.0), in the stdlib's very wording.
    assert (got.cmd, got.timeout, type(got.timeout)) == (expected.cmd, expected.timeout, type(timeout))
    assert str(got) == str(expected) == f"Command '{cmd}' timed out after {timeout} seconds"
    # bytes even in text mode (as subprocess); None for a stream with nothing
    assert got.stdout == expected.stdout == b"partial\n"
    assert got.stderr is None and expected.stderr is None


# --------------------------------------------------------------------------
# the tree


@pytest.mark.parametrize("runner", RUNNERS)
def test_runs_as_leader_of_a_new_group(runner):
    r = runner(py("import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"), capture_output=True, text=True)
    pid, pgid, sid = map(int, r.stdout.split())
    assert pid == pgid == r.pgid
    assert pgid != os.getpgrp() and sid == os.getsid(0)


def test_start_new_session_leads_a_session():
    r = osl_pg.run(py("import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"), capture_output=True,
                   text=True, start_new_session=True)
    pid, pgid, sid = map(int, r.stdout.split())
    assert pid == pgid == sid


TREE = [SH, "-c", "sleep 300 & sleep 300 & sleep 300 & echo started; wait"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_ends_the_whole_tree(runner):
    e = raised_by(runner, [SH, "-c", "sleep 300 & sleep 300 & sleep 300"], timeout=1)
    assert type(e) is osl_pg.TimeoutExpired
    assert not [p for p in psutil.process_iter() if pgid_of(p.pid) == e.pgid and alive(p.pid)]
    ended = [x.pid for x in e.leftovers]
    assert len(ended) >= 2 and gone(ended)  # dash execs the last sleep: it is the leader
    assert all(x.outcome in ("terminated", "killed") for x in e.leftovers)


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_with_pipes_returns_partial_output_and_ends_tree(runner):
    e = raised_by(runner, TREE, capture_output=True, timeout=1)
    assert type(e) is osl_pg.TimeoutExpired
    assert e.stdout == b"started\n"
    assert len(e.leftovers) == 3 and gone([x.pid for x in e.leftovers])


def test_timeout_escalates_to_sigkill_after_grace():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(300)"
    e = raised_by(osl_pg.run, [SH, "-c", f"{sys.executable} -c \"{code}\" & wait"], capture_output=True,
                  timeout=2, grace=0.5)
    assert type(e) is osl_pg.TimeoutExpired
    [stubborn] = [x for x in e.leftovers if x.name.startswith("python")]
    assert stubborn.outcome == "killed" and not alive(stubborn.pid)


HOLDER = [SH, "-c", "(sleep 300 &) ; echo hi"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_pipe_held_by_orphan_does_not_hang_and_holder_is_named_and_killed(runner):
    with pytest.warns(LeftoverProcessWarning, match=r"sleep 300") as w:
        r = runner(HOLDER, capture_output=True, text=True, pipe_drain_timeout=0.5)
    # The warning names a line outside osl_pg (here the runner helpers of this file).
    assert w[0].filename == __file__
    assert r.stdout == "hi\n" and r.returncode == 0
    [holder] = r.leftovers
    # Ended by us, not waited out (no clock needed): run() returned while it ran.
    assert holder.outcome in ("terminated", "killed")
    assert holder.cmdline == ("sleep", "300") and holder.in_group and holder.pgid == r.pgid
    assert set(holder.holds) == {"stdout", "stderr"}
    assert holder.outcome == "terminated"
    assert not alive(holder.pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_pipe_holder_that_left_the_group_is_found_by_its_pipe(runner):
    # setsid: the sleep leads its own session, where no group signal reaches
    with pytest.warns(LeftoverProcessWarning, match="left the group"):
        r = runner([SH, "-c", "setsid sleep 300 & echo hi"], stdout=subprocess.PIPE, pipe_drain_timeout=0.5)
    assert r.stdout == b"hi\n"
    [holder] = r.leftovers
    assert not holder.in_group and holder.pgid == holder.pid != r.pgid
    assert holder.holds == ("stdout",) and holder.outcome == "terminated"
    assert not alive(holder.pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_escaped_child_of_a_leftover_is_ended_too(runner):
    inner = "setsid sleep 300 </dev/null >/dev/null 2>&1 & wait"
    with pytest.warns(LeftoverProcessWarning):
        r = runner([SH, "-c", f"sh -c '{inner}' </dev/null >/dev/null 2>&1 & sleep 0.5"])
    by_cmd = {x.cmdline[0]: x for x in r.leftovers}
    assert by_cmd["sh"].in_group and not by_cmd["sleep"].in_group
    assert gone([x.pid for x in r.leftovers])


@pytest.mark.parametrize("runner", RUNNERS)
def test_leftovers_without_pipes_are_ended(runner):
    with pytest.warns(LeftoverProcessWarning):
        r = runner([SH, "-c", "sleep 300 >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 & echo done"], capture_output=True)
    assert r.stdout == b"done\n"
    assert len(r.leftovers) == 2 and all(x.holds == () for x in r.leftovers)
    assert gone([x.pid for x in r.leftovers])


@pytest.mark.parametrize("runner", RUNNERS)
def test_kill_leftovers_false_names_them_and_leaves_them(runner):
    with pytest.warns(LeftoverProcessWarning):
        r = runner(HOLDER, capture_output=True, pipe_drain_timeout=0.3, kill_leftovers=False)
    try:
        assert r.stdout == b"hi\n"
        [holder] = r.leftovers
        assert holder.outcome == "left running" and alive(holder.pid)
    finally:
        for x in r.leftovers:
            os.kill(x.pid, signal.SIGKILL)
        wait_for(lambda: gone([x.pid for x in r.leftovers]))


def test_check_failure_carries_output_and_leftovers():
    with pytest.warns(LeftoverProcessWarning):
        e = raised_by(osl_pg.run, [SH, "-c", "(sleep 300 &); echo out; exit 5"], capture_output=True, text=True,
                      check=True, pipe_drain_timeout=0.3)
    assert type(e) is osl_pg.CalledProcessError
    assert (e.returncode, e.output, e.stderr) == (5, "out\n", "")
    assert len(e.leftovers) == 1 and not alive(e.leftovers[0].pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_without_pipes_and_idle_timeout_show_the_given_value(runner):
    # subprocess.run without pipes shows the time left when its wait ran
    # out (0.99... seconds); osl_pg shows the timeout given, as with pipes.
    e = raised_by(runner, [SH, "-c", "sleep 300"], timeout=1)
    assert str(e) == str(subprocess.TimeoutExpired(e.cmd, 1)) and type(e.timeout) is int
    e = raised_by(runner, [SH, "-c", "sleep 300"], capture_output=True, idle_timeout=1)
    assert str(e) == str(subprocess.TimeoutExpired(e.cmd, 1)) and type(e.timeout) is int


def test_run_errors_are_osl_errors_too():
    # except osl_pg.OslError catches every error osl_pg raises, these two included.
    assert issubclass(osl_pg.TimeoutExpired, osl_pg.OslError)
    assert issubclass(osl_pg.CalledProcessError, osl_pg.OslError)
    with pytest.raises(osl_pg.OslError) as e:
        osl_pg.run([SH, "-c", "exit 3"], check=True)
    assert type(e.value) is osl_pg.CalledProcessError and e.value.returncode == 3
    with pytest.raises(osl_pg.OslError) as e:
        osl_pg.run([SH, "-c", "sleep 300"], timeout=0.5)
    assert type(e.value) is osl_pg.TimeoutExpired and e.value.timeout == 0.5


def test_run_errors_are_the_stdlib_types_with_pgid_and_leftovers():
    # except subprocess.X keeps catching them; the extra attributes survive
    # pickling (concurrent.futures and multiprocessing pass exceptions on).
    import pickle
    assert issubclass(osl_pg.TimeoutExpired, subprocess.TimeoutExpired)
    assert issubclass(osl_pg.CalledProcessError, subprocess.CalledProcessError)
    e = raised_by(osl_pg.run, [SH, "-c", "exit 3"], check=True)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is osl_pg.CalledProcessError
    assert (back.returncode, back.cmd, back.pgid, back.leftovers) == (3, e.cmd, e.pgid, []) and e.pgid > 1
    t = raised_by(osl_pg.run, [SH, "-c", "sleep 300 & wait"], timeout=0.5)
    back = pickle.loads(pickle.dumps(t))
    assert type(back) is osl_pg.TimeoutExpired
    assert (back.cmd, back.timeout, back.pgid) == (t.cmd, 0.5, t.pgid)
    assert [x.pid for x in back.leftovers] == [x.pid for x in t.leftovers] and t.leftovers


def test_completed_run_is_generic_at_run_time():
    # CompletedRun[str] in an annotation that is evaluated (no postponed
    # annotations), as subprocess.CompletedProcess[str] works.
    alias = osl_pg.CompletedRun[str]
    assert alias.__origin__ is osl_pg.CompletedRun and alias.__args__ == (str,)
    assert issubclass(osl_pg.CompletedRun, subprocess.CompletedProcess)


def test_nothing_left_means_no_warning(recwarn):
    r = osl_pg.run([SH, "-c", "sleep 0.1 & wait; echo ok"], capture_output=True)
    assert r.stdout == b"ok\n" and r.leftovers == []
    assert not [w for w in recwarn if issubclass(w.category, LeftoverProcessWarning)]


def test_group_is_released_and_leader_reaped():
    r = osl_pg.run(["true"])
    assert not psutil.pid_exists(r.pgid) or psutil.Process(r.pgid).ppid() != os.getpid()
    assert osl_pg.group.owned_group(r.pgid) is None


def test_policy_and_audit_apply(caplog):
    denied = ProcessExecutor("no-spawn", policies=[AllowListPolicy(deny={"*": [Permission.PROCESS_SPAWN]})])
    before = set(psutil.Process().children())
    with pytest.raises(PermissionError):
        osl_pg.run(["true"], executor=denied)
    assert set(psutil.Process().children()) == before
    with caplog.at_level("INFO", logger="osl_pg.audit"):
        r = osl_pg.run(["true"], executor=ProcessExecutor("audited"))
    spawns = [rec.audit for rec in caplog.records if getattr(rec, "audit", None)
              and rec.audit["executor"] == "audited" and rec.audit["operation_type"] == "process_spawn"]
    assert [s["target_pid"] for s in spawns] == [r.pgid]


def test_cancelled_run_async_kills_the_group():
    async def main():
        task = asyncio.ensure_future(osl_pg.run_async(TREE, capture_output=True))
        found = []
        for _ in range(500):
            await asyncio.sleep(0.01)
            found = [p for p in psutil.Process().children() if _cmdline(p)[:2] == [SH, "-c"]]
            if found and len(_members(found[0].pid)) == 4:
                break
        members = _members(found[0].pid)
        assert len(members) == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return members

    members = asyncio.run(main())
    assert gone(members)


def _cmdline(p):
    """A child's command line; () for a zombie (another test's, say) or one gone meanwhile."""
    try:
        return p.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def _members(pgid):
    return [p.pid for p in psutil.process_iter() if pgid_of(p.pid) == pgid and alive(p.pid)]


# --------------------------------------------------------------------------
# a terminal: the child's group gets it while it runs

TTY_CHILD = r"""
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)   # the pty becomes our controlling terminal
import osl_pg
# Children that say "armed" only once their group has the terminal, so a
# Ctrl-C sent after that cannot reach us before the handoff.
ARMED = "import os, signal, sys, time\n" \
        "while os.tcgetpgrp(0) != os.getpgrp(): time.sleep(0.01)\n" \
        "signal.signal(signal.SIGINT, {handler})\n" \
        "print('armed', flush=True)\n" \
        "time.sleep(300)\n"
# os.write, not print: Ctrl-C may land while print('armed') still flushes,
# and a handler that prints then re-enters the same BufferedWriter
# ("reentrant call inside BufferedWriter": 6 of 12 runs as a normal user).
GRACEFUL = "lambda *a: (os.write(1, b'child-got-int\\n'), os._exit(130))"

r = osl_pg.run(["sh", "-c", "read line; echo got:$line"])
print("rc", r.returncode, flush=True)
print("py read:", input(), flush=True)  # the terminal came back to us
r = osl_pg.run([sys.executable, "-c", ARMED.format(handler=GRACEFUL)])
print("rc", r.returncode, flush=True)
try:
    osl_pg.run([sys.executable, "-c", ARMED.format(handler="signal.SIG_DFL")])
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def test_terminal_goes_to_the_child_group_and_comes_back():
    tty = Pty(py(TTY_CHILD))
    try:
        tty.send(b"hello\n")
        tty.expect("got:hello")  # a background group would have been stopped by SIGTTIN
        tty.expect("rc 0")
        tty.send(b"again\n")
        tty.expect("py read: again")
        tty.expect("armed")
        tty.send(b"\x03")  # Ctrl-C: to the child's group, not to the Python parent
        tty.expect("child-got-int")
        tty.expect("rc 130")  # run() returned: the parent itself got no SIGINT
        tty.seen = b""
        tty.expect("armed")
        tty.send(b"\x03")
        tty.expect("KeyboardInterrupt")  # the child died of SIGINT: run() raises it, as a shell would
        assert tty.proc.wait(20) == 0
    finally:
        tty.close()


@pytest.mark.parametrize("runner", RUNNERS)
def test_close_fds_like_subprocess(runner):
    r_fd, w_fd = os.pipe()
    os.set_inheritable(w_fd, True)
    try:
        code = [sys.executable, "-c", f"import os\ntry:\n os.fstat({w_fd}); print('open')\nexcept OSError: print('closed')"]
        for close_fds, want in ((True, "closed\n"), (False, "open\n")):
            assert subprocess.run(code, capture_output=True, text=True, close_fds=close_fds).stdout == want
            assert runner(code, capture_output=True, text=True, close_fds=close_fds).stdout == want
    finally:
        os.close(r_fd)
        os.close(w_fd)


@pytest.mark.parametrize("runner", RUNNERS)
def test_pass_fds_like_subprocess(runner):
    # Two fds, inheritable or not: the passed one reaches the child, the
    # other is closed, in both runners; the child reports what it has.
    r_fd, w_fd = os.pipe()
    other = os.dup(w_fd)
    os.set_inheritable(other, True)
    fds = [r_fd, w_fd, other]
    try:
        code = [sys.executable, "-c", "import os, sys\nfor fd in map(int, sys.argv[1:]):\n"
                " try:\n  os.fstat(fd); print(fd, 'open', os.get_inheritable(fd))\n"
                " except OSError: print(fd, 'closed')", str(w_fd), str(other)]
        want = f"{w_fd} open True\n{other} closed\n"
        assert subprocess.run(code, capture_output=True, text=True, pass_fds=[w_fd]).stdout == want
        assert runner(code, capture_output=True, text=True, pass_fds=[w_fd]).stdout == want
        assert not os.get_inheritable(w_fd)  # the parent's flag is untouched
        with pytest.warns(RuntimeWarning, match="pass_fds overriding close_fds"):
            assert runner(code, capture_output=True, text=True, pass_fds=(w_fd,), close_fds=False).stdout == want
        assert runner(py(f"import os; os.write({w_fd}, b'through')"), pass_fds=[w_fd]).returncode == 0
        for fd in (w_fd, other):  # then a read that finds nothing sees EOF rather than hang
            os.close(fd)
            fds.remove(fd)
        assert os.read(r_fd, 100) == b"through"
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("runner", RUNNERS)
def test_executable_like_subprocess(runner):
    # argv[0] is the command as given; the program run is `executable`,
    # and with shell=True `executable` is the shell.
    for kw in (dict(args=["-sh", "-c", "echo $0"], executable="sh"),
               dict(args="echo $0", shell=True, executable="/bin/sh")):
        want = subprocess.run(capture_output=True, text=True, **kw).stdout
        assert want in ("-sh\n", "/bin/sh\n")
        assert runner(capture_output=True, text=True, **kw).stdout == want
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        runner(["x"], executable="no-such-program")


def test_pass_fds_and_executable_errors(executor):
    with pytest.raises(ValueError, match="fd 1 is not >= 3"):
        ProcessSpawnOperation("true").with_pass_fds([1])
    with pytest.raises(ValueError, match="not an fd number"):
        ProcessSpawnOperation("true").with_pass_fds(["5"])
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a number that is not open now
    with pytest.raises(OSError, match=f"pass_fds: fd {fd} is not open") as e:
        executor.execute(ProcessSpawnOperation("true").with_pass_fds([fd]))
    assert e.value.errno == errno.EBADF
    assert ProcessSpawnOperation("true").with_pass_fds([9, 5]).with_pass_fds([5, 7]).pass_fds == (5, 7, 9)


def test_run_async_with_reader_threads_as_on_windows(monkeypatch):
    # Windows' event loops cannot watch pipes, so run_async() reads them
    # with a thread each there; the same path runs here when forced.
    run_module = sys.modules["osl_pg.run"]  # osl_pg.run is also the function
    monkeypatch.setattr(run_module, "_THREADED_PIPES", True)
    code = py("import sys; d = sys.stdin.read(); print(d.upper(), end=''); sys.stderr.write('e'); sys.exit(3)")
    want = subprocess.run(code, input="abc", capture_output=True, text=True)
    got = run_async(code, input="abc", capture_output=True, text=True)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr) == (3, "ABC", "e")
    # A grandchild holding stdout: "hi" after the drain time, the holder ended.
    t0 = time.monotonic()
    with pytest.warns(LeftoverProcessWarning):
        r = run_async([SH, "-c", "(sleep 300 &); echo hi"], capture_output=True, text=True, pipe_drain_timeout=0.5)
    assert r.stdout == "hi\n" and time.monotonic() - t0 < 30
    assert r.leftovers and not [x.pid for x in r.leftovers if alive(x.pid)]
    with pytest.raises(subprocess.TimeoutExpired):
        run_async([SH, "-c", "sleep 300 & sleep 300"], capture_output=True, timeout=0.5)


# --------------------------------------------------------------------------
# every subprocess.run() keyword, side by side with subprocess.run

POPEN_DEFAULTS = dict(bufsize=-1, restore_signals=True, pipesize=-1, creationflags=0, startupinfo=None,
                      extra_groups=None, user=None, group=None, umask=-1, process_group=None, preexec_fn=None)
if sys.version_info < (3, 11):
    del POPEN_DEFAULTS["process_group"]  # not in this Python's subprocess
if sys.version_info < (3, 10):
    del POPEN_DEFAULTS["pipesize"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_popen_keyword_at_its_default(runner):
    cmd = [SH, "-c", "echo $$; exit 3"]
    expected = subprocess.run(cmd, capture_output=True, **POPEN_DEFAULTS)
    got = runner(cmd, capture_output=True, **POPEN_DEFAULTS)
    assert got.returncode == expected.returncode == 3
    assert int(got.stdout) == got.pgid  # still a group leader


BAD_INPUT = [
    ("int argument", [SH, "-c", "true", 1], dict()),
    ("None argument", [None], dict()),
    ("env value None", ["true"], dict(env={"A": None})),
    ("env value int", ["true"], dict(env={"A": 1})),
    ("env key int", ["true"], dict(env={1: "x"})),
    ("env key with =", ["true"], dict(env={"A=B": "x"})),
    ("bufsize not int", ["true"], dict(bufsize="1")),
    ("creationflags on POSIX", ["true"], dict(creationflags=0x200)),
    ("startupinfo on POSIX", ["true"], dict(startupinfo=object())),
    ("negative user", ["true"], dict(user=-1)),
    ("user float", ["true"], dict(user=1.5)),
    ("unknown user", ["true"], dict(user="osl-pg-no-such-user")),
    ("unknown group", ["true"], dict(group="osl-pg-no-such-group")),
    ("extra_groups string", ["true"], dict(extra_groups="wheel")),
]
if sys.version_info >= (3, 11) and os.name != "nt":  # subprocess's process_group
    BAD_INPUT.append(("new session joining a group", ["true"], dict(start_new_session=True,
                                                                    process_group=os.getpgrp())))


@pytest.mark.skipif(os.name == "nt", reason="POSIX meanings of these keywords")
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name,args,kwargs", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_what_subprocess_raises(runner, name, args, kwargs):
    before = {c.pid for c in psutil.Process().children()}
    expected = raised_by(subprocess.run, args, **kwargs)
    got = raised_by(runner, args, **kwargs)
    assert type(got) is type(expected) or isinstance(got, type(expected)), (got, expected)
    assert {c.pid for c in psutil.Process().children()} == before  # refused before the spawn


@pytest.mark.parametrize("runner", RUNNERS)
def test_preexec_fn_is_refused_saying_why(runner):
    with pytest.raises(TypeError, match="no Python in the child"):
        runner(["true"], preexec_fn=os.setpgrp)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="EncodingWarning is 3.10+")
def test_encoding_warning_under_warn_default_encoding_as_subprocess():
    # subprocess.run, then run(), run_async() and osl_pg.Popen (through subprocess.run's own body).
    code = ("import asyncio, subprocess, warnings, osl_pg\n"
            "def popen(*a, **k):\n"
            "    subprocess.Popen, saved = osl_pg.Popen, subprocess.Popen\n"
            "    try: subprocess.run(*a, **k)\n"
            "    finally: subprocess.Popen = saved\n"
            "runs = [subprocess.run, osl_pg.run, lambda *a, **k: asyncio.run(osl_pg.run_async(*a, **k)), popen]\n"
            "for f in runs:\n"
            "    with warnings.catch_warnings(record=True) as w:\n"
            "        warnings.simplefilter('always')\n"
            "        f(['true'], capture_output=True, text=True)\n"
            "        f(['true'], capture_output=True, text=True, encoding='utf-8')\n"
            "    print([type(x.message).__name__ for x in w], w[0].filename == '<string>')\n")
    out = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", code], capture_output=True,
                         text=True, encoding="utf-8", check=True).stdout
    assert out.splitlines() == ["['EncodingWarning'] True"] * 4


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
@pytest.mark.parametrize("runner", RUNNERS)
def test_process_group_joins_group_n(runner):
    with osl_pg.Popen(["sleep", "300"]) as leader:
        got = runner(py("import os; print(os.getpgrp())"), capture_output=True, text=True,
                     process_group=leader.pid)
        assert int(got.stdout) == leader.pid == got.pgid
        assert alive(leader.pid)  # the group is not ours: run() ended nothing in it
        leader.kill()


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_process_group_timeout_kills_the_child_alone():
    with osl_pg.Popen(["sleep", "300"]) as leader:
        with pytest.raises(subprocess.TimeoutExpired):
            osl_pg.run(["sleep", "300"], timeout=0.3, process_group=leader.pid)
        assert alive(leader.pid)
        leader.kill()


@pytest.mark.parametrize("runner", RUNNERS)
def test_idle_timeout_ends_the_tree_when_output_stops(runner):
    cmd = [SH, "-c", "sleep 300 & echo $!; exec sleep 300"]
    with pytest.raises(subprocess.TimeoutExpired) as e:
        runner(cmd, capture_output=True, idle_timeout=0.5, timeout=120)
    assert e.value.timeout == 0.5  # the limit that ran out
    grandchild = int(e.value.stdout)
    assert not alive(grandchild)
    assert e.value.leftovers and all(x.outcome in ("terminated", "killed", "exited") for x in e.value.leftovers)


@pytest.mark.parametrize("runner", RUNNERS)
def test_idle_timeout_spares_a_command_that_keeps_talking(runner):
    # 8 lines, 0.1 s apart: never 1 s without output, 0.8 s in all.
    got = runner([SH, "-c", "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.1; done"], capture_output=True,
                 idle_timeout=1.0)
    assert got.returncode == 0 and got.stdout.split() == [str(i).encode() for i in range(1, 9)]


def test_idle_timeout_with_reader_threads_as_on_windows(monkeypatch):
    monkeypatch.setattr(sys.modules["osl_pg.run"], "_THREADED_PIPES", True)
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_async([SH, "-c", "echo a; exec sleep 300"], capture_output=True, idle_timeout=0.5, timeout=120)
    assert e.value.timeout == 0.5 and e.value.stdout == b"a\n"


def test_idle_timeout_needs_captured_output():
    with pytest.raises(ValueError, match="captured output"):
        osl_pg.run(["true"], idle_timeout=1)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            osl_pg.run(["true"], capture_output=True, idle_timeout=bad)
    assert osl_pg.run(["true"], capture_output=True, idle_timeout=float("inf")).returncode == 0


@pytest.mark.skipif(not hasattr(__import__("fcntl") if os.name != "nt" else None, "F_GETPIPE_SZ"),
                    reason="Linux pipe sizes")
def test_pipesize_as_subprocess():
    # Read after stdin's EOF, which run() sends only after sizing the pipes.
    code = "import fcntl, sys; sys.stdin.read(); print(fcntl.fcntl(1, fcntl.F_GETPIPE_SZ))"
    got = osl_pg.run(py(code), input=b"", capture_output=True, pipesize=1 << 20)
    assert int(got.stdout) == 1 << 20


# --------------------------------------------------------------------------
# user, group, extra_groups, umask, restore_signals: applied in the child

needs_native_ids = pytest.mark.skipif(os.name == "nt", reason="POSIX credentials and umask")
ROOT = os.name != "nt" and os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="changing ids needs root")
as_user = pytest.mark.skipif(ROOT or os.name == "nt", reason="what an unprivileged caller gets")
IDS = [SH, "-c", "id -ru; id -u; id -rg; id -g; id -G"]  # not Python: our interpreter may be unreadable to them
SIG_IGN = [SH, "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"]

CREDENTIALS = [
    pytest.param(IDS, dict(user="nobody"), marks=as_root, id="user name"),
    pytest.param(IDS, dict(user=65534), marks=as_root, id="user id"),
    pytest.param(IDS, dict(group=65534), marks=as_root, id="group"),
    pytest.param(IDS, dict(extra_groups=[65534, 0]), marks=as_root, id="extra_groups"),
    pytest.param(IDS, dict(extra_groups=[]), marks=as_root, id="no extra_groups"),
    pytest.param(IDS, dict(user="nobody", group=65534, extra_groups=[]), marks=as_root, id="all three"),
    pytest.param(IDS, dict(user=0), marks=as_user, id="root refused"),
    pytest.param(IDS, dict(extra_groups=[0]), marks=as_user, id="setgroups refused"),
    pytest.param(IDS, dict(user=2**64), id="uid overflow"),
    pytest.param(IDS, dict(group=2**64), id="gid overflow"),
    pytest.param(IDS, dict(user=os.getuid() if os.name != "nt" else 0), id="own user"),
    pytest.param(SIG_IGN, dict(restore_signals=False), id="restore_signals=False"),
    pytest.param(SIG_IGN, dict(restore_signals=True), id="restore_signals=True"),
]


@needs_native_ids
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("args,kwargs", CREDENTIALS)
def test_credentials_and_signals_as_subprocess(runner, request, args, kwargs):
    if request.node.callspec.id.split("-")[0] in ("root refused", "setgroups refused", "uid overflow",
                                                  "gid overflow"):
        expected = raised_by(subprocess.run, args, capture_output=True, **kwargs)
        got = raised_by(runner, args, capture_output=True, **kwargs)
        assert isinstance(got, type(expected)) and getattr(got, "errno", None) == getattr(expected, "errno", None), (
            got, expected)
        return
    expected = subprocess.run(args, capture_output=True, text=True, check=True, **kwargs)
    got = runner(args, capture_output=True, text=True, check=True, **kwargs)
    if args is SIG_IGN:
        # The one intended difference: the C library's internal signals
        # (glibc's 32 and 33) are never left ignored in our children, while
        # subprocess on some versions (3.13: posix_spawn) passes them on.
        assert not _sig_ign(got.stdout) & _LIBC_INTERNAL, got.stdout
        assert _sig_ign(got.stdout) == _sig_ign(expected.stdout) & ~_LIBC_INTERNAL, (got.stdout, expected.stdout)
        assert got.stdout.splitlines()[0] == expected.stdout.splitlines()[0]  # SigBlk: nothing blocked
        return
    assert got.stdout == expected.stdout and got.stdout


_LIBC_INTERNAL = (1 << 31) | (1 << 32)  # signals 32 and 33, bits 31 and 32 of the SigIgn mask


def _sig_ign(status):
    return int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)


@needs_native_ids
@as_root
def test_popen_user_is_the_childs_uid_in_proc():
    nobody = __import__("pwd").getpwnam("nobody").pw_uid
    with osl_pg.Popen(["sleep", "300"], user="nobody") as p:
        with open(f"/proc/{p.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uids == [str(nobody)] * 4  # real, effective, saved, filesystem
        assert os.getpgid(p.pid) == p.pid
        p.kill()


@needs_native_ids
@pytest.mark.parametrize("runner", RUNNERS + [pytest.param(subprocess.run, id="subprocess.run")])
@pytest.mark.parametrize("mask", [0o077, 0o027, 0])
def test_umask_sets_the_mode_of_created_files(runner, mask, tmp_path):
    path = tmp_path / "f"
    runner([SH, "-c", f"touch {path}"], umask=mask, check=True)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
