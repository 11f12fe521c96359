"""Bad input gets a clear, typed error and changes nothing."""
import errno
import os
import sys

import psutil
import pytest

from osl_pg import (InvalidOperation, OslError, ProcessGroupConfig, ProcessKillOperation, ProcessSignalOperation,
                    ProcessSpawnOperation)


def children():
    return {c.pid for c in psutil.Process().children(recursive=True)}


@pytest.fixture
def unchanged():
    before = children()
    yield
    assert children() <= before, "a failed operation left a child behind"


def on_path(op, force_vfork):
    """`op` on the vfork path when `force_vfork`, else as it is."""
    if not force_vfork:
        return op
    if not sys.platform.startswith("linux"):
        pytest.skip("the vfork path is forced through Linux's parent-death signal")
    return op.with_kill_on_parent_death()


def test_empty_command(unchanged):
    with pytest.raises(ValueError, match="empty command"):
        ProcessSpawnOperation("")


@pytest.mark.parametrize("build", [
    lambda: ProcessSpawnOperation("ec\0ho"),
    lambda: ProcessSpawnOperation("echo").arg("a\0b"),
    lambda: ProcessSpawnOperation("echo").with_args(["ok", "b\0"]),
    lambda: ProcessSpawnOperation("echo").env("K\0", "v"),
    lambda: ProcessSpawnOperation("echo").env("K", "v\0"),
    lambda: ProcessSpawnOperation("echo").working_dir("/tmp\0x"),
], ids=["command", "arg", "args", "env-key", "env-value", "cwd"])
def test_nul_bytes_are_refused(build, unchanged):
    with pytest.raises(ValueError, match="NUL"):
        build()


def test_bad_env_key(unchanged):
    with pytest.raises(ValueError):
        ProcessSpawnOperation("echo").env("A=B", "x")


def test_missing_command_names_it(executor, unchanged):
    with pytest.raises(FileNotFoundError) as e:
        executor.execute(ProcessSpawnOperation("no-such-command-osl").with_new_process_group())
    assert "no-such-command-osl" in str(e.value)
    assert isinstance(e.value, OslError) and e.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError, match="/nonexistent/tool"):
        executor.execute(ProcessSpawnOperation("/nonexistent/tool"))


def test_non_executable_file(executor, tmp_path, unchanged):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(PermissionError) as e:
        executor.execute(ProcessSpawnOperation(str(script)))
    assert str(script) in str(e.value)


def test_non_executable_file_on_path(executor, tmp_path, unchanged):
    script = tmp_path / "osl-notexec"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    op = ProcessSpawnOperation("osl-notexec").env("PATH", str(tmp_path))
    with pytest.raises(PermissionError, match="not executable"):
        executor.execute(op)


@pytest.mark.parametrize("force_vfork", [False, True], ids=["posix_spawn", "vfork"])
def test_missing_working_dir_names_it(executor, tmp_path, force_vfork, unchanged):
    missing = tmp_path / "gone"
    op = ProcessSpawnOperation("true").working_dir(missing)
    op = on_path(op, force_vfork)
    with pytest.raises(FileNotFoundError) as e:
        executor.execute(op)
    assert str(missing) in str(e.value)
    assert "working directory" in str(e.value)


@pytest.mark.parametrize("force_vfork", [False, True], ids=["posix_spawn", "vfork"])
@pytest.mark.parametrize("slot", ["stdin", "stdout", "stderr"])
def test_stdio_fd_that_is_not_open_is_named(executor, slot, force_vfork, unchanged):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a number that is free now
    op = getattr(ProcessSpawnOperation("true"), f"with_{slot}")(fd)
    op = on_path(op, force_vfork)
    with pytest.raises(OslError, match=f"{slot}: fd {fd} is not open") as e:
        executor.execute(op)
    assert e.value.errno == errno.EBADF


def test_running_out_of_fds_is_an_osl_error_and_leaks_nothing(executor, unchanged):
    # Fill the fd table but for 3 slots: the spawn needs 6 for its pipes.
    from osl_pg import PIPE
    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    held = []
    try:
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE
        for _ in range(3):
            os.close(held.pop())
        with pytest.raises(OslError, match="cannot make a pipe for the child's") as e:
            executor.execute(ProcessSpawnOperation("true").with_stdin(PIPE).with_stdout(PIPE).with_stderr(PIPE))
        assert e.value.errno == errno.EMFILE
    finally:
        for fd in held:
            os.close(fd)
    if before is not None:
        assert set(os.listdir("/proc/self/fd")) == before


