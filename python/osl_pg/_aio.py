"""The few async primitives osl_pg's coroutines need, for asyncio and trio.

Every ``*_async`` of osl_pg (run_async, the waits of Process and
ProcessGroup, terminate_async, close_async) awaits only these: wait until
one of some fds is ready (a pidfd, a pipe, an epoll fd), sleep, and finish a
teardown despite a cancellation. Each asks which library runs the current
task and uses that library's own API, so a program on trio gets trio's
wait_readable and cancel scopes, one on asyncio the loop's add_reader.

Native support rather than requiring anyio: anyio runs on top of asyncio or
trio, so an anyio program is one of the two here and needs nothing more
(its cancel scopes arrive as asyncio.CancelledError or trio.Cancelled), and
neither trio, anyio nor sniffio becomes a dependency. The detection is
sniffio's idea without sniffio: trio is asked first, and only when the
program imported it (``sys.modules``: asyncio-only programs pay one dict
lookup), because trio in guest mode runs inside an asyncio loop; otherwise
the task is asyncio's. Nothing here is imported by ``import osl_pg``: the
modules that await are imported when first awaited, and asyncio/trio only
by the call that uses them.

Waiting never depends on asyncio's child watchers (removed in Python 3.14)
nor on SIGCHLD: a child's exit is a pidfd becoming readable (Linux 5.3+);
without pidfds callers poll the status with backoff, sleeping with the
running library's sleep.
"""
from __future__ import annotations

import math
import select
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple, TypeVar
    T = TypeVar("T")

_POLL = getattr(select, "poll", None)  # absent on Windows, where no fd is ever waited on here


