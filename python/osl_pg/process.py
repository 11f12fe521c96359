"""Process: the handle every spawn returns.

It reaps its child exactly once and never signals a pid after reaping it, so
a pid that the kernel has since given to another process is never touched.
A process group handle may *pin* the leader: its status is then read with
WNOWAIT and the zombie is kept (holding the pid, and so the pgid, against
reuse) until the group is released.
"""
from __future__ import annotations

import collections
import errno
import io
import os
import select
import subprocess
import sys
import threading
import time
from _weakref import ref as _weakref_ref  # weakref.ref itself; the weakref module costs ~0.3 ms to import

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union
    import weakref

from ._backend import backend
from ._timeouts import check_timeout, poll_ms
from .errors import OslError, ProcessNotFound

_THREADED_PIPES = sys.platform == "win32"


class WaitTimeout(subprocess.TimeoutExpired, OslError):
    """A wait ran out of time (a subprocess.TimeoutExpired)."""


class _ChildState:
    """What the finalizer needs, kept apart from the handle: the pid, whether
    it was reaped, and the lock under which it is reaped. A waiter that
    sleeps on the child's exit gets a pidfd of its own (exit_fd()), opened
    under that lock while the child is unreaped, so it names our child: a
    number cannot be reused while its zombie exists. Opening one per spawn
    instead (as trio does) would cost every run() and wait() a pidfd_open()
    and a close() (~5-8 us here) that the blocking waitid() never needs."""

    __slots__ = ("pid", "reaped", "lock", "code")

    def __init__(self, pid: int):
        self.pid = pid
        self.reaped = False
        self.code: Optional[int] = None  # the status, when the sweep reaped it
        self.lock = threading.Lock()

    def mark_reaped(self) -> None:
        self.reaped = True
        _remember_reaped(self.pid)

    def exit_fd(self) -> Optional[int]:
        """A new pidfd of the child for the caller to poll and close, or None
        (no pidfds here, no fd left, or the child is reaped already). Under
        the lock that reaping takes: no thread of ours can reap the child,
        and free its number, while the pidfd is opened; the backend checks
        that it names a child of ours, which fails when something else
        reaped ours behind our back (SIGCHLD ignored, a foreign os.wait())."""
        with self.lock:
            if self.reaped:
                return None
            return backend.child_exit_fd(self.pid)


_PIPE_BUFFER = io.DEFAULT_BUFFER_SIZE

# Pids of children this program reaped (the newest 4096): once a number is
# here, a process that has it now is not the one we spawned (see
# reaped_and_reused()). A new spawn that gets the number takes it out.
_reaped_pids: Dict[int, bool] = {}


def _remember_reaped(pid: int) -> None:
    try:
        if len(_reaped_pids) >= 4096:
            _reaped_pids.pop(next(iter(_reaped_pids)), None)
    except (RuntimeError, StopIteration):  # another thread changed it meanwhile
        pass
    _reaped_pids[pid] = True


def reaped_and_reused(pid: int) -> bool:
    """True when this program spawned and reaped `pid` and a process has
    that number again: it is someone else's, and the executor must not
    signal it on the strength of an old result's pid."""
    return bool(_reaped_pids.get(pid)) and number_in_use(pid)


def number_in_use(pid: int) -> bool:
    """Whether some process has this pid now, ours or not. (POSIX only: on
    Windows os.kill(pid, 0) would terminate; there the answer is False.)"""
    if os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process has it
    return True


# Children whose handles were dropped before they were reaped: swept (without
# blocking) at every spawn, like subprocess's _active list. __del__ only
# appends to the deque (atomic, no lock): it can run from the garbage
# collector at any allocation, including inside a sweep on the same thread.
_abandoned: "collections.deque[_ChildState]" = collections.deque()
_unreaped: Set[_ChildState] = set()  # only touched with _sweep_lock held
_sweep_lock = threading.Lock()


# Live handles by pid: lets a group tell its own children from adopted
# orphans, and policies recognise processes this program spawned.
# A plain dict of weak references without callbacks (a WeakValueDictionary
# costs three Python calls per spawn): an entry goes when its child is
# reaped or its handle dropped, and only if it is still that handle's.
_children: "Dict[int, weakref.ref[Process]]" = {}


def child_by_pid(pid: int) -> Optional["Process"]:
    ref = _children.get(pid)
    return ref() if ref is not None else None


