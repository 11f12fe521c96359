"""`osl-pg bench`: spawn, signal and kill latency of osl_pg against the usual
alternatives (subprocess, os.posix_spawn, asyncio, psutil) and C floors, in one run.

Method. A scenario has contenders that each take one sample per call. The
runner interleaves them round-robin, each round in a new (seeded) random
order, so that noise on a busy machine (two cores here) and the after-effects
of one contender on the next (cold caches) hit all of them alike. The fork()
contender gets scenarios of its own: after a fork, the parent takes a
copy-on-write fault on every page it writes next, and whoever ran next would
pay for it. Samples are wall-clock nanoseconds: `time.perf_counter_ns` around the
operation for Python contenders, `clock_gettime` inside the C function for
the C floors (no Python runs between their clock reads). A section is one
metric of one scenario; it reports median and p90 per contender and the
ratio of each osl_pg contender's median to every contender's median.

Nothing here forks. Every process a sample starts is waited for (or killed
and waited for) before the next sample; the run ends by checking that this
process has no child left.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .bench_programs import Program, TreeShape, await_ready, exit_program, pause_program

SIGCONT = 18 if sys.platform.startswith("linux") else 19
BIG_PARENT_MIB = 1024
SCHEMA = 1

# Rounds per scenario: (full, --quick).
ROUNDS = {
    "spawn": (400, 150),
    "spawn_big": (200, 60),
    "signal": (400, 150),
    "kill_small": (40, 10),
    "kill_large": (40, 6),
    # run() and the crowds decide targets within a few percent of 1.0x on
    # noisy hosts: more rounds (each is well under a millisecond).
    "run": (1500, 100),
    "crowd": (600, 50),
    "kill_crowd": (40, 6),
    "startup": (20, 8),
}
CROWD_RUN = 1000    # other idle processes on the host for the run() rows
CROWD_GROUP = 2000  # ...for the group.wait and kill+confirm rows
WARMUP = 3
SIGNAL_BATCH = 20  # thin signal calls take ~1 us: time batches, report per call



# --------------------------------------------------------------------------
# statistics and report structure


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class Contender:
    """One way of doing the operation. `sample()` does it once and returns
    nanoseconds per metric (a scenario may measure several metrics per
    sample, like the call alone and the call plus the wait)."""

    id: str
    label: str
    sample: Callable[[], Dict[str, int]]
    ours: bool = False
    note: str = ""
    settle: Optional[Callable[[], None]] = None  # after each sample, untimed


@dataclass
class Scenario:
    id: str
    title: str
    metrics: Dict[str, str]  # metric id -> how the section is titled
    contenders: List[Contender]
    rounds: int
    notes: List[str] = field(default_factory=list)


def run_round_robin(scenario: Scenario, rounds: int, warmup: int = WARMUP) -> Dict[str, Dict[str, List[int]]]:
    """samples[contender][metric] -> nanoseconds, one per round."""
    import gc
    import random
    order = random.Random(len(scenario.id))  # seeded: the same orders every run
    contenders = list(scenario.contenders)
    samples: Dict[str, Dict[str, List[int]]] = {c.id: {m: [] for m in scenario.metrics} for c in contenders}
    gc.collect()
    for r in range(-warmup, rounds):
        order.shuffle(contenders)
        for c in contenders:
            taken = c.sample()
            if c.settle is not None:
                c.settle()
            if r >= 0:
                for metric, ns in taken.items():
                    if metric in samples[c.id]:  # a scenario may report only some metrics
                        samples[c.id][metric].append(ns)
    return samples


def make_section(section_id: str, title: str, contenders: Sequence[Contender],
                 samples: Dict[str, List[int]], notes: Sequence[str] = ()) -> Dict[str, Any]:
    """A report section from samples[contender_id] -> ns, with the ratios of
    each osl_pg contender's median to every contender's median."""
    rows = []
    for c in contenders:
        values = samples[c.id]
        rows.append({"id": c.id, "label": c.label, "ours": c.ours, "n": len(values),
                     "median_us": statistics.median(values) / 1000.0,
                     "p90_us": percentile(values, 90) / 1000.0, "note": c.note})
    section: Dict[str, Any] = {"id": section_id, "title": title, "unit": "us", "contenders": rows,
               "ours": [c.id for c in contenders if c.ours], "notes": list(notes)}
    section["ratios"] = compute_ratios(section)
    return section


def compute_ratios(section: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """ratios[ours][other] = median(ours) / median(other)."""
    medians = {row["id"]: row["median_us"] for row in section["contenders"]}
    return {o: {c: medians[o] / medians[c] for c in medians if medians[c] > 0} for o in section["ours"]}


def parent_size_effect(sections: Sequence[Dict[str, Any]], mib: int) -> Dict[str, Any]:
    """spawn+wait from the big parent / from the small one, per contender
    measured in both."""
    by_id = {s["id"]: s for s in sections}
    rows = []
    for small_id, big_id in (("spawn.wait", "spawn_big.wait"), ("fork.wait", "fork_big.wait")):
        if small_id not in by_id or big_id not in by_id:
            continue
        small = {r["id"]: r for r in by_id[small_id]["contenders"]}
        for r in by_id[big_id]["contenders"]:
            if r["id"] in small:
                rows.append({"id": r["id"], "label": r["label"], "small_us": small[r["id"]]["median_us"],
                             "big_us": r["median_us"], "ratio": r["median_us"] / small[r["id"]]["median_us"]})
    return {"title": f"spawn + wait from a parent with {mib} MiB written / from a small parent (medians)",
            "parent_mib": mib, "rows": rows}


# Targets from the issues that asked for this bench: (id, text, numerator,
# denominator, limit), each side a (section id, contender id). A limit is a
# ratio of medians, or with "ms" an absolute difference (numerator's median
# minus the denominator's, or the numerator alone when the denominator is
# None), in milliseconds.
# (id, text, numerator, denominator or None, limit): a ratio limit, or "N ms"
# for an absolute difference (the only kind without a denominator).
TARGETS: List[Tuple[str, str, Tuple[str, str], Optional[Tuple[str, str]], Union[float, str]]] = [
    ("run_vs_subprocess", "run() vs subprocess.run() (exit-only program)",
     ("run", "osl_run"), ("run", "subprocess_run"), 1.0),
    ("run_capture_vs_subprocess", "run(capture_output=True) vs subprocess.run(capture_output=True)",
     ("run_capture", "osl_run"), ("run_capture", "subprocess_run"), 1.0),
    ("run_crowd_vs_subprocess", f"run() vs subprocess.run() with {CROWD_RUN} other processes on the host",
     ("run_crowd", "osl_run"), ("run_crowd", "subprocess_run"), 1.0),
    ("spawn_vs_popen", "spawn + process.wait (new group) vs Popen(process_group=0) + wait",
     ("spawn.wait", "osl_sync"), ("spawn.wait", "popen_pgroup"), 1.0),
    ("spawn_vs_floor", "spawn + process.wait (new group) vs the C floor",
     ("spawn.wait", "osl_sync"), ("spawn.wait", "c_floor"), 1.15),
    ("group_wait_vs_popen", "spawn + group.wait vs Popen(process_group=0) + wait",
     ("spawn.wait", "osl_group_wait"), ("spawn.wait", "popen_pgroup"), 1.1),
    ("group_wait_crowd", f"spawn + group.wait with {CROWD_GROUP} other processes vs without",
     ("group_wait_crowd", "osl_group_wait"), ("spawn.wait", "osl_group_wait"), 1.3),
    ("big_parent", "spawn+wait from a 1 GiB parent vs a small parent",
     ("spawn_big.wait", "osl_sync"), ("spawn.wait", "osl_sync"), 1.3),
    ("async_vs_sync", "async spawn+wait vs sync",
     ("spawn.wait", "osl_async"), ("spawn.wait", "osl_sync"), 1.3),
    ("kill_flat_vs_psutil", "kill+confirm 101 members (flat) vs psutil",
     ("kill.flat101", "osl_group"), ("kill.flat101", "psutil"), 0.33),
    ("kill_tree_vs_psutil", "kill+confirm 101 members (3 levels) vs psutil",
     ("kill.tree101", "osl_group"), ("kill.tree101", "psutil"), 0.33),
    ("kill_crowd", f"kill+confirm 101 members with {CROWD_GROUP} other processes vs without",
     ("kill_crowd.flat101", "osl_group"), ("kill.flat101", "osl_group"), 1.3),
    ("pidns_spawn_vs_pgroup", "spawn + process.wait: pid_namespace tier vs process_group tier",
     ("pidns", "osl_pidns"), ("pidns", "osl_pgroup"), 1.3),
    ("pidns_kill_vs_pgroup", "kill+confirm 101 members (flat): pid_namespace tier vs process_group tier",
     ("pidns_kill.flat101", "osl_pidns"), ("pidns_kill.flat101", "osl_pgroup"), 1.0),
    ("signal_thin", "ProcessGroup.signal (with its release lock) vs os.killpg",
     ("signal", "group_signal"), ("signal", "os_killpg"), 1.2),
    ("import_cost", "python -c 'import osl_pg' minus a bare interpreter start, ms",
     ("startup", "import_osl_pg"), ("startup", "bare"), "15 ms"),
    ("cli_run_true", "osl-pg run -- true, wall ms",
     ("startup", "cli_run_true"), None, "60 ms"),
]


def evaluate_targets(sections: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    medians = {(s["id"], row["id"]): row["median_us"] for s in sections for row in s["contenders"]}
    out = []
    for target_id, text, num, den, limit in TARGETS:
        if num not in medians or (den is not None and den not in medians):
            continue
        if isinstance(limit, str):  # "N ms": an absolute difference
            value = (medians[num] - (medians[den] if den is not None else 0.0)) / 1000.0
            bound = float(limit.split()[0])
            out.append({"id": target_id, "text": text, "numerator": list(num),
                        "denominator": list(den) if den is not None else None, "value_ms": value,
                        "limit_ms": bound, "met": value <= bound})
            continue
        assert den is not None  # a ratio has a denominator
        ratio = medians[num] / medians[den]
        out.append({"id": target_id, "text": text, "numerator": list(num), "denominator": list(den),
                    "ratio": ratio, "limit": limit, "met": ratio <= limit})
    return out


def speedup(ratio: float) -> str:
    """A ratio of times (ours / theirs) as a reader says it."""
    if ratio != ratio or ratio <= 0:  # NaN
        return "?"
    if 0.97 <= ratio <= 1.03:
        return "same"
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


# --------------------------------------------------------------------------
# spawn contenders


def _clock() -> Callable[[], int]:
    return time.perf_counter_ns


def call_then_wait(call: Callable[[], Any], wait: Callable[[Any], Any]) -> Callable[[], Dict[str, int]]:
    """A sample: "call" until call() returns a handle, "wait" until
    wait(handle) has returned and the handle is dropped."""
    now = _clock()

    def sample() -> Dict[str, int]:
        t0 = now()
        handle = call()
        t1 = now()
        wait(handle)
        handle = None
        t2 = now()
        return {"call": t1 - t0, "wait": t2 - t0}
    return sample


def call_then_wait_async(loop: Any, call: Callable[[], Any], wait: Callable[[Any], Any]
                         ) -> Callable[[], Dict[str, int]]:
    """call_then_wait for coroutines, timed inside the running loop."""
    now = _clock()

    async def timed() -> Dict[str, int]:
        t0 = now()
        handle = await call()
        t1 = now()
        await wait(handle)
        handle = None
        t2 = now()
        return {"call": t1 - t0, "wait": t2 - t0}
    return lambda: loop.run_until_complete(timed())


def _popen_group_kwargs() -> Tuple[Dict[str, Any], str]:
    """How subprocess makes a new group without preexec_fn on this Python."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}, ""
    return {"start_new_session": True}, "Python < 3.11 has no process_group=: start_new_session (setsid) instead"


