"""The pytest plugin (osl_pg.pytest_plugin), run on small test files through
pytester. The inner tests write the pid and start time of each process they
leave behind to pids.txt; the outer test checks with psutil what became of
it. Whatever the plugin does not end, the outer test ends itself."""
import os
import textwrap

import psutil
import pytest

from conftest import in_new_pid_namespace, linux_only, read

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the leaks below are made with sh")

ON = ["-p", "osl_pg.pytest_plugin"]

# Imported by each inner test file: leaves processes running and says which.
HELPERS = """
import os, subprocess, time, psutil

def record(*pids):
    with open(os.path.join(os.path.dirname(__file__), "pids.txt"), "a") as f:
        for pid in pids:
            f.write(f"{pid} {psutil.Process(pid).create_time()}\\n")

def wait_exec(pid, argv):
    '''Until `pid` runs `argv` (its /proc/PID/cmdline): a child sh has
    forked but not yet exec'd would be ended, and shown, as "sh -c ...".'''
    deadline = time.monotonic() + 60
    while psutil.Process(pid).cmdline() != argv:
        assert time.monotonic() < deadline, f"{pid} never ran {argv}: {psutil.Process(pid).cmdline()}"
        time.sleep(0.01)

def sh_leak(script, *argvs):
    '''Run `script` under sh, which prints the pids it leaves behind; each
    has exec'd the matching argv of `argvs` when this returns.'''
    out = subprocess.run(["sh", "-c", script], stdout=subprocess.PIPE, text=True, check=True).stdout
    pids = [int(w) for w in out.split()]
    assert not argvs or len(pids) == len(argvs), (pids, argvs)
    for pid, argv in zip(pids, argvs):
        wait_exec(pid, argv)
    record(*pids)
    return pids
"""


def recorded(pytester):
    path = pytester.path / "pids.txt"
    if not path.exists():
        return []
    return [(int(pid), float(start)) for pid, start in (line.split() for line in read(path).splitlines())]


def state(pid, start):
    """"gone" (no such process: reaped), "zombie" or "running"; a pid that
    now names a later process counts as gone."""
    try:
        p = psutil.Process(pid)
        if p.create_time() != start:
            return "gone"
        return "zombie" if p.status() == psutil.STATUS_ZOMBIE else "running"
    except psutil.NoSuchProcess:
        return "gone"


@pytest.fixture
def inner(pytester):
    """pytester with the helpers importable; afterwards, ends whatever an
    inner test recorded that is still running (a plugin that missed it)."""
    before = {c.pid for c in psutil.Process().children()}
    pytester.makepyfile(leakhelpers=HELPERS)
    yield pytester
    for pid, start in recorded(pytester):
        running = state(pid, start) != "gone"
        if running:
            psutil.Process(pid).kill()
        try:
            # Our child when an inner test started it in this process (the
            # inner tests run in-process): reap it, also when it is already
            # a zombie ("gone"), or it stays one for the rest of the run.
            os.waitpid(pid, 0 if running else os.WNOHANG)
        except ChildProcessError:
            pass
    # The inner tests' orphans were adopted by this process (the plugin made
    # it their subreaper); one whose parent a dropped Popen reaped only
    # later, when no inner test watched any more, is a zombie of ours now.
    # Reap those, unless some Popen object may still wait for them.
    from osl_pg.pytest_plugin import _held_pids
    held = _held_pids()
    for child in psutil.Process().children():
        if child.pid not in before and child.pid not in held and child.status() == psutil.STATUS_ZOMBIE:
            try:
                os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


# --------------------------------------------------------------------------
# what it finds


@linux_only
@pytest.mark.parametrize("script, stop", [
    ("sleep 300 >/dev/null 2>&1 & echo $!", False),               # sh exits, leaving its background job
    ("( sleep 300 >/dev/null 2>&1 & echo $! ) ; exit 0", False),  # a double fork: sh, a subshell, then sleep
    ("sleep 300 >/dev/null 2>&1 & echo $!", True),                # stopped: SIGTERM needs a SIGCONT to act
], ids=["background", "double-fork", "stopped"])
def test_an_orphaned_sleep_is_a_leak_of_the_test_and_is_reaped(inner, script, stop):
    inner.makepyfile(test_it=f"""
        import os, signal, time, psutil
        from leakhelpers import sh_leak
        def test_leaks():
            pid, = sh_leak({script!r}, ["sleep", "300"])  # stopped before its exec, it would hold
            if {stop}:                                      # run()'s pipe
                os.kill(pid, signal.SIGSTOP)
                while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
                    time.sleep(0.01)
    """)
    result = run(inner, *ON)
    result.assert_outcomes(passed=1, errors=1)
    (pid, start), = recorded(inner)
    # Reparented to pytest (the subreaper) when its parent exited; ended
    # (by SIGTERM, not SIGKILL, stopped or not) and reaped by the plugin.
    result.stdout.re_match_lines([r".*ERROR at teardown of test_leaks.*",
                                  r"The test left 1 process running; osl_pg ended it:",
                                  rf"\s+{pid}\s+{os.getpid()}\s+SIGTERM\s+sleep 300"])
    assert state(pid, start) == "gone"