def _abandon(state: _ChildState) -> None:
    if not state.reaped:
        _abandoned.append(state)


def sweep_abandoned() -> None:
    """Reap abandoned children that have exited. Never blocks: if another
    thread is sweeping (or this one is, and the garbage collector re-entered
    through __del__), the next spawn sweeps instead."""
    if not _abandoned and not _unreaped:
        return
    if not _sweep_lock.acquire(blocking=False):
        return
    try:
        while _abandoned:
            _unreaped.add(_abandoned.popleft())
        for state in list(_unreaped):
            if not state.lock.acquire(blocking=False):
                continue  # a wait() holds it right now
            try:
                done = state.reaped
                if not done:
                    try:
                        state.code = backend.wait(state.pid, nohang=True, nowait=False)
                        done = state.code is not None
                    except OSError:
                        done = True  # ECHILD: someone else reaped it
                if done:
                    state.mark_reaped()
                    _unreaped.discard(state)
            finally:
                state.lock.release()
    finally:
        _sweep_lock.release()


class Process:
    """A spawned child: pid, wait(), returncode, signals, and its pipes.

    Return codes follow subprocess: the exit status, or -N after death by
    signal N. If the child was reaped behind our back (SIGCHLD ignored, or
    another os.wait() caller) the code is 0, as subprocess reports it.
    """

    # Set by read_pipes() (and _pipe_threads), absent until a first read:
    # its state, kept so that a timed-out call can resume; how long it took;
    # the pipes reader threads still read (see close_pipes).
    _comm: Dict[str, Any]
    _comm_elapsed: float
    _threads_reading: List[IO[bytes]]
    # Maps the child's own status to the returncode, where the child stands
    # for another program (the pid_namespace tier's init: osl_pg.pidns).
    _decode: Optional[Callable[[int], int]] = None

    # self: Process, not Self: weakref.ref(self) goes into a map of ref[Process]
    # (refs are invariant).
    def __init__(self: Process, pid: int, args: Sequence[str], stdin: Optional[int] = None,
                 stdout: Optional[int] = None, stderr: Optional[int] = None):
        self.pid = pid
        self.args: List[str] = list(args)
        self.returncode: Optional[int] = None
        # The fds are pipes made for this spawn: an explicit buffer size
        # spares io.open() its isatty() ioctl per pipe (a pipe is never one).
        self.stdin: Optional[IO[bytes]] = io.open(stdin, "wb", _PIPE_BUFFER) if stdin is not None else None
        self.stdout: Optional[IO[bytes]] = io.open(stdout, "rb", _PIPE_BUFFER) if stdout is not None else None
        self.stderr: Optional[IO[bytes]] = io.open(stderr, "rb", _PIPE_BUFFER) if stderr is not None else None
        self._state = _ChildState(pid)
        self._pinned = False
        self._wref = _weakref_ref(self)
        _children[pid] = self._wref
        _reaped_pids.pop(pid, None)  # the number is ours again

    def __del__(self) -> None:
        # A dropped handle whose child was not reaped yet: hand the child to
        # the sweep, which reaps it (without blocking) once it has exited.
        state = getattr(self, "_state", None)
        wref = getattr(self, "_wref", None)
        if wref is not None and _children.get(self.pid) is wref:
            _children.pop(self.pid, None)  # one dict operation: no lock
        if state is not None and not state.reaped:
            try:
                _abandon(state)
            except Exception:  # at interpreter shutdown modules may be gone
                pass

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} returncode={self.returncode}>"

    # -- status --------------------------------------------------------------
    @property
    def reaped(self) -> bool:
        """True once the child's exit status was collected and the zombie
        reaped: its pid may then belong to another process, so
        send_signal() refuses. A child whose ProcessGroup pins it stays
        unreaped after it exits until the group is released."""
        return self._state.reaped

    def _collect(self, block: bool, try_lock: bool = False) -> Optional[int]:
        """Read the exit status (blocking or not) and reap unless pinned.

        The status is read and the child reaped only under the state lock
        (CPython's _waitpid_lock discipline): two threads can never both
        reap, and an ECHILD seen by one of them is checked against what the
        other recorded under the lock, so no status is ever invented. A
        blocking wait first sleeps in waitid(WNOWAIT) *outside* the lock,
        which reaps nothing, so pollers are not held up meanwhile.
        `try_lock`: give up (None) rather than wait for another thread's
        locked section, as poll() does (a signal handler may poll)."""
        state = self._state
        peeked = None
        if block and self.returncode is None and not state.reaped:
            try:
                peeked = backend.wait(self.pid, nohang=False, nowait=True)
            except OSError as e:
                if e.errno != errno.ECHILD:
                    raise
                # Reaped meanwhile, by another thread of ours (it recorded
                # the status under the lock) or behind our back: see below.
        if not state.lock.acquire(blocking=not try_lock):
            return self.returncode
        try:
            # Read once: _release() unpins without this lock (then waits for
            # it), and a status read with WNOWAIT must not be taken for a reap.
            pinned = self._pinned
            if self.returncode is None:
                if state.reaped:  # the sweep reaped it (a dropped group's leader)
                    self.returncode = self._decoded(state.code if state.code is not None else 0)
                    return self.returncode
                try:
                    # A status peeked above still holds: only this lock's
                    # holders reap, and none has (state.reaped is False).
                    code = peeked if peeked is not None and pinned else \
                        backend.wait(self.pid, nohang=True, nowait=pinned)
                except OSError as e:
                    if e.errno != errno.ECHILD:
                        raise
                    # Nobody here reaped it (that happens only under this
                    # lock, which records the status first): SIGCHLD is
                    # ignored or another os.wait() caller took it. Like
                    # subprocess, report 0.
                    self.returncode = 0
                    state.mark_reaped()
                    return 0
                if code is None:
                    return None
                self.returncode = self._decoded(code)
                if not pinned:
                    state.mark_reaped()
            elif not pinned and not state.reaped:
                try:
                    backend.wait(self.pid, nohang=True, nowait=False)
                except OSError as e:
                    if e.errno != errno.ECHILD:
                        raise
                state.mark_reaped()
            return self.returncode
        finally:
            state.lock.release()

    def _decoded(self, code: int) -> int:
        decode = self._decode
        return code if decode is None else decode(code)

    def poll(self) -> Optional[int]:
        """The returncode if the child has exited, else None. Never blocks:
        while another thread is reaping it, None until the next call (safe
        from a signal handler). Reaps the child unless a ProcessGroup pins
        it."""
        return self._collect(block=False, try_lock=True)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the child to exit and return its returncode. Raises
        WaitTimeout (a subprocess.TimeoutExpired) after `timeout` seconds."""
        timeout = check_timeout(timeout)
        if self.returncode is not None:
            rc = self._collect(block=False)
            return self.returncode if rc is None else rc
        if timeout is None:
            while True:
                try:
                    rc = self._collect(block=True)
                except InterruptedError:
                    continue  # signal handlers have run; wait again
                assert rc is not None
                return rc
        deadline = time.monotonic() + timeout
        rc = self._collect(block=False)
        if rc is not None:
            return rc
        fd = self._state.exit_fd() if timeout > 0 else None
        try:
            delay = 0.0005
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(self.args, timeout)
                if fd is not None:
                    _wait_readable(fd, remaining)
                else:
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 0.05)
                rc = self._collect(block=False)
                if rc is not None:
                    return rc
        finally:
            if fd is not None:
                os.close(fd)

    async def wait_async(self, timeout: Optional[float] = None) -> int:
        """wait() for asyncio or trio (osl_pg._aio), without a thread per
        child: on Linux the running loop watches a pidfd opened while the
        child is unreaped (so it names our child, not a later process with
        its number); elsewhere the status is polled with backoff. Raises WaitTimeout after `timeout` seconds."""
        from . import _aio
        timeout = check_timeout(timeout)
        rc = self._collect(block=False)
        if rc is not None:
            return rc
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._state.exit_fd()
        try:
            delay = 0.0005
            while (rc := self._collect(block=False)) is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(self.args, timeout or 0.0)
                if fd is not None:
                    await _aio.wait_fds([fd], (), deadline)
                else:
                    step = time.monotonic() + delay
                    await _aio.sleep((step if deadline is None else min(step, deadline)) - time.monotonic())
                    delay = min(delay * 2, 0.05)
            return rc
        finally:
            if fd is not None:
                os.close(fd)

    def exit_fd(self) -> Optional[int]:
        """A pidfd that becomes readable when the child exits, for an event
        loop to watch; the caller closes it. None without pidfds, or once
        the child was reaped."""
        return self._state.exit_fd()

    # -- pinning (used by ProcessGroup) -------------------------------------------
    def _pin(self) -> None:
        self._pinned = True

    def _release(self) -> None:
        """Stop pinning; reap now if the child has exited."""
        self._pinned = False
        self._collect(block=False)

    # -- signals -------------------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child alone. After it has been reaped this
        raises ProcessLookupError (ProcessNotFound) rather than signalling
        whoever has the pid now; the check and the kill happen under the
        lock that reaping takes. PermissionError if the OS refuses. On
        Windows only SIGTERM/SIGKILL (TerminateProcess, the signal number
        as exit code) and, for a group leader, SIGBREAK are mapped; other
        signals raise Unsupported."""
        # Under the lock that reaping takes: no other thread can reap (and
        # free the pid) between the check and the kill.
        with self._state.lock:
            if self._state.reaped:
                raise ProcessNotFound(errno.ESRCH, f"process {self.pid} has exited and was reaped")
            backend.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the child alone (not its group: see ProcessGroup). On
        Windows, TerminateProcess with exit code 15. Raises
        ProcessLookupError once the child was reaped."""
        import signal
        self.send_signal(int(getattr(signal, "SIGTERM", 15)))

    def kill(self) -> None:
        """SIGKILL the child alone (not its group: see ProcessGroup). On
        Windows, TerminateProcess with exit code 9. Raises
        ProcessLookupError once the child was reaped."""
        import signal
        self.send_signal(int(getattr(signal, "SIGKILL", 9)))

    # -- pipes ---------------------------------------------------------------------
    def communicate(self, input: Optional[bytes] = None,
                    timeout: Optional[float] = None) -> Tuple[Optional[bytes], Optional[bytes]]:
        """Feed `input`, read stdout/stderr to EOF, wait for the child.
        Like Popen.communicate; on timeout raises WaitTimeout and may be
        called again, keeping what was read so far."""
        out, err = read_pipes(self, input, timeout)
        remaining = None if timeout is None else max(0.0, timeout - getattr(self, "_comm_elapsed", 0.0))
        self.wait(remaining)
        return out, err

    def close_pipes(self) -> None:
        """Close the parent's ends of the child's stdin, stdout and stderr
        pipes (those that were made); errors on close are ignored. The
        child is not waited for."""
        # A pipe a reader thread still reads (Windows) is left to that
        # thread, which closes it at EOF: closing it here would block until
        # then, as the C runtime locks the fd during the pending read.
        reading = getattr(self, "_threads_reading", ())
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None and not (reading and any(f is r for r in reading)):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close_pipes()
        self.wait()


# How long read_pipes reads before it opens the wake fd it was given as a
# function: a command that closes its pipes by then (most) needs none.
WAKE_FD_AFTER = 0.002

# poll(2) rather than the selectors module: no epoll fd to create and close,
# and none of its Python layers (a capture_output run() made 36 selectors
# calls). POSIX only; Windows reads pipes with threads (_pipe_threads).
_READ = getattr(select, "POLLIN", 0) | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)
_WRITE = getattr(select, "POLLOUT", 0) | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)


def _wait_readable(fd: int, timeout: Optional[float]) -> bool:
    poller = select.poll()
    poller.register(fd, _READ)
    return bool(poller.poll(poll_ms(None if timeout is None else time.monotonic() + timeout)))


def read_pipes(proc: Process, input: Optional[bytes], timeout: Optional[float],
               stop_when: Optional[Callable[[], object]] = None,
               wake_fd: Union[int, Callable[[], Optional[int]], None] = None, joined: bool = True
               ) -> Tuple[Optional[bytes], Optional[bytes]]:
    """Write `input` to stdin and read stdout/stderr until EOF with one
    selector (no threads). `stop_when()` is polled every 10 ms; when it
    returns true reading stops early (used to stop draining pipes a
    descendant holds). With `wake_fd` (the leader's pidfd, say) polling
    starts only once that fd is readable, so a long run costs no wake-ups.
    `wake_fd` may be a function that opens it (None: there is none): it is
    called only if the pipes are still open after WAKE_FD_AFTER seconds, so
    a command that is done by then costs no pidfd. With `joined` False it
    returns (None, None): the caller takes the output from read_so_far()
    (run() does, after the tree has ended), and it is not copied twice.
    State is kept on the process so a timed-out call can be resumed.
    On Windows, where select() takes only sockets, threads read the pipes
    (osl_pg._pipe_threads)."""
    if _THREADED_PIPES:
        from ._pipe_threads import read_pipes_threaded
        return read_pipes_threaded(proc, input, timeout, stop_when)
    st = getattr(proc, "_comm", None)
    if st is None:
        if proc.stdin is not None:
            try:
                proc.stdin.flush()  # what the caller wrote before comes first
            except BrokenPipeError:
                pass
        st = proc._comm = {"out": [], "err": [], "input": memoryview(input or b""), "off": 0,
                           "open": [f for f in (proc.stdout, proc.stderr) if f is not None],
                           "stdin": proc.stdin}
        if proc.stdin is not None and not input:
            _close_quietly(proc.stdin)
            st["stdin"] = None
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    poller = select.poll()
    files: Dict[int, Any] = {}  # fd -> the pipe still being written or read
    if st["stdin"] is not None:
        os.set_blocking(st["stdin"].fileno(), False)
        files[st["stdin"].fileno()] = st["stdin"]
        poller.register(st["stdin"].fileno(), _WRITE)
    for f in st["open"]:
        files[f.fileno()] = f
        poller.register(f.fileno(), _READ)
    open_wake, wake_at = None, 0.0
    if callable(wake_fd):
        open_wake, wake_fd, wake_at = wake_fd, None, start + WAKE_FD_AFTER
    watching = stop_when is not None and wake_fd is not None and bool(files)
    polling = stop_when is not None and not watching and open_wake is None
    if watching and wake_fd is not None:
        poller.register(wake_fd, _READ)

    def done_with(fd: int) -> Any:
        poller.unregister(fd)
        f = files.pop(fd)
        _close_quietly(f)
        return f

    while files:
        wait_for = None if deadline is None else deadline - time.monotonic()
        if open_wake is not None:
            until_wake = wake_at - time.monotonic()
            if until_wake <= 0:
                wake_fd, open_wake = open_wake(), None
                if wake_fd is not None and stop_when is not None:
                    poller.register(wake_fd, _READ)
                    watching = True
                else:
                    polling = stop_when is not None  # no pidfd: look every 10 ms
            elif wait_for is None or until_wake < wait_for:
                wait_for = until_wake
        if polling:
            wait_for = 0.01 if wait_for is None else min(wait_for, 0.01)
        if wait_for is not None and wait_for <= 0 and not polling:
            proc._comm_elapsed = time.monotonic() - start
            raise WaitTimeout(proc.args, timeout or 0.0, b"".join(st["out"]), b"".join(st["err"]))
        for fd, _ in poller.poll(None if wait_for is None else max(wait_for, 0.0) * 1000):
            if watching and fd == wake_fd:
                poller.unregister(fd)
                watching, polling = False, True
            elif files.get(fd) is st["stdin"]:
                try:
                    st["off"] += os.write(fd, st["input"][st["off"]:st["off"] + 65536])
                except BrokenPipeError:
                    st["off"] = len(st["input"])
                if st["off"] >= len(st["input"]):
                    done_with(fd)
                    st["stdin"] = None
            elif fd in files:
                data = os.read(fd, 65536)
                if data:
                    (st["out"] if files[fd] is proc.stdout else st["err"]).append(data)
                else:
                    st["open"].remove(done_with(fd))
        if polling and stop_when is not None and files and stop_when():
            break
        if deadline is not None and time.monotonic() >= deadline and files:
            proc._comm_elapsed = time.monotonic() - start
            raise WaitTimeout(proc.args, timeout or 0.0, b"".join(st["out"]), b"".join(st["err"]))
    proc._comm_elapsed = time.monotonic() - start
    if not joined:
        return None, None
    out = b"".join(st["out"]) if proc.stdout is not None else None
    err = b"".join(st["err"]) if proc.stderr is not None else None
    return out, err


def read_so_far(proc: Process) -> Tuple[Optional[bytes], Optional[bytes], List[IO[bytes]]]:
    """What read_pipes has read from stdout and stderr (None for a stream
    that is not piped), and the pipes it has not yet seen EOF on."""
    st = getattr(proc, "_comm", None)
    chunks = (st["out"], st["err"]) if st is not None else ([], [])
    still_open = list(st["open"]) if st is not None else [f for f in (proc.stdout, proc.stderr) if f is not None]
    return (b"".join(chunks[0]) if proc.stdout is not None else None,
            b"".join(chunks[1]) if proc.stderr is not None else None, still_open)


def _close_quietly(f: IO[bytes]) -> None:
    try:
        f.close()
    except OSError:
        pass