def spawn_contenders(program: Program, loop: Any, include_async: bool = True,
                     include_group_wait: bool = True, fork_only: bool = False) -> List[Contender]:
    """Spawn `program` in a new process group and wait for it, every way.
    Metrics: "call" (until the spawn call returns) and "wait" (until the
    child has been waited for and reaped)."""
    import asyncio
    import subprocess

    from ._backend import backend
    from .executor import ProcessExecutor
    from .operations import ProcessSpawnOperation

    argv = program.argv
    path = program.path
    executor = ProcessExecutor("osl-pg-bench")
    op = ProcessSpawnOperation(path).with_args(argv[1:]).with_new_process_group()
    group_kw, group_note = _popen_group_kwargs()

    def osl_execute() -> Any:
        return executor.execute(op)

    async def osl_execute_async() -> Any:
        return await executor.execute_async(op)

    async def asyncio_spawn() -> Any:
        return await asyncio.create_subprocess_exec(*argv, **group_kw)

    # Dropping an osl_pg result (the timer's `handle = None`) drops its group
    # handle, which reaps the leader it pinned: the reap is inside the time.
    osl_sync = call_then_wait(osl_execute, lambda r: r.process.wait())
    osl_group_wait = call_then_wait(osl_execute, lambda r: r.group.wait())
    osl_async = call_then_wait_async(loop, osl_execute_async, lambda r: r.process.wait_async())
    asyncio_default = call_then_wait_async(loop, asyncio_spawn, lambda p: p.wait())
    posix_spawn = call_then_wait(lambda: os.posix_spawn(path, argv, os.environ, setpgroup=0),
                                 lambda pid: os.waitpid(pid, 0))

    def popen(**kw: Any) -> Callable[[], Dict[str, int]]:
        return call_then_wait(lambda: subprocess.Popen(argv, **kw), lambda p: p.wait())

    def c_floor() -> Dict[str, int]:
        call, total = backend.bench_spawn(path, op.close_fds)
        return {"call": call, "wait": total}

    pg_label = "Popen(process_group=0)" if "process_group" in group_kw else "Popen(start_new_session=True)"
    contenders = [
        Contender("osl_sync", "osl_pg: executor.execute + process.wait", osl_sync, ours=True),
    ]
    if include_async:
        contenders.append(Contender("osl_async", "osl_pg: await execute_async + wait_async", osl_async,
                                    ours=True))
    if include_group_wait:
        contenders.append(Contender("osl_group_wait", "osl_pg: executor.execute + group.wait (whole group)",
                                    osl_group_wait, ours=True))
    if fork_only:
        return [Contender("popen_fork", "subprocess.Popen(preexec_fn=os.setpgrp) [fork]",
                          popen(preexec_fn=os.setpgrp), note="preexec_fn makes subprocess fork()")]
    contenders += [
        Contender("popen_pgroup", f"subprocess.{pg_label}", popen(**group_kw), note=group_note),
        Contender("posix_spawn", "os.posix_spawn(setpgroup=0) + waitpid", posix_spawn,
                  note="no fd closing, no signal reset"),
    ]
    if include_async:
        contenders.append(Contender("asyncio", "asyncio.create_subprocess_exec + wait", asyncio_default,
                                    note=group_note, settle=_join_helper_threads))
    contenders.append(Contender("c_floor", "C floor: osl_spawn + waitid, timed in C", c_floor,
                                note="the syscalls of the osl_pg path, no Python in the timed span"))
    return contenders


