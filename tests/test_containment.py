"""Containment tiers: a process group leaks a member that calls setsid(), a
cgroup does not. Checked against the OS: /proc/PID/cgroup, cgroup.procs,
cgroup.events, getsid/getpgid, psutil."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from conftest import alive, py, read, wait_for
from osl_pg import PIPE, InvalidOperation, ProcessSpawnOperation
from osl_pg import cgroup as cg_module
from osl_pg.errors import CgroupPermissionError, CgroupUnavailable


def _cgroup2_problem():
    """Why the cgroup tier cannot run here, or None."""
    try:
        cgs = cg_module.prepare("cgroup", None)
    except (OSError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"
    cgs.remove()
    return None


_PROBLEM = _cgroup2_problem()
needs_cgroup2 = pytest.mark.skipif(_PROBLEM is not None, reason=f"no usable cgroup v2 here: {_PROBLEM}")


def mounts():
    """{"cgroup2": (mount, root)} and {"<v1 controller>": (mount, root)}
    from /proc/self/mountinfo, parsed here independently of the library."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail[0] == "cgroup2":
                found["cgroup2"] = (fields[4], fields[3])
            elif tail[0] == "cgroup":
                for opt in tail[2].split(","):
                    found.setdefault(opt, (fields[4], fields[3]))
    return found


def cgroup_dir(pid, controller="cgroup2"):
    """The directory of `pid`'s cgroup in a hierarchy, from /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if (controller == "cgroup2" and ctrls == "") or controller in ctrls.split(","):
                mount, root = mounts()[controller]
                rel = path[len(root):] if root != "/" else path
                return os.path.normpath(mount + "/" + rel.lstrip("/"))
    return None


# A leader that forks a child which calls setsid() and forks the "daemon";
# the daemon prints its pid. The middle process exits when stdin gets a
# line, so the daemon is reparented: the classic double fork.
DOUBLE_FORK = textwrap.dedent("""
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(120)
            os._exit(0)
        sys.stdin.readline()
        os._exit(0)
    time.sleep(120)