def _trio() -> Any:
    """The trio module when the current task is trio's, else None."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_trio_token()
    except (RuntimeError, AttributeError):  # not in trio.run (or a half-imported trio)
        return None
    return trio


async def sleep(seconds: float) -> None:
    trio = _trio()
    if trio is not None:
        await trio.sleep(max(0.0, seconds))
    else:
        import asyncio
        await asyncio.sleep(max(0.0, seconds))


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.monotonic()


def _ready_now(readers: Sequence[int], writers: Sequence[int]) -> Tuple[List[int], List[int]]:
    """Which fds are ready right now: one poll(0), no event loop involved."""
    if _POLL is None or not (readers or writers):
        return [], []
    poller = _POLL()
    for fd in readers:
        poller.register(fd, select.POLLIN)
    for fd in writers:
        poller.register(fd, select.POLLOUT)
    r, w = [], []
    for fd, events in poller.poll(0):
        # POLLHUP/POLLERR count as ready: the read or write then says what happened.
        if fd in readers and events & ~select.POLLOUT:
            r.append(fd)
        if fd in writers and events & ~select.POLLIN:
            w.append(fd)
    return r, w


async def wait_fds(readers: Sequence[int], writers: Sequence[int] = (),
                   deadline: Optional[float] = None) -> Tuple[List[int], List[int]]:
    """Wait until one of `readers` is readable or one of `writers` writable,
    or `deadline` (time.monotonic()) passes; return the ready ones (both
    empty at the deadline). With no fd at all, sleep until the deadline.

    Whatever is ready at once is returned after a checkpoint (sleep(0)): a
    task whose child writes without pause must still let the others run,
    and be cancellable. Otherwise the running library watches the fds (the
    asyncio loop's add_reader/add_writer, trio.lowlevel.wait_readable/
    wait_writable) and, once it wakes, one poll(0) says which are ready.
    The fds must stay open until this returns; nothing else may wait on
    them meanwhile (trio allows one waiter per fd)."""
    ready = _ready_now(readers, writers)
    remaining = _remaining(deadline)
    if ready[0] or ready[1] or (remaining is not None and remaining <= 0):
        await sleep(0)
        return ready
    if not (readers or writers):
        assert remaining is not None, "wait_fds: nothing to wait for and no deadline"
        await sleep(remaining)
        return [], []
    trio = _trio()
    if trio is not None:
        await _trio_wait_any(trio, readers, writers, remaining)
    else:
        await _asyncio_wait_any(readers, writers, remaining)
    return _ready_now(readers, writers)


async def _asyncio_wait_any(readers: Sequence[int], writers: Sequence[int], timeout: Optional[float]) -> None:
    import asyncio
    loop = asyncio.get_running_loop()
    woke = loop.create_future()

    def wake() -> None:
        if not woke.done():
            woke.set_result(None)

    timer = None if timeout is None else loop.call_later(timeout, wake)
    added_r: List[int] = []
    added_w: List[int] = []
    try:
        for fd in readers:
            loop.add_reader(fd, wake)
            added_r.append(fd)
        for fd in writers:
            loop.add_writer(fd, wake)
            added_w.append(fd)
        await woke
    finally:
        if timer is not None:
            timer.cancel()
        for fd in added_r:
            loop.remove_reader(fd)
        for fd in added_w:
            loop.remove_writer(fd)


async def _trio_wait_any(trio: Any, readers: Sequence[int], writers: Sequence[int],
                         timeout: Optional[float]) -> None:
    # trio waits on one fd per call. Several (a run's pipes and pidfd, a
    # group's pidfds) are gathered into one epoll (Linux) or kqueue (macOS,
    # BSD) fd, readable once any of them is ready: one wait, no task per fd
    # (a nursery of waiters would also turn a cancellation into an
    # exception group).
    lowlevel = trio.lowlevel
    with trio.CancelScope(deadline=math.inf if timeout is None else trio.current_time() + timeout):
        if len(readers) + len(writers) == 1:
            await (lowlevel.wait_readable(readers[0]) if readers else lowlevel.wait_writable(writers[0]))
            return
        gathered = _gather(readers, writers)
        try:
            await lowlevel.wait_readable(gathered.fileno())
        finally:
            lowlevel.notify_closing(gathered.fileno())
            gathered.close()


def _gather(readers: Sequence[int], writers: Sequence[int]) -> Any:
    # The platform tests tell type checkers which of the two this platform
    # has: kqueue on macOS and the BSDs, epoll on Linux (and Android).
    if sys.platform != "linux" and sys.platform != "win32" and not hasattr(select, "epoll"):
        kq = select.kqueue()
        changes = [select.kevent(fd, select.KQ_FILTER_READ, select.KQ_EV_ADD) for fd in readers]
        changes += [select.kevent(fd, select.KQ_FILTER_WRITE, select.KQ_EV_ADD) for fd in writers]
        try:
            kq.control(changes, 0)
        except BaseException:
            kq.close()
            raise
        return kq
    ep = select.epoll()
    try:
        for fd in set(readers) | set(writers):
            ep.register(fd, (select.EPOLLIN if fd in readers else 0) | (select.EPOLLOUT if fd in writers else 0))
    except BaseException:
        ep.close()
        raise
    return ep


def is_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is the running library's cancellation: a task's
    cancel(), a cancel scope of trio or anyio, asyncio.timeout()."""
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(exc, trio.Cancelled):
        return True
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


async def shielded(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await fn(*args) to its end even when the task is cancelled meanwhile,
    then let the cancellation go on. For a teardown: ending a tree must not
    stop half way (members signalled but not waited for, a pgid left
    pinned). The bound is the teardown's own (its grace and kill_timeout):
    a member that outlives SIGKILL is reported, not waited for.

    trio: a shielded cancel scope. asyncio has no shield for the current
    task, so the teardown runs as a task of its own that is awaited through
    asyncio.shield() as often as cancellations arrive (anyio's cancel
    scopes cancel the task again at every loop iteration until it leaves
    the scope); the first CancelledError is re-raised once it is done."""
    trio = _trio()
    if trio is not None:
        with trio.CancelScope(shield=True):
            return await fn(*args)
    import asyncio
    task = asyncio.ensure_future(fn(*args))
    cancelled: Optional[BaseException] = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as e:
            if task.done():  # the teardown itself ended with CancelledError
                raise
            cancelled = cancelled or e
    if cancelled is not None:
        raise cancelled
    return result
