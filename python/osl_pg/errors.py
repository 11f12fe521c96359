"""The error types. Each concrete error derives from the matching builtin as
well as from OslError, so both ``except FileNotFoundError`` and
``except OslError`` catch a missing command."""
from __future__ import annotations

import errno as _errno
import os
import subprocess
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, List, Optional, Sequence, Union

    from .run import Leftover

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class OslError(Exception):
    """Base of every error osl_pg raises."""


class InvalidOperation(ValueError, OslError):
    """A malformed operation (empty command, NUL byte, pid out of range...)."""


class InvalidOperationType(TypeError, InvalidOperation):
    """A malformed operation whose cause is a value of the wrong type, where
    subprocess raises TypeError (a user that is neither a name nor an id).
    Still an InvalidOperation (and ValueError) for code that catches those."""


class CommandNotFound(FileNotFoundError, OslError):
    """The command or the working directory does not exist."""


class OslNotADirectoryError(NotADirectoryError, OslError):
    """A path that must be a directory is not (ENOTDIR): a working
    directory that is a file, or a file used as a directory in a path."""


class NameNotFound(KeyError, OslError):
    """A user or group name that pwd/grp do not know (KeyError, as from
    subprocess, with getpwnam()'s message)."""


class OslPermissionError(PermissionError, OslError):
    """The OS refused (EPERM/EACCES)."""


class SecurityViolation(PermissionError, OslError):
    """The security policy denied the operation. Never worth retrying."""

    def __init__(self, reason: str, policy: str = ""):
        super().__init__(_errno.EPERM, reason)
        self.reason = reason
        self.policy = policy

    def __str__(self) -> str:
        where = f" (policy {self.policy})" if self.policy else ""
        return f"denied{where}: {self.reason}"


class ProcessNotFound(ProcessLookupError, OslError):
    """The process or group is gone, or was released by its handle."""


class Unsupported(NotImplementedError, OslError):
    """The platform lacks the feature."""


class CgroupUnavailable(Unsupported):
    """No cgroup v2 hierarchy this process can use (none mounted, or our own
    cgroup is not visible in it); the message says which."""


class CgroupPermissionError(OslPermissionError):
    """A cgroup exists but this process may not create cgroups under it
    (not root, and no delegated subtree)."""


class NamespaceUnavailable(Unsupported):
    """The "pid_namespace" tier is refused here: user namespaces are off
    (kernel.unprivileged_userns_clone=0, user.max_user_namespaces=0,
    AppArmor's restriction, a container's seccomp filter), the platform
    has none, or the tier's init program is missing. The message names the
    cause; `errno` is clone()'s, where it failed (else ENOENT for a
    missing init, ENOSYS off Linux)."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err


class LimitUnavailable(Unsupported):
    """A requested per-group limit has no controller: neither cgroup v2 nor
    a cgroup v1 hierarchy offers it here."""


class ChildNotFound(ChildProcessError, ProcessNotFound):
    """ECHILD: no such child to wait for (it was reaped elsewhere, or is
    not ours). A ProcessNotFound too, for code that catches that."""


class OslBlockingIOError(BlockingIOError, OslError):
    """EAGAIN: the OS is out of a resource for now (e.g. RLIMIT_NPROC
    reached when spawning)."""


class OslOSError(OSError, OslError):
    """Any other OS failure, with its errno."""


class OslInterrupted(InterruptedError, OslError):
    """A blocking call was interrupted by a signal (EINTR); callers retry."""


class OslTimeoutError(TimeoutError, OslError):
    """A wait ran out of time."""


class TimeoutExpired(subprocess.TimeoutExpired, OslError):
    """What run() and run_async() raise on `timeout` (or `idle_timeout`),
    once the whole tree is ended: subprocess.TimeoutExpired plus `pgid` (the
    command's group) and `leftovers` (the processes besides the command
    that had to be ended, each a Leftover). `timeout` is the value the
    caller gave (``1``, not ``1.0``), so the message reads as
    subprocess.run(..., capture_output=True)'s: "Command '...' timed out
    after 1 seconds". `output`/`stderr` are bytes even in text mode, as
    subprocess gives them."""

    pgid: int
    leftovers: List[Leftover]

    def __init__(self, cmd: Any, timeout: float, output: Optional[bytes] = None, stderr: Optional[bytes] = None,
                 *, pgid: int = 0, leftovers: Sequence[Leftover] = ()) -> None:
        super().__init__(cmd, timeout, output, stderr)
        self.pgid = pgid
        self.leftovers = list(leftovers)


class CalledProcessError(subprocess.CalledProcessError, OslError):
    """What run(check=True) raises for a non-zero exit status:
    subprocess.CalledProcessError plus `pgid` and `leftovers` (as
    CompletedRun's)."""

    pgid: int
    leftovers: List[Leftover]

    def __init__(self, returncode: int, cmd: Any, output: Union[str, bytes, None] = None,
                 stderr: Union[str, bytes, None] = None, *, pgid: int = 0,
                 leftovers: Sequence[Leftover] = ()) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.pgid = pgid
        self.leftovers = list(leftovers)

    def __repr__(self) -> str:
        base = super().__repr__()
        if not self.leftovers:
            return base
        return f"{base[:-1]}, leftovers=[{'; '.join(str(x) for x in self.leftovers)}])"


def caller_stacklevel() -> int:
    """The warnings.warn() stacklevel, for the function that calls this and
    then warns, of the first frame outside osl_pg (and outside the async
    library's loop, which drives a task's outermost coroutine: asyncio, or
    trio and the outcome package it sends values through, or anyio): a
    warning names the user's line whether they called execute(),
    OSLFramework.spawn(), run(), asyncio.run(run_async(...)) or
    trio.run(run_async, ...)."""
    level = 1
    frame: Optional[FrameType] = sys._getframe(1)
    skip = [_PACKAGE_DIR + os.sep]
    for name in ("asyncio", "trio", "outcome", "anyio"):
        mod = sys.modules.get(name)  # only a loop that was imported can be driving us
        mod_file: Optional[str] = getattr(mod, "__file__", None)
        if mod_file:
            skip.append(os.path.dirname(os.path.abspath(mod_file)) + os.sep)
    skip_tuple = tuple(skip)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip_tuple):
        frame = frame.f_back
        level += 1
    return level


class ChildrenAutoReapedWarning(RuntimeWarning):
    """A spawn while SIGCHLD is ignored (or SA_NOCLDWAIT is set): the kernel
    reaps the children itself, so their exit statuses read as 0 (as in
    subprocess) and a group handle cannot pin its pgid against reuse."""


_BY_ERRNO = {
    _errno.ENOENT: CommandNotFound,
    _errno.ENOTDIR: OslNotADirectoryError,
    _errno.EPERM: OslPermissionError,
    _errno.EACCES: OslPermissionError,
    _errno.ESRCH: ProcessNotFound,
    _errno.ECHILD: ChildNotFound,
    _errno.EAGAIN: OslBlockingIOError,
    _errno.EINTR: OslInterrupted,
}


def from_errno(err: int, what: str, filename: Optional[str] = None) -> OSError:
    """An OSError subclass for `err`, whose message says what failed."""
    cls = _BY_ERRNO.get(err, OslOSError)
    msg = f"{what}: {os.strerror(err)}"
    if filename is not None:
        return cls(err, msg, filename)
    return cls(err, msg)