""")


def spawn_double_fork(executor, containment=None):
    op = (ProcessSpawnOperation(sys.executable).with_args(["-c", DOUBLE_FORK])
          .with_new_process_group().with_stdin(PIPE).with_stdout(PIPE))
    if containment:
        op = op.with_containment(containment)
    r = executor.execute(op)
    daemon = int(r.process.stdout.readline())
    return r, daemon


def let_middle_exit(r, daemon):
    middle = psutil.Process(daemon).ppid()
    r.process.stdin.write(b"go\n")
    r.process.stdin.close()
    assert wait_for(lambda: psutil.Process(daemon).ppid() != middle), "the daemon was not reparented"


def kill_and_reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)  # ours only if this process is a subreaper
    except ChildProcessError:
        pass
    assert wait_for(lambda: not alive(pid))


def test_group_tier_leaks_a_setsid_daemon_and_reports_it(executor):
    r, daemon = spawn_double_fork(executor)
    g = r.group
    try:
        assert g.tier == "process_group" and r.get_metadata("containment") == "process_group"
        assert os.getsid(daemon) != os.getsid(r.pid) and os.getpgid(daemon) != g.pgid
        assert daemon not in {m.pid for m in g.members()}
        # Seen while its parent chain still leads to the leader...
        assert daemon in {e.pid for e in g.escaped()}
        let_middle_exit(r, daemon)
        # ...and remembered after the chain broke.
        escaped = {e.pid: e for e in g.escaped()}
        assert daemon in escaped and escaped[daemon].sid == os.getsid(daemon)
        report = g.terminate(grace=5)
        assert alive(daemon), "a process group cannot reach a member that called setsid()"
        assert daemon not in {m.pid for m in report.members}
        assert daemon in {e.pid for e in g.escaped()}
    finally:
        kill_and_reap(daemon)
        g.close()


def test_escapee_is_not_confused_with_a_recycled_pid(executor):
    r, daemon = spawn_double_fork(executor)
    try:
        assert daemon in {e.pid for e in r.group.escaped()}
    finally:
        kill_and_reap(daemon)
        r.group.close()
    assert daemon not in {e.pid for e in r.group.escaped()}


@needs_cgroup2
def test_cgroup_tier_contains_and_kills_a_setsid_daemon(executor):
    r, daemon = spawn_double_fork(executor, "cgroup")
    g = r.group
    path = g.cgroup_path
    try:
        assert g.tier == "cgroup" and r.get_metadata("containment") == "cgroup"
        # It left the process group and the session...
        assert os.getsid(daemon) != os.getsid(r.pid) and os.getpgid(daemon) != g.pgid
        # ...but not the cgroup, which lists it as a member.
        assert cgroup_dir(daemon) == path == cgroup_dir(r.pid)
        procs = {int(p) for p in read(os.path.join(path, "cgroup.procs")).split()}
        assert daemon in procs and {m.pid for m in g.members()} == procs
        assert g.escaped() == []
        let_middle_exit(r, daemon)
        report = g.terminate(grace=5)
        assert not alive(daemon), "the cgroup tier must end a member that called setsid()"
        assert daemon in {m.pid for m in report.members}
        assert not os.path.exists(path), "the cgroup directory is removed with the group"
    finally:
        kill_and_reap(daemon)
        g.close()


@needs_cgroup2
def test_child_is_in_the_cgroup_before_it_runs(executor):
    # The program's first act is to look; a grandchild it forks at once looks too.
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "cat /proc/self/cgroup; cat /proc/$$/cgroup"])
                         .with_containment("cgroup").with_stdout(PIPE))
    path = r.group.cgroup_path
    out, _ = r.process.communicate(timeout=30)
    r.group.wait(30)
    rel = "0::/" + os.path.relpath(path, mounts()["cgroup2"][0])
    lines = [line for line in out.decode().splitlines() if line.startswith("0::")]
    assert lines == [rel, rel]


@needs_cgroup2
def test_wait_returns_when_the_cgroup_is_empty_not_when_the_leader_exits(executor):
    code = ("import os, sys\nif os.fork() == 0:\n    os.setsid(); print('in', flush=True); sys.stdin.readline()\n"
            "else:\n    sys.stdout.close()")
    r = executor.execute(ProcessSpawnOperation(sys.executable).with_args(["-c", code])
                         .with_containment("cgroup").with_stdin(PIPE).with_stdout(PIPE))
    g = r.group
    path = g.cgroup_path
    assert r.process.stdout.readline() == b"in\n"
    assert r.process.wait(30) == 0
    straggler = [p for p in g.members() if p.pid != r.pid]
    assert len(straggler) == 1 and os.getsid(straggler[0].pid) == straggler[0].pid
    with pytest.raises(subprocess.TimeoutExpired):
        g.wait(0.2)  # the leader is gone, the setsid child is not
    r.process.stdin.write(b"\n")
    r.process.stdin.close()
    assert g.wait(30) == 0
    assert not alive(straggler[0].pid) and g.released
    assert not os.path.exists(path)


@needs_cgroup2
@pytest.mark.parametrize("hide", [(), ("cgroup.kill",), ("cgroup.kill", "cgroup.freeze")],
                         ids=["cgroup.kill", "freeze-kill-thaw", "kill-each"])
def test_close_kills_everything_in_the_cgroup(executor, monkeypatch, hide):
    real_has = cg_module.Cgroup.has
    monkeypatch.setattr(cg_module.Cgroup, "has", lambda self, name: name not in hide and real_has(self, name))
    r = executor.execute(ProcessSpawnOperation("sh").with_args(
        ["-c", "setsid sleep 120 & (trap '' TERM; sleep 120) & echo up; wait"])
        .with_containment("cgroup").with_stdout(PIPE))
    g = r.group
    path = g.cgroup_path
    assert r.process.stdout.readline() == b"up\n"
    assert wait_for(lambda: len(read(os.path.join(path, "cgroup.procs")).split()) >= 3)
    pids = [int(p) for p in read(os.path.join(path, "cgroup.procs")).split()]
    g.close()
    assert not any(alive(p) for p in pids)
    assert not os.path.exists(path)
    assert r.process.returncode == -signal.SIGKILL


@needs_cgroup2
def test_freeze_and_thaw(executor):
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "sleep 120 & while :; do :; done"])
                         .with_containment("cgroup"))
    g = r.group
    events = os.path.join(g.cgroup_path, "cgroup.events")
    try:
        g.freeze()
        assert "frozen 1" in read(events)
        g.terminate(grace=5)  # a frozen group still terminates (TERM is queued; KILL always works)
        assert r.process.returncode in (-signal.SIGTERM, -signal.SIGKILL)
    finally:
        g.close()
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "read x; echo got $x"])
                         .with_containment("cgroup").with_stdin(PIPE).with_stdout(PIPE))
    g = r.group
    try:
        g.freeze()
        r.process.stdin.write(b"it\n")
        r.process.stdin.flush()
        g.thaw()
        assert "frozen 0" in read(os.path.join(g.cgroup_path, "cgroup.events"))
        assert r.process.communicate(timeout=30)[0] == b"got it\n"  # it runs again
        assert g.wait(30) == 0
    finally:
        g.close()


async def _terminate_async(executor):
    r = executor.execute(ProcessSpawnOperation("sh").with_args(["-c", "setsid sleep 120 & sleep 120"])
                         .with_containment("cgroup"))
    path = r.group.cgroup_path
    report = await r.group.terminate_async(grace=5)
    return r, path, report


@needs_cgroup2
def test_terminate_async_in_the_cgroup_tier(executor):
    import asyncio
    r, path, report = asyncio.run(_terminate_async(executor))
    assert report.all_gone and not os.path.exists(path)
    assert r.process.returncode == -signal.SIGTERM


def test_freeze_needs_the_cgroup_tier(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("120").with_new_process_group())
    try:
        with pytest.raises(NotImplementedError, match="cgroup tier"):
            r.group.freeze()
    finally:
        r.group.close()


# -- choosing and reporting the tier -------------------------------------------------


def test_containment_is_validated():
    op = ProcessSpawnOperation("sleep")
    with pytest.raises(InvalidOperation):
        op.with_containment("bogus")
    with pytest.raises(InvalidOperation):
        op.with_containment("cgroup").with_process_group(4242).validate()
    contained = op.with_containment("cgroup")
    assert contained.makes_group and contained.containment == "cgroup"
    assert op.with_detach_from_terminal().with_containment("best_available").process_group is None


def test_no_cgroup2_fails_or_falls_back(executor, monkeypatch):
    monkeypatch.setattr(cg_module, "cgroup2", lambda: None)
    op = ProcessSpawnOperation("sleep").arg("120")
    with pytest.raises(CgroupUnavailable, match="cgroup2") as info:
        executor.execute(op.with_containment("cgroup"))
    assert isinstance(info.value, NotImplementedError)
    r = executor.execute(op.with_containment("best_available"))
    try:
        # The next tier down: pid_namespace where user namespaces are allowed.
        from osl_pg.bench import pidns_refused
        expected = "process_group" if pidns_refused() else "pid_namespace"
        assert r.group.tier == expected and r.get_metadata("containment") == expected
        assert r.group.cgroup_path is None
        assert cgroup_dir(r.pid) == cgroup_dir(os.getpid())
    finally:
        r.group.close()


# Run as root without capabilities, inside a cgroup the test made. The
# premise is read here, from the machine: whether this caller may create its
# group's directory by the mode bits alone (the osl_pg subtree if one is
# left over, else our own cgroup, where the subtree would be made).
WITHOUT_CAPS = textwrap.dedent("""
    import os
    from osl_pg import ProcessExecutor, ProcessSpawnOperation, cgroup
    own = cgroup.cgroup2().own_dir
    subtree = os.path.join(own, cgroup.SUBTREE)
    where = subtree if os.path.isdir(subtree) else own
    print("may-create" if os.access(where, os.W_OK) else "may-not-create", os.path.basename(own))
    op = ProcessSpawnOperation("true").with_detach_from_terminal()
    try:
        r = ProcessExecutor("capless").execute(op.with_containment("cgroup"))
        print("no error", r.group.tier)
        r.group.wait(30)
    except PermissionError as e:
        print(type(e).__name__, e)
    r = ProcessExecutor("capless").execute(op.with_containment("best_available"))
    print("tier", r.group.tier, r.get_metadata("containment"))
    r.group.wait(30)
