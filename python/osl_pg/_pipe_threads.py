"""read_pipes for Windows: one thread per pipe, as subprocess does there.

select() takes only sockets on Windows, so the selector loop of
process.read_pipes cannot watch pipes. Each pipe gets a daemon thread that
reads it to EOF (or writes `input` and closes stdin); the caller joins them
within its timeout. The state lives on the process in the same shape as
read_pipes' ("out", "err", "open"), so a timed-out call resumes where it
stopped and process.read_so_far works unchanged. Threads left running when
a call returns early (timeout, stop_when) keep reading into that state.
"""
from __future__ import annotations

import os
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import IO, Any, Dict, List, Optional, Tuple


def read_pipes_threaded(proc: Any, input: Optional[bytes], timeout: Optional[float],
                        stop_when: Optional[Any] = None) -> Tuple[Optional[bytes], Optional[bytes]]:
    from .process import WaitTimeout  # process imports this module
    st = getattr(proc, "_comm", None)
    if st is None:
        st = proc._comm = {"out": [], "err": [], "open": [f for f in (proc.stdout, proc.stderr) if f is not None],
                           "stdin": None, "threads": []}
        proc._threads_reading = st["open"]  # see Process.close_pipes
        for f, chunks in ((proc.stdout, st["out"]), (proc.stderr, st["err"])):
            if f is not None:
                _start(st, _drain, f, chunks, st["open"])
        if proc.stdin is not None:
            if input:
                _start(st, _feed, proc.stdin, bytes(input))
            else:
                _close_quietly(proc.stdin)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout

    def timed_out() -> WaitTimeout:
        proc._comm_elapsed = time.monotonic() - start
        return WaitTimeout(proc.args, timeout or 0.0, b"".join(st["out"]), b"".join(st["err"]))

    for t in st["threads"]:
        while t.is_alive():
            wait_for = None if deadline is None else deadline - time.monotonic()
            if stop_when is not None:
                wait_for = 0.01 if wait_for is None else min(wait_for, 0.01)
            elif wait_for is not None and wait_for <= 0:
                raise timed_out()
            t.join(max(wait_for, 0) if wait_for is not None else None)
            if not t.is_alive():
                break
            if stop_when is not None and stop_when():
                return _result(proc, st, start)
            if deadline is not None and time.monotonic() >= deadline:
                raise timed_out()
    return _result(proc, st, start)


def _result(proc: Any, st: Dict[str, Any], start: float) -> Tuple[Optional[bytes], Optional[bytes]]:
    proc._comm_elapsed = time.monotonic() - start
    return (b"".join(st["out"]) if proc.stdout is not None else None,
            b"".join(st["err"]) if proc.stderr is not None else None)


def _start(st: Dict[str, Any], target: Any, *args: Any) -> None:
    t = threading.Thread(target=target, args=args, daemon=True, name=f"osl_pg-{target.__name__[1:]}")
    t.start()
    st["threads"].append(t)


def _drain(f: IO[bytes], chunks: List[bytes], still_open: List[IO[bytes]]) -> None:
    fd = f.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
    except OSError:
        pass  # closed under us: what was read is kept
    finally:
        if f in still_open:
            still_open.remove(f)
        _close_quietly(f)


def _feed(f: IO[bytes], data: bytes) -> None:
    try:
        f.write(data)
        f.flush()
    except OSError:
        pass  # the child closed its stdin (BrokenPipeError, EINVAL on Windows)
    finally:
        _close_quietly(f)


def _close_quietly(f: IO[bytes]) -> None:
    try:
        f.close()
    except OSError:
        pass


class LoopPipes:
    """What run_async()'s two pipe readers share: `chunks` per pipe, the
    pipes still `open`, and pump() (move data until the pipes are done,
    a wake fd is readable, or a deadline), which run_async() awaits under
    asyncio or trio alike (osl_pg._aio)."""

    proc: Any
    chunks: Dict[IO[bytes], List[bytes]]
    open: List[IO[bytes]]  # the pipes not yet at EOF

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Close what is still open of the pipes (after pump() or a timeout)."""
        raise NotImplementedError

    async def pump(self, deadline: Optional[float], wake_fd: Optional[int] = None) -> bool:
        """Until every pipe is done or `wake_fd` is readable (True), or
        `deadline` (time.monotonic(); False)."""
        raise NotImplementedError

    async def wait_eof(self, timeout: Optional[float]) -> bool:
        return await self.pump(None if timeout is None else time.monotonic() + timeout)

    def received(self) -> int:
        """How many chunks came so far: grows while output flows."""
        return sum(len(chunks) for chunks in self.chunks.values())

    def output(self) -> Tuple[Optional[bytes], Optional[bytes]]:
        p = self.proc
        return (b"".join(self.chunks[p.stdout]) if p.stdout is not None else None,
                b"".join(self.chunks[p.stderr]) if p.stderr is not None else None)


class ThreadedPipes(LoopPipes):
    """What run_async() reads pipes with where the event loop cannot watch
    them (Windows: the proactor loop has no add_reader, and select() takes
    only sockets): a thread per pipe, as communicate() uses there. pump()
    looks at the threads every few milliseconds (sleeping with the running
    library's sleep, so asyncio and trio alike, and a cancellation leaves
    only threads that end at the pipes' EOF). Same interface as run's
    _AsyncPipes."""

    _MAX_STEP = 0.02

    def __init__(self, proc: Any, input: Optional[bytes]) -> None:
        self.proc = proc
        self.open: List[IO[bytes]] = [f for f in (proc.stdout, proc.stderr) if f is not None]
        proc._threads_reading = self.open  # see Process.close_pipes
        self.chunks: Dict[IO[bytes], List[bytes]] = {f: [] for f in self.open}
        jobs: List[Tuple[Any, Tuple[Any, ...]]] = []
        if proc.stdin is not None:
            if input:
                jobs.append((_feed, (proc.stdin, bytes(input))))
            else:
                _close_quietly(proc.stdin)
        for f in list(self.open):
            jobs.append((_drain, (f, self.chunks[f], self.open)))
        self._threads = [threading.Thread(target=target, args=args, daemon=True,
                                          name=f"osl_pg-{target.__name__[1:]}") for target, args in jobs]
        for t in self._threads:
            t.start()

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    async def pump(self, deadline: Optional[float], wake_fd: Optional[int] = None) -> bool:
        from . import _aio
        delay = 0.001
        while not self.done:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            step = now + delay if deadline is None else min(now + delay, deadline)
            delay = min(delay * 2, self._MAX_STEP)
            if wake_fd is not None:
                if (await _aio.wait_fds([wake_fd], (), step))[0]:
                    return True
            else:
                await _aio.sleep(step - now)
        return True

    def close(self) -> None:
        """Nothing to close here: each thread closes its pipe at EOF. One
        still held by a process left running is closed when that process
        lets go; closing it now would block (the C runtime locks the fd
        while the thread's read is pending)."""