@linux_only
def test_setsid_tree_is_shown_as_a_tree(inner):
    inner.makepyfile(test_it="""
        import os, time, psutil
        from leakhelpers import sh_leak, record, wait_exec
        def test_setsid():
            leader, = sh_leak("setsid sh -c 'sleep 300 & sleep 301 & wait' >/dev/null 2>&1 & echo $!",
                              ["sh", "-c", "sleep 300 & sleep 301 & wait"])
            while len(psutil.Process(leader).children()) < 2:
                time.sleep(0.01)
            assert os.getsid(leader) == leader != os.getsid(0)  # a session of its own
            children = sorted(psutil.Process(leader).children(), key=lambda c: c.pid)
            for child in children:  # sleep 300 and sleep 301, in either order
                while child.cmdline()[:1] != ["sleep"]:
                    time.sleep(0.01)
            assert sorted(c.cmdline() for c in children) == [["sleep", "300"], ["sleep", "301"]]
            record(*[c.pid for c in children])
    """)
    result = run(inner, *ON)
    result.assert_outcomes(passed=1, errors=1)
    (leader, _), (a, _), (b, _) = recorded(inner)
    first, second = sorted([a, b])
    result.stdout.re_match_lines([r"The test left 3 processes running; osl_pg ended them:",
                                  rf"\s+{leader}\s+{os.getpid()}\s+SIGTERM\s+sh -c sleep 300 & sleep 301 & wait",
                                  rf"\s+{first}\s+{leader}\s+\S+\s+  sleep 30[01]",
                                  rf"\s+{second}\s+{leader}\s+\S+\s+  sleep 30[01]"])
    assert {state(pid, start) for pid, start in recorded(inner)} == {"gone"}


@linux_only
def test_a_test_marked_off_sees_orphans_go_to_init_and_is_not_charged(inner):
    # A test of orphan behaviour opts out: no subreaper (its orphan's parent
    # is init, or whoever is this pid namespace's reaper), and no check.
    # The next, unmarked test is watched again.
    inner.makepyfile(test_it="""
        import os, time, psutil, pytest
        from leakhelpers import sh_leak

        @pytest.mark.leaked_processes("off")
        def test_orphan_goes_to_init():
            pid, = sh_leak("sleep 300 >/dev/null 2>&1 & echo $!", ["sleep", "300"])
            deadline = time.monotonic() + 10
            while psutil.Process(pid).ppid() != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert psutil.Process(pid).ppid() != os.getpid()

        def test_watched_again():
            sh_leak("sleep 301 >/dev/null 2>&1 & echo $!", ["sleep", "301"])
    """)
    result = run(inner, *ON)
    result.assert_outcomes(passed=2, errors=1)
    (first, first_start), (second, second_start) = recorded(inner)
    result.stdout.re_match_lines([r".*ERROR at teardown of test_watched_again.*",
                                  rf"\s+{second}\s+{os.getpid()}\s+SIGTERM\s+sleep 301"])
    assert state(second, second_start) == "gone"
    assert state(first, first_start) == "running"  # not ours to end: the fixture's cleanup kills it


def test_an_unknown_marker_mode_is_a_usage_error(inner):
    inner.makepyfile(test_it="""
        import pytest
        @pytest.mark.leaked_processes("sometimes")
        def test_it():
            pass
    """)
    result = run(inner, *ON)
    assert result.ret != 0
    result.stderr.re_match_lines([r".*leaked_processes\('sometimes'\): expected one of fail, warn, kill, off"])


SESSION_MAKER = """
import os, subprocess, sys
os.setsid()
# A child that backgrounds sleep 300 and exits: the sleep is orphaned,
# reparented away from the session leader (and from pytest, which is no
# subreaper now), but stays in this session.
sh = subprocess.Popen(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], stdout=subprocess.PIPE, text=True)
orphan = sh.stdout.readline().strip()
sh.wait()
print(orphan, flush=True)
os.execvp("sleep", ["sleep", "301"])
"""


