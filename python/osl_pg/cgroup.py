"""cgroups (Linux): containment nothing escapes, and per-group limits.

A process group is advisory: any member can setsid() or setpgid() and leave
it. A cgroup is not: a process cannot leave one without write access to the
hierarchy, and its children start in it. So a group spawned with
``with_containment("cgroup")`` gets a fresh cgroup v2 directory, which the
child joins *before* exec (csrc/osl_pg_posix.c, join_cgroups): from the
first instruction of the program on, it and everything it starts are inside.
The handle then lists members from ``cgroup.procs``, kills them all at once
with ``cgroup.kill``, and knows the group is gone when ``cgroup.events``
says ``populated 0`` (the kernel notifies a change on that file: POLLPRI).

Where the directories go
------------------------
The cgroup2 hierarchy is found in /proc/self/mountinfo (``/sys/fs/cgroup`` on
a pure v2 host, ``/sys/fs/cgroup/unified`` on a hybrid one), never assumed.
Our own cgroup comes from the ``0::`` line of /proc/self/cgroup. Group
cgroups are created in a subtree ``osl_pg`` below it, named
``<creator pid>-<n>``: the subtree holds no process itself, so the v2
"no internal processes" rule lets it enable controllers for its children.
It can only enable controllers our own cgroup passes down (its
``cgroup.subtree_control``); we never change our own cgroup, because with
processes in it that would need moving them (this process included) to a
leaf first. The empty ``osl_pg`` subtree is removed again when its last
group goes.

Directories whose owner died
----------------------------
An owner that is SIGKILLed removes nothing. Its empty directories are
removed when any process next makes a group that uses cgroups (``_sweep``,
in every hierarchy), and by the kill-on-parent-death watchdog for the
groups it ends. Who owns a directory is not read from its name but from a lock: the
creator holds an exclusive flock() on the directory itself (an O_CLOEXEC fd,
one per directory) from right after its mkdir until it removes it. A sweeper
removes a directory only if it can take that lock. Why a lock rather than
the creator's pid and start time in the name: a pid (and the start time read
through /proc) means something only in the pid namespace of whoever wrote
it, and processes of several pid namespaces share one cgroup subtree (a
sweeper on the host would read another process's /proc entry, or none, for
a creator inside a container, and remove a live directory); time namespaces
shift start times as well. A flock is checked by the kernel on the inode,
whichever namespace asks, and dies with its holder however it dies. The
creator checks after taking the lock that the name still leads to the
directory it locked (a sweeper may have removed it between mkdir and flock:
then it takes the next name), and every remover holds the lock while it
calls rmdir, so a live creator's directory is never removed, not even
between its mkdir and the child's join. (Directories of an older osl_pg,
which took no lock, count as ownerless once empty.)

Limits use a cgroup v2 controller when the subtree has it, else the cgroup
v1 hierarchy of that controller (a process can be in a v2 cgroup and in v1
cgroups at once; the child joins each before exec), else they fail with
LimitUnavailable. v1 directories go below our own cgroup of that hierarchy,
so limits the caller is under keep applying.
"""
from __future__ import annotations

import errno
import itertools
import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, List, NoReturn, Optional, Tuple

if sys.platform != "win32":  # Windows: no cgroups; this module is imported there but unused
    import fcntl

from .errors import CgroupPermissionError, CgroupUnavailable, LimitUnavailable, OslError, OslOSError, from_errno
from .operations import Limits

SUBTREE = "osl_pg"
MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUP = "/proc/self/cgroup"

# Which controller serves each limit (the name is the same in v1 and v2).
CONTROLLER = {"max_processes": "pids", "max_memory": "memory", "cpu_quota": "cpu"}
CPU_PERIOD_US = 100_000
# Linux's CGROUP_FILE_NOTIFY_MIN_INTV: the least time between two
# notifications of one cgroup file.
NOTIFY_INTERVAL = 0.010

_counter = itertools.count(1)
_subtree_lock = threading.Lock()
_GROUP_NAME = re.compile(r"[0-9]+-[0-9]+\Z")  # <creator pid>-<n>
# A full fd table (or system file table) is not "no cgroups here": it is
# raised, typed, never taken for a missing file or a reason to fall back.
_FD_SHORTAGE = (errno.EMFILE, errno.ENFILE)


