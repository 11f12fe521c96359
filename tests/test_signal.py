"""Group signals reach every member; results carry the contract metadata."""
import os
import signal

import pytest

from conftest import alive, wait_for
from osl_pg import OSLFramework, ProcessKillOperation, ProcessSignalOperation, ProcessSpawnOperation

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "spawn-children.sh")


def start_tree(executor):
    """The example script's tree, kept alive: the leader waits for its children."""
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", f". {EXAMPLE}; wait"])
                         .with_new_process_group())
    assert wait_for(lambda: len([m for m in r.group.members() if not m.zombie]) >= 7)
    return r


def test_signal_group_sigterm_leaves_no_member_alive(executor):
    r = start_tree(executor)
    members = [m.pid for m in r.group.members()]
    assert all(os.getpgid(p) == r.pgid for p in members)
    res = executor.execute(ProcessSignalOperation.signal_group(r.pgid, signal.SIGTERM))
    assert res.get_metadata("operation_type") == "process_group_signal"
    assert res.get_metadata("target_pgid") == str(r.pgid)
    assert res.get_metadata("signal") == str(int(signal.SIGTERM))
    assert res.get_metadata("signal_name") == "SIGTERM"
    assert int(res.get_metadata("processes_affected")) == len(members)
    assert wait_for(lambda: not any(alive(p) for p in members))
    r.group.wait(5)


def test_framework_signal_process_group(executor):
    fw = OSLFramework()
    r = fw.spawn(ProcessSpawnOperation("sleep").arg("30").with_new_process_group())
    res = fw.signal_process_group(r.pgid, signal.SIGKILL)
    assert res.processes_affected == 1
    assert r.process.wait(5) == -signal.SIGKILL
    r.group.close()


def test_signal_and_kill_single_process(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("30"))
    res = executor.execute(ProcessSignalOperation(r.pid, signal.SIGSTOP))
    assert res.get_metadata("target_pid") == str(r.pid)
    assert wait_for(lambda: __import__("psutil").Process(r.pid).status() == "stopped")
    res = executor.execute(ProcessKillOperation(r.pid))
    assert res.get_metadata("operation_type") == "process_kill"
    assert r.process.wait(5) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        executor.execute(ProcessKillOperation(r.pid))  # reaped: refused, not sent to a reused pid


def test_signal_to_missing_group_is_process_lookup_error(executor):
    with pytest.raises(ProcessLookupError):
        executor.execute(ProcessSignalOperation.signal_group(2**22 - 5, signal.SIGTERM))