""")


@pytest.fixture
def test_cgroup():
    """A cgroup v2 directory of the test's own, read-only by its mode bits
    (as a cgroup root is): a caller without capabilities cannot create
    cgroups in it. Removed again afterwards, with whatever is left in it."""
    own = cg_module.cgroup2().own_dir
    path = os.path.join(own, f"osl_pg_test-{os.getpid()}")
    os.mkdir(path)
    os.chmod(path, 0o555)
    yield path
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


@needs_cgroup2
@pytest.mark.skipif(not shutil.which("setpriv") or os.geteuid() != 0,
                    reason="needs root (to make a cgroup and drop capabilities) and setpriv")
@pytest.mark.parametrize("leftover", [False, True], ids=["no-leftover-subtree", "leftover-subtree"])
def test_caller_without_privileges_gets_a_permission_error_or_the_fallback(test_cgroup, leftover):
    stale = None
    if leftover:
        # What earlier runs leave: an osl_pg subtree (root's, mode 755) and
        # an empty directory whose creator was SIGKILLed (nobody holds it).
        os.mkdir(os.path.join(test_cgroup, cg_module.SUBTREE))
        stale = os.path.join(test_cgroup, cg_module.SUBTREE, "4194303-1")
        os.mkdir(stale)
    # The shell, still root with every capability, moves itself into the
    # test's cgroup; then root with an empty capability bounding set (no
    # CAP_DAC_OVERRIDE, no CAP_SYS_ADMIN) runs the check: only mode bits decide.
    argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', test_cgroup,
            "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"] + py(WITHOUT_CAPS)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    premise, first, second = out.stdout.splitlines()
    assert premise.split()[1] == os.path.basename(test_cgroup), "the check ran in the test's cgroup"
    if leftover:
        # The subtree's mode bits let its owner (uid 0) create directories
        # in it, capabilities or not: the cgroup tier works.
        assert premise.split()[0] == "may-create"
        assert first == "no error cgroup" and second == "tier cgroup cgroup"
        assert not os.path.exists(stale), "the first cgroup made in a process removes the ownerless directory"
    else:
        assert premise.split()[0] == "may-not-create"
        assert first.startswith(CgroupPermissionError.__name__) and "delegated" in first
        assert second == "tier session session"


PARENT_OF_CONTAINED = textwrap.dedent("""
    import json, sys
    from osl_pg import PIPE, ProcessExecutor, ProcessSpawnOperation
    op = (ProcessSpawnOperation(sys.executable).with_args(["-c", sys.argv[1]]).with_new_process_group()
          .with_containment("cgroup").with_kill_on_parent_death().with_stdin(PIPE).with_stdout(PIPE))
    if sys.argv[2]:
        op = op.with_limits(**json.loads(sys.argv[2]))
    r = ProcessExecutor("parent").execute(op)
    daemon = r.process.stdout.readline().decode().strip()
    print(daemon, json.dumps(r.group.limits_applied), flush=True)
    sys.stdin.read()          # until the test kills us
