"""osl_pg.run() and run_async(): subprocess.run() for a whole process tree.

subprocess.run(..., timeout=...) fails a tree twice: on timeout it kills only
the child it started, and its communicate() then waits for EOF on the output
pipes, which an orphaned grandchild still holds (CPython issue 81605; Go's
exec.Cmd grew WaitDelay for the same reason). run() keeps subprocess.run()'s
signature, return type and exceptions (CompletedRun, TimeoutExpired and
CalledProcessError subclass the stdlib's), and differs where the tree is
concerned:

- The command always leads a new process group (a new session with
  ``start_new_session=True``), spawned through a ProcessSpawnOperation and a
  ProcessExecutor, so security policy and the audit log apply.
- On timeout the whole group is terminated (SIGTERM, ``grace`` seconds,
  SIGKILL), then TimeoutExpired is raised.
- When the command exits, its pipes get ``pipe_drain_timeout`` seconds to
  reach EOF; then reading stops even if a descendant still holds them.
- When the command exits, what it left behind is ended by default
  (``kill_leftovers=True``): the rest of its process group, and processes
  that left the group but still hold run()'s pipes or descend from a live
  member (ProcessGroup.escaped()). They are named in a LeftoverProcessWarning and in the
  ``leftovers`` attribute of the result (or of the CalledProcessError).
  With ``kill_leftovers=False`` they are named and left running (run()'s
  pipes are closed all the same: their next write gets EPIPE/SIGPIPE).
- If the child inherits a terminal stdin that this process has in the
  foreground, the child's group gets the terminal while it runs (as a shell
  does), so it can read it and gets Ctrl-C itself. If Ctrl-C kills it, run()
  raises KeyboardInterrupt, as subprocess.run() would have.
- On any other exception (KeyboardInterrupt, cancellation) the whole group is
  killed (subprocess.run() kills its one child).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import (IO, Any, Dict, Generator, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union,
                        overload)

    import psutil
    from typing_extensions import TypedDict, Unpack

    _T = TypeVar("_T")
    from .popen import CommandArgs

    class _RunOptions(TypedDict, total=False):
        """run()'s and run_async()'s keywords besides the four that decide
        between text and bytes (their overloads spell those out)."""
        stdin: Any
        input: Any
        stdout: Any
        stderr: Any
        capture_output: bool
        shell: bool
        cwd: Any
        timeout: Optional[float]
        check: bool
        env: Optional[Mapping[Any, Any]]
        start_new_session: bool
        close_fds: bool
        pass_fds: Sequence[int]
        executable: Any
        grace: float
        pipe_drain_timeout: float
        kill_leftovers: bool
        executor: Optional[ProcessExecutor]
        context: Optional[ExecutionContext]
        idle_timeout: Optional[float]
        # subprocess.Popen's, passed on (see run()'s docstring)
        bufsize: int
        restore_signals: bool
        pipesize: int
        creationflags: int
        startupinfo: Any
        user: Union[str, int, None]
        group: Union[str, int, None]
        extra_groups: Optional[Sequence[Union[str, int]]]
        umask: int
        process_group: Optional[int]
        preexec_fn: None
        containment: Optional[str]
else:
    _T = "_T"  # subprocess.CompletedProcess[...] below needs a value at run time, any value

    def overload(func):  # typing.overload without importing typing: the implementation, defined last, wins
        return func

from ._backend import backend
from ._record import Record, Value
from .context import ExecutionContext
from .errors import CalledProcessError, TimeoutExpired, Unsupported, caller_stacklevel
from .executor import ProcessExecutor
from .group import DEFAULT_GRACE, ProcessGroup
from .operations import PIPE, JoinGroup, ProcessSignalOperation
from .pipe_holders import pipe_writers
from .popen import PREEXEC_FN_REFUSED, default_executor, resolve_ids, spawn_operation, text_encoding
from ._pipe_threads import LoopPipes, ThreadedPipes
from ._timeouts import check_grace, check_timeout
from .process import _THREADED_PIPES, Process, read_pipes, read_so_far
from .terminal import ForegroundTerminal
from .tiers import ExitWatch

DEFAULT_PIPE_DRAIN = 1.0
SIGTERM = int(getattr(signal, "SIGTERM", 15))
SIGKILL = int(getattr(signal, "SIGKILL", 9))
SIGINT = int(getattr(signal, "SIGINT", 2))

class LeftoverProcessWarning(UserWarning):
    """The command exited and left processes behind (see Leftover)."""


class Leftover(Value):
    """A process of the command's tree that outlived the command (or, after
    a timeout, that run() had to end besides the command itself).

    `in_group` is False for a process that had left the group (setsid,
    setpgid) and was found through run()'s pipes or its parent links. `holds`
    names the pipes ("stdout", "stderr") it kept open. `outcome` is
    "terminated" (by SIGTERM), "killed" (SIGKILL after the grace), "exited"
    (on its own before a signal), "left running" (kill_leftovers=False) or
    "refused: ..." (the security policy denied signalling it)."""

    pid: int
    name: str
    cmdline: Tuple[str, ...]
    pgid: Optional[int]
    in_group: bool
    holds: Tuple[str, ...]
    outcome: str

    def __str__(self) -> str:
        what = " ".join(self.cmdline) or self.name
        extra = [] if self.in_group else [f"left the group for {self.pgid}"]
        if self.holds:
            extra.append("held " + "+".join(self.holds))
        extra.append(self.outcome)
        return f"{self.pid} ({what}): {', '.join(extra)}"


class CompletedRun(subprocess.CompletedProcess[_T]):
    """subprocess.CompletedProcess plus `pgid` (the command's group) and
    `leftovers` (a list of Leftover; empty when the command left nothing).
    Generic as CompletedProcess: CompletedRun[str] from text mode, else
    CompletedRun[bytes] (CompletedRun[str] works at run time too)."""

    pgid: int
    leftovers: List[Leftover]

    def __init__(self, args: Any, returncode: int, stdout: Optional[_T] = None, stderr: Optional[_T] = None,
                 pgid: int = 0, leftovers: Sequence[Leftover] = ()) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.pgid = pgid
        self.leftovers = list(leftovers)


class _Plan:
    """Everything decided before the spawn: subprocess.run()'s argument
    checks and text handling, and the spawn operation."""

    def __init__(self, args: Any, stdin: Any, input: Any, stdout: Any, stderr: Any, capture_output: bool,
                 shell: bool, cwd: Any, timeout: Optional[float], check: bool, encoding: Optional[str],
                 errors: Optional[str], text: Optional[bool], env: Optional[Mapping[Any, Any]],
                 universal_newlines: Optional[bool], start_new_session: bool, close_fds: bool, grace: float,
                 pipe_drain_timeout: float, kill_leftovers: bool, executor: Optional[ProcessExecutor],
                 context: Optional[ExecutionContext], executable: Any = None, pass_fds: Sequence[int] = (),
                 idle_timeout: Optional[float] = None, given_timeout: Any = None, **popen: Any):
        if popen:  # the usual call has none
            _check_popen_keywords(popen)
        if input is not None:
            if stdin is not None:
                raise ValueError("stdin and input arguments may not both be used.")
            stdin = PIPE
        if capture_output:
            if stdout is not None or stderr is not None:
                raise ValueError("stdout and stderr arguments may not be used with capture_output.")
            stdout = stderr = PIPE
        if text is not None and universal_newlines is not None and bool(text) != bool(universal_newlines):
            raise subprocess.SubprocessError("Cannot disambiguate when both text and universal_newlines are "
                                             "supplied but different. Pass one or the other.")
        self.text = bool(encoding or errors or text or universal_newlines)
        self.encoding = encoding or (text_encoding() if self.text else None)
        self.errors = errors or "strict"
        if input is not None:
            input = input.encode(self.encoding, self.errors) if self.text else memoryview(input)
        self.input = input
        self.args = args
        self.timeout = timeout
        self.idle_timeout = None if idle_timeout is None else _check_idle_timeout(idle_timeout, stdout, stderr)
        # What TimeoutExpired shows: the caller's values (1, not 1.0), as
        # subprocess shows them.
        self.given_timeout, self.given_idle_timeout = given_timeout, idle_timeout
        self.idle_expired = False
        self.check = check
        self.grace = grace
        self.drain = pipe_drain_timeout
        self.kill_leftovers = kill_leftovers
        self.context = context
        self.executor = executor if executor is not None else default_executor()
        if pass_fds and not close_fds:
            warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=caller_stacklevel())
            close_fds = True
        uid = gid = gids = None
        if popen:
            uid, gid, gids = resolve_ids(popen.get("user"), popen.get("group"), popen.get("extra_groups"))
        self.op = spawn_operation(args, shell=shell, executable=executable, cwd=cwd, env=env,
                                  start_new_session=start_new_session, process_group=popen.get("process_group"),
                                  close_fds=close_fds, pass_fds=pass_fds, stdin=stdin, stdout=stdout, stderr=stderr,
                                  restore_signals=popen.get("restore_signals", True), uid=uid, gid=gid, gids=gids,
                                  umask=popen.get("umask", -1), containment=popen.get("containment"))
        self.pipesize = popen.get("pipesize", -1)
        # process_group=N (> 0): the child joins a group that is not ours.
        self.joins_group = isinstance(self.op.process_group, JoinGroup)
        # The child shares our terminal only when it inherits our stdin
        # (and leads its own group, which can be given the terminal); the
        # terminal is looked at after the spawn (give_terminal).
        self.shares_terminal = stdin is None and not self.joins_group
        self.terminal: Optional[ForegroundTerminal] = None

    @property
    def deadline(self) -> Optional[float]:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def decode(self, data: Optional[bytes]) -> Union[str, bytes, None]:
        encoding = self.encoding
        if data is None or encoding is None:  # encoding is None exactly when not in text mode
            return data
        text = data.decode(encoding, self.errors)
        return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as subprocess

    def spawned(self, result: Any) -> Tuple[Process, ProcessGroup]:
        proc, group = result.process, result.group
        assert proc is not None and group is not None
        self.size_pipes(proc)
        return proc, group

    def size_pipes(self, proc: Process) -> None:
        """pipesize=N: F_SETPIPE_SZ on each pipe, as subprocess (Linux)."""
        if self.pipesize > 0 and os.name != "nt":
            import fcntl
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, self.pipesize)

    def give_terminal(self, group: ProcessGroup) -> None:
        self.group = group
        if self.shares_terminal:
            self.terminal = ForegroundTerminal(0)
            self.terminal.give_to_group(group)

    def take_terminal(self) -> bool:
        """Take the terminal back; True if the child had it."""
        if self.terminal is None or self.terminal.given_to is None:
            return False
        self.terminal.restore()
        return True

    def timeout_error(self, out: Optional[bytes], err: Optional[bytes], pgid: int,
                      leftovers: List[Leftover]) -> TimeoutExpired:
        # As subprocess: bytes even in text mode, None when nothing came.
        limit = self.given_idle_timeout if self.idle_expired else self.given_timeout
        assert limit is not None  # one of them ran out
        return TimeoutExpired(self.args, limit, out or None, err or None, pgid=pgid, leftovers=leftovers)

    def finish(self, rc: int, out: Optional[bytes], err: Optional[bytes], pgid: int,
               leftovers: List[Leftover], had_terminal: bool) -> CompletedRun[Any]:
        if leftovers:
            warnings.warn(LeftoverProcessWarning(_leftover_message(self.args, leftovers)),
                          stacklevel=caller_stacklevel())
        if had_terminal and rc == -SIGINT:
            # Ctrl-C went to the child's group only; act on it as a shell
            # does (and as subprocess.run() would have, where both got it).
            raise KeyboardInterrupt
        stdout, stderr = (out, err) if self.encoding is None else (self.decode(out), self.decode(err))
        if self.check and rc:
            raise CalledProcessError(rc, self.args, stdout, stderr, pgid=pgid, leftovers=leftovers)
        return CompletedRun(self.args, rc, stdout, stderr, pgid, leftovers)


def _warn_stuck(group: ProcessGroup) -> None:
    warnings.warn(ResourceWarning(
        f"process group {group.pgid}: members outlived SIGKILL (stuck in the kernel?); its handle stays open, "
        "pinning the pgid, until they are gone"), stacklevel=caller_stacklevel())


def _check_popen_keywords(popen: Dict[str, Any]) -> None:
    """subprocess.run() passes these on to Popen: each is accepted at its
    default; non-default values are checked here as subprocess checks them
    and mapped by spawn_operation()."""
    if not popen:
        return  # the usual call
    unknown = set(popen) - set(_POPEN_DEFAULTS)
    if unknown:
        raise TypeError(f"run() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    if popen.get("preexec_fn") is not None:
        raise TypeError(PREEXEC_FN_REFUSED)
    for name in ("bufsize", "pipesize"):
        value = popen.get(name, -1)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an integer")
    if popen.get("pipesize") is None:
        popen["pipesize"] = -1
    if os.name != "nt":
        if popen.get("startupinfo") is not None:
            raise ValueError("startupinfo is only supported on Windows platforms")
        if popen.get("creationflags", 0) != 0:
            raise ValueError("creationflags is only supported on Windows platforms")
    elif popen.get("startupinfo") is not None or popen.get("creationflags", 0) != 0:
        raise Unsupported("startupinfo and creationflags are not supported: osl_pg creates the process itself "
                          "(suspended, in a Job Object)")
    process_group = popen.get("process_group")
    if process_group is not None and (isinstance(process_group, bool) or not isinstance(process_group, int)):
        raise TypeError("process_group must be an int")


_POPEN_DEFAULTS: Dict[str, Any] = dict(containment=None, bufsize=-1, preexec_fn=None, restore_signals=True, startupinfo=None,
                                       creationflags=0, user=None, group=None, extra_groups=None, umask=-1,
                                       pipesize=-1, process_group=None)


def _check_idle_timeout(idle: Optional[float], stdout: Any, stderr: Any) -> Optional[float]:
    if idle is None:
        return None
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not idle > 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds, not {idle!r}")
    if idle == float("inf"):
        return None  # no limit, as timeout=inf
    if stdout != PIPE and stderr != PIPE:
        raise ValueError("idle_timeout watches the captured output: it needs stdout=PIPE, stderr=PIPE "
                         "or capture_output=True")
    return float(idle)


def _leftover_message(args: Any, leftovers: List[Leftover]) -> str:
    return (f"command {args!r} exited and left {len(leftovers)} process(es) behind: "
            + "; ".join(str(x) for x in leftovers))


# --------------------------------------------------------------------------
# what is left when the leader has exited (or timed out)


class _Found(Record):
    pid: int
    name: str
    cmdline: Tuple[str, ...]
    pgid: Optional[int]
    in_group: bool
    holds: Tuple[str, ...] = ()
    proc: Any = None  # a psutil.Process: pins the identity (create time) of one outside the group


class _Survey:
    """The command's tree now: live group members other than the leader,
    and processes outside the group that hold our pipes or are children of
    a member. Taken before anything is signalled, while the links exist."""

    def __init__(self, proc: Process, group: ProcessGroup, open_pipes: Sequence[IO[bytes]]):
        self.pgid = group.pgid
        self.found: Dict[int, _Found] = {}
        if not open_pipes and group.release_if_empty():
            # The usual end: the command exited, its pipes reached EOF and
            # the kernel says its group is empty (one syscall, see
            # ProcessGroup.release_if_empty). Nothing can be left that a
            # survey would find: a process that left the group is found only
            # through our pipes or a live member.
            return
        live = [m for m in group.members() if not m.zombie]
        names = {f.fileno(): ("stdout" if f is proc.stdout else "stderr") for f in open_pipes}
        holders = {pid: tuple(names[fd] for fd in fds) for pid, fds in pipe_writers(names).items()}
        for m in live:
            if m.pid != group.pgid:
                self._add(m.pid, m.name, self.pgid, holders.get(m.pid, ()))
        # Descendants of a live member that left the group (setsid,
        # setpgid). With no member alive their parent links are gone (the
        # kernel reparented them): then only our pipes can name them.
        for e in group.escaped() if live else []:
            self._add(e.pid, e.name, e.pgid, holders.get(e.pid, ()))
        for pid, holds in holders.items():
            if pid not in self.found and pid != group.pgid:
                self._add(pid, "?", backend.pgid_or_none(pid), holds)

    def _add(self, pid: int, name: str, pgid: Optional[int], holds: Tuple[str, ...]) -> None:
        import psutil
        p: Any
        try:
            p = psutil.Process(pid)
            cmdline = tuple(p.cmdline())
        except psutil.NoSuchProcess:
            return
        except psutil.AccessDenied:
            p, cmdline = None, ()
        if p is not None:
            try:
                name = p.name()
            except psutil.NoSuchProcess:
                return
            except (psutil.Error, OSError):  # Wine: name() fails with a bare OSError; keep the scan's
                pass
        in_group = pgid == self.pgid
        self.found[pid] = _Found(pid, name, cmdline, pgid, in_group, holds, None if in_group else p)

    @property
    def outside(self) -> List[_Found]:
        return [f for f in self.found.values() if not f.in_group]

    def leftovers(self, outcomes: Dict[int, str], default: Optional[str] = None) -> List[Leftover]:
        """The surveyed processes with their outcomes. One the ending of
        the tree has no outcome for exited before it was signalled (it was
        gone from terminate()'s own snapshot): "exited". Only when nothing
        was ended (kill_leftovers=False) is the rest "left running"."""
        if default is None:
            default = "exited" if outcomes else "left running"
        return [Leftover(f.pid, f.name, f.cmdline, f.pgid, f.in_group, f.holds, outcomes.get(f.pid, default))
                for f in sorted(self.found.values(), key=lambda f: f.pid)]


class _Outsiders:
    """Ends processes that left the group (no group signal reaches them):
    SIGTERM, and SIGKILL after the grace, each through the executor so the
    policy and the audit log see it. A process is signalled only while
    psutil confirms it is the one surveyed (same pid and start time)."""

    def __init__(self, found: List[_Found], plan: _Plan):
        self.plan = plan
        self.procs = {f.pid: f.proc for f in found if f.proc is not None}
        self.outcomes: Dict[int, str] = {f.pid: "left running" for f in found}

    def live(self) -> List[int]:
        return [pid for pid, p in self.procs.items() if _running(p)]

    def send(self, sig: int, outcome: str) -> List[int]:
        """Signal the live ones; return their pids."""
        sent = []
        for pid in self.live():
            try:
                self.plan.executor.execute(ProcessSignalOperation(pid, sig), self.plan.context)
            except ProcessLookupError:
                self.outcomes[pid] = "exited"
                continue
            except PermissionError as e:
                self.outcomes[pid] = f"refused: {e}"
                del self.procs[pid]
                continue
            self.outcomes[pid] = outcome
            sent.append(pid)
        for pid in self.procs:
            if self.outcomes[pid] == "left running":
                self.outcomes[pid] = "exited"
        return sent


def _running(p: psutil.Process) -> bool:
    import psutil
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _must_end(plan: _Plan, survey: _Survey, timed_out: bool) -> bool:
    return timed_out or (plan.kill_leftovers and bool(survey.found))


def _ending(plan: _Plan, group: ProcessGroup, survey: _Survey,
            timed_out: bool) -> Generator[Tuple[Optional[List[int]], float], Any, Dict[int, str]]:
    """The steps of ending the tree, for a sync or an async driver: it
    yields (None, grace) for "terminate the group, send me the report" and
    (pids, deadline) for "wait until these have exited"; it returns each
    pid's outcome. With nothing to end it releases the group handle (this
    reaps the leader) and returns {}."""
    if not _must_end(plan, survey, timed_out):
        group.detach()
        group.close()
        return {}
    outsiders = _Outsiders(survey.outside, plan)
    outsiders.send(SIGTERM, "terminated")
    grace_end = time.monotonic() + plan.grace
    report = yield None, plan.grace
    if outsiders.live():
        yield outsiders.live(), grace_end
        if outsiders.send(SIGKILL, "killed"):
            yield outsiders.live(), time.monotonic() + plan.grace
    return {**outsiders.outcomes, **{m.pid: m.outcome for m in report.members}}


def _end_tree(plan: _Plan, group: ProcessGroup, survey: _Survey, timed_out: bool) -> Dict[int, str]:
    steps = _ending(plan, group, survey, timed_out)
    with ExitWatch() as exits:
        try:
            pids, limit = next(steps)
            while True:
                if pids is None:
                    pids, limit = steps.send(group.terminate(limit))
                else:
                    exits.wait(pids, limit)
                    pids, limit = steps.send(None)
        except StopIteration as done:
            outcomes: Dict[int, str] = done.value
            return outcomes


async def _end_tree_async(plan: _Plan, group: ProcessGroup, survey: _Survey, timed_out: bool) -> Dict[int, str]:
    steps = _ending(plan, group, survey, timed_out)
    with ExitWatch() as exits:
        try:
            pids, limit = next(steps)
            while True:
                if pids is None:
                    pids, limit = steps.send(await group.terminate_async(limit))
                else:
                    await exits.wait_async(pids, limit)
                    pids, limit = steps.send(None)
        except StopIteration as done:
            outcomes: Dict[int, str] = done.value
            return outcomes


# --------------------------------------------------------------------------
# run()


class _DrainClock:
    """read_pipes' stop_when: true once the leader has exited and the pipes
    have had `drain` seconds (or until the run's deadline) to reach EOF."""

    def __init__(self, proc: Process, drain: float, deadline: Optional[float]):
        self.proc = proc
        self.drain = drain
        self.deadline = deadline
        self.exited_at: Optional[float] = None

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.exited_at is None:
            if self.proc.poll() is None:
                return False
            self.exited_at = now
        return now - self.exited_at >= self.drain or (self.deadline is not None and now >= self.deadline)


def _communicate(proc: Process, plan: _Plan) -> int:
    """Feed and read the pipes until EOF or the drain limit, then wait for
    the leader. Raises subprocess.TimeoutExpired at the deadline."""
    deadline = plan.deadline
    if proc.stdin is not None or proc.stdout is not None or proc.stderr is not None:
        # The leader's exit ends the no-polling phase: its pidfd, opened
        # only if the pipes are still open after a moment (None without
        # pidfds or once reaped).
        wake = _WakeFd(proc)
        try:
            stop = _DrainClock(proc, plan.drain, deadline)
            if plan.idle_timeout is None:
                read_pipes(proc, plan.input, plan.timeout, stop_when=stop, wake_fd=wake, joined=False)
            else:
                _read_watching_idle(proc, plan, deadline, stop, wake)
        finally:
            wake.close()
    elif plan.terminal is not None and plan.terminal.fd is not None:
        # Our terminal: wait as a shell does (Ctrl-Z, a busy terminal).
        if not plan.terminal.wait_in_foreground(proc, plan.group, deadline):
            raise subprocess.TimeoutExpired(plan.args, plan.timeout or 0.0)  # caught: see timeout_error
    return proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))