def _join_helper_threads() -> None:
    """asyncio's child watcher (Python < 3.12) runs a thread per child: let
    it finish before the next sample, so that it does not compete with it."""
    import threading
    for t in threading.enumerate():
        if t is not threading.main_thread():
            t.join(1.0)


class BigParent:
    """`mib` MiB of private anonymous memory, every page written, with
    transparent huge pages off for it, so that the page tables are as large
    as a real heap's: that is what fork() copies, and posix_spawn (vfork
    semantics, CLONE_VM) does not."""

    PAGE = 4096

    def __init__(self, mib: int):
        import mmap
        self.size: int = mib << 20
        # MAP_PRIVATE: fork() skips the page tables of shared mappings (the
        # child faults them in), but must copy those of private memory.
        self.map: mmap.mmap = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(self.map, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
            self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.map[::self.PAGE] = b"\x01" * (self.size // self.PAGE)

    def close(self) -> None:
        self.map.close()


def rss_mib() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# run() contenders, and the crowd of other processes


def run_contenders(program: Program, capture: bool) -> List[Contender]:
    """osl_pg.run() against subprocess.run() on an exit-only program: the
    everyday path, where both should cost the same."""
    import subprocess

    from .run import run as osl_run

    now = _clock()
    argv = program.argv
    kw: Dict[str, Any] = {"capture_output": True} if capture else {}

    def timed(fn: Callable[..., Any]) -> Callable[[], Dict[str, int]]:
        def sample() -> Dict[str, int]:
            t0 = now()
            fn(argv, **kw)
            return {"call": now() - t0}
        return sample

    return [
        Contender("osl_run", "osl_pg.run()" + (" capture_output" if capture else ""), timed(osl_run), ours=True),
        Contender("subprocess_run", "subprocess.run()" + (" capture_output" if capture else ""),
                  timed(subprocess.run)),
    ]


class Crowd:
    """`n` other idle processes on the host (the static pause program, in a
    session of their own), as on a CI runner or a build server: what the
    group operations must not be slowed down by. They are not our children:
    a shell starts them and exits, so init adopts them (a child list of
    thousands would slow down our own waitid() calls, which no other
    process on a real host does)."""

    def __init__(self, n: int, member: Program):
        import shlex
        import subprocess
        cmd = " ".join(shlex.quote(a) for a in member.argv)
        script = f"i=0; while [ $i -lt {n} ]; do {cmd} >/dev/null 2>&1 & i=$((i+1)); done; echo $$"
        out = subprocess.run(["sh", "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True, check=True)
        self.sid: int = int(out.stdout)  # the shell led the session; the crowd is in its group
        deadline = time.monotonic() + 30
        while self._count() < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def _count(self) -> int:
        n = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.sid:
                        n += 1
                except OSError:
                    continue
        return n

    def close(self) -> None:
        try:
            os.killpg(self.sid, 9)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while self._count() and time.monotonic() < deadline:  # init reaps them
            time.sleep(0.01)


def startup_contenders() -> List[Contender]:
    """Wall time of a fresh interpreter: bare, importing subprocess,
    importing osl_pg, and `osl-pg run -- true` (the console script's
    interpreter plus one run() of /bin/true)."""
    import subprocess
    import shutil

    now = _clock()
    true = shutil.which("true") or "/bin/true"

    # As installed from a wheel: with bytecode. An environment that turns
    # its writing off (PYTHONDONTWRITEBYTECODE) would time the compiler.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def timed(argv: List[str]) -> Callable[[], Dict[str, int]]:
        def sample() -> Dict[str, int]:
            t0 = now()
            subprocess.run(argv, check=True, env=env)
            return {"call": now() - t0}
        return sample

    py = [sys.executable]
    return [
        Contender("bare", "python -c pass", timed(py + ["-c", "pass"])),
        Contender("import_subprocess", "python -c 'import subprocess'", timed(py + ["-c", "import subprocess"])),
        Contender("import_osl_pg", "python -c 'import osl_pg'", timed(py + ["-c", "import osl_pg"]), ours=True),
        Contender("cli_run_true", "osl-pg run -- true", timed(py + ["-m", "osl_pg", "run", "--", true]), ours=True,
                  note="python -m osl_pg: the console script's work, without its entry-point lookup"),
    ]


# --------------------------------------------------------------------------
# signal contenders


def signal_contenders(group: Any, executor: Any) -> List[Contender]:
    """SIGCONT (harmless to a sleeping process) to a group with one sleeping
    member, by each path. The thin calls are timed in batches."""
    from ._backend import backend
    from .operations import ProcessSignalOperation

    now = _clock()
    pgid = group.pgid
    op = ProcessSignalOperation.signal_group(pgid, SIGCONT)
    batch = range(SIGNAL_BATCH)

    def executor_signal() -> Dict[str, int]:
        t0 = now()
        executor.execute(op)
        return {"call": now() - t0}

    def group_signal() -> Dict[str, int]:
        signal = group.signal
        t0 = now()
        for _ in batch:
            signal(SIGCONT)
        return {"call": (now() - t0) // SIGNAL_BATCH}

    def os_killpg() -> Dict[str, int]:
        killpg = os.killpg
        t0 = now()
        for _ in batch:
            killpg(pgid, SIGCONT)
        return {"call": (now() - t0) // SIGNAL_BATCH}

    def c_floor() -> Dict[str, int]:
        return {"call": backend.bench_killpg(pgid, SIGCONT)}

    return [
        Contender("executor", "osl_pg: executor.execute(signal_group)", executor_signal, ours=True,
                  note="validate, policy, member count, audit record"),
        Contender("group_signal", "osl_pg: ProcessGroup.signal", group_signal, ours=True),
        Contender("os_killpg", "os.killpg", os_killpg),
        Contender("c_floor", "C floor: killpg, timed in C", c_floor),
    ]


# --------------------------------------------------------------------------
# kill-and-confirm contenders


def _reap_group_leftovers(pgid: int) -> int:
    """Reap whatever of group `pgid` is still our child (after a contender
    that counts zombies as gone); returns how many were reaped."""
    import errno
    n = 0
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return n
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if pid == 0:
            return n
        n += 1


class TreeBuilder:
    """Builds a process tree of `shape` with `member` programs as a new
    process group and returns its pgid once every member exists."""

    def __init__(self, shape: TreeShape, member: Program):
        argv, ready_lines = shape.argv(member)
        self.argv: List[str] = argv
        self.ready_lines: int = ready_lines

    def raw(self) -> int:
        """Started with os.posix_spawn: no handle anywhere in this process."""
        r, w = os.pipe()
        try:
            pid = os.posix_spawn(self.argv[0], self.argv, os.environ, setpgroup=0,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
            os.close(w)
            w = -1
            try:
                await_ready(r, self.ready_lines)
            except BaseException:
                _kill_and_reap(pid)
                raise
            return pid
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def with_osl(self, executor: Any, containment: Optional[str] = None) -> Any:
        """Started by the executor (in `containment`, else a new process
        group): returns the ExecutionResult."""
        from .operations import ProcessSpawnOperation
        op = (ProcessSpawnOperation(self.argv[0]).with_args(self.argv[1:]).with_new_process_group())
        if containment is not None:
            op = op.with_containment(containment)
        r, w = os.pipe()
        try:
            result = executor.execute(op.with_stdout(w))
            os.close(w)
            w = -1
            try:
                await_ready(r, self.ready_lines)
            except BaseException:
                result.group.close()
                raise
            return result
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)


def _kill_and_reap(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-pgid, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def pidns_refused() -> Optional[str]:
    """Why the pid_namespace tier cannot run here, or None."""
    from .errors import NamespaceUnavailable
    from .executor import ProcessExecutor
    from .operations import ProcessSpawnOperation
    try:
        result = ProcessExecutor("osl-pg-bench").execute(
            ProcessSpawnOperation("true").with_containment("pid_namespace"))
    except NamespaceUnavailable as e:
        return str(e)
    assert result.group is not None
    result.group.close()
    return None


def pidns_spawn_contenders(program: Program) -> List[Contender]:
    """spawn + process.wait in the pid_namespace tier against the process
    group tier: the cost of the namespaces, the init's exec and its fork."""
    from ._backend import backend
    from .executor import ProcessExecutor
    from .operations import ProcessSpawnOperation

    executor = ProcessExecutor("osl-pg-bench")
    op = ProcessSpawnOperation(program.path).with_args(program.argv[1:]).with_new_process_group()
    in_ns = op.with_containment("pid_namespace")

    def c_floor() -> Dict[str, int]:
        _, total = backend.bench_spawn(program.path, op.close_fds)
        return {"wait": total}

    return [
        Contender("osl_pgroup", "osl_pg: process_group tier, execute + process.wait",
                  call_then_wait(lambda: executor.execute(op), lambda r: r.process.wait()), ours=True),
        Contender("osl_pidns", "osl_pg: pid_namespace tier, execute + process.wait",
                  call_then_wait(lambda: executor.execute(in_ns), lambda r: r.process.wait()), ours=True,
                  note="clone(NEWUSER|NEWPID) + exec of the init + its vfork + exec of the program"),
        Contender("c_floor", "C floor of the process_group tier: osl_spawn + waitid, timed in C", c_floor),
    ]


def pidns_kill_contenders(shape: TreeShape, member: Program, executor: Any) -> List[Contender]:
    """kill + confirm a tree in the pid_namespace tier (SIGKILL of its pid 1,
    then its exit, which the kernel reports once the namespace is empty)
    against the process group tier."""
    builder = TreeBuilder(shape, member)
    return [
        Contender("osl_pgroup", "osl_pg: process_group tier, ProcessGroup.kill + wait",
                  osl_kill_sample(builder, executor), ours=True),
        Contender("osl_pidns", "osl_pg: pid_namespace tier, ProcessGroup.kill + wait",
                  osl_kill_sample(builder, executor, "pid_namespace"), ours=True),
    ]


def osl_kill_sample(builder: TreeBuilder, executor: Any, containment: Optional[str] = None
                    ) -> Callable[[], Dict[str, int]]:
    """A sample: build the tree through the executor (in `containment`),
    then time ProcessGroup.kill + wait."""
    now = _clock()

    def sample() -> Dict[str, int]:
        result = builder.with_osl(executor, containment)
        group = result.group
        try:
            t0 = now()
            group.kill()
            group.wait()
            t1 = now()
        finally:
            group.close()
            _reap_group_leftovers(group.pgid)
        return {"kill": t1 - t0}
    return sample


def kill_contenders(shape: TreeShape, member: Program, executor: Any) -> List[Contender]:
    """SIGKILL a whole tree and return once every member is gone. This
    process must be the child subreaper of the trees (see run())."""
    import psutil

    from ._backend import backend

    now = _clock()
    builder = TreeBuilder(shape, member)

    def psutil_tree() -> Dict[str, int]:
        pid = builder.raw()
        try:
            # psutil's documented kill_proc_tree recipe, with SIGKILL.
            t0 = now()
            parent = psutil.Process(pid)
            procs = parent.children(recursive=True)
            procs.append(parent)
            for p in procs:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=30)
            t1 = now()
        finally:
            _kill_and_reap(pid)
        return {"kill": t1 - t0}

    def c_floor() -> Dict[str, int]:
        pid = builder.raw()
        try:
            ns = backend.bench_kill_group(pid)
        finally:
            _kill_and_reap(pid)
        return {"kill": ns}

    return [
        Contender("osl_group", "osl_pg: ProcessGroup.kill + wait", osl_kill_sample(builder, executor), ours=True),
        Contender("psutil", "psutil: children(recursive) + kill + wait_procs", psutil_tree),
        Contender("c_floor", "C floor: killpg + waitpid(-pgid) until ECHILD", c_floor),
    ]


# --------------------------------------------------------------------------
# the run


@dataclass
class Options:
    quick: bool = False
    iterations: Optional[int] = None  # every scenario's rounds (tests)
    parent_mib: int = BIG_PARENT_MIB
    progress: Optional[Callable[[str], None]] = None

    def rounds(self, scenario: str) -> int:
        if self.iterations is not None:
            return self.iterations
        full, quick = ROUNDS[scenario]
        return quick if self.quick else full


def machine_info() -> Dict[str, Any]:
    import psutil
    distro = None
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        distro = fields.get("PRETTY_NAME", "").strip('"') or None
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "system": platform.system(), "kernel": platform.release(),
            "machine": platform.machine(), "distro": distro, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "psutil": psutil.__version__}


def _sections_of(scenario: Scenario, samples: Dict[str, Dict[str, List[int]]]) -> List[Dict[str, Any]]:
    return [make_section(f"{scenario.id}.{metric}" if len(scenario.metrics) > 1 else scenario.id,
                         f"{scenario.title}: {title}" if title else scenario.title, scenario.contenders,
                         {c.id: samples[c.id][metric] for c in scenario.contenders}, scenario.notes)
            for metric, title in scenario.metrics.items()]


def run(options: Options) -> Dict[str, Any]:
    """The whole benchmark; returns the report (see --json)."""
    import asyncio

    import psutil

    from .executor import ProcessExecutor
    from .group import set_child_subreaper

    say = options.progress or (lambda msg: None)
    started = time.monotonic()
    program, member = exit_program(), pause_program()
    loop = asyncio.new_event_loop()
    sections: List[Dict[str, Any]] = []
    spawn_metrics = {"call": "the spawn call", "wait": "spawn + wait"}
    try:
        say("spawn, small parent")
        title = "spawn a static exit(0) program as a new group's leader"
        rss = rss_mib()
        small_note = [f"parent RSS {rss:.0f} MiB" if rss else "parent RSS unknown"]
        sc = Scenario("spawn", title, spawn_metrics, spawn_contenders(program, loop), options.rounds("spawn"),
                      small_note)
        sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
        sc = Scenario("fork", "the same with fork()", spawn_metrics,
                      spawn_contenders(program, loop, fork_only=True), options.rounds("spawn"), small_note)
        sections += _sections_of(sc, run_round_robin(sc, sc.rounds))

        say("run() against subprocess.run()")
        for sid, capture in (("run", False), ("run_capture", True)):
            sc = Scenario(sid, f"run an exit(0) program to completion{', capturing its output' if capture else ''}",
                          {"call": ""}, run_contenders(program, capture), options.rounds("run"))
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))

        say(f"{CROWD_RUN} and {CROWD_GROUP} other processes on the host")
        crowd = Crowd(CROWD_RUN, member)
        try:
            sc = Scenario("run_crowd", f"run an exit(0) program to completion, {CROWD_RUN} other processes running",
                          {"call": ""}, run_contenders(program, False), options.rounds("crowd"),
                          [f"{CROWD_RUN} idle processes elsewhere on the host"])
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
        finally:
            crowd.close()
        crowd = Crowd(CROWD_GROUP, member)
        try:
            keep = ("osl_sync", "osl_group_wait", "popen_pgroup", "c_floor")
            sc = Scenario("group_wait_crowd", f"{title}, {CROWD_GROUP} other processes running",
                          {"wait": "spawn + wait"},
                          [c for c in spawn_contenders(program, loop, include_async=False) if c.id in keep],
                          options.rounds("crowd"), [f"{CROWD_GROUP} idle processes elsewhere on the host"])
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
            set_child_subreaper(True)
            try:
                shape = TreeShape("flat", 100)
                sc = Scenario("kill_crowd.flat101", f"SIGKILL a group of 101 (flat) and confirm it is gone, "
                              f"{CROWD_GROUP} other processes running", {"kill": ""},
                              kill_contenders(shape, member, ProcessExecutor("osl-pg-bench")),
                              options.rounds("kill_crowd"), ["this process is the trees' child subreaper",
                                                             f"{CROWD_GROUP} idle processes elsewhere on the host"])
                sections += _sections_of(sc, run_round_robin(sc, sc.rounds, warmup=1))
            finally:
                set_child_subreaper(False)
        finally:
            crowd.close()

        say(f"spawn, {options.parent_mib} MiB parent")
        big = BigParent(options.parent_mib)
        try:
            rss = rss_mib()
            big_note = [f"parent RSS {rss:.0f} MiB" if rss else "parent RSS unknown"]
            sc = Scenario("spawn_big", f"{title}, parent with {options.parent_mib} MiB written", spawn_metrics,
                          spawn_contenders(program, loop, include_async=False, include_group_wait=False),
                          options.rounds("spawn_big"), big_note)
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
            sc = Scenario("fork_big", f"the same with fork(), parent with {options.parent_mib} MiB written",
                          spawn_metrics, spawn_contenders(program, loop, fork_only=True),
                          options.rounds("spawn_big"), big_note)
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
        finally:
            big.close()

        say("signal")
        executor = ProcessExecutor("osl-pg-bench")
        from .operations import ProcessSpawnOperation
        target = executor.execute(ProcessSpawnOperation(member.path).with_args(member.argv[1:])
                                  .with_new_process_group()).group
        assert target is not None  # a new group has its handle
        try:
            sc = Scenario("signal", "send SIGCONT to a group of one sleeping process", {"call": ""},
                          signal_contenders(target, executor), options.rounds("signal"),
                          [f"thin calls timed in batches of {SIGNAL_BATCH}"])
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
        finally:
            target.close()

        # The trees' orphans must come back to this process to be reaped
        # (the C floor relies on it, and an init that does not reap would
        # otherwise collect zombies), so the bench is their subreaper.
        set_child_subreaper(True)
        try:
            for shape, size in ((TreeShape("flat", 10), "small"), (TreeShape("tree", 2, 4), "small"),
                                (TreeShape("flat", 100), "large"), (TreeShape("tree", 10, 9), "large")):
                say(f"kill {shape.name}")
                sc = Scenario(f"kill.{shape.kind}{shape.members}",
                              f"SIGKILL a group of {shape.members} ({shape.kind}"
                              f"{', 3 levels' if shape.kind == 'tree' else ''}) and confirm it is gone",
                              {"kill": ""}, kill_contenders(shape, member, executor),
                              options.rounds(f"kill_{size}"), ["this process is the trees' child subreaper"])
                sections += _sections_of(sc, run_round_robin(sc, sc.rounds, warmup=1))
        finally:
            set_child_subreaper(False)
        say("pid_namespace tier")
        refused = pidns_refused()
        if refused is None:
            sc = Scenario("pidns", f"{title}: pid_namespace tier vs process_group tier", {"wait": "spawn + wait"},
                          pidns_spawn_contenders(program), options.rounds("spawn"))
            sections += _sections_of(sc, run_round_robin(sc, sc.rounds))
            set_child_subreaper(True)
            try:
                sc = Scenario("pidns_kill.flat101", "SIGKILL a group of 101 (flat) and confirm it is gone: "
                              "pid_namespace tier vs process_group tier", {"kill": ""},
                              pidns_kill_contenders(TreeShape("flat", 100), member, executor),
                              options.rounds("kill_large"), ["this process is the trees' child subreaper"])
                sections += _sections_of(sc, run_round_robin(sc, sc.rounds, warmup=1))
            finally:
                set_child_subreaper(False)
        else:
            say(f"pid_namespace tier skipped: {refused}")
        say("interpreter start and import")
        sc = Scenario("startup", "start a Python interpreter (wall time)", {"call": ""}, startup_contenders(),
                      options.rounds("startup"), ["each sample is a new process"])
        sections += _sections_of(sc, run_round_robin(sc, sc.rounds, warmup=1))
    finally:
        loop.close()
    leftovers = [p.pid for p in psutil.Process().children()]
    return {
        "schema": SCHEMA,
        "machine": machine_info(),
        "mode": "iterations" if options.iterations is not None else ("quick" if options.quick else "full"),
        "program": program.as_json(),
        "member_program": member.as_json(),
        "sections": sections,
        "parent_size": parent_size_effect(sections, options.parent_mib),
        "targets": evaluate_targets(sections),
        "leftover_children": leftovers,
        "seconds": time.monotonic() - started,
    }


# --------------------------------------------------------------------------
# output


def format_report(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"osl-pg bench ({report['mode']}, {report['seconds']:.1f} s): {m['cpus']} CPUs, {m['system']} "
        f"{m['kernel']} {m['machine']}, {m['distro'] or '?'}, {m['implementation']} {m['python']}, "
        f"psutil {m['psutil']}",
        f"spawned program: {report['program']['argv'][0]} ({report['program']['description']})",
        f"tree members:    {' '.join(report['member_program']['argv'])} ({report['member_program']['description']})",
    ]
    for note in report["program"]["notes"] + report["member_program"]["notes"]:
        lines.append(f"note: {note}")
    lines.append("times in microseconds; the last columns compare each osl_pg row (*) with this row, by medians")
    for s in report["sections"]:
        ours = s["ours"]
        heads = [_short_head(o) for o in ours]
        width = max(len(r["label"]) for r in s["contenders"]) + 2
        lines.append("")
        lines.append(f"{s['title']}  [{s['contenders'][0]['n']} rounds]" + "".join(f"; {n}" for n in s["notes"]))
        lines.append(f"  {'':<{width}}{'median':>9}{'p90':>9}" + "".join(f"{h:>16}" for h in heads))
        for r in s["contenders"]:
            ratios = "".join(f"{speedup(s['ratios'][o].get(r['id'], float('nan'))):>16}" for o in ours)
            mark = "*" if r["ours"] else " "
            lines.append(f"{mark} {r['label']:<{width}}{r['median_us']:>9.1f}{r['p90_us']:>9.1f}{ratios}")
    ps = report["parent_size"]
    if ps["rows"]:
        width = max(len(r["label"]) for r in ps["rows"]) + 2
        lines += ["", ps["title"], f"  {'':<{width}}{'small':>9}{'big':>9}{'big/small':>11}"]
        for r in ps["rows"]:
            lines.append(f"  {r['label']:<{width}}{r['small_us']:>9.1f}{r['big_us']:>9.1f}{r['ratio']:>10.2f}x")
    if report["targets"]:
        lines.append("")
        lines.append("targets (ratio of medians, or milliseconds; met when at most the limit)")
        for t in report["targets"]:
            if "ratio" in t:
                lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['ratio']:7.2f}  <= {t['limit']:<7} {t['text']}")
            else:
                lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['value_ms']:7.1f}  <= {t['limit_ms']:g} ms"
                             f"{'':<2} {t['text']}")
    if report["leftover_children"]:
        lines.append(f"WARNING: child processes left behind: {report['leftover_children']}")
    return "\n".join(lines)


