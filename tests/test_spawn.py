"""Spawning: groups, sessions, stdio, environment, signals - checked against
the OS (getpgid, getsid, /proc, psutil), not our own metadata."""
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from conftest import linux_only, py, wait_for
from osl_pg import DEVNULL, PIPE, STDOUT, ExecutionContext, ProcessSpawnOperation, SecurityContext


def finish(result):
    if result.group is not None:
        result.group.close()
    else:
        result.process.kill()
        result.process.wait()


def test_new_group_is_led_by_the_child(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group(),
                         ExecutionContext(SecurityContext("alice")))
    try:
        assert os.getpgid(r.pid) == r.pid
        assert os.getpgid(r.pid) != os.getpgrp()
        assert int(r.get_metadata("pgid")) == r.pid
        assert r.get_metadata("is_group_leader") == "true"
        assert r.get_metadata("user") == "alice"
        assert r.get_metadata("executor") == "test-executor"
        assert r.get_metadata("command") == "sleep" and r.get_metadata("args") == "10"
        assert r.group is not None and r.group.pgid == r.pid
    finally:
        finish(r)


def test_inherit_keeps_the_callers_group(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10"))
    try:
        assert os.getpgid(r.pid) == os.getpgrp()
        assert r.pgid == os.getpgrp()
        assert r.get_metadata("is_group_leader") == "false"
        assert r.group is None
    finally:
        finish(r)


def test_join_group_puts_second_process_in_first_group(executor):
    first = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group())
    try:
        second = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_process_group(first.pgid))
        assert os.getpgid(second.pid) == first.pid
        assert second.pgid == first.pid and second.get_metadata("is_group_leader") == "false"
        assert sorted(m.pid for m in first.group.members()) == sorted([first.pid, second.pid])
    finally:
        first.group.close()
    assert second.process.wait(5) == -signal.SIGKILL


def test_detach_makes_a_session_leader(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_detach_from_terminal())
    try:
        assert os.getsid(r.pid) == r.pid
        assert os.getpgid(r.pid) == r.pid
        assert os.getsid(r.pid) != os.getsid(0)
        assert psutil.Process(r.pid).terminal() is None
        assert r.group is not None and r.group.tier == "session"
    finally:
        finish(r)


CTTY_PROBE = textwrap.dedent("""
    import os, sys, psutil
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    fd = os.open(sys.argv[1], os.O_RDWR)   # session leader opens a tty: it becomes our ctty
    assert psutil.Process().terminal() is not None, "probe has no controlling terminal"
    ex = ProcessExecutor("ctty")
    plain = ex.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group())
    detached = ex.execute(ProcessSpawnOperation("sleep").arg("10").with_detach_from_terminal())
    print(psutil.Process(plain.pid).terminal(), psutil.Process(detached.pid).terminal(),
          os.getsid(detached.pid) == detached.pid)
    plain.group.close(); detached.group.close()
""")


@linux_only
def test_detached_child_has_no_controlling_terminal():
    master, slave = os.openpty()
    try:
        out = subprocess.run(py(CTTY_PROBE) + [os.ttyname(slave)], start_new_session=True,
                             capture_output=True, text=True, timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert out.returncode == 0, out.stderr
    plain_tty, detached_tty, leader = out.stdout.split()
    assert plain_tty.startswith("/dev/pts/")  # the inherited terminal
    assert detached_tty == "None" and leader == "True"


def _signal_masks(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["SigBlk"], 16), int(fields["SigIgn"], 16)


def _bit(sig):
    return 1 << (int(sig) - 1)


GLIBC_INTERNAL = _bit(32) | _bit(33)  # glibc's cancellation and setxid signals


@pytest.mark.parametrize("force_vfork", [False, True], ids=["posix_spawn", "vfork"])
@pytest.mark.parametrize("reset, kept", [("restore", "USR1"), ("inherit", "USR1 PIPE XFSZ"), ("all", "")])
@linux_only
def test_child_signal_dispositions_and_empty_mask(executor, force_vfork, reset, kept):
    # Python ignores SIGPIPE and SIGXFSZ; make the parent's state worse
    # still: ignore SIGUSR1, handle SIGUSR2 and block SIGTERM in this thread.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    old_usr2 = signal.signal(signal.SIGUSR2, lambda *a: None)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        op = ProcessSpawnOperation("sleep").arg("10").with_new_process_group().with_signal_reset(reset)
        if force_vfork:
            op = op.with_kill_on_parent_death()  # needs the vfork child
        r = executor.execute(op)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGUSR2, old_usr2)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        _, parent_ignored = _signal_masks(os.getpid())
        assert parent_ignored & _bit(signal.SIGPIPE)
        blocked, ignored = _signal_masks(r.pid)
        assert blocked == 0, f"child blocks {blocked:#x}"
        expected = sum(_bit(getattr(signal, "SIG" + name)) for name in kept.split())
        assert ignored == expected, f"child ignores {ignored:#x}, not {expected:#x}"  # never glibc's 32 and 33
        assert not _signal_caught(r.pid), "the handled SIGUSR2 is back to default"
    finally:
        finish(r)