@linux_only
def test_a_new_session_is_searched_beyond_our_descendants(inner):
    """With no subreaper (the test switched it off), an orphan of a tree our
    child made into a session goes to init: not our descendant any more, it
    is found as a member of that session."""
    inner.makepyfile(session_maker=SESSION_MAKER, test_it="""
        import os, subprocess, sys, time, psutil
        import osl_pg
        from leakhelpers import record, wait_exec
        KEPT = []

        def test_orphan_outside_our_tree():
            osl_pg.set_child_subreaper(False)
            leader = subprocess.Popen([sys.executable, "session_maker.py"], stdout=subprocess.PIPE, text=True)
            KEPT.append(leader)
            orphan = int(leader.stdout.readline())
            wait_exec(leader.pid, ["sleep", "301"])
            wait_exec(orphan, ["sleep", "300"])
            assert os.getsid(orphan) == leader.pid
            assert os.getpid() not in [p.pid for p in psutil.Process(orphan).parents()]
            record(leader.pid, orphan)
            leader.stdout.close()
    """)
    result = run(inner, *ON)
    result.assert_outcomes(passed=1, errors=1)
    (leader, _), (orphan, start) = recorded(inner)
    result.stdout.re_match_lines([r"The test left 2 processes running; osl_pg ended them:"])
    result.stdout.re_match_lines([rf"\s+{leader}\s+{os.getpid()}\s+SIGTERM\s+sleep 301"])
    result.stdout.re_match_lines([rf"\s+{orphan}\s+\d+\s+SIGTERM\s+sleep 300"])
    assert state(orphan, start) != "running"  # init's to reap (this machine's init is slow to)


@linux_only
def test_a_recycled_pid_is_a_new_process(pytester):
    """A child that ran before the test ends; a leak then gets its pid. By pid
    alone the leak would be "there before the test"; its start time says it
    is new. In a pid namespace with pid_max 400, where pids cycle fast."""
    pytester.makepyfile(test_it="""
        import subprocess
        for _ in range(400):  # past the first wrap: pids now cycle in 300..399
            subprocess.run(["true"])
        BEFORE = subprocess.Popen(["sleep", "300"])   # started at import: before the test
        LEAK = []

        def test_reuses_a_pid():
            BEFORE.kill()
            BEFORE.wait()
            for _ in range(2000):
                p = subprocess.Popen(["sleep", "300"])
                if p.pid == BEFORE.pid:
                    LEAK.append(p)
                    return
                p.kill()
                p.wait()
            raise AssertionError("pid never recycled")
    """)
    code = textwrap.dedent(f"""
        import os, sys
        with open("/proc/sys/kernel/pid_max", "w") as f:
            f.write("400")
        os.chdir({str(pytester.path)!r})
        import pytest
        print("exit status", int(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "osl_pg.pytest_plugin"])))
    """)
    out = in_new_pid_namespace(code).stdout
    assert "The test left 1 process running" in out and "1 passed, 1 error" in out, out
    assert "exit status 1" in out, out


# --------------------------------------------------------------------------
# fixtures


@linux_only
def test_module_fixture_leak_is_charged_to_the_fixture(inner):
    inner.makepyfile(test_it="""
        import os, signal, subprocess
        import pytest
        from leakhelpers import record

        @pytest.fixture(scope="module")
        def careless_server():
            p = subprocess.Popen(["sleep", "300"])  # never stopped
            record(p.pid)
            yield p

        @pytest.fixture(scope="module")
        def tidy_server():
            # Its children start after setup returned; it stops them all.
            p = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
            yield p
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()

        def test_one(careless_server, tidy_server):
            pass

        def test_two(careless_server, tidy_server):
            pass
    """)
    result = run(inner, *ON)
    result.assert_outcomes(passed=2, errors=1)
    (pid, start), = recorded(inner)
    result.stdout.re_match_lines([r".*ERROR at teardown of test_two.*",
                                  r"The module-scoped fixture 'careless_server' left 1 process running; .*",
                                  rf"\s+{pid}\s+{os.getpid()}\s+SIGTERM\s+sleep 300"])
    result.stdout.no_fnmatch_line("*The test left*")
    result.stdout.no_fnmatch_line("*tidy_server*")
    assert state(pid, start) != "running"


# --------------------------------------------------------------------------
# the modes


LEAK_ONE = """
    from leakhelpers import sh_leak
    def test_leaks():
        sh_leak("sleep 300 >/dev/null 2>&1 & echo $!", ["sleep", "300"])
"""


