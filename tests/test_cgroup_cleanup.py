"""No cgroup directory outlives its owner, and a full fd table is a typed
error, not a leak. Checked against the OS: directory inodes under the
osl_pg subtree, pids forced in a pid namespace, /proc/self/fd, the
process's children."""
import json
import os
import shutil
import subprocess
import textwrap

import psutil
import pytest

from conftest import linux_only, py
from osl_pg import ProcessSpawnOperation
from test_containment import cgroup_dir, needs_cgroup2
from test_limits import _controller_problem

# Makes three cgroup-tier groups whose members have exited (their
# directories empty, the handles open), says where they are, then waits to
# be SIGKILLed: nothing of its own removes them.
OWNER = textwrap.dedent("""
    import json, os, sys, time
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    op = ProcessSpawnOperation("true").with_containment("cgroup")
    if len(sys.argv) > 1:
        op = op.with_limits(**json.loads(sys.argv[1]))
    ex = ProcessExecutor("owner")
    groups = [ex.execute(op).group for _ in range(3)]
    for g in groups:
        while open(os.path.join(g.cgroup_path, "cgroup.procs")).read().strip():
            time.sleep(0.01)
    print(" ".join(g.cgroup_path for g in groups), flush=True)
    time.sleep(600)
""")

# A live owner: one group whose leader has exited, so its directory is
# empty (as it is between a mkdir and the child's join), kept until a line
# comes on stdin.
LIVE = textwrap.dedent("""
    import os, sys, time
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("live").execute(ProcessSpawnOperation("true").with_containment("cgroup"))
    while open(os.path.join(r.group.cgroup_path, "cgroup.procs")).read().strip():
        time.sleep(0.01)
    print(r.group.cgroup_path, flush=True)
    sys.stdin.readline()
    r.group.close()
""")

# pid 1 of a new pid namespace. The owner is SIGKILLed; ns_last_pid hands
# its pid to the live owner, whose first cgroup sweeps the subtree. Then it
# waits (the live owner still running) for the test's line.
IN_NAMESPACE = textwrap.dedent("""
    import json, os, subprocess, sys
    owner_code, live_code = sys.argv[1], sys.argv[2]
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    stale = owner.stdout.readline().split()
    owner.kill()
    owner.wait()
    stale_inodes = {d: os.stat(d).st_ino for d in stale}
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(owner.pid - 1))
    live = subprocess.Popen([sys.executable, "-c", live_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    path = live.stdout.readline().strip()
    print(json.dumps({"owner_pid": owner.pid, "live_pid": live.pid, "stale": stale_inodes, "live": path,
                      "live_inode": os.stat(path).st_ino}), flush=True)
    sys.stdin.readline()
    live.stdin.write("\\n")
    live.stdin.close()
    print(live.wait(), flush=True)
""")

# A new process on the host (another pid namespace than the live owner):
# its first cgroup sweeps the subtree too.
SWEEPER = textwrap.dedent("""
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("sweeper").execute(ProcessSpawnOperation("true").with_containment("cgroup"))
    print(r.group.wait(30))
""")


def _same_dir(path, inode):
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


@linux_only
@needs_cgroup2
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a pid "
                    "namespace (to force a live process onto the dead owner's pid)")
def test_a_killed_owners_directories_go_and_a_live_owner_with_its_pid_keeps_its_own():
    ns = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc"] + py(IN_NAMESPACE) + [OWNER, LIVE],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ns.stdout.readline()
        assert line, ns.stderr.read()
        seen = json.loads(line)
        assert seen["live_pid"] == seen["owner_pid"], "the live owner has the killed owner's pid"
        assert len(seen["stale"]) == 3
        assert all(os.path.basename(d).startswith(f"{seen['owner_pid']}-") for d in seen["stale"])
        # The live owner's first cgroup removed the dead owner's three...
        assert not any(_same_dir(d, ino) for d, ino in seen["stale"].items())
        # ...and a new process in another pid namespace, where that pid
        # means someone else (or no one), keeps the live owner's, empty as it is.
        assert subprocess.run(py(SWEEPER), capture_output=True, text=True, timeout=60).stdout.split() == ["0"]
        assert _same_dir(seen["live"], seen["live_inode"]), "a live owner's directory must be kept"
        out, err = ns.communicate("\n", timeout=60)
        assert ns.returncode == 0 and out.split() == ["0"], err
        assert not os.path.exists(seen["live"]), "its owner removes it on close"
    finally:
        if ns.poll() is None:
            ns.kill()
            ns.communicate()


