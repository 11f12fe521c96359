"""user=, group=, extra_groups=, umask= (POSIX) as subprocess does them, and
the errors an unprivileged caller gets, side by side with subprocess. Facts
come from /proc/<pid>/status of the child and from what the child prints."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import linux_only, py
from osl_pg import OslError, ProcessSpawnOperation

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX credentials"), linux_only]

NOBODY = 65534
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def status_fields(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields.get(k, "").split() for k in ("Uid", "Gid", "Groups", "Umask")}


def unprivileged(code, real_uid=None):
    """Run Python `code` without privileges and return its stdout: as root,
    under setpriv with an empty capability bounding set (uid 0 then obeys
    permission bits and may not change ids), and with `real_uid` as its real
    uid if given (RLIMIT_NPROC never applies to uid 0; the effective uid
    stays 0, which may still reach this interpreter under /root), else as
    ourselves."""
    argv = py(textwrap.dedent(code))
    if ROOT:
        ruid = [f"--ruid={real_uid}"] if real_uid is not None else []
        argv = ["setpriv", *ruid, "--bounding-set=-all", "--inh-caps=-all"] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not ROOT, reason="changing to another user needs root")
@pytest.mark.parametrize("force_vfork", [False, True], ids=["plain", "kill_on_parent_death"])
def test_user_groups_and_umask_match_subprocess(executor, force_vfork):
    import grp
    import pwd
    user, group = pwd.getpwuid(NOBODY).pw_name, grp.getgrgid(NOBODY).gr_name
    theirs = subprocess.Popen(["sleep", "10"], user=user, group=group, extra_groups=[group, 100], umask=0o027)
    op = (ProcessSpawnOperation("sleep").arg("10").with_new_process_group().with_user(user).with_group(group)
          .with_extra_groups([group, 100]).with_umask(0o027))
    if force_vfork:
        op = op.with_kill_on_parent_death()
    r = executor.execute(op)
    try:
        mine, want = status_fields(r.pid), status_fields(theirs.pid)
        assert mine == want
        assert mine["Uid"] == [str(NOBODY)] * 4 and mine["Gid"] == [str(NOBODY)] * 4  # real, effective, saved, fs
        assert sorted(mine["Groups"]) == sorted([str(NOBODY), "100"]) and mine["Umask"] == ["0027"]
        assert status_fields(os.getpid())["Uid"][0] == "0"  # the parent is untouched
    finally:
        theirs.kill()
        theirs.wait()
        r.group.close()


@pytest.mark.skipif(not ROOT, reason="changing to another user needs root")
def test_ids_and_an_empty_group_list(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group()
                         .with_user(NOBODY).with_group(NOBODY).with_extra_groups([]))
    theirs = subprocess.Popen(["sleep", "10"], user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        mine = status_fields(r.pid)
        assert mine["Uid"][:2] == [str(NOBODY)] * 2 and mine["Groups"] == []
        assert mine == status_fields(theirs.pid)
    finally:
        theirs.kill()
        theirs.wait()
        r.group.close()


def test_umask_alone_needs_no_privilege(executor):
    r = executor.execute(ProcessSpawnOperation("sleep").arg("10").with_new_process_group().with_umask(0o077))
    try:
        assert status_fields(r.pid)["Umask"] == ["0077"]
        assert status_fields(os.getpid())["Umask"] != ["0077"]  # the parent's is untouched
    finally:
        r.group.close()


def test_unknown_names_raise_keyerror_before_spawning(executor):
    for build in (lambda op: op.with_user("osl-no-such-user"), lambda op: op.with_group("osl-no-such-group"),
                  lambda op: op.with_extra_groups(["root", "osl-no-such-group"])):
        op = build(ProcessSpawnOperation("sleep").arg("10").with_new_process_group())
        with pytest.raises(KeyError) as e:
            executor.execute(op)
        assert isinstance(e.value, OslError) and "name not found" in str(e.value)
    with pytest.raises(KeyError) as theirs:
        subprocess.run(["true"], user="osl-no-such-user")
    with pytest.raises(KeyError) as ours:
        executor.execute(ProcessSpawnOperation("true").with_user("osl-no-such-user"))
    assert ours.value.args == theirs.value.args


UNPRIVILEGED_IDS = """
    import json, os, subprocess
    from osl_pg import OslError, ProcessExecutor, ProcessSpawnOperation
    ex = ProcessExecutor("x")
    other = 65534 if os.getuid() == 0 else 0  # an id that is not ours
    out = {}
    for what, kw in [("user", {"user": other}), ("group", {"group": other}), ("extra_groups", {"extra_groups": [other]})]:
        try:
            subprocess.run(["true"], **kw)
            theirs = None
        except OSError as e:
            theirs = [type(e).__name__, e.errno]
        op = ProcessSpawnOperation("true").with_new_process_group()
        op = {"user": op.with_user(other), "group": op.with_group(other),
              "extra_groups": op.with_extra_groups([other])}[what]
        try:
            r = ex.execute(op)
            r.group.close()
            ours = None
        except PermissionError as e:
            ours = ["PermissionError", e.errno, isinstance(e, OslError), str(e)]
        out[what] = [theirs, ours]
    print(json.dumps(out))