@linux_only
@pytest.mark.parametrize("args, ini, mode", [
    (["--leaked-processes=fail"], None, "fail"),
    (["--leaked-processes=warn"], None, "warn"),
    (["--leaked-processes=kill"], None, "kill"),
    (["-p", "osl_pg.pytest_plugin"], None, "fail"),
    ([], "warn", "warn"),
    (["--leaked-processes=kill"], "fail", "kill"),  # the command line wins
], ids=["fail", "warn", "kill", "-p", "ini", "cli-over-ini"])
def test_modes(inner, args, ini, mode):
    inner.makepyfile(test_it=LEAK_ONE)
    if ini:
        inner.makeini(f"[pytest]\nleaked_processes = {ini}\n")
    result = run(inner, *args)
    (pid, start), = recorded(inner)
    if mode == "fail":
        result.assert_outcomes(passed=1, errors=1)
    else:
        result.assert_outcomes(passed=1, warnings=1 if mode == "warn" else 0)
    tree = f"*{pid}*SIGTERM*sleep 300*"
    if mode == "kill":
        result.stdout.no_fnmatch_line(tree)
    else:
        result.stdout.fnmatch_lines(["*LeakedProcessWarning: The test left 1 process*" if mode == "warn"
                                     else "*ERROR at teardown of test_leaks*", tree])
    result.stdout.fnmatch_lines([f"*osl_pg ended leaked processes ({mode} mode)*",
                                 "test_it.py::test_leaks: 1 process (sleep 300)"])
    assert state(pid, start) == "gone"


def test_inactive_without_an_option(inner):
    """The entry point loads the module; without a mode nothing else runs:
    the subreaper setting is as it was, no watcher, the leak survives (the
    fixture ends it)."""
    from osl_pg.pytest_plugin import _get_subreaper
    inner.makepyfile(test_it=LEAK_ONE + f"""
    from osl_pg.pytest_plugin import _get_subreaper
    def test_nothing_watches(pytestconfig):
        assert pytestconfig.pluginmanager.has_plugin("osl_pg.pytest_plugin")
        assert pytestconfig.pluginmanager.get_plugin("osl_pg-leak-watcher") is None
        assert _get_subreaper() is {_get_subreaper()}
    """)
    result = run(inner)
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*osl_pg ended*")
    (pid, start), = recorded(inner)
    assert state(pid, start) == "running"


def test_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nleaked_processes = loud\n")
    pytester.makepyfile(test_it="def test_x(): pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*leaked_processes = 'loud': expected one of fail, warn, kill, off*"])


# --------------------------------------------------------------------------
# what it must leave alone


@linux_only
def test_a_test_that_cleans_up_passes_and_its_zombies_are_reaped(inner):
    inner.makepyfile(test_it="""
        import subprocess, time, psutil
        import osl_pg
        from leakhelpers import sh_leak

        def test_cleans_up():
            p = subprocess.Popen(["sleep", "300"])
            p.terminate()
            p.wait()
            osl_pg.run(["sh", "-c", "sleep 0 & sleep 0 & wait"], timeout=60)
            # An orphan that exits on its own: reparented to us (the
            # subreaper), a zombie nobody else will reap.
            orphan, = sh_leak("sleep 0 >/dev/null 2>&1 & echo $!")
            while psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.01)
    """)
    result = run(inner, "--leaked-processes=fail")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*osl_pg ended*")
    (orphan, start), = recorded(inner)
    assert state(orphan, start) == "gone"  # reaped by the plugin


@linux_only
def test_children_from_before_and_popen_handles_are_left_alone(inner):
    inner.makepyfile(test_it="""
        import signal, subprocess
        from leakhelpers import record

        BEFORE = subprocess.Popen(["sleep", "300"])  # started at import, before any test
        record(BEFORE.pid)
        KEPT = []

        def test_leaks_a_popen():
            KEPT.append(subprocess.Popen(["sleep", "300"]))
            record(KEPT[0].pid)

        def test_its_handle_still_gets_the_status():
            assert KEPT[0].wait(timeout=60) == -signal.SIGTERM  # the plugin did not reap it
            assert BEFORE.poll() is None

        def test_end_before():
            BEFORE.kill()
            assert BEFORE.wait(timeout=60) == -signal.SIGKILL
    """)
    result = run(inner, "--leaked-processes=fail")
    result.assert_outcomes(passed=3, errors=1)
    (before, _), (kept, start) = recorded(inner)
    result.stdout.re_match_lines([r".*ERROR at teardown of test_leaks_a_popen.*",
                                  rf"\s+{kept}\s+{os.getpid()}\s+SIGTERM\s+sleep 300"])
    result.stdout.no_fnmatch_line(f"*{before}*sleep 300*")
    assert state(kept, start) == "gone"


def test_restores_the_subreaper_setting(inner):
    import osl_pg
    from osl_pg.pytest_plugin import _get_subreaper
    if _get_subreaper() is None:
        pytest.skip("no child subreaper here")
    inner.makepyfile(test_it="""
        from osl_pg.pytest_plugin import _get_subreaper
        def test_on():
            assert _get_subreaper() is True
    """)
    for before in (False, True):
        osl_pg.set_child_subreaper(before)
        try:
            run(inner, "--leaked-processes=kill").assert_outcomes(passed=1)
            assert _get_subreaper() is before
        finally:
            osl_pg.set_child_subreaper(False)