def _signal_caught(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([line.split()[1] for line in f if line.startswith("SigCgt")][0], 16)


@linux_only
def test_an_ignored_sighup_survives_as_under_subprocess(executor, monkeypatch):
    # A program started under nohup ignores SIGHUP; its children must too.
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        theirs = subprocess.Popen(["sleep", "10"])
        op = ProcessSpawnOperation("sleep").arg("10").with_new_process_group()
        from osl_pg import _posix
        ours = []
        for path in (_posix.lib.OSL_SPAWN_POSIX, _posix.lib.OSL_SPAWN_VFORK):
            monkeypatch.setattr(_posix, "SPAWN_PATH", path)
            ours.append(executor.execute(op))
    finally:
        signal.signal(signal.SIGHUP, old)
    try:
        want = _signal_masks(theirs.pid)[1]
        assert want & _bit(signal.SIGHUP) and not want & _bit(signal.SIGPIPE)
        assert [_signal_masks(r.pid)[1] for r in ours] == [want, want]
    finally:
        theirs.kill()
        theirs.wait()
        for r in ours:
            finish(r)


INTERNAL_SIGNALS_CHILD = """
import os, sys
from osl_pg import ProcessExecutor, ProcessSpawnOperation
def ignored(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([l.split()[1] for l in f if l.startswith("SigIgn")][0], 16)
ex = ProcessExecutor("x")
out = [ignored(os.getpid())]
for vfork in (False, True):
    op = ProcessSpawnOperation("sleep").arg("10").with_new_process_group()
    r = ex.execute(op.with_kill_on_parent_death() if vfork else op)
    out.append(ignored(r.pid))
    r.group.close()
print(*out)
"""


@linux_only
def test_glibc_internal_signals_are_reset_even_when_inherited_ignored(tmp_path):
    # A program started by glibc's posix_spawn without 32 and 33 in its
    # sigdefault set (os.posix_spawn's default) has them ignored; its own
    # children must not inherit that, on either spawn path.
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", INTERNAL_SIGNALS_CHILD], os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)])
    finally:
        os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0
    parent, via_posix_spawn, via_vfork = map(int, out.read_text().split())
    if not parent & GLIBC_INTERNAL:
        pytest.skip("this libc's posix_spawn resets 32 and 33 itself")
    assert not via_posix_spawn & GLIBC_INTERNAL and not via_vfork & GLIBC_INTERNAL, \
        (hex(via_posix_spawn), hex(via_vfork))


def test_pipes_env_and_cwd(executor, tmp_path):
    code = "import os,sys; data=sys.stdin.read(); print(data.upper(), os.environ['OSL_X'], os.getcwd());" \
           "print('err', file=sys.stderr)"
    op = (ProcessSpawnOperation(sys.executable).with_args(["-c", code]).env("OSL_X", "yes")
          .working_dir(tmp_path).with_stdin(PIPE).with_stdout(PIPE).with_stderr(PIPE))
    r = executor.execute(op)
    out, err = r.process.communicate(b"hello")
    assert r.process.returncode == 0
    assert out.decode().split() == ["HELLO", "yes", str(tmp_path)]
    assert err == b"err\n"


def test_env_removal_and_clean_env(executor):
    os.environ["OSL_REMOVE_ME"] = "1"
    try:
        code = "import os; print(sorted(k for k in os.environ if k.startswith('OSL_')))"
        r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code])
                             .env("OSL_REMOVE_ME", None).with_stdout(PIPE))
        out, _ = r.process.communicate()
        assert "OSL_REMOVE_ME" not in out.decode()
        r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "import os; print(dict(os.environ))"])
                             .with_clean_env().env("ONLY", "this").with_stdout(PIPE))
        out, _ = r.process.communicate()
        env = eval(out.decode())
        env.pop("LC_CTYPE", None)  # Python may set it at start-up
        assert env == {"ONLY": "this"}
    finally:
        del os.environ["OSL_REMOVE_ME"]


def test_stdio_devnull_stdout_merge_and_fd(executor, tmp_path):
    target = tmp_path / "out.txt"
    with open(target, "wb") as f:
        r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "cat; echo out; echo err >&2"])
                             .with_stdin(DEVNULL).with_stdout(f.fileno()).with_stderr(STDOUT))
        assert r.process.wait(10) == 0
    assert target.read_text().split() == ["out", "err"]