class _WakeFd:
    """read_pipes' wake_fd, opened when first asked for: the leader's
    pidfd (the same one for every slice of _read_watching_idle)."""

    def __init__(self, proc: Process):
        self.proc = proc
        self.fd: Optional[int] = None
        self.opened = False

    def __call__(self) -> Optional[int]:
        if not self.opened:
            self.opened = True
            self.fd = self.proc._state.exit_fd()
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_watching_idle(proc: Process, plan: _Plan, deadline: Optional[float], stop: "_DrainClock",
                        wake: _WakeFd) -> None:
    """read_pipes in slices of a quarter of idle_timeout (it resumes where
    it stopped): when no byte came on the captured pipes for idle_timeout
    seconds (measured to within a slice) while the leader runs, raise
    TimeoutExpired as the deadline would, with plan.idle_expired set."""
    idle = plan.idle_timeout
    assert idle is not None
    seen, last_change = 0, time.monotonic()
    while True:
        now = time.monotonic()
        window = idle / 4 if deadline is None else min(idle / 4, deadline - now)
        try:
            read_pipes(proc, plan.input, max(0.0, window), stop_when=stop, wake_fd=wake.fd if wake.opened else wake,
                       joined=False)
            return
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise
            out, err, _ = read_so_far(proc)
            got = len(out or b"") + len(err or b"")
            if got != seen or proc.poll() is not None:  # output came, or the drain clock is running
                seen, last_change = got, now
            elif now - last_change >= idle:
                plan.idle_expired = True
                raise


