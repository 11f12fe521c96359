"""Operations are immutable values with stable ids."""
import os
import sys
import time

import pytest

from osl_pg import (OperationType, Permission, ProcessGroupConfig, ProcessKillOperation, ProcessSignalOperation,
                    ProcessSpawnOperation)
from osl_pg.operations import Inherit, JoinGroup, NewGroup


def test_builders_return_new_operations_and_keep_the_id():
    base = ProcessSpawnOperation("sleep")
    built = base.arg("10").with_new_process_group().env("A", "1").with_operation_id("op-1")
    assert base.args == () and base.process_group is None
    assert built.args == ("10",) and built.process_group == NewGroup()
    assert built.operation_id == "op-1"
    chained = base.arg("1").arg("2")
    assert chained.operation_id == base.operation_id and chained.created_at == base.created_at
    with pytest.raises(Exception):
        built.command = "other"  # frozen


def test_each_operation_gets_its_own_id():
    a, b = ProcessSpawnOperation("x"), ProcessSpawnOperation("x")
    assert a.operation_id != b.operation_id
    assert abs(a.created_at - time.time()) < 60


def test_group_config_variants():
    assert ProcessGroupConfig.NewGroup() == NewGroup()
    assert ProcessGroupConfig.JoinGroup(42).pgid == 42
    assert isinstance(ProcessGroupConfig.Inherit(), ProcessGroupConfig)
    op = ProcessSpawnOperation("x")
    assert op.process_group is None and op.group_config == Inherit()
    assert op.with_process_group(42).process_group == JoinGroup(42)
    assert op.with_detach_from_terminal().detach_from_terminal


def test_detach_cannot_join():
    with pytest.raises(ValueError):
        ProcessSpawnOperation("x").with_process_group(42).with_detach_from_terminal().validate()


def test_signal_constructors():
    op = ProcessSignalOperation.signal_group(4242, 15)
    assert op.target_group and op.pid == 4242 and op.operation_type == OperationType.PROCESS_GROUP_SIGNAL
    assert ProcessSignalOperation.new_for_group(4242, 2).target_group
    assert ProcessSignalOperation.terminate(5).signal == 15 and not ProcessSignalOperation.terminate(5).target_group
    assert ProcessSignalOperation.kill(5).signal == 9
    if sys.platform == "win32":  # no SIGHUP: the builder says so
        with pytest.raises(NotImplementedError):
            ProcessSignalOperation.hangup(5)
    else:
        assert ProcessSignalOperation.hangup(5).signal == 1
    assert ProcessSignalOperation(5, 15).operation_type == OperationType.PROCESS_SIGNAL
    assert ProcessSignalOperation(5, 15).signal_name == "SIGTERM"


def test_permissions_and_privileges():
    assert ProcessSpawnOperation("x").required_permissions() == (Permission.PROCESS_SPAWN,)
    assert Permission.PROCESS_MANAGE in ProcessSpawnOperation("x").with_process_group(7).required_permissions()
    assert ProcessKillOperation(5).required_permissions() == (Permission.PROCESS_MANAGE,)
    assert not ProcessSpawnOperation("x").with_new_process_group().requires_elevated_privileges()
    assert not ProcessSignalOperation.signal_group(7, 15).requires_elevated_privileges()
    assert ProcessSignalOperation.signal_group(7, 15).with_allow_own_group().requires_elevated_privileges()


def test_credential_builders_take_what_subprocess_takes():
    op = ProcessSpawnOperation("id")
    built = (op.with_user("root").with_group(0).with_extra_groups(["root", 5]).with_umask(0o1022)
             .with_restore_signals(False))
    assert op.user is None and op.umask is None and not op.changes_credentials and op.signal_reset == "restore"
    assert (built.user, built.primary_group, built.extra_groups, built.umask) == ("root", 0, ("root", 5), 0o022)
    assert built.signal_reset == "inherit" and built.changes_credentials
    assert built.with_signal_reset("all").signal_reset == "all"
    assert built.with_restore_signals().signal_reset == "restore"
    assert op.with_extra_groups([]).extra_groups == ()
    assert ProcessSpawnOperation("x", extra_groups=[1, 2]).extra_groups == (1, 2)


@pytest.mark.parametrize("build, error", [
    (lambda op: op.with_user(1.5), TypeError),
    (lambda op: op.with_user(None), TypeError),
    (lambda op: op.with_group(b"root"), TypeError),
    (lambda op: op.with_user(-1), ValueError),
    (lambda op: op.with_group(-2), ValueError),
    (lambda op: op.with_user(2**32 - 1), ValueError),  # (uid_t)-1 means "unchanged" to setreuid
    (lambda op: op.with_extra_groups("wheel"), ValueError),
    (lambda op: op.with_extra_groups([0, None]), TypeError),
    (lambda op: op.with_extra_groups([-1]), ValueError),
    (lambda op: op.with_umask(-1), ValueError),
    (lambda op: op.with_umask("022"), TypeError),
    (lambda op: op.with_signal_reset("some"), ValueError),
])
def test_credential_builders_refuse_like_subprocess(build, error):
    from osl_pg import OslError
    with pytest.raises(error) as info:
        build(ProcessSpawnOperation("x"))
    assert isinstance(info.value, OslError)


@pytest.mark.skipif(sys.platform != "win32", reason="the Windows backend refuses POSIX credentials")
def test_windows_refuses_user_group_and_umask_before_spawning():
    from osl_pg import ProcessExecutor
    op = ProcessSpawnOperation(sys.executable).with_args(["-c", "pass"])
    for built in (op.with_user(0), op.with_group(0), op.with_extra_groups([]), op.with_umask(0o022)):
        with pytest.raises(NotImplementedError, match="POSIX-only"):
            ProcessExecutor("x").execute(built)
    assert ProcessExecutor("x").execute(op.with_restore_signals(False)).process.wait(60) == 0  # ignored there


def test_operation_ids_are_uuid4_unique_and_not_shared_with_a_forked_child():
    import uuid
    ids = [ProcessSpawnOperation("true").operation_id for _ in range(300)]  # spans several drawn blocks
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    if not hasattr(os, "fork"):
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id must not be the parent's next one
        os.write(w, ProcessSpawnOperation("true").operation_id.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child_id = os.read(r, 100).decode()
    os.close(r)
    assert child_id != ProcessSpawnOperation("true").operation_id