def _short_head(contender_id: str) -> str:
    return {"osl_sync": "sync", "osl_async": "async", "osl_group_wait": "group.wait", "executor": "executor",
            "group_signal": "group.signal", "osl_group": "osl_pg", "osl_run": "osl_pg.run",
            "import_osl_pg": "import osl_pg", "cli_run_true": "osl-pg run"}.get(contender_id, contender_id)


def plot_rows(report: Dict[str, Any]) -> List[Tuple[str, float, str]]:
    """One row per scenario for the chart: (label, osl_pg's median / the
    stdlib's or psutil's median, the row's speed-up text). The reference is
    what a Python tool would use instead; fork-only scenarios have no
    osl_pg row and are left out."""
    reference = ("subprocess_run", "popen_pgroup", "psutil", "os_killpg", "import_subprocess")
    rows = []
    for s in report["sections"]:
        if not s["ours"]:
            continue
        ids = {r["id"] for r in s["contenders"]}
        ref = next((r for r in reference if r in ids), None)
        if ref is None:
            continue
        labels = {r["id"]: r["label"] for r in s["contenders"]}
        for o in s["ours"]:
            if o == "executor" or (o == "cli_run_true"):
                continue  # no stdlib twin
            ratio = s["ratios"][o][ref]
            title = s["title"].replace("spawn a static exit(0) program as a new group's leader", "spawn (new group)")
            title = title.replace("run an exit(0) program to completion", "run to completion")
            rows.append((f"{title}\n{labels[o]} vs {labels[ref]}", ratio, speedup(ratio)))
    return rows


