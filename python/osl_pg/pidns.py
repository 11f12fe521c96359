"""The ``pid_namespace`` containment tier (Linux): the command runs in a new
user namespace and a new PID namespace, whose pid 1 is osl_pg's own init
(``osl_pg/_osl_pg_init``, built from csrc/osl_pg_init.c: no Python in it).

Nothing leaves a PID namespace: when its pid 1 exits, the kernel kills every
process in it, however it daemonized (setsid, double fork). A user
namespace makes that possible without root, where a cgroup needs a
delegated subtree. The init starts the command as pid 2 and leader of its
own group, forwards the signals we send it to that group, reaps orphans,
and exits once the command has exited and nothing is left in its group;
its exit is reported to us only when the whole namespace is empty. It also
exits (ending the namespace) when this process dies: it watches a pipe
whose read end only we hold (InitStatus).

What the handle sees, in host pids: ``pgid`` and the leader are the init
(our child, which the handle pins); members are the init and its
descendants. What the command sees: it is pid 2, getppid() is 1, its uid
and gid are ours (mapped to themselves; setgroups() is denied), and /proc
is still the host's (no mount namespace is made: ``ps`` lists the host's
processes, and /proc/self is right).

Where the kernel refuses user namespaces (kernel.unprivileged_userns_clone
= 0, user.max_user_namespaces = 0, AppArmor's
kernel.apparmor_restrict_unprivileged_userns, a container's seccomp
filter), the spawn raises NamespaceUnavailable naming the cause, and
``best_available`` falls back to the process group.
"""
from __future__ import annotations

import errno
import os
import signal

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, List, Optional

    from . import cgroup as _cg
    from .tiers import Escapee, ProcInfo

from ._backend import backend
from ._posix import INIT_EXITED, INIT_RECORD, INIT_STOPPED  # this tier is Linux's: the backend is _posix
from .tiers import SIGKILL, Tier, _exited_without_fd

# The signals the init forwards to the command's group (csrc/osl_pg_init.c).
# A pid 1 never gets any other from us but SIGKILL: those are sent to each
# member instead.
FORWARDED = frozenset(int(getattr(signal, name)) for name in (
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT", "SIGTSTP", "SIGALRM",
    "SIGTTIN", "SIGTTOU") if hasattr(signal, name))

# The probe's seam: where the sysctls that name a refusal are read. Tests
# point it at a directory of their own.
SYSCTL_DIR = "/proc/sys"

# Status pipes of inits still running when their handle was dropped or
# detached: closing one would end that namespace (the init takes it for
# our death), so each stays open until its init has exited (the pipe then
# reports POLLHUP: sweep_kept_open, at the tier's next spawn).
_kept_open: List[int] = []


def sweep_kept_open() -> None:
    """Close the kept status pipes whose init has exited. Never blocks."""
    if not _kept_open:
        return
    import select
    poller = select.poll()
    for fd in _kept_open:
        poller.register(fd, 0)  # POLLHUP is always reported
    for fd, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) and fd in _kept_open:
            _kept_open.remove(fd)
            if not events & select.POLLNVAL:
                os.close(fd)


def _sysctl(name: str) -> Optional[str]:
    try:
        with open(os.path.join(SYSCTL_DIR, *name.split(".")), encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def refusal_cause(err: int) -> str:
    """Why a user + PID namespace was refused here (clone() failed with
    `err`): the sysctl that refuses it, if one does, else what is left."""
    root = os.geteuid() == 0
    if err == errno.ENOSYS:
        return "this kernel has no user or PID namespaces (CONFIG_USER_NS, CONFIG_PID_NS)"
    if _sysctl("user.max_user_namespaces") == "0":
        return "user.max_user_namespaces is 0 (sysctl -w user.max_user_namespaces=N to allow N)"
    if _sysctl("user.max_pid_namespaces") == "0":
        return "user.max_pid_namespaces is 0"
    if not root and _sysctl("kernel.unprivileged_userns_clone") == "0":
        return ("kernel.unprivileged_userns_clone is 0: unprivileged user namespaces are off "
                "(sysctl -w kernel.unprivileged_userns_clone=1)")
    if not root and _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns "
                "is 1; an AppArmor profile with 'userns,' for this program, or the sysctl at 0, allows them)")
    if err in (errno.ENOSPC, errno.EUSERS):
        return "the limit of nested or per-user namespaces is reached (user.max_user_namespaces, max_pid_namespaces)"
    if err == errno.EPERM:
        return ("clone(CLONE_NEWUSER | CLONE_NEWPID) was refused with EPERM and no sysctl here refuses it: "
                "a seccomp filter (a container runtime's) or a security module does")
    return f"clone(CLONE_NEWUSER | CLONE_NEWPID) failed: {os.strerror(err)}"