"""


def test_unprivileged_id_changes_raise_permissionerror_like_subprocess():
    out = json.loads(unprivileged(UNPRIVILEGED_IDS))
    for what, (theirs, ours) in out.items():
        assert theirs == ["PermissionError", 1], what
        assert ours[:3] == ["PermissionError", 1, True], what
        assert what.replace("extra_groups", "supplementary groups") in ours[3]


UNSEARCHABLE_PATH = """
    import os, subprocess, tempfile
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    top = tempfile.mkdtemp()
    locked = os.path.join(top, "locked")
    os.mkdir(locked, 0o000)  # no search permission: execve() below it is EACCES
    path = os.pathsep.join([locked, "/usr/bin", "/bin"])
    def kind(call):
        try:
            call()
            return "ran"
        except OSError as e:  # named by its builtin class
            builtin = next(c for c in type(e).__mro__ if c.__module__ == "builtins")
            return f"{builtin.__name__}:{e.errno}:{e.filename}"
    try:
        theirs = kind(lambda: subprocess.run(["osl-no-such-cmd"], env={"PATH": path}))
        ours = kind(lambda: ProcessExecutor("x").execute(
            ProcessSpawnOperation("osl-no-such-cmd").with_clean_env().env("PATH", path)))
        found = kind(lambda: ProcessExecutor("x").execute(
            ProcessSpawnOperation("true").with_clean_env().env("PATH", path)).process.wait())
    finally:
        os.rmdir(locked)
        os.rmdir(top)
    print(theirs, ours, found)
"""


def test_command_not_found_behind_an_unsearchable_path_entry_is_permissionerror_like_subprocess():
    theirs, ours, found = unprivileged(UNSEARCHABLE_PATH).split()
    assert theirs == "PermissionError:13:osl-no-such-cmd"
    assert ours == theirs
    assert found == "ran"  # a later PATH entry that has the command still wins


EAGAIN = """
    import resource, subprocess
    from osl_pg import OslError, ProcessExecutor, ProcessSpawnOperation
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))  # this user runs >= 1 process: no fork succeeds
    out = []
    for call in (lambda: subprocess.run(["true"]),
                 lambda: ProcessExecutor("x").execute(ProcessSpawnOperation("true").with_new_process_group()),
                 lambda: ProcessExecutor("x").execute(ProcessSpawnOperation("true").with_new_process_group()
                                                      .with_kill_on_parent_death())):
        try:
            call()
            out.append("ran")
        except OSError as e:
            out.append(f"{type(e).__name__}:{e.errno}:{isinstance(e, BlockingIOError)}:{isinstance(e, OslError)}")
    print(*out)
"""


def test_process_limit_reached_is_blockingioerror_like_subprocess():
    theirs, *ours = unprivileged(EAGAIN, real_uid=NOBODY).split()
    assert theirs.split(":")[:3] == ["BlockingIOError", "11", "True"]
    assert [o.split(":")[1:] for o in ours] == [["11", "True", "True"]] * 2