def _tail(proc: Process, drain: float) -> None:
    """After the tree was ended the pipes reach EOF: read what is left,
    for at most `drain` seconds, then close them."""
    if read_so_far(proc)[2]:
        stop_at = time.monotonic() + drain
        read_pipes(proc, None, None, stop_when=lambda: time.monotonic() >= stop_at)
    proc.close_pipes()


def _run_in_foreign_group(plan: _Plan) -> CompletedRun[Any]:
    """run() for process_group=N: the child joins a group that is not
    ours, so it is handled as subprocess.run() handles its child: a
    timeout (or any exception) kills the child alone, then waits for it."""
    result = plan.executor.execute(plan.op, plan.context)
    proc, pgid = result.process, result.pgid
    assert proc is not None and pgid is not None  # a spawn's metadata has both
    plan.size_pipes(proc)
    try:
        try:
            rc = _communicate(proc, plan)
        except subprocess.TimeoutExpired:
            _kill_child(proc)
            _tail(proc, plan.drain)
            out, err, _ = read_so_far(proc)
            raise plan.timeout_error(out, err, pgid, []) from None
    finally:
        _kill_child(proc)  # a no-op once it has exited (after an exception: as subprocess.run)
        proc.close_pipes()
    out, err, _ = read_so_far(proc)
    return plan.finish(rc, out, err, pgid, [], had_terminal=False)