def test_join_group_that_does_not_exist(executor, unchanged):
    # Pids run 1..pid_max-1, so pid_max itself is never a live process. It is
    # read each time: a new pid namespace on recent kernels has its own
    # pid_max (4194304 by default), whatever the host's is.
    pid = 2**22 - 3  # no /proc: above macOS's 99998
    if os.path.exists("/proc/sys/kernel/pid_max"):
        with open("/proc/sys/kernel/pid_max") as f:
            pid = int(f.read())
    with pytest.raises(ProcessLookupError, match=str(pid)):
        executor.execute(ProcessSpawnOperation("true").with_process_group(pid))


def test_join_group_in_another_session(executor, unchanged):
    leader = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_detach_from_terminal())
    try:
        with pytest.raises(PermissionError, match="session"):
            executor.execute(ProcessSpawnOperation("true").with_process_group(leader.pgid))
    finally:
        leader.group.close()


@pytest.mark.parametrize("sig", [-1, 65, 1000, 32 if 32 not in __import__("signal").valid_signals() else 999])
def test_unknown_signal(sig):
    with pytest.raises(ValueError, match="signal"):
        ProcessSignalOperation(os.getpid(), sig)


def test_signal_zero_probes_liveness(executor):
    r = executor.execute(ProcessSignalOperation(os.getpid(), 0))
    assert r.get_metadata("signal") == "0"


@pytest.mark.parametrize("value", [0, -1, 2**31, 2**32 - 1, 2**32, True, "12"])
def test_pid_range(value):
    with pytest.raises(ValueError):
        ProcessSignalOperation(value, 15)
    with pytest.raises(ValueError):
        ProcessSignalOperation.signal_group(value, 15)
    with pytest.raises(ValueError):
        ProcessKillOperation(value)
    with pytest.raises(ValueError):
        ProcessGroupConfig.JoinGroup(value)


def test_pgid_one_is_refused():
    with pytest.raises(ValueError, match="pgid 1"):
        ProcessSignalOperation.signal_group(1, 15)
    with pytest.raises(ValueError, match="pgid 1"):
        ProcessSpawnOperation("true").with_process_group(1)


def test_pid_one_signal_needs_shape_only(executor):
    # pid 1 is a valid pid shape; the policy refuses it (see test_policy).
    assert ProcessSignalOperation(1, 0).pid == 1


def test_invalid_operation_is_value_error_and_osl_error():
    with pytest.raises(InvalidOperation) as e:
        ProcessSpawnOperation("")
    assert isinstance(e.value, ValueError) and isinstance(e.value, OslError)


@pytest.mark.parametrize("force_vfork", [False, True], ids=["posix_spawn", "vfork"])
def test_working_dir_that_is_a_file_is_notadirectoryerror_like_subprocess(executor, tmp_path, force_vfork,
                                                                         unchanged):
    import subprocess
    a_file = tmp_path / "file"
    a_file.write_text("")
    op = ProcessSpawnOperation("true").working_dir(a_file)
    op = on_path(op, force_vfork)
    with pytest.raises(NotADirectoryError) as theirs:
        subprocess.run(["true"], cwd=a_file)
    with pytest.raises(NotADirectoryError) as ours:
        executor.execute(op)
    assert not isinstance(ours.value, FileNotFoundError) and isinstance(ours.value, OslError)
    assert ours.value.errno == theirs.value.errno == errno.ENOTDIR
    assert ours.value.filename == str(a_file) and "working directory" in str(ours.value)


def test_waiting_for_a_process_that_is_not_our_child_is_childprocesserror():
    from osl_pg import ProcessNotFound
    from osl_pg._backend import backend
    with pytest.raises(ChildProcessError) as e:
        backend.wait(os.getppid() if sys.platform != "win32" else 4, nohang=True, nowait=False)
    assert e.value.errno == errno.ECHILD
    assert isinstance(e.value, OslError) and isinstance(e.value, ProcessNotFound)  # what callers caught so far