def test_inherited_fds_are_closed(executor):
    r_fd, w_fd = os.pipe()
    os.set_inheritable(w_fd, True)
    try:
        code = f"import os\ntry:\n os.fstat({w_fd}); print('open')\nexcept OSError: print('closed')"
        r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code]).with_stdout(PIPE))
        out, _ = r.process.communicate()
        assert out.strip() == b"closed"
        r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code]).with_stdout(PIPE)
                             .with_close_fds(False))
        out, _ = r.process.communicate()
        assert out.strip() == b"open"
    finally:
        os.close(r_fd)
        os.close(w_fd)


def test_wait_reaps_and_reports_status(executor):
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "exit 7"]))
    assert r.process.wait(10) == 7
    assert r.process.reaped
    assert r.pid not in [c.pid for c in psutil.Process().children()]  # reaped: no zombie left
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10"))
    r.process.send_signal(signal.SIGTERM)
    assert r.process.wait(10) == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        r.process.send_signal(signal.SIGTERM)  # reaped: the pid may be someone else's now


def test_wait_timeout_is_a_subprocess_timeout(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group())
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            r.process.wait(0.05)
    finally:
        r.group.close()


def test_dropped_handles_leave_no_zombie(executor):
    pids = []
    for _ in range(3):
        r = executor.execute(ProcessSpawnOperation("true"))
        pids.append(r.pid)
        del r
    import gc
    gc.collect()
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        executor.execute(ProcessSpawnOperation("true")).process.wait()  # a spawn sweeps abandoned children
        if not any(psutil.pid_exists(p) for p in pids):
            break
        time.sleep(0.05)
    assert not [p for p in pids if psutil.pid_exists(p)]


SPAWN_FROM_BIG_PARENT = textwrap.dedent("""
    import sys
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    big = bytearray(1 << 30)
    big[::4096] = b"\\x01" * (len(big) // 4096)   # touch every page
    r = ProcessExecutor("big").execute(ProcessSpawnOperation("true").with_new_process_group())
    print(r.process.wait())
""")


@linux_only
def test_big_parent_spawns_without_fork(tmp_path):
    if subprocess.run(["which", "strace"], capture_output=True).returncode != 0:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fork,vfork,clone,clone3", "-o", str(trace)]
                         + py(SPAWN_FROM_BIG_PARENT), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
    calls = [line for line in trace.read_text().splitlines() if "(" in line and "resumed" not in line]
    assert not [c for c in calls if " fork(" in c or c.split(None, 1)[-1].startswith("fork(")]
    # vfork() (the default path on Linux) is clone(CLONE_VM|CLONE_VFORK);
    # posix_spawn's clone/clone3 must say so.
    spawns = [c for c in calls if ("clone" in c and "CLONE_THREAD" not in c) or "vfork(" in c]
    assert spawns, calls
    for c in spawns:
        assert "vfork(" in c or ("CLONE_VM" in c and "CLONE_VFORK" in c), c


def test_ignored_sigchld_is_warned_about(executor):
    # SIGCHLD ignored: the kernel reaps our children itself (their status is
    # lost, their pids are free at once). Say so at the spawn; by default
    # nothing is said.
    import warnings
    from osl_pg import ChildrenAutoReapedWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChildrenAutoReapedWarning)
        executor.execute(ProcessSpawnOperation("true")).process.wait()
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.warns(ChildrenAutoReapedWarning, match="SIGCHLD is ignored") as w:
            r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "exit 3"]))
        assert w[0].filename == __file__  # points at the caller's line
        assert r.process.wait(10) == 0  # what subprocess reports too: the status is gone
        assert wait_for(lambda: not psutil.pid_exists(r.pid))  # reaped by the kernel, no zombie
        import osl_pg
        with pytest.warns(ChildrenAutoReapedWarning) as w:
            osl_pg.run(["true"])
        assert w[0].filename == __file__  # through run() too, not a line inside osl_pg
    finally:
        signal.signal(signal.SIGCHLD, old)


DEVNULL_AFTER_CLOSERANGE = """
import os, sys
from osl_pg import DEVNULL, ProcessExecutor, ProcessSpawnOperation
ex = ProcessExecutor("x")
def run_quietly(code):
    r = ex.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code]).with_stdout(DEVNULL)
                   .with_new_process_group())
    assert r.process.wait() == 0
    r.group.close()
run_quietly("pass")  # osl_pg has had a /dev/null fd for a child
os.closerange(3, 4096)  # user code closes every fd it does not know
logs = [open(os.path.join(sys.argv[1], f"log{i}"), "w") for i in range(16)]  # reuse the lowest numbers
run_quietly("print('to /dev/null')")
for f in logs:
    f.close()
print(sum(os.path.getsize(f.name) for f in logs))
"""


def test_devnull_output_never_lands_in_a_file_that_reused_an_fd_number(tmp_path):
    out = subprocess.run(py(DEVNULL_AFTER_CLOSERANGE) + [str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    written = int(out.stdout.split()[0])
    assert written == 0, "a DEVNULL child wrote into the user's log file"
    assert all((tmp_path / f"log{i}").read_text() == "" for i in range(16))