def _kill_child(proc: Process) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()


# Text or bytes, as subprocess.run(): text=True, universal_newlines=True, or an
# encoding or errors given, make the output str (CompletedRun[str]).
@overload
def run(args: CommandArgs, *, text: Literal[True], encoding: Optional[str] = None, errors: Optional[str] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
def run(args: CommandArgs, *, encoding: str, errors: Optional[str] = None, text: Optional[bool] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
def run(args: CommandArgs, *, errors: str, encoding: Optional[str] = None, text: Optional[bool] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
def run(args: CommandArgs, *, universal_newlines: Literal[True], encoding: Optional[str] = None, errors: Optional[str] = None,
        text: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
def run(args: CommandArgs, *, text: Literal[False, None] = None, encoding: None = None, errors: None = None,
        universal_newlines: Literal[False, None] = None, **options: Unpack[_RunOptions]) -> CompletedRun[bytes]: ...
@overload
def run(args: CommandArgs, *, text: Optional[bool] = None, encoding: Optional[str] = None, errors: Optional[str] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[Any]: ...
def run(args: CommandArgs, *, stdin: Any = None, input: Any = None,
        stdout: Any = None, stderr: Any = None, capture_output: bool = False, shell: bool = False,
        cwd: Any = None, timeout: Optional[float] = None, check: bool = False, encoding: Optional[str] = None,
        errors: Optional[str] = None, text: Optional[bool] = None, env: Optional[Mapping[Any, Any]] = None,
        universal_newlines: Optional[bool] = None, start_new_session: bool = False, close_fds: bool = True,
        pass_fds: Sequence[int] = (), executable: Any = None, grace: float = DEFAULT_GRACE,
        pipe_drain_timeout: float = DEFAULT_PIPE_DRAIN, kill_leftovers: bool = True,
        executor: Optional[ProcessExecutor] = None, context: Optional[ExecutionContext] = None,
        idle_timeout: Optional[float] = None, **popen_kwargs: Any) -> CompletedRun[Any]:
    """Run `args` as the leader of a new process group and wait for it, as
    subprocess.run() does, ending the whole tree on timeout and what it
    leaves behind when it exits. Returns a CompletedRun (a
    subprocess.CompletedProcess with `pgid` and `leftovers`).

    Where it differs from subprocess.run(): on timeout the whole group is
    terminated (SIGTERM, `grace` seconds, SIGKILL) before TimeoutExpired is
    raised; when the command exits, its pipes get `pipe_drain_timeout`
    seconds to reach EOF and reading then stops even if a descendant holds
    them; what the command left (the rest of its group, and processes that
    left the group but hold the pipes or descend from a live member) is then
    ended (`kill_leftovers=True`) or left running (False), and named in
    `leftovers` and a LeftoverProcessWarning. A child that inherits our
    foreground terminal gets the terminal while it runs. Any exception
    (Ctrl-C, cancellation) kills the whole group.

    Raises what subprocess.run() raises: subprocess.TimeoutExpired,
    subprocess.CalledProcessError with `check=True` (carrying `leftovers`
    too), FileNotFoundError for a missing command, PermissionError,
    ValueError/TypeError for bad arguments (before anything is spawned);
    and SecurityViolation (a PermissionError) when the executor's policy
    refuses the spawn.

    Every other keyword subprocess.run() passes to Popen is accepted:
    `bufsize`, `startupinfo`, `creationflags` at their defaults (POSIX, as
    subprocess); `pipesize`; `user`, `group`, `extra_groups`, `umask` and
    `restore_signals` are applied in the spawned child without Python
    there. `preexec_fn` raises TypeError: the spawn never forks, so no
    Python can run in the child. `process_group=N` (> 0) makes the child
    join group N: that group is not ours, so run() then acts as
    subprocess.run() does (a timeout kills the child alone, no leftovers
    are looked for, the terminal is not handed over).

    The extra keywords: `containment` (None or "process_group": the
    process group; "session" is start_new_session; "cgroup",
    "pid_namespace" or "best_available": see
    ProcessSpawnOperation.with_containment; the tier obtained is
    `group.tier`), `grace` (seconds between SIGTERM and SIGKILL),
    `pipe_drain_timeout` (how long pipes may stay open after the command
    exited), `kill_leftovers`, `idle_timeout` (seconds without output on the
    captured pipes after which the tree is ended as on `timeout`, and
    TimeoutExpired raised with `timeout` = idle_timeout), and the
    `executor`/`context` whose policy and audit log the spawn and the
    signals go through."""
    given_timeout = timeout
    # Checked before anything is spawned (the defaults need no check).
    if timeout is not None:
        timeout = check_timeout(timeout)
    if grace is not DEFAULT_GRACE:
        grace = check_grace(grace)
    plan = _Plan(args, stdin, input, stdout, stderr, capture_output, shell, cwd, timeout, check, encoding,
                 errors, text, env, universal_newlines, start_new_session, close_fds, grace, pipe_drain_timeout,
                 kill_leftovers, executor, context, executable, pass_fds, idle_timeout, given_timeout,
                 **popen_kwargs)
    if plan.joins_group:
        return _run_in_foreign_group(plan)
    proc, group = plan.spawned(plan.executor.execute(plan.op, plan.context))
    survey: Optional[_Survey] = None  # made only when something may be left
    outcomes: Dict[int, str] = {}
    try:
        try:
            plan.give_terminal(group)
            try:
                rc = _communicate(proc, plan)
            finally:
                had_terminal = plan.take_terminal()
        except subprocess.TimeoutExpired:
            survey = _Survey(proc, group, read_so_far(proc)[2])
            outcomes = _end_tree(plan, group, survey, timed_out=True)
            _tail(proc, plan.drain)
            out, err, _ = read_so_far(proc)
            raise plan.timeout_error(out, err, group.pgid, survey.leftovers(outcomes, "exited")) from None
        out, err, still_open = read_so_far(proc)
        # The usual end: the pipes reached EOF and the kernel says the group
        # is empty (ProcessGroup.release_if_empty): nothing to survey.
        if still_open or not group.release_if_empty():
            survey = _Survey(proc, group, still_open)
            outcomes = _end_tree(plan, group, survey, timed_out=False) if survey.found or not group.released else {}
            if outcomes:
                _tail(proc, plan.drain)
    finally:
        # After a normal run both are no-ops; after an exception (Ctrl-C,
        # say) this kills the whole group and waits for it, and only then
        # closes the pipes: on Windows a close waits for a reader thread's
        # blocked read (the C runtime locks the fd), which ends only at EOF,
        # when the tree is gone. Bounded: a member that outlives SIGKILL
        # (stuck in the kernel) is reported, not waited for forever.
        if not group.released and not group.close():
            _warn_stuck(group)
        proc.close_pipes()
    if survey is None:
        return plan.finish(rc, out, err, group.pgid, [], had_terminal)
    out, err, _ = read_so_far(proc)
    return plan.finish(rc, out, err, group.pgid, survey.leftovers(outcomes), had_terminal)


# --------------------------------------------------------------------------
# run_async()


class _AsyncPipes(LoopPipes):
    """read_pipes for asyncio or trio, inline: the awaiting task itself
    waits (osl_pg._aio.wait_fds) for whichever pipe is ready, and for the
    leader's pidfd while it runs, then moves the data. No thread and no
    background task: a cancellation leaves nothing running, and the pipes
    are closed by close()."""

    def __init__(self, proc: Process, input: Optional[memoryview]):
        self.proc = proc
        self.input = memoryview(input if input is not None else b"")
        self.offset = 0
        self.stdin = proc.stdin
        self.open = [f for f in (proc.stdout, proc.stderr) if f is not None]
        self.chunks: Dict[Any, List[bytes]] = {f: [] for f in self.open}
        if self.stdin is not None and not len(self.input):
            self.stdin.close()
            self.stdin = None
        for f in [self.stdin, *self.open]:
            if f is not None:
                os.set_blocking(f.fileno(), False)

    @property
    def done(self) -> bool:
        return not self.open and self.stdin is None

    async def pump(self, deadline: Optional[float], wake_fd: Optional[int] = None) -> bool:
        from . import _aio
        while not self.done or wake_fd is not None:
            by_fd = {f.fileno(): f for f in self.open}
            readers = [*by_fd, wake_fd] if wake_fd is not None else list(by_fd)
            writers = [self.stdin.fileno()] if self.stdin is not None else []
            ready, writable = await _aio.wait_fds(readers, writers, deadline)
            if not ready and not writable:
                return False
            if writable:
                self._write()
            for fd in ready:
                if fd != wake_fd:
                    self._read(by_fd[fd])
            if wake_fd in ready:
                return True
        return True

    def _read(self, f: IO[bytes]) -> None:
        try:
            data = os.read(f.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self.chunks[f].append(data)
            return
        f.close()
        self.open.remove(f)

    def _write(self) -> None:
        assert self.stdin is not None
        try:
            self.offset += os.write(self.stdin.fileno(), self.input[self.offset:self.offset + 65536])
        except (BlockingIOError, InterruptedError):
            return
        except BrokenPipeError:
            self.offset = len(self.input)
        if self.offset >= len(self.input):
            self.stdin.close()
            self.stdin = None

    def close(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        for f in self.open:
            f.close()
        self.open = []
        self.proc.close_pipes()


async def _communicate_async(proc: Process, pipes: LoopPipes, plan: _Plan) -> int:
    deadline = plan.deadline
    rc = await _await_leader(proc, pipes, plan, deadline)
    drain_end = time.monotonic() + plan.drain
    await pipes.pump(drain_end if deadline is None else min(drain_end, deadline))
    return rc


async def _await_leader(proc: Process, pipes: LoopPipes, plan: _Plan, deadline: Optional[float]) -> int:
    """Move the pipes' data until the leader exits, and return its code.
    The wake-up is the leader's pidfd; without one (macOS, Linux < 5.3) its
    status is polled with backoff. Raises TimeoutExpired at the deadline,
    or when the captured pipes (while any is open) gave nothing for
    idle_timeout, looked at four times per idle_timeout as in
    _read_watching_idle."""
    from . import _aio
    idle = plan.idle_timeout
    seen, last_change = 0, time.monotonic()
    fd = proc.exit_fd()
    delay = 0.0005
    try:
        while (rc := proc.poll()) is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise subprocess.TimeoutExpired(plan.args, plan.timeout or 0.0)  # caught: see timeout_error
            step = deadline
            if idle is not None:
                got = pipes.received()
                if got != seen or not pipes.open:
                    seen, last_change = got, now
                elif now - last_change >= idle:
                    plan.idle_expired = True
                    raise subprocess.TimeoutExpired(plan.args, idle)
                step = now + idle / 4 if step is None else min(step, now + idle / 4)
            if fd is None:
                step = now + delay if step is None else min(step, now + delay)
                delay = min(delay * 2, 0.05)
                if pipes.done:
                    await _aio.sleep(step - now)
                    continue
            await pipes.pump(step, fd)
        return rc
    finally:
        if fd is not None:
            os.close(fd)


async def _kill_child_async(proc: Process) -> None:
    """_kill_child, awaited (shielded: it follows a timeout or a
    cancellation, and must not leave the child running)."""
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        from . import _aio
        await _aio.shielded(proc.wait_async)


async def _run_in_foreign_group_async(plan: _Plan) -> CompletedRun[Any]:
    """run_async() for process_group=N; see _run_in_foreign_group."""
    result = await plan.executor.execute_async(plan.op, plan.context)
    proc, pgid = result.process, result.pgid
    assert proc is not None and pgid is not None  # a spawn's metadata has both
    plan.size_pipes(proc)
    pipes: Optional[LoopPipes] = None
    try:
        pipes = ThreadedPipes(proc, plan.input) if _THREADED_PIPES else _AsyncPipes(proc, plan.input)
        try:
            rc = await _communicate_async(proc, pipes, plan)
        except subprocess.TimeoutExpired:
            await _kill_child_async(proc)
            await pipes.wait_eof(plan.drain)
            pipes.close()
            out, err = pipes.output()
            raise plan.timeout_error(out, err, pgid, []) from None
    finally:
        await _kill_child_async(proc)
        if pipes is not None:
            pipes.close()
        proc.close_pipes()
    assert pipes is not None  # made before anything that returns here
    out, err = pipes.output()
    return plan.finish(rc, out, err, pgid, [], had_terminal=False)


# As run()'s.
@overload
async def run_async(args: CommandArgs, *, text: Literal[True], encoding: Optional[str] = None, errors: Optional[str] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
async def run_async(args: CommandArgs, *, encoding: str, errors: Optional[str] = None, text: Optional[bool] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
async def run_async(args: CommandArgs, *, errors: str, encoding: Optional[str] = None, text: Optional[bool] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
async def run_async(args: CommandArgs, *, universal_newlines: Literal[True], encoding: Optional[str] = None, errors: Optional[str] = None,
        text: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[str]: ...
@overload
async def run_async(args: CommandArgs, *, text: Literal[False, None] = None, encoding: None = None, errors: None = None,
        universal_newlines: Literal[False, None] = None, **options: Unpack[_RunOptions]) -> CompletedRun[bytes]: ...
@overload
async def run_async(args: CommandArgs, *, text: Optional[bool] = None, encoding: Optional[str] = None, errors: Optional[str] = None,
        universal_newlines: Optional[bool] = None, **options: Unpack[_RunOptions]) -> CompletedRun[Any]: ...
async def run_async(args: CommandArgs, *, stdin: Any = None,
                    input: Any = None, stdout: Any = None, stderr: Any = None, capture_output: bool = False,
                    shell: bool = False, cwd: Any = None, timeout: Optional[float] = None, check: bool = False,
                    encoding: Optional[str] = None, errors: Optional[str] = None, text: Optional[bool] = None,
                    env: Optional[Mapping[Any, Any]] = None, universal_newlines: Optional[bool] = None,
                    start_new_session: bool = False, close_fds: bool = True, pass_fds: Sequence[int] = (),
                    executable: Any = None, grace: float = DEFAULT_GRACE,
                    pipe_drain_timeout: float = DEFAULT_PIPE_DRAIN, kill_leftovers: bool = True,
                    executor: Optional[ProcessExecutor] = None, context: Optional[ExecutionContext] = None,
                    idle_timeout: Optional[float] = None, **popen_kwargs: Any) -> CompletedRun[Any]:
    """run() for asyncio or trio (and so anyio on either): the running loop
    watches the leader's pidfd and the pipes (no thread per child, no
    asyncio child watcher). The keywords are run()'s.

    Cancelling the awaiting task (Task.cancel(), a trio or anyio cancel
    scope, asyncio.timeout()) ends the whole tree as a timeout does:
    SIGTERM, `grace` seconds, SIGKILL, then the cancellation goes on. That
    teardown is shielded from further cancellation and bounded by `grace`
    and the kill timeout; the loop keeps running meanwhile."""
    from . import _aio
    given_timeout = timeout
    timeout, grace = check_timeout(timeout), check_grace(grace)  # before anything is spawned
    plan = _Plan(args, stdin, input, stdout, stderr, capture_output, shell, cwd, timeout, check, encoding,
                 errors, text, env, universal_newlines, start_new_session, close_fds, grace, pipe_drain_timeout,
                 kill_leftovers, executor, context, executable, pass_fds, idle_timeout, given_timeout,
                 **popen_kwargs)
    if plan.joins_group:
        return await _run_in_foreign_group_async(plan)
    proc, group = plan.spawned(await plan.executor.execute_async(plan.op, plan.context))
    pipes: Optional[LoopPipes] = None
    try:
        # Windows' event loops cannot watch pipes: a thread per pipe there.
        pipes = ThreadedPipes(proc, plan.input) if _THREADED_PIPES else _AsyncPipes(proc, plan.input)
        try:
            plan.give_terminal(group)
            try:
                rc = await _communicate_async(proc, pipes, plan)
            finally:
                had_terminal = plan.take_terminal()
        except subprocess.TimeoutExpired:
            survey = _Survey(proc, group, pipes.open)
            outcomes = await _end_tree_async(plan, group, survey, timed_out=True)
            await pipes.wait_eof(plan.drain)
            pipes.close()
            out, err = pipes.output()
            raise plan.timeout_error(out, err, group.pgid, survey.leftovers(outcomes, "exited")) from None
        except BaseException as e:
            if _aio.is_cancellation(e):
                # Cancelled: the tree ends as on a timeout (the task that
                # cancelled us may be the caller's own timeout), gracefully.
                await _aio.shielded(_end_tree_async, plan, group, _Survey(proc, group, pipes.open), True)
            raise
        survey = _Survey(proc, group, pipes.open)
        outcomes = await _end_tree_async(plan, group, survey, timed_out=False)
        if outcomes:
            await pipes.wait_eof(plan.drain)
    finally:
        # No-ops after a normal run; after an exception or a cancellation
        # this kills what is left of the group (SIGKILL) and awaits it,
        # shielded: under trio (and anyio) every await of a cancelled task
        # raises again, and the group must still be waited for.
        if not group.released and not await _aio.shielded(group.close_async):  # first: see run()
            _warn_stuck(group)
        if pipes is not None:
            pipes.close()
        proc.close_pipes()
    assert pipes is not None  # made before anything that returns here
    out, err = pipes.output()
    return plan.finish(rc, out, err, group.pgid, survey.leftovers(outcomes), had_terminal)