def _dirs_of(pid, hierarchies):
    """The directories named <pid>-<n> in our osl_pg subtree of each
    hierarchy, with their inodes (read from /proc and the cgroup mounts)."""
    found = {}
    for name in hierarchies:
        subtree = os.path.join(cgroup_dir(os.getpid(), name), "osl_pg")
        if os.path.isdir(subtree):
            for d in os.listdir(subtree):
                if d.startswith(f"{pid}-"):
                    found[os.path.join(subtree, d)] = os.stat(os.path.join(subtree, d)).st_ino
    return found


@linux_only
@needs_cgroup2
@pytest.mark.parametrize("limits", [None, {"max_processes": 9}], ids=["cgroup2", "with-limits"])
def test_the_next_cgroup_made_by_a_long_lived_process_sweeps_too(executor, limits):
    if limits and _controller_problem("pids"):
        pytest.skip(f"no pids controller here: {_controller_problem('pids')}")
    first = executor.execute(ProcessSpawnOperation("true").with_containment("cgroup"))  # not our first one
    first.group.wait(30)
    owner = subprocess.Popen(py(OWNER) + ([json.dumps(limits)] if limits else []), stdout=subprocess.PIPE, text=True)
    try:
        assert len(owner.stdout.readline().split()) == 3
    finally:
        owner.kill()
        owner.wait()
    stale = _dirs_of(owner.pid, ["cgroup2", "pids"])
    # Three in cgroup2; with the limit, three more in a v1 pids hierarchy
    # where cgroup2 does not pass pids down (as on a hybrid host).
    assert len(stale) in ((3,) if not limits else (3, 6)), stale
    # Containment only: the v1 directories go too.
    r = executor.execute(ProcessSpawnOperation("true").with_containment("cgroup"))
    try:
        assert not any(_same_dir(d, ino) for d, ino in stale.items()), "a dead owner's directory survived"
    finally:
        r.group.wait(30)


# A child with RLIMIT_NOFILE at 64 fills its fd table but for `free` fds
# (0 to 11), tries a spawn, frees the fds, and reports: the outcome (a
# typed error, or the tier it got), the fd count before and after, its
# cgroup directories and watchdog registrations left over, its live
# children; then whether the same spawn works with fds free again.
FULL_FD_TABLE = textwrap.dedent("""
    import json, os, resource, sys
    import psutil
    from osl_pg import OslError, ProcessExecutor, ProcessSpawnOperation, cgroup, watchdog
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    kind = sys.argv[1]
    op = ProcessSpawnOperation("true")
    op = {"cgroup+limits": op.with_containment("cgroup").with_limits(max_processes=5),
          "cgroup": op.with_containment("cgroup"),
          "best_available": op.with_containment("best_available"),
          "cgroup+kill_on_parent_death": op.with_containment("cgroup").with_kill_on_parent_death()}[kind]
    ex = ProcessExecutor("full")

    def fds():  # how many fds are open, and how many of them are pipes
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own fd
                pass
        return [len(links), sum(link.startswith("pipe:") for link in links)]

    def our_dirs():
        found = []
        for h in cgroup.hierarchies():
            sub = os.path.join(h.own_dir, cgroup.SUBTREE)
            if os.path.isdir(sub):
                found += [d for d in os.listdir(sub) if d.startswith(f"{os.getpid()}-")]
        return found

    def spawn():
        try:
            r = ex.execute(op)
        except Exception as e:
            return None, [type(e).__name__, isinstance(e, OslError) and isinstance(e, OSError), str(e)]
        return r, ["ok", r.group.tier]

    spawn()[0].group.wait(30)  # imports done, first-sweep done: what follows only needs fds
    for free in range(12):
        before = fds()
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass
        for _ in range(free):
            os.close(held.pop())
        r, outcome = spawn()
        for fd in held:
            os.close(fd)
        if r is not None:
            r.group.wait(30)
        after = fds()
        left = {"dirs": our_dirs(), "registered": list(watchdog._groups),
                "children": [p.pid for p in psutil.Process().children() if p.status() != "zombie"]}
        again, again_outcome = spawn()
        if again is not None:
            again.group.wait(30)
        print(json.dumps({"free": free, "outcome": outcome, "fds": [before, after], "left": left,
                          "then": again_outcome}), flush=True)
""")