class InitStatus:
    """Our end of the init's status pipe: the records it writes (its exit
    status among them), and, by being open, what keeps the namespace alive
    (csrc/osl_pg_init.c)."""

    def __init__(self, fd: int):
        self.fd: int = fd
        self.exit_status: Optional[int] = None  # the command's: code, or -signal
        self.init_exited: bool = False  # its status was collected (decode())
        self.eof: bool = False  # the init has exited: its end of the pipe is closed

    def _drain(self) -> List[int]:
        """Read the records there are; returns the stop signals among them
        (the EXITED one is kept). Records are written whole (one write()
        below PIPE_BUF), so a read never splits one."""
        stops: List[int] = []
        if self.fd < 0:
            return stops
        os.set_blocking(self.fd, False)
        try:
            data = os.read(self.fd, INIT_RECORD.size * 16)
        except (BlockingIOError, InterruptedError):
            return stops
        if not data:
            self.eof = True
        for kind, value in INIT_RECORD.iter_unpack(data[:len(data) - len(data) % INIT_RECORD.size]):
            if kind == INIT_EXITED:
                self.exit_status = value
            elif kind == INIT_STOPPED:
                stops.append(value)
        return stops

    def wait_exit_or_stop(self, deadline: Optional[float]) -> Optional[int]:
        """backend.wait_exit_or_stop() for the init: 0 once it has exited
        (its end of the pipe is closed), the signal when the command
        stopped (the init reports it: it cannot stop itself), None at
        `deadline`."""
        import select
        import time
        while self.fd >= 0:
            stops = self._drain()
            if stops:
                return stops[-1]
            if self.eof:
                return 0
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if timeout == 0.0:
                return None
            select.select([self.fd], [], [], timeout)
        return 0

    def decode(self, init_status: int) -> int:
        """The command's return code, from the init's: the init exits with
        the command's code, or 128 + N when it died of signal N (a pid 1
        cannot die of a signal it sends itself); the EXITED record says
        which. An init killed (by us: the namespace was killed) reports
        that."""
        self.init_exited = True
        if self.exit_status is None:
            self._drain()
        if self.exit_status is not None and init_status >= 0:
            return self.exit_status
        return init_status

    def close(self, running: bool) -> None:
        """Done with the pipe. While the init runs (a dropped or detached
        handle) it is kept open: closing it would end the namespace."""
        if self.fd < 0:
            return
        if running:
            _kept_open.append(self.fd)
        else:
            self._drain()
            os.close(self.fd)
        self.fd = -1


def _children(pid: int) -> List[int]:
    """The children of `pid` (every thread's), from /proc (Linux 3.5,
    CONFIG_PROC_CHILDREN): no scan of the host's process table."""
    out: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


class PidNamespaceTier(Tier):
    """pid_namespace: membership is the namespace, whose pid 1 (`pgid`) is
    our init. Every process in it descends from the init (orphans are
    reparented to it), so members are the init's descendants, found through
    /proc's children lists at the cost of the group's size, not the host's.
    Gone is the init gone: the kernel reports its exit only once the
    namespace is empty."""

    name = "pid_namespace"

    def __init__(self, pgid: int, status: InitStatus, cgroups: "Optional[_cg.CgroupSet]" = None):
        super().__init__(pgid, cgroups)
        self.status: InitStatus = status
        sweep_kept_open()

    def _init_exited(self) -> bool:
        return _exited_without_fd(self.pgid)

    def pids(self) -> List[int]:
        if self._init_exited():
            return []
        seen = [self.pgid]  # the init first: signal() skips it
        known = {self.pgid}
        stack = [self.pgid]
        while stack:
            for child in _children(stack.pop()):
                if child not in known:
                    known.add(child)
                    seen.append(child)
                    stack.append(child)
        return seen

    def is_member(self, pid: int, info: ProcInfo) -> bool:
        return pid in self.pids()

    def terminal_pgid(self) -> int:
        """The command's group, which a terminal must have in the foreground
        (the init only forwards): the host pid of the init's child that is
        pid 2 inside (/proc/PID/status NSpid), leader of that group."""
        for child in _children(self.pgid):
            try:
                with open(f"/proc/{child}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"NSpid:"):
                            if line.split()[-1] == b"2":
                                return child
                            break
            except OSError:
                continue
        return self.pgid

    def confirm_empty(self) -> bool:
        return self._init_exited()

    def wait_exit_or_stop(self, pid: int, deadline: Optional[float]) -> Optional[int]:
        return self.status.wait_exit_or_stop(deadline)

    def observe(self) -> Dict[int, ProcInfo]:
        """No table is read: nothing leaves, so nothing is tracked."""
        return {}

    def observe_now_and_then(self, every: float = 0.1) -> None:
        return None

    def escaped(self) -> List[Escapee]:
        """Empty by construction: no process leaves a PID namespace."""
        return []

    def signal(self, sig: int) -> None:
        """`sig` to every member. The init forwards the FORWARDED signals
        to the command's group; SIGKILL goes to the init, which ends the
        namespace; 0 asks whether the init is there. A signal the init
        would not take (SIGSTOP, and any other) goes to each member but the
        init, whose pid is pinned by the handle (the others are read from
        /proc just before)."""
        if sig in FORWARDED or sig in (0, SIGKILL):
            backend.kill(self.pgid, sig)
            return
        reached = 0
        for pid in self.pids()[1:]:
            try:
                backend.kill(pid, sig)
                reached += 1
            except ProcessLookupError:
                continue
        if not reached:
            backend.kill(self.pgid, 0)  # ProcessLookupError once the init is gone too

    def close(self) -> None:
        self.status.close(running=not self.status.init_exited and not self._init_exited())
        super().close()