def _fd_shortage(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _FD_SHORTAGE


def _raise_os_error(e: OSError, what: str, path: str) -> NoReturn:
    """A missing file stays a FileNotFoundError (callers expect it: a
    removed cgroup); anything else becomes a typed error naming `path`."""
    if isinstance(e, (FileNotFoundError, OslError)):
        raise e
    raise from_errno(e.errno or errno.EIO, f"{what} {path}") from None


# --------------------------------------------------------------------------
# finding the hierarchies


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: the v2 one, or a v1 one with its
    controllers. `own_dir` is our own cgroup's directory in it."""

    version: int
    mount: str
    controllers: FrozenSet[str]
    own_dir: str

    def label(self, controller: str) -> str:
        return f"cgroup{self.version}:{controller}"


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def _own_paths() -> Dict[str, str]:
    """Our cgroup per hierarchy from /proc/self/cgroup: key "" is cgroup v2,
    else each v1 controller of the line."""
    paths: Dict[str, str] = {}
    for line in _read_proc(OWN_CGROUP).splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls == "":
            paths[""] = path
        for c in ctrls.split(","):
            if c and not c.startswith("name="):
                paths[c] = path
    return paths


def _read_proc(path: str) -> str:
    """A /proc file: "" where there is none (no /proc: no cgroups); any
    other failure (EMFILE...) is raised, typed: reading nothing there would
    say "no cgroup hierarchy" when the truth is "no fd left"."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        _raise_os_error(e, "cannot read", path)


# While prepare() runs on a thread, the hierarchies it read once (reading
# mountinfo and our cgroups costs ~100 us; one group's setup asks often).
_during_prepare = threading.local()


def hierarchies() -> List[Hierarchy]:
    """Every cgroup hierarchy mounted here in which our own cgroup is
    visible (a mount whose root is outside our cgroup is skipped)."""
    known: Optional[List[Hierarchy]] = getattr(_during_prepare, "hierarchies", None)
    if known is not None:
        return known
    own = _own_paths()
    found: List[Hierarchy] = []
    seen = set()
    for line in _read_proc(MOUNTINFO).splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            version, ctrls, key = 2, frozenset[str](), ""
        else:
            opts = tail[2].split(",")
            ctrls = frozenset(o for o in opts if o in _V1_CONTROLLERS)
            if not ctrls:
                continue  # name=systemd and the like
            version, key = 1, next(iter(ctrls))
        path = own.get(key)
        if path is None or (version, ctrls) in seen:
            continue
        rel = _relative(path, root)
        if rel is None:
            continue
        seen.add((version, ctrls))
        if version == 2:
            # What our own cgroup passes down to its children (and so to the
            # osl_pg subtree); enabling more would change our own cgroup.
            ctrls = frozenset(_read(os.path.join(mount, rel, "cgroup.subtree_control")).split())
        found.append(Hierarchy(version, mount, ctrls, os.path.normpath(os.path.join(mount, rel))))
    return found


_V1_CONTROLLERS = frozenset({"pids", "memory", "cpu", "cpuacct", "cpuset", "freezer", "blkio", "devices",
                             "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"})


def _relative(path: str, root: str) -> Optional[str]:
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return None


def cgroup2() -> Optional[Hierarchy]:
    return next((h for h in hierarchies() if h.version == 2), None)


def cgroup1(controller: str) -> Optional[Hierarchy]:
    return next((h for h in hierarchies() if h.version == 1 and controller in h.controllers), None)


def _read(path: str) -> str:
    """A cgroup file's text; "" when the file (or its cgroup) is gone.
    Other failures are raised, typed."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        if isinstance(e, FileNotFoundError) or e.errno == errno.ENODEV:  # ENODEV: removed under us
            return ""
        _raise_os_error(e, "cannot read", path)


# --------------------------------------------------------------------------
# one cgroup directory


class Cgroup:
    """A cgroup directory this process created for one group."""

    def __init__(self, hierarchy: Hierarchy, path: str, lock_fd: Optional[int] = None):
        self.hierarchy = hierarchy
        self.path = path
        # The flock that says "my creator lives" (see the module docstring);
        # closed when the directory is removed.
        self.lock_fd = lock_fd
        self._creator = os.getpid()
        if lock_fd is not None:
            _locked[path] = self

    def __repr__(self) -> str:
        return f"<Cgroup {self.path}>"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.file(name))

    def read(self, name: str) -> str:
        try:
            with open(self.file(name)) as f:
                return f.read()
        except OSError as e:
            _raise_os_error(e, "cannot read", self.file(name))

    def write(self, name: str, value: str) -> None:
        try:
            with open(self.file(name), "w") as f:
                f.write(value)
        except OSError as e:
            _raise_os_error(e, f"cannot write {value!r} to", self.file(name))

    def keyed(self, name: str) -> Dict[str, int]:
        """A flat keyed file ("populated 1\\nfrozen 0\\n") as a dict;
        empty when the file is missing or the cgroup is gone."""
        out: Dict[str, int] = {}
        for line in _read(self.file(name)).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def pids(self) -> List[int]:
        """The processes in the cgroup now (exited ones, zombies included,
        are not listed: the kernel takes a task out of its cgroup when it
        exits)."""
        try:
            return [int(p) for p in self.read("cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def open_procs(self) -> int:
        """An O_CLOEXEC fd on cgroup.procs for the child to join through."""
        try:
            return os.open(self.file("cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            _raise_os_error(e, "cannot open", self.file("cgroup.procs"))

    def move_out(self) -> None:
        """Move whatever still runs here to our own cgroup of the hierarchy,
        so the directory can be removed (the processes are not touched)."""
        for pid in self.pids():
            try:
                with open(os.path.join(self.hierarchy.own_dir, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass  # exited meanwhile

    def remove(self) -> bool:
        """rmdir, moving leftover processes out first; then the osl_pg
        subtree too when it is empty. True once the directory is gone.
        Our lock goes in any case: a directory left behind (still busy)
        is then removed by a later sweep once it is empty. In a child
        forked from the creator this only drops the lock fd: the
        directory is the parent's."""
        try:
            if os.getpid() != self._creator:
                return False
            return self._remove()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        if fd is not None:
            _locked.pop(self.path, None)
            os.close(fd)

    def _remove(self) -> bool:
        for attempt in range(50):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return False
                # Populated: someone we did not kill (a detached group, an
                # escapee of a limits-only cgroup) or a process still exiting.
                try:
                    self.move_out()
                except OSError:  # no fd to read cgroup.procs: retry
                    pass
                time.sleep(0.001 * attempt)
        else:
            return False
        _remove_subtree_if_empty(os.path.dirname(self.path))
        return True


def _remove_subtree_if_empty(subtree: str) -> None:
    with _subtree_lock:
        try:
            os.rmdir(subtree)
        except OSError:
            pass  # another group (of any process) still has a directory in it


# Every Cgroup holding a lock fd: a sweep skips them, and a forked child
# closes its copies (else a long-lived child would keep its dead parent's
# directories locked, looking owned, for as long as it runs). Plain dict
# operations, atomic under the GIL: no lock to take on the way.
_locked: Dict[str, "Cgroup"] = {}  # path -> its Cgroup


def _close_locks_in_child() -> None:
    for cg in list(_locked.values()):
        fd, cg.lock_fd = cg.lock_fd, None
        if fd is not None:
            try:
                os.close(fd)  # not flock(LOCK_UN): the parent's lock stays
            except OSError:
                pass
    _locked.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _still_names(path: str, fd: int) -> bool:
    """Whether `path` is still the directory `fd` was opened on (not
    removed, nor removed and made again by someone else)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    was = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino)


def _lock_if_unowned(path: str) -> Optional[int]:
    """The fd of `path` holding its lock, or None when its creator (or
    another sweeper) holds it, or it is gone."""
    try:
        fd = _open_dir(path)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _still_names(path, fd):
            return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _sweep(subtree: str) -> None:
    """Remove the empty <pid>-<n> directories of `subtree` whose creator is
    gone (nobody holds their lock). Best effort: a directory that still
    has processes, or that we may not remove, stays; with no fd left the
    sweep stops (the create that follows says so). Run in every
    hierarchy before each group's cgroups are made, so no directory of a
    dead owner outlives the next group that uses cgroups, whoever makes
    it: our own directories are known and skipped, another's costs an
    open, a flock and a close (9 us measured here), only while that
    owner lives."""
    try:
        names = os.listdir(subtree)
    except OSError:
        return  # none yet; or no fd left
    for name in names:
        path = os.path.join(subtree, name)
        if not _GROUP_NAME.match(name) or path in _locked:
            continue
        try:
            fd = _lock_if_unowned(path)
        except OSError as e:
            if _fd_shortage(e):
                return
            continue  # not ours to open (EACCES) or not a directory
        if fd is None:
            continue
        try:
            os.rmdir(path)  # EBUSY while processes are in it: it stays
        except OSError:
            pass
        finally:
            os.close(fd)


def _new_dir(subtree: str) -> Optional[Tuple[str, int]]:
    """mkdir subtree/<pid>-<n> and take its lock: (path, lock fd), or None
    when the name was taken or a sweeper got in first (try the next)."""
    path = os.path.join(subtree, f"{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(path)
    except (FileExistsError, FileNotFoundError):
        # Taken (by a process with our pid in another pid namespace, or a
        # dead one's), or the subtree was removed under us.
        return None
    try:
        # None: a sweeper removed it since our mkdir, or holds its lock
        # (and removes it).
        fd = _lock_if_unowned(path)
    except OSError as e:
        # No fd for the lock: take the directory back (unlocked, it is
        # nobody's yet) and say what could not be opened.
        try:
            os.rmdir(path)
        except OSError:
            pass
        _raise_os_error(e, "cannot open (to lock it) the new cgroup", path)
    return None if fd is None else (path, fd)


def _create(hierarchy: Hierarchy, controllers: Tuple[str, ...] = ()) -> Cgroup:
    """mkdir <own cgroup>/osl_pg/<pid>-<n> and lock it, enabling
    `controllers` (cgroup v2) in the subtree first. Another process may
    remove the empty subtree between our two mkdirs: then it is made
    again."""
    subtree = os.path.join(hierarchy.own_dir, SUBTREE)
    for _ in range(100):
        with _subtree_lock:
            try:
                os.mkdir(subtree)
            except FileExistsError:
                pass
            if hierarchy.version == 2 and controllers:
                _enable(subtree, controllers)
        made = _new_dir(subtree)
        if made is not None:
            return Cgroup(hierarchy, *made)
    raise OslOSError(errno.EAGAIN, f"could not create a cgroup under {subtree}")


def _enable(subtree: str, controllers: Tuple[str, ...]) -> None:
    enabled = set(_read(os.path.join(subtree, "cgroup.subtree_control")).split())
    missing = [c for c in controllers if c not in enabled]
    if missing:
        with open(os.path.join(subtree, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join("+" + c for c in missing))


def _create_error(hierarchy: Hierarchy, err: OSError) -> OSError:
    where = os.path.join(hierarchy.own_dir, SUBTREE)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CgroupPermissionError(
            err.errno, f"cannot create cgroups under {where}: {os.strerror(err.errno or 0)}; run as root "
                       f"or in a delegated cgroup (e.g. systemd-run --user --scope -p Delegate=yes ...)")
    return OslOSError(err.errno or errno.EIO, f"cannot create a cgroup under {where}: {err}")


# --------------------------------------------------------------------------
# the cgroups of one group


class CgroupSet:
    """The cgroup directories of one group: at most one cgroup v2 directory
    (containment, and the limits v2 can apply) plus one v1 directory per
    hierarchy a remaining limit needs. Made before the spawn; the child
    joins all of them through `join_fds`."""

    def __init__(self) -> None:
        self.v2: Optional[Cgroup] = None
        self.v1: Dict[str, Cgroup] = {}  # by hierarchy mount
        self.limits_applied: Dict[str, str] = {}
        self.containment_error: Optional[Exception] = None
        self.join_fds: List[int] = []
        self._limit_cgroups: Dict[str, Cgroup] = {}  # limit name -> its cgroup
        self._final_events: Optional[Dict[str, int]] = None

    @property
    def all(self) -> List[Cgroup]:
        return ([self.v2] if self.v2 is not None else []) + list(self.v1.values())

    def open_join_fds(self) -> List[int]:
        """One cgroup.procs fd per directory; on failure (no fd left) those
        already opened are closed again and a typed error names the file."""
        self.close_join_fds()
        try:
            for cg in self.all:
                self.join_fds.append(cg.open_procs())
        except BaseException:
            self.close_join_fds()
            raise
        return self.join_fds

    def close_join_fds(self) -> None:
        for fd in self.join_fds:
            os.close(fd)
        self.join_fds = []

    def limit_events(self) -> Dict[str, int]:
        """What the limits did so far: "oom_kills" (processes the OOM killer
        ended because of max_memory) and "fork_failures" (forks refused by
        max_processes). Kept after the cgroups are removed."""
        if self._final_events is not None:
            return dict(self._final_events)
        events = {}
        mem = self._limit_cgroups.get("max_memory")
        if mem is not None:
            if mem.hierarchy.version == 2:
                events["oom_kills"] = mem.keyed("memory.events").get("oom_kill", 0)
            else:  # v1: memory.oom_control counts oom_kill since Linux 4.13
                events["oom_kills"] = mem.keyed("memory.oom_control").get("oom_kill", 0)
        pids = self._limit_cgroups.get("max_processes")
        if pids is not None:
            events["fork_failures"] = pids.keyed("pids.events").get("max", 0)
        return events

    def remove(self) -> None:
        """Remove every directory (snapshotting the limit events first)."""
        self.close_join_fds()
        if self._final_events is None:
            try:
                self._final_events = self.limit_events()
            except OSError:  # no fd to read them: the directories go all the same
                self._final_events = {}
        for cg in self.all:
            cg.remove()

    # -- building ------------------------------------------------------------------
    def _v2_for_limits(self, needed: Tuple[str, ...]) -> Optional[Cgroup]:
        """The v2 directory, created (without containment) when some needed
        controller is available to our subtree."""
        if self.v2 is not None:
            return self.v2
        h = cgroup2()
        if h is None or not any(c in h.controllers for c in needed):
            return None
        try:
            self.v2 = _create(h, tuple(c for c in needed if c in h.controllers))
        except OSError as e:
            if _fd_shortage(e):
                raise
            return None
        return self.v2

    def _v1_for(self, controller: str) -> Optional[Cgroup]:
        h = cgroup1(controller)
        if h is None:
            return None
        cg = self.v1.get(h.mount)
        if cg is None:
            try:
                cg = self.v1[h.mount] = _create(h)
            except OSError as e:
                if _fd_shortage(e):
                    raise
                return None
        return cg

    def apply(self, limits: Limits) -> None:
        requested = limits.requested()
        needed = tuple(CONTROLLER[name] for name in requested)
        v2 = self._v2_for_limits(needed) if needed else self.v2
        for name, value in requested.items():
            ctrl = CONTROLLER[name]
            cg = v2 if v2 is not None and ctrl in _available(v2) else self._v1_for(ctrl)
            if cg is None:
                raise LimitUnavailable(_no_controller(name, ctrl, v2))
            _WRITERS[(name, cg.hierarchy.version)](cg, value)
            self._limit_cgroups[name] = cg
            self.limits_applied[name] = cg.hierarchy.label(ctrl)


def _available(cg: Cgroup) -> FrozenSet[str]:
    """Controllers in effect in a v2 directory (cgroup.controllers lists
    those its parent's subtree_control enabled)."""
    return frozenset(_read(cg.file("cgroup.controllers")).split())


def _no_controller(name: str, ctrl: str, v2: Optional[Cgroup]) -> str:
    h = cgroup2()
    if h is None:
        v2_why = "there is no cgroup2 hierarchy"
    else:
        v2_why = (f"cgroup2 does not pass it to {h.own_dir} (not in the parent's cgroup.subtree_control; "
                  f"controllers here: {' '.join(sorted(h.controllers)) or 'none'})")
    return (f"{name} needs the {ctrl} controller: {v2_why}, and there is no writable cgroup v1 {ctrl} "
            f"hierarchy")


def _pids_max(cg: Cgroup, value: int) -> None:
    cg.write("pids.max", str(value))


def _memory_v2(cg: Cgroup, value: int) -> None:
    cg.write("memory.max", str(value))
    # max_memory bounds RAM plus swap: a hog must be stopped, not swapped.
    if cg.has("memory.swap.max"):
        cg.write("memory.swap.max", "0")


def _memory_v1(cg: Cgroup, value: int) -> None:
    cg.write("memory.limit_in_bytes", str(value))
    if cg.has("memory.memsw.limit_in_bytes"):  # swap accounting on: RAM + swap
        cg.write("memory.memsw.limit_in_bytes", str(value))


def _cpu_v2(cg: Cgroup, cpus: float) -> None:
    cg.write("cpu.max", f"{max(1000, int(cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")


def _cpu_v1(cg: Cgroup, cpus: float) -> None:
    cg.write("cpu.cfs_period_us", str(CPU_PERIOD_US))
    cg.write("cpu.cfs_quota_us", str(max(1000, int(cpus * CPU_PERIOD_US))))


_WRITERS = {
    ("max_processes", 2): _pids_max, ("max_processes", 1): _pids_max,
    ("max_memory", 2): _memory_v2, ("max_memory", 1): _memory_v1,
    ("cpu_quota", 2): _cpu_v2, ("cpu_quota", 1): _cpu_v1,
}


def prepare(containment: Optional[str], limits: Optional[Limits]) -> Optional[CgroupSet]:
    """The cgroups a spawn asks for, created and configured, or None when it
    asks for neither containment nor limits. With containment "cgroup" a
    failure raises (CgroupUnavailable, CgroupPermissionError); with
    "best_available" it is kept in `containment_error` and the group falls
    back to its process group."""
    requested = limits.requested() if limits is not None else {}
    if containment is None and not requested:
        return None
    found = hierarchies()
    # Every hierarchy, not only those this group will use: a dead owner's
    # v1 limit directories go with the next group of any kind.
    for h in found:
        _sweep(os.path.join(h.own_dir, SUBTREE))
    _during_prepare.hierarchies = found
    cgs = CgroupSet()
    try:
        if containment is not None:
            try:
                cgs.v2 = _containment_cgroup(tuple(CONTROLLER[n] for n in requested))
            except (OSError, NotImplementedError) as e:
                # Falling back is for "no cgroups for us here", not for a
                # full fd table, which the fallback would hit next anyway.
                if containment == "cgroup" or _fd_shortage(e):
                    raise
                cgs.containment_error = e
        if limits is not None and requested:
            cgs.apply(limits)
    except BaseException:
        cgs.remove()
        raise
    finally:
        _during_prepare.hierarchies = None
    return cgs


def _containment_cgroup(controllers: Tuple[str, ...]) -> Cgroup:
    h = cgroup2()
    if h is None:
        raise CgroupUnavailable(
            "cgroup containment needs a cgroup2 hierarchy in which this process's cgroup is visible; "
            f"there is none in {MOUNTINFO}")
    try:
        return _create(h, tuple(c for c in controllers if c in h.controllers))
    except OSError as e:
        raise _create_error(h, e) from None


# --------------------------------------------------------------------------
# waiting on cgroup.events


class EventsWatch:
    """Readiness of a cgroup's cgroup.events: an epoll fd that becomes
    readable when the kernel notifies a change of the file (it raises
    POLLPRI on it). Plain poll() would do for blocking waits; an epoll fd
    can also be handed to an asyncio loop, which only watches readability."""

    def __init__(self, cg: Cgroup):
        self.cg = cg
        try:
            self.fd: int = os.open(cg.file("cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            _raise_os_error(e, "cannot open", cg.file("cgroup.events"))
        try:
            self.epoll: select.epoll = select.epoll()
        except OSError as e:
            os.close(self.fd)
            _raise_os_error(e, "cannot make an epoll fd to watch", cg.file("cgroup.events"))
        self.epoll.register(self.fd, select.EPOLLPRI)

    def read(self) -> Dict[str, int]:
        """The current values; reading also re-arms the notification."""
        data = os.pread(self.fd, 4096, 0).decode()
        out = {}
        for line in data.splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
        return out

    def wait(self, timeout: Optional[float]) -> None:
        self.epoll.poll(-1 if timeout is None else max(0.0, timeout))

    def close(self) -> None:
        self.epoll.close()
        os.close(self.fd)

    def __enter__(self) -> "EventsWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_event(cg: Cgroup, key: str, value: int, deadline: Optional[float]) -> bool:
    """Block until cgroup.events has `key value` (populated 0, frozen 1...)
    or `deadline` passes. The thread sleeps in epoll; but the kernel sends
    at most one notification per file per 10 ms and defers the rest (a
    freeze right after a spawn waits for that timer), so it also re-reads
    after 1, 2, 4, 8 and 16 ms: a few wake-ups, then notifications only."""
    step = 0.001
    with EventsWatch(cg) as watch:
        while watch.read().get(key) != value:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if step <= NOTIFY_INTERVAL:
                watch.wait(step if remaining is None else min(step, remaining))
                step *= 2
            else:
                watch.wait(remaining)
    return True