def _full_fd_table(kind):
    out = subprocess.run(py(FULL_FD_TABLE) + [kind], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [row["free"] for row in rows] == list(range(12))
    for row in rows:
        where = f"{kind} with {row['free']} free fds: {row}"
        name, *rest = row["outcome"]
        if name != "ok":
            assert rest[0], f"not a typed OslError/OSError: {where}"
            assert "mountinfo" not in rest[1] and "no cgroup2" not in rest[1], where
            assert "Too many open files" in rest[1], where
        elif "cgroup" in kind or kind == "best_available":
            assert rest == ["cgroup"], f"fell back silently: {where}"
        before, after = row["fds"]
        # The watchdog starts before the child exists: its failure too
        # leaves no process, fd, cgroup or registration behind.
        assert before == after, f"fd leaked: {where}"
        assert row["left"] == {"dirs": [], "registered": [], "children": []}, where
        assert row["then"][0] == "ok", f"the next spawn with fds free failed: {where}"
    outcomes = [row["outcome"][0] for row in rows]
    assert outcomes[0] != "ok" and outcomes[-1] == "ok", "the range spans failure and success"
    return rows


@linux_only
@needs_cgroup2
@pytest.mark.parametrize("kind", ["cgroup+limits", "cgroup", "best_available", "cgroup+kill_on_parent_death"])
def test_a_cgroup_spawn_with_a_full_fd_table_is_a_typed_error_and_leaks_nothing(kind):
    if kind == "cgroup+limits":
        problem = _controller_problem("pids")
        if problem is not None:
            pytest.skip(f"no pids controller here: {problem}")
    _full_fd_table(kind)


# A group is spawned; then, with the fd table full but for `free` fds, it
# is put on the watchdog's list (what a spawn with_kill_on_parent_death()
# does last), which must start the watchdog: its pipe needs two fds.
WATCHDOG_WITHOUT_FDS = textwrap.dedent("""
    import json, os, resource
    import psutil
    from osl_pg import DEVNULL, OslError, ProcessExecutor, ProcessSpawnOperation, watchdog
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    ex = ProcessExecutor("full")
    sleep = ProcessSpawnOperation("sleep").arg("60").with_new_process_group().with_stdout(DEVNULL).with_stderr(DEVNULL)

    def state():
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own fd
                pass
        children = [p.pid for p in psutil.Process().children() if p.status() != "zombie"]
        return {"fds": len(fds), "pipes": sum(f.startswith("pipe:") for f in fds), "children": children,
                "registered": list(watchdog._groups)}

    for free in range(4):
        g = ex.execute(sleep).group
        before = state()
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass
        for _ in range(free):
            os.close(held.pop())
        try:
            g._kill_with_parent()
            outcome = ["ok"]
        except Exception as e:
            outcome = [type(e).__name__, isinstance(e, OslError) and isinstance(e, OSError), str(e)]
        for fd in held:
            os.close(fd)
        after = state()
        g.close()
        closed = state()
        r = ex.execute(sleep.with_kill_on_parent_death())
        then = state()
        r.group.close()
        print(json.dumps({"free": free, "outcome": outcome, "before": before, "after": after, "closed": closed,
                          "then": then, "end": state()}), flush=True)
""")


@linux_only
def test_a_watchdog_that_cannot_start_keeps_no_registration_process_or_pipe():
    out = subprocess.run(py(WATCHDOG_WITHOUT_FDS), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 4 and rows[0]["outcome"][0] != "ok" and rows[-1]["outcome"] == ["ok"], rows
    for row in rows:
        where = str(row)
        before, after, closed = row["before"], row["after"], row["closed"]
        assert before["registered"] == [] and len(before["children"]) == 1, where  # the sleep
        if row["outcome"][0] != "ok":
            name, typed, message = row["outcome"]
            assert typed and "watchdog" in message and "Too many open files" in message, where
            # Nothing kept: no registration, no watchdog process, no pipe, no fd.
            assert after == before, where
        else:
            assert after["registered"] and len(after["children"]) == 2, where  # the sleep and the watchdog
        # close() unregistered, and the watchdog (if any) exited with its pipe.
        assert closed["registered"] == closed["children"] == [] and closed["pipes"] == before["pipes"], where
        # With fds free again, a kill-on-parent-death spawn gets its watchdog.
        assert len(row["then"]["registered"]) == 1 and len(row["then"]["children"]) == 2, where
        assert row["end"] == closed, where


# An owner with one empty cgroup-tier group forks a child that outlives it
# (the child drops the inherited handle, as a forked worker may).
OWNER_THAT_FORKS = textwrap.dedent("""
    import gc, os, time
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    r = ProcessExecutor("owner").execute(ProcessSpawnOperation("true").with_containment("cgroup"))
    path = r.group.cgroup_path
    while open(os.path.join(path, "cgroup.procs")).read().strip():
        time.sleep(0.01)
    child = os.fork()
    if child == 0:
        r.group._strategy.cgroups.remove()  # the parent's directory: not the child's to remove
        os.write(1, b"child %s\\n" % str(os.path.isdir(path)).encode())  # one write: the parent writes too
        time.sleep(600)
        os._exit(0)
    os.write(1, f"{child} {path}\\n".encode())
    time.sleep(600)
""")


@linux_only
@needs_cgroup2
def test_a_forked_child_neither_removes_nor_keeps_alive_its_parents_directory():
    owner = subprocess.Popen(py(OWNER_THAT_FORKS), stdout=subprocess.PIPE, text=True)
    child = None
    try:
        lines = sorted([owner.stdout.readline().split(), owner.stdout.readline().split()])
        assert [len(x) for x in lines] == [2, 2], lines
        (child, path), said = lines[0], lines[1]
        child = int(child)
        assert said == ["child", "True"], "a forked child left its parent's directory alone"
        owner.kill()  # SIGKILL; the forked child lives on, with copies of the parent's fds
        owner.wait()
        assert os.path.isdir(path)
        assert subprocess.run(py(SWEEPER), capture_output=True, text=True, timeout=60).stdout.split() == ["0"]
        assert psutil.pid_exists(child) and not os.path.exists(path), \
            "the child closed its copy of the lock: the dead parent's directory was swept"
    finally:
        owner.kill()
        owner.wait()
        if child is not None:
            os.kill(child, 9)


# A group is spawned; then, with no process slot left for this user
# (RLIMIT_NPROC below what it runs), it is put on the watchdog's list.
WATCHDOG_WITHOUT_PROCESSES = textwrap.dedent("""
    import json, os, resource
    import psutil
    from osl_pg import DEVNULL, OslError, ProcessExecutor, ProcessSpawnOperation, watchdog
    ex = ProcessExecutor("nproc")
    g = ex.execute(ProcessSpawnOperation("sleep").arg("60").with_new_process_group().with_stdout(DEVNULL)).group
    pipes = lambda: sum(os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:") for fd in os.listdir("/proc/self/fd")
                        if os.path.exists(f"/proc/self/fd/{fd}"))
    before = pipes()
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))
    try:
        g._kill_with_parent()
        outcome = ["ok"]
    except Exception as e:
        outcome = [type(e).__name__, isinstance(e, OslError) and isinstance(e, OSError), str(e)]
    finally:
        resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
    left = {"registered": list(watchdog._groups), "children": len(psutil.Process().children()),
            "pipes": pipes() - before}
    g.close()
    print(json.dumps({"outcome": outcome, "left": left}))
""")


@linux_only
@pytest.mark.skipif(os.geteuid() == 0, reason="root is not held to RLIMIT_NPROC (run the suite as a normal user)")
def test_a_watchdog_without_a_process_slot_keeps_no_registration_process_or_pipe():
    out = subprocess.run(py(WATCHDOG_WITHOUT_PROCESSES), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    name, typed, message = row["outcome"]
    assert typed and "watchdog" in message and "Resource temporarily unavailable" in message, row
    assert row["left"] == {"registered": [], "children": 1, "pipes": 0}, row  # only the sleep


# A cgroup group closed while the fd table is full: cgroup.kill cannot be
# opened, so the tier falls back to killpg (no fd needed) before it raises.
CLOSE_WITHOUT_FDS = textwrap.dedent("""
    import json, os, resource, time
    from osl_pg import DEVNULL, ProcessExecutor, ProcessSpawnOperation
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    op = (ProcessSpawnOperation("sleep").arg("60").with_containment("cgroup")
          .with_stdout(DEVNULL).with_stderr(DEVNULL))
    g = ProcessExecutor("full").execute(op).group
    leader = g.leader.pid
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass
    try:
        g.close()
        first = "closed"
    except OSError as e:
        first = [type(e).__name__, e.errno, str(e)]
    for fd in held:
        os.close(fd)
    # Killed by the fallback: the leader turns zombie with nobody reaping.
    state = None
    for _ in range(1000):
        with open(f"/proc/{leader}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.01)
    print(json.dumps({"first": first, "state": state, "then": g.close(), "returncode": g.leader.returncode}))
""")


@linux_only
@needs_cgroup2
def test_a_cgroup_close_with_no_fd_left_still_kills_the_group():
    out = subprocess.run(py(CLOSE_WITHOUT_FDS), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    if row["first"] == "closed":
        pytest.skip("no cgroup.kill here (Linux < 5.14): the freeze-and-kill path opens no new fd")
    name, err, message = row["first"]
    assert err == 24 and "cgroup.kill" in message, row
    assert row["state"] == "Z", row
    assert row["then"] is True and row["returncode"] == -9, row