def plot_report(report: Dict[str, Any], path: str) -> None:
    """One compact chart: a bar per scenario, osl_pg's median time as a
    multiple of the stdlib's (or psutil's), on a linear axis from zero with
    the 1.0 line marked and each bar labelled."""
    # The optional `plot` extra, absent where the types are checked (mypy:
    # its override in pyproject.toml; pyright has no per-module setting).
    import matplotlib  # pyright: ignore[reportMissingImports]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

    rows = list(reversed(plot_rows(report)))
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.42 * len(rows)))
    y = list(range(len(rows)))
    values = [r[1] for r in rows]
    ax.barh(y, values, color=["tab:green" if v <= 1.0 else "tab:orange" for v in values], height=0.6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for yi, (_, v, text) in zip(y, rows):
        ax.text(v, yi, f" {text}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=6)
    ax.set_xlim(0, max(values + [1.0]) * 1.35)
    ax.set_xlabel("osl_pg's median time / the alternative's (1.0 = the same; below = faster)", fontsize=8)
    m = report["machine"]
    ax.set_title(f"osl-pg bench ({report['mode']}): {m['cpus']} CPUs, {m['kernel']}, "
                 f"{m['implementation']} {m['python']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# command line


def main(args: argparse.Namespace) -> int:
    if not hasattr(os, "posix_spawn") or sys.platform == "win32":
        print("osl-pg bench: POSIX only for now", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401  # pyright: ignore[reportMissingImports]  (see plot_report)
        except ImportError:
            print("osl-pg bench: --plot needs matplotlib: pip install 'osl_pg[plot]'", file=sys.stderr)
            return 2
    progress = None if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr, flush=True))
    mib = args.parent_mib if args.parent_mib is not None else BIG_PARENT_MIB
    report = run(Options(quick=args.quick, iterations=args.iterations, parent_mib=mib,
                         progress=progress))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if args.plot:
        plot_report(report, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 1 if report["leftover_children"] else 0
