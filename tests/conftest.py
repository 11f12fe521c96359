"""Shared fixtures. Every process a test starts inherits a marker in its
environment; after each test (and at the end of the session) any live
process carrying the marker is a leak: it is killed and the test fails."""
import os
import re
import sys
import time
import uuid

import psutil
import pytest

MARK = "OSL_PG_TEST_MARK"
SESSION = uuid.uuid4().hex[:12]
os.environ[MARK] = SESSION

# OSL_PG_TEST_NO_PIDFD=1 runs the suite as on a system without pidfd_open
# (Linux before 5.3, e.g. RHEL 8's 4.18; macOS; the BSDs): every wait and
# liveness check then takes the polling path.
if os.environ.get("OSL_PG_TEST_NO_PIDFD") and sys.platform != "win32":
    import osl_pg._posix
    osl_pg._posix.HAS_PIDFD = False


def marked_processes(value_prefix):
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "status"]):
        if p.info["pid"] == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get(MARK, "").startswith(value_prefix):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _name(p):
    """p.name(), or the command line's first word where psutil's name()
    fails with a bare OSError (under Wine)."""
    try:
        return p.name()
    except psutil.Error:
        return "?"
    except OSError:
        return (p.cmdline() or ["?"])[0]


def _kill_all(procs):
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


@pytest.fixture(autouse=True)
def no_process_leaks(request):
    """Marks this test's processes and fails the test if any outlive it."""
    tag = f"{SESSION}-{uuid.uuid4().hex[:8]}"
    os.environ[MARK] = tag
    yield
    os.environ[MARK] = SESSION
    left_open = _close_open_groups()
    if left_open:
        pytest.fail(f"test left process groups running (now closed): {left_open}")
    deadline = time.monotonic() + 2.0
    leaked = marked_processes(tag)
    while leaked and time.monotonic() < deadline:  # exiting, not yet dead
        time.sleep(0.02)
        leaked = marked_processes(tag)
    if leaked:
        desc = [(p.pid, _name(p)) for p in leaked if p.is_running()]
        _kill_all(leaked)
        if desc:
            pytest.fail(f"test left processes running: {desc}")
    stale = our_cgroups()
    if stale:
        _remove_cgroups(stale)
        pytest.fail(f"test left cgroup directories (now removed): {stale}")


def our_cgroups():
    """cgroup directories osl_pg made for this process (it names them
    <creator pid>-<n> inside an "osl_pg" directory), in every mounted
    cgroup hierarchy, v1 or v2, read from /proc/self/mountinfo."""
    prefix = f"{os.getpid()}-"
    found = []
    if not os.path.exists("/proc/self/mountinfo"):
        return found  # not Linux: osl_pg makes no cgroups
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.partition(" - ")[2].split()[0] in ("cgroup", "cgroup2")]
    for mount in mounts:
        for root, dirs, _ in os.walk(mount):
            if os.path.basename(root) == "osl_pg":
                found += [os.path.join(root, d) for d in dirs if d.startswith(prefix)]
                dirs[:] = []
    return sorted(found)


def _remove_cgroups(paths):
    for path in paths:
        for pid in read(os.path.join(path, "cgroup.procs")).split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.01)


def _close_open_groups():
    """Close (kill) every group handle still open with members running, so a
    failed assertion leaves nothing behind; returns their pgids."""
    from osl_pg import group as group_module
    running = []
    for g in group_module.open_groups():
        if not g.detached:
            if g.alive:
                running.append(g.pgid)
            g.close()
    return running


def pytest_sessionfinish(session, exitstatus):
    leaked = marked_processes(SESSION)
    if leaked:
        desc = [(p.pid, _name(p)) for p in leaked]
        _kill_all(leaked)
        print(f"\nFAIL: processes started by the tests survived the run: {desc}", file=sys.stderr)
        session.exitstatus = 1


# Tests of Linux facilities (/proc, pidfd, prctl, pid namespaces, setpriv,
# strace): skipped on other systems, where the wheels' test run also goes.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux-only facilities")


def in_new_pid_namespace(code, timeout=120):
    """Run Python `code` as pid 1 of a new pid namespace (with its own
    /proc), where pids can be steered and recycled without touching the
    host's. Needs root."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("needs root for a pid namespace")
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc"] + py(code),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def read(path):
    """A file's text, closed again (the suite runs with ResourceWarning
    as an error)."""
    with open(path) as f:
        return f.read()


def py(code):
    """argv running Python code in a child: portable, no shell needed."""
    return [sys.executable, "-c", code]


@pytest.fixture(autouse=True)
def spawn_path(request, monkeypatch):
    """A test parametrized on `force_vfork` runs on that spawn path: the
    vfork child, or posix_spawn (which Linux spawns no longer use by
    default, so it is tested only through this). Elsewhere: untouched."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or "force_vfork" not in callspec.params or os.name == "nt":
        yield
        return
    from osl_pg import _posix
    forced = callspec.params["force_vfork"]
    monkeypatch.setattr(_posix, "SPAWN_PATH", _posix.lib.OSL_SPAWN_VFORK if forced else _posix.lib.OSL_SPAWN_POSIX)
    yield


@pytest.fixture
def executor():
    from osl_pg import ProcessExecutor
    return ProcessExecutor("test-executor")


def wait_for(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pgid_of(pid):
    """The process group of `pid` (os.getpgid), or None once it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class Pty:
    """A program on a new pty whose session it leads (the pty is its
    controlling terminal once it opens it so, or a shell makes it), and
    what it has printed so far."""

    def __init__(self, argv, env=None):
        import subprocess
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env=env)
        os.close(slave)
        self.seen = b""

    def expect(self, text, timeout=20):
        self.expect_re(re.escape(text.encode()), timeout, shown=text)

    def expect_re(self, pattern, timeout=20, shown=None):
        import select
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"never saw {shown or pattern!r}; output so far: {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # EIO: the other side is closed
                raise AssertionError(f"never saw {shown or pattern!r}; output: {self.seen!r}") from None

    def send(self, data):
        os.write(self.master, data)

    def close(self):
        import signal
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.master)