""")


def parent_death_ends_the_cgroup_tier_group(limits=None):
    """A parent with a kill-on-parent-death group in the cgroup tier (with
    `limits`, which may need v1 directories) is SIGKILLed: the watchdog ends
    the setsid daemon that left the process group, and removes every cgroup
    directory of the group. Returns those directories."""
    parent = subprocess.Popen(py(PARENT_OF_CONTAINED) + [DOUBLE_FORK, json.dumps(limits) if limits else ""],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    daemon, dirs = None, []
    try:
        daemon, applied = parent.stdout.readline().split(" ", 1)
        daemon = int(daemon)
        assert os.getsid(daemon) not in (os.getsid(0), os.getsid(parent.pid))  # it left the session
        # The daemon's cgroups, read from /proc: the group's v2 directory
        # and one per v1 hierarchy a limit needed.
        dirs = [cgroup_dir(daemon)] + [cgroup_dir(daemon, mech.split(":")[1]) for mech in
                                       json.loads(applied).values() if mech.startswith("cgroup1:")]
        assert all("/osl_pg/" in d and os.path.isdir(d) for d in dirs), dirs
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait()
        assert wait_for(lambda: not alive(daemon), timeout=10), "the watchdog's cgroup.kill must end it"
        assert wait_for(lambda: not any(os.path.exists(d) for d in dirs), timeout=10), \
            "the watchdog removes the directories of the groups it ended"
    finally:
        parent.kill()
        parent.wait()
        if daemon is not None:
            kill_and_reap(daemon)
        for path in dirs:
            if os.path.isdir(path):
                wait_for(lambda: not read(os.path.join(path, "cgroup.procs")).strip())
                os.rmdir(path)
    return dirs


@needs_cgroup2
def test_parent_death_ends_setsid_escapees_in_the_cgroup_tier():
    assert len(parent_death_ends_the_cgroup_tier_group()) == 1
