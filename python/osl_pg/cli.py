"""The osl-pg command line: run (coreutils timeout's options and exit
statuses, for a whole tree), ps, kill and bench."""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

from . import __version__, audit
from ._backend import backend
from .context import ExecutionContext, SecurityContext
from .errors import CgroupPermissionError, OslError, SecurityViolation
from .executor import ProcessExecutor
from .group import DEFAULT_GRACE, ProcessGroup, scan_group, set_child_subreaper
from .operations import CONTAINMENT, ProcessSignalOperation, ProcessSpawnOperation, signal_name
from .process import Process, WaitTimeout
from .result import ExecutionResult
from .terminal import ForegroundTerminal
from .tiers import ExitWatch, PgidTier

# Exit statuses, as coreutils timeout has them.
EXIT_TIMEOUT = 124
EXIT_FAILED = 125  # osl-pg itself failed (usage, DURATION, containment): the command did not run
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
EXIT_KILLED = 128 + 9

_SIGINT = int(signal.SIGINT)
_SIGTERM = int(signal.SIGTERM)
_SIGKILL = int(getattr(signal, "SIGKILL", 9))  # Windows' signal module has no SIGKILL
_SIGCONT = getattr(signal, "SIGCONT", None)
# Signals osl-pg run passes on to the command, as timeout does (plus -s SIG).
FORWARDED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n))
# --containment: the plain process group, then every tier with_containment()
# accepts; a tier added there is offered here too.
CONTAINMENT_CHOICES = ("process_group",) + tuple(CONTAINMENT)
# Longest single wait: poll() takes milliseconds in an int.
_WAIT_SLICE = 86400.0

RUN_DESCRIPTION = """\
Run CMD as the leader of a new process group and end the whole tree with it:
coreutils timeout's options and exit statuses, for every process CMD starts.
On timeout SIG (default TERM) goes to the whole group, then SIGKILL after
--kill-after. When CMD exits, members of its group still running are ended
(SIGTERM, then SIGKILL after --kill-after) and named on stderr; descendants
that left the group (setsid/setpgid) are named too.

DURATION is a number (fractions allowed) with an optional suffix: s seconds
(the default), m minutes, h hours, d days. 0 disables that timeout."""

RUN_EPILOG = f"""\
exit status:
  124  CMD timed out (unless --preserve-status)
  125  osl-pg itself failed (bad option or DURATION, containment unavailable); CMD did not run
  126  CMD was found but could not be run
  127  CMD was not found
  137  CMD was killed with SIGKILL after a timeout (-k elapsed, or -s KILL), even with --preserve-status
  otherwise CMD's exit status; when a signal ended CMD, osl-pg ends with that signal too

differences from timeout:
  --kill-after defaults to {DEFAULT_GRACE:g} s (timeout: never); -k 0 never sends SIGKILL.
  Leftover members are ended after CMD exits (unless --keep-leftovers).

examples:
  osl-pg run -- sh examples/spawn-children.sh
      runs the script as a group leader; its leftover children are killed and named
  osl-pg run --timeout 1.5m -k 2 -- make test
      after 90 s: SIGTERM to the whole tree, SIGKILL 2 s later, exit status 124 (137 if SIGKILL was needed)
  osl-pg run --json=report.json --containment best_available -- ./server
"""

PS_DESCRIPTION = """\
Show the members of process group PGID as a tree (pid, ppid, session id,
state, user, command). Descendants of members that left the group (setsid,
setpgid) are shown under their parent, marked [escaped to group N]."""

PS_EPILOG = """\
exit status:
  0  the group was shown
  1  there is no process group PGID
  2  bad usage (PGID must be a number from 1 to 2147483647)

examples:
  osl-pg ps 4242
      PID    PPID     SID STATE     USER       COMMAND
     4242    4000    4000 sleeping  alice      sh -c sleep 100 & setsid sleep 200 & wait
     4243    4242    4000 sleeping  alice        sleep 100
     4244    4242    4244 sleeping  alice        [escaped to group 4244] sleep 200
  osl-pg ps --json 4242 | jq '.members[].pid'
"""

KILL_DESCRIPTION = """\
Send a signal to every member of process group PGID, after the same policy
checks as the library: osl-pg's own group or session is always refused, and
a group with processes of other users is refused unless --force is given
(which still needs the privilege to signal them, e.g. root)."""

KILL_EPILOG = """\
exit status:
  0  the signal was sent (with -k: and the group is gone, or was killed)
  1  refused, no process group PGID, or members outlived SIGKILL
  2  bad usage (unknown signal, PGID not a number from 1 to 2147483647)

examples:
  osl-pg kill 4242                      SIGTERM to every member of group 4242
  osl-pg kill -s INT -k 5 4242          SIGINT; SIGKILL whatever still runs 5 s later
  sudo osl-pg kill --force -s KILL 4242 a group with processes of other users
  osl-pg kill -l                        the signal names and numbers
"""

BENCH_EXAMPLES = """examples:
  osl-pg bench --quick
      the whole comparison in under 20 s with fewer rounds (noisier)
  osl-pg bench --json > bench.json
      the same numbers for machines: medians, p90s, ratios, targets, samples counts
  osl-pg bench --plot bench.png
      also draw the medians and p90s (needs matplotlib: pip install 'osl_pg[plot]')
  python -m osl_pg bench
      the full run, as the README's Performance table was made
"""


BENCH_EXIT_STATUS = """
exit status:
  0  the benchmark ran
  1  a measured program left children behind
  2  not supported here (POSIX only), or --plot without matplotlib
"""


def _say(msg: str) -> None:
    print(f"osl-pg: {msg}", file=sys.stderr, flush=True)


def _error_line(e: BaseException) -> str:
    """osl_pg's OSErrors already say what failed (their strerror), so the
    "[Errno N]" prefix and the repeated filename str() adds are dropped."""
    if (isinstance(e, OSError) and isinstance(e, OslError) and e.strerror
            and type(e).__str__ is OSError.__str__):  # SecurityViolation words its own
        return str(e.strerror)
    return str(e)


def _describe(members: Sequence[Any]) -> str:
    return ", ".join(f"{m.pid} ({m.name})" for m in members)


# --------------------------------------------------------------------------
# arguments: durations, signals, pgids

_DURATION = re.compile(
    r"[ \t\n\v\f\r]*(?P<num>\+?(?:"
    r"0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"  # C99 hex float
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|(?i:inf(?:inity)?)))(?P<unit>[smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds, as timeout reads DURATION: a number as strtod() takes it
    (fractions, exponents, hex, inf; leading blanks), then one optional
    suffix s, m, h or d. Negative numbers (-0 too), NaN and anything else
    are refused."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid time interval {text!r}")
    num = m.group("num")
    value = float.fromhex(num) if "x" in num.lower() else float(num)
    return value * _UNITS[m.group("unit")]


def _limit(seconds: float) -> Optional[float]:
    """A DURATION as a wait limit: None when there is none (0, or longer
    than any timer here can wait)."""
    return None if seconds == 0 or seconds > threading.TIMEOUT_MAX else seconds


def _rt_bounds() -> Optional[Tuple[int, int]]:
    lo, hi = getattr(signal, "SIGRTMIN", None), getattr(signal, "SIGRTMAX", None)
    return (int(lo), int(hi)) if lo is not None and hi is not None else None


def parse_signal(text: str) -> int:
    """A signal as timeout -s and kill -s take it: a number, or a name in
    any case with or without SIG (RTMIN+N and RTMAX-N too)."""
    if text.isascii() and text.isdigit():
        number = int(text)
        if number != 0 and number not in signal.valid_signals():
            raise argparse.ArgumentTypeError(f"unknown signal number {number}")
        return number
    name = text.upper()
    name = name[3:] if name.startswith("SIG") else name
    if name == "EXIT":  # as timeout and the shell's trap: signal 0
        return 0
    rt = re.fullmatch(r"RTMIN(?:\+([0-9]+))?|RTMAX(?:-([0-9]+))?", name)
    bounds = _rt_bounds()
    if rt is not None and bounds is not None:
        lo, hi = bounds
        number = lo + int(rt.group(1) or 0) if name.startswith("RTMIN") else hi - int(rt.group(2) or 0)
        if lo <= number <= hi:
            return number
    found = signal.Signals.__members__.get("SIG" + name)  # aliases (IOT, CLD, POLL) too
    if found is not None and rt is None:
        return int(found)
    raise argparse.ArgumentTypeError(f"unknown signal {text!r}")


def short_signal_name(sig: int) -> str:
    """TERM, KILL, RTMIN+3: the name as timeout -v and kill -l print it."""
    bounds = _rt_bounds()
    if bounds is not None and bounds[0] < sig < bounds[1]:
        lo, hi = bounds
        return f"RTMIN+{sig - lo}" if sig - lo <= (hi - lo) // 2 else f"RTMAX-{hi - sig}"
    name = signal_name(sig)
    return name[3:] if name.startswith("SIG") else name


def parse_pgid(text: str) -> int:
    """PGID for ps and kill alike: kill(2)'s 0 ("my own group") and
    negative numbers are not group numbers."""
    try:
        pgid = int(text)
    except ValueError:
        pgid = -1
    if not 1 <= pgid <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"invalid process group id {text!r}: give a number from 1 to 2147483647")
    return pgid


# --------------------------------------------------------------------------
# osl-pg run

class _Signaller:
    """Sends the run's signals, as timeout does: to the whole group (or,
    with --foreground, to the command alone), SIGCONT after each so stopped
    members can act on it, and SIGKILL --kill-after seconds after the first
    signal, whatever sent it (the timeout or a signal osl-pg received).

    The SIGKILL comes from a timer thread, and signals osl-pg receives are
    sent from a thread of their own: the handler may interrupt the main
    thread while it holds a lock that sending takes."""

    def __init__(self, group: Optional[ProcessGroup], proc: Process, name: str, kill_after: Optional[float],
                 verbose: bool, report: bool):
        self.group, self.proc, self.name = group, proc, name
        self.kill_after, self.verbose, self.report = kill_after, verbose, report
        self.sent: List[str] = []
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        self._stopped = False

    def target(self) -> str:
        return f"process group {self.group.pgid}" if self.group is not None else f"command {self.name!r}"

    def send(self, sig: int) -> None:
        with self._lock:
            if self._stopped:
                return
            self._send(sig)
            if sig != _SIGKILL and self.kill_after is not None and self._timer is None:
                self._timer = threading.Timer(self.kill_after, self._kill)
                self._timer.daemon = True
                self._timer.start()

    def forward(self, sig: int, _frame: object) -> None:
        """Signal handler: pass `sig` on from a thread (see the class)."""
        threading.Thread(target=self.send, args=(sig,), daemon=True).start()

    def _send(self, sig: int) -> None:
        if self.verbose:
            _say(f"sending signal {short_signal_name(sig)} to {self.target()}")
        self.sent.append(short_signal_name(sig))
        send = self.group.signal if self.group is not None else self.proc.send_signal
        try:
            try:
                send(sig)
            except NotImplementedError:
                # Windows: Ctrl+C cannot reach a new console group (the
                # backend refuses SIGINT, saying why); end it instead.
                if sig != _SIGINT:
                    raise
                send(_SIGTERM)
            if _SIGCONT is not None and sig not in (_SIGKILL, int(_SIGCONT), 0):
                send(int(_SIGCONT))
        except ProcessLookupError:  # all gone already
            pass

    def _kill(self) -> None:
        with self._lock:
            if self._stopped:
                return
            if self.report and self.group is not None:
                _say(f"still running {self.kill_after:g} s after {self.sent[0]}, killing: "
                     f"{_describe([m for m in self.group.members() if not m.zombie])}")
            self._send(_SIGKILL)

    def stop(self) -> None:
        """No signal from here on; a SIGKILL being sent now completes."""
        with self._lock:
            self._stopped = True
            timer = self._timer
        if timer is not None:
            timer.cancel()
            timer.join()


def _wait_for(proc: Process, seconds: Optional[float]) -> bool:
    """Wait up to `seconds` (None: for ever) for the command; True once it
    exited. Long waits go in slices: the poll() under wait() takes an int
    of milliseconds."""
    if seconds is None:
        proc.wait()
        return True
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        try:
            proc.wait(max(0.0, min(remaining, _WAIT_SLICE)))
            return True
        except WaitTimeout:
            if remaining <= _WAIT_SLICE:
                return False


def _exit_status(rc: int, timed_out: bool, preserve: bool) -> int:
    """timeout's rules: 137 when SIGKILL ended the command after a timeout,
    else 124 after a timeout unless --preserve-status, else the command's
    status (128+N for signal N)."""
    if timed_out and rc == -_SIGKILL:
        return EXIT_KILLED
    if timed_out and not preserve:
        return EXIT_TIMEOUT
    return rc if rc >= 0 else 128 - rc


def _die_of(sig: int) -> None:
    """End osl-pg with the signal that ended the command (timeout does so
    when no timeout fired): the caller sees what the command got. Core
    dumps go off first; the core would be osl-pg's, not the command's."""
    if os.name != "posix":
        return
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, ValueError, OSError):
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL has no handler to reset
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)


def _nothing_left(group: ProcessGroup, subreaper: bool) -> bool:
    """The usual end, told without reading the process table (psutil's
    import and scan were most of `osl-pg run -- true`'s time): the group
    is empty (ProcessGroup.release_if_empty: one killpg after the leader's
    reap) and this process, the tree's subreaper, has no child left. An
    escapee would be one: its parent is a live member (the group is not
    empty), another escapee, or gone, and then the kernel gave it to us."""
    if not subreaper or not group.release_if_empty():
        return False
    try:
        # WNOWAIT: a child that exited stays for the full sweep to name.
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # no child at all
        return True
    return False


def _sweep(group: ProcessGroup, grace: float, keep: bool, say: bool,
           subreaper: bool) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """After the command exited: end the members still running (or leave
    them, with --keep-leftovers) and name them and the escapees."""
    if _nothing_left(group, subreaper):
        return [], []
    leftovers = [m for m in group.members() if not m.zombie]
    escaped = _escapees(group)
    if say and leftovers:
        doing = "leaving" if keep else "killing"
        _say(f"command exited; {doing} {len(leftovers)} leftover member(s) of group {group.pgid}"
             f"{' running' if keep else ''}: {_describe(leftovers)}")
    if keep:
        group.detach()
        outcomes: Dict[int, str] = {}
    else:
        outcomes = {m.pid: m.outcome for m in group.terminate(grace).members}
    if say and escaped:
        # Out of reach of the group's signals: named, not hunted down.
        _say(f"{len(escaped)} descendant(s) left group {group.pgid} (setsid/setpgid) and keep running: "
             + ", ".join(f"{pid} ({name}, now group {pgid})" for pid, (name, pgid) in sorted(escaped.items())))
    return ([{"pid": m.pid, "name": m.name, "outcome": outcomes.get(m.pid, "running")} for m in leftovers],
            [{"pid": pid, "name": name, "pgid": pgid} for pid, (name, pgid) in sorted(escaped.items())])


def _start(op: ProcessSpawnOperation) -> Union[ExecutionResult, int]:
    """The spawn, or the exit status that says why there is none."""
    try:
        return ProcessExecutor("osl-pg-run").execute(op)
    except (NotImplementedError, CgroupPermissionError, ValueError) as e:  # before the PermissionError below
        _say(_error_line(e))
        return EXIT_FAILED
    except FileNotFoundError as e:
        _say(_error_line(e))
        return EXIT_NOT_FOUND
    except OSError as e:
        _say(_error_line(e))
        return EXIT_CANNOT_RUN


def cmd_run(args: argparse.Namespace) -> int:
    """`osl-pg run`: run the command as a group leader (or in a cgroup), as
    coreutils timeout would with the options in `args`, then end and name
    what it left running. Returns the exit status timeout would (124 timed
    out, 125 osl-pg failed and the command never ran, 126/127 not runnable
    or not found, 137 SIGKILL was needed, else the command's own). When
    a signal ended the command (and no timeout fired) osl-pg kills itself
    with that signal on POSIX, as timeout does, so the caller sees what
    the command got. Usage errors exit through argparse with 125."""
    first_signal: int = args.signal  # parse_signal's
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        args.parser.error("no command given")
    if args.foreground and args.containment != "process_group":
        args.parser.error("--foreground keeps CMD in osl-pg's own group: it takes no --containment")
    json_to = args.json
    say = not (args.quiet or json_to == "-")  # the line reports; errors are always said
    op = ProcessSpawnOperation(command[0]).with_args(command[1:])
    subreaper = False
    if not args.foreground:
        op = (op.with_new_process_group() if args.containment == "process_group"
              else op.with_containment(args.containment))
        try:
            # Orphans of the tree come to us rather than to init: they are
            # reaped and counted with the group, and escapees can be named.
            set_child_subreaper(True)
            subreaper = True
        except NotImplementedError:
            pass
    catch = set(FORWARDED)
    if first_signal not in (0, _SIGKILL, getattr(signal, "SIGSTOP", None), _SIGCONT):
        catch.add(first_signal)
    # A signal that comes while the command starts waits, blocked, for the
    # handlers that pass it on: at its default action it would end osl-pg
    # and leave the new tree running. (The child starts with an empty mask.)
    sigmask = getattr(signal, "pthread_sigmask", None)  # not on Windows
    unblocked = sigmask(signal.SIG_BLOCK, catch) if sigmask is not None else None
    try:
        result = _start(op)
        if isinstance(result, int):
            return result
        group: Optional[ProcessGroup] = result.group
        proc = result.process
        assert proc is not None
        signaller = _Signaller(group, proc, command[0], _limit(args.kill_after), args.verbose, say)
        previous = {s: signal.signal(s, signaller.forward) for s in catch}
    finally:
        if sigmask is not None:
            sigmask(signal.SIG_SETMASK, unblocked)
    if args.verbose and group is not None:
        _say(f"{command[0]!r} leads process group {group.pgid} (containment: {group.tier})")
    sweep_grace = args.kill_after if args.kill_after and _limit(args.kill_after) else DEFAULT_GRACE
    terminal = ForegroundTerminal(0)
    if group is not None:
        terminal.give_to_group(group)  # the group gets the terminal while it runs
    timed_out = False
    leftovers: List[Dict[str, Any]] = []
    escaped: List[Dict[str, Any]] = []
    try:
        limit = _limit(args.timeout)
        if terminal.given_to is not None and group is not None:
            # At a terminal: Ctrl-Z stops osl-pg with the command, as a
            # nested shell, and fg continues both (osl_pg.terminal).
            deadline = None if limit is None else time.monotonic() + limit
            finished = terminal.wait_in_foreground(proc, group, deadline)
        else:
            finished = _wait_for(proc, limit)
        if not finished:
            timed_out = True
            if say:
                _say(f"timeout after {args.timeout:g} s: sending {signal_name(first_signal)} to {signaller.target()}")
            signaller.send(first_signal)
            proc.wait()
        rc = proc.wait()
        signaller.stop()
        if group is not None:
            leftovers, escaped = _sweep(group, sweep_grace, args.keep_leftovers, say, subreaper)
    finally:
        signaller.stop()
        terminal.restore()
        if group is not None:
            group.close()
        for s, h in previous.items():
            signal.signal(s, h)
    status = _exit_status(rc, timed_out, args.preserve_status)
    if json_to is not None:
        _write_json(json_to, {
            "command": command, "pid": proc.pid, "pgid": group.pgid if group is not None else None,
            "containment": group.tier if group is not None else None, "timed_out": timed_out,
            "signals_sent": signaller.sent, "returncode": rc, "exit_status": status,
            "leftovers": leftovers, "escaped": escaped})
    if rc < 0 and not timed_out:
        _die_of(-rc)
    return status


def _write_json(where: str, report: Dict[str, Any]) -> None:
    import json
    text = json.dumps(report, indent=2) + "\n"
    if where == "-":
        sys.stderr.write(text)
        sys.stderr.flush()
        return
    try:
        with open(where, "w") as f:
            f.write(text)
    except OSError as e:
        _say(f"cannot write the JSON report: {e}")


def _escapees(group: ProcessGroup) -> Dict[int, Tuple[str, int]]:
    """Descendants that left the group: those the group's tracker saw, and,
    as this process is their subreaper, every live descendant of ours that
    is not in the group (orphans come to us, whatever session they made)."""
    import psutil
    found = {e.pid: (e.name, e.pgid) for e in group.escaped()}
    for child in psutil.Process().children(recursive=True):
        try:
            pgid = os.getpgid(child.pid)
            if pgid != group.pgid and child.pid not in found and child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = (child.name(), pgid)
        except (OSError, psutil.Error):
            continue
    return found


# --------------------------------------------------------------------------
# osl-pg ps

def _ps_row(pid: int, ppid: Optional[int], name: str) -> Dict[str, Any]:
    """What ps shows of one process; fields it may not read stay "?"."""
    import psutil
    row: Dict[str, Any] = {"pid": pid, "ppid": ppid, "sid": "?", "state": "?", "user": "?", "command": name}
    try:
        row["sid"] = os.getsid(pid)
    except (OSError, AttributeError):  # gone, or no sessions (Windows)
        pass
    try:
        p = psutil.Process(pid)
        for key, read in (("state", p.status), ("user", p.username),
                          ("command", lambda: " ".join(p.cmdline()) or p.name())):
            try:
                row[key] = read()
            except psutil.AccessDenied:
                pass
    except psutil.NoSuchProcess:
        row["state"] = "gone"
    return row


def _no_such_group(pgid: int) -> int:
    _say(f"no process group {pgid}")
    return 1


def cmd_ps(args: argparse.Namespace) -> int:
    """`osl-pg ps PGID`: print the members of group `args.pgid` as a tree
    (with session ids; escaped descendants marked), or as JSON with
    `args.json`. Returns 0, or 1 when there is no such group."""
    members = scan_group(args.pgid)
    if not members:
        return _no_such_group(args.pgid)
    rows = [dict(_ps_row(m.pid, m.ppid, m.name), escaped=False) for m in members]
    # Descendants of members that left the group (setsid/setpgid): a group
    # signal misses them. Known while a parent link to the group remains
    # (see osl_pg.tiers.DescendantTracker).
    for e in PgidTier(args.pgid, "process_group").escaped():
        rows.append(dict(_ps_row(e.pid, e.ppid, e.name), escaped=True, pgid=e.pgid))
    if args.json:
        import json
        print(json.dumps({"pgid": args.pgid, "members": [r for r in rows if not r["escaped"]],
                          "escaped": [r for r in rows if r["escaped"]]}, indent=2))
        return 0
    by_parent: Dict[Optional[int], List[Dict[str, Any]]] = {}
    pids = {r["pid"] for r in rows}
    for r in rows:
        by_parent.setdefault(r["ppid"] if r["ppid"] in pids else None, []).append(r)
    print(f"{'PID':>7} {'PPID':>7} {'SID':>7} {'STATE':<9} {'USER':<10} COMMAND")

    def show(parent: Optional[int], depth: int) -> None:
        for r in sorted(by_parent.get(parent, []), key=lambda r: r["pid"]):
            mark = f"[escaped to group {r['pgid']}] " if r["escaped"] else ""
            print(f"{r['pid']:>7} {r['ppid'] or 0:>7} {r['sid']:>7} {r['state']:<9} {r['user'][:10]:<10} "
                  f"{'  ' * depth}{mark}{r['command']}")
            show(r["pid"], depth + 1)

    show(None, 0)
    return 0


# --------------------------------------------------------------------------
# osl-pg kill

def _list_signals() -> int:
    for sig in sorted(signal.valid_signals()):
        print(f"{int(sig):>2} {short_signal_name(int(sig))}")
    return 0


def _holds_this_process(pgid: int) -> bool:
    try:
        return pgid in (os.getpgrp(), os.getsid(0))
    except AttributeError:  # Windows
        return False


def _refusal(pgid: int, e: SecurityViolation) -> str:
    """The policy's refusal in a shell user's terms (its own text names
    the Python API that overrides it)."""
    if _holds_this_process(pgid):
        return f"denied: process group {pgid} holds osl-pg itself (its own group or session)"
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    foreign = [m for m in scan_group(pgid) if m.uid is not None and m.uid != uid]
    if foreign:
        shown = ", ".join(f"pid {m.pid} uid {m.uid}" for m in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return (f"denied: process group {pgid} has processes of other users ({shown}{more}); "
                "--force signals it anyway (given the privilege to, e.g. as root)")
    return str(e)


def cmd_kill(args: argparse.Namespace) -> int:
    """`osl-pg kill PGID`: signal every member through a ProcessExecutor
    (its policy refuses osl-pg's own group or session, and other users'
    processes unless `--force` makes the context elevated), then with `-k`
    wait and SIGKILL what is left; `-l` lists the signals instead. Returns
    0 when sent (and, with -k, the group ended), 1 when refused, when
    there is no such group, or when members outlived SIGKILL."""
    if args.list:
        return _list_signals()
    parser: argparse.ArgumentParser = args.parser
    pgid: Optional[int] = args.pgid
    if pgid is None:
        parser.error("the following arguments are required: PGID")
    sig = args.signal
    security = SecurityContext()
    ctx = ExecutionContext(security.with_elevated() if args.force else security)
    executor = ProcessExecutor("osl-pg-kill")
    # The policy check runs inside execute(); a refusal raises
    # SecurityViolation before anything is sent.
    try:
        result = executor.execute(ProcessSignalOperation.signal_group(pgid, sig), ctx)
    except SecurityViolation as e:
        _say(_refusal(pgid, e))
        return 1
    except ProcessLookupError:
        return _no_such_group(pgid)
    affected = int(result.get_metadata("processes_affected") or 0)
    report: Dict[str, Any] = {"pgid": pgid, "signal": signal_name(sig), "processes_affected": affected}
    lines = [f"sent {signal_name(sig)} to process group {pgid} ({affected} member(s))"]
    grace = args.kill_after
    if grace is not None:
        if sig == _SIGKILL:
            outcome = "gone" if _wait_empty(pgid, grace) else "still running"
        else:
            outcome = _wait_gone_or_kill(executor, ctx, pgid, grace)
        report["outcome"] = outcome
        lines.append({"gone": f"process group {pgid} is gone",
                      "killed": f"process group {pgid} outlived {grace:g} s: killed with SIGKILL",
                      "still running": f"process group {pgid} still has running members"}[outcome])
    if args.json:
        import json
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
    return 1 if report.get("outcome") == "still running" else 0


def _wait_empty(pgid: int, timeout: float) -> bool:
    """True once no member of `pgid` runs (zombies do not count), False
    after `timeout` seconds. Sleeps on the members' pidfds where there are
    some, rescanning for members forked meanwhile."""
    deadline = time.monotonic() + timeout
    with ExitWatch() as exits:
        while True:
            live = exits.live(backend.group_pids(pgid))
            if not live:
                return True
            if time.monotonic() >= deadline:
                return False
            exits.wait(live, deadline)


def _wait_gone_or_kill(executor: ProcessExecutor, ctx: ExecutionContext, pgid: int, grace: float) -> str:
    """"gone" within `grace`, else SIGKILL (through the policy again) and
    "killed", or "still running" if that did not end it either."""
    if _wait_empty(pgid, grace):
        return "gone"
    try:
        executor.execute(ProcessSignalOperation.signal_group(pgid, _SIGKILL), ctx)
    except ProcessLookupError:  # the last member died just now
        return "gone"
    return "killed" if _wait_empty(pgid, max(grace, 1.0)) else "still running"


# --------------------------------------------------------------------------
# the parser

class _Parser(argparse.ArgumentParser):
    """A usage error is two lines, as coreutils prints them, and exits
    with `usage_status`: 125 for run (as timeout), 2 elsewhere."""

    usage_status = 2

    def error(self, message: str) -> NoReturn:
        self.exit(self.usage_status, f"osl-pg: {message}\nTry '{self.prog} --help' for more information.\n")


def _subcommand(sub: Any, name: str, summary: str, description: str, epilog: str) -> _Parser:
    p: _Parser = sub.add_parser(name, help=summary, description=description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(parser=p)
    return p


# Options of run that take a value: a bare --json before the command is
# only ever the flag, never "--json FILE" (see _json_equals_file).
_RUN_VALUE_OPTIONS = {"-t", "--timeout", "-s", "--signal", "-k", "--kill-after", "--grace", "--containment"}


def _json_equals_file(argv: List[str]) -> List[str]:
    """run's --json=FILE becomes --json-file FILE. argparse cannot take
    --json with an optional value here: `--json CMD` would read CMD as the
    file. Only the options before the command are looked at."""
    if argv[:1] != ["run"]:
        return argv
    out, i = ["run"], 1
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-"):
            break
        out += ["--json-file", token[len("--json="):]] if token.startswith("--json=") else [token]
        if token in _RUN_VALUE_OPTIONS and i + 1 < len(argv):
            i += 1
            out.append(argv[i])
        i += 1
    return out + argv[i:]


def build_parser() -> argparse.ArgumentParser:
    """The `osl-pg` argument parser with its run, ps, kill and bench
    subcommands (each with a description, the exit statuses and
    examples); a usage error in `run` exits with 125, as timeout's do."""
    parser = _Parser(prog="osl-pg", description="Spawn process trees and control or kill all of them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="{run,ps,kill,bench}")

    run = _subcommand(sub, "run", "run a command as a process group leader; end the whole tree with it "
                                  "(coreutils timeout's options)", RUN_DESCRIPTION, RUN_EPILOG)
    run.usage_status = EXIT_FAILED
    run.add_argument("--version", action="version", version=f"osl-pg {__version__}")  # as timeout --version
    run.add_argument("-t", "--timeout", metavar="DURATION", type=parse_duration, default=0.0,
                     help="signal the whole tree after DURATION (default 0: no timeout)")
    run.add_argument("-s", "--signal", metavar="SIG", type=parse_signal, default=int(signal.SIGTERM),
                     help="the signal sent on timeout: a name like HUP or a number (default TERM)")
    run.add_argument("-k", "--kill-after", "--grace", metavar="DURATION", type=parse_duration, default=DEFAULT_GRACE,
                     help=f"SIGKILL the group this long after the first signal (default {DEFAULT_GRACE:g}; 0: never)")
    run.add_argument("--preserve-status", action="store_true",
                     help="after a timeout, exit with CMD's status rather than 124")
    run.add_argument("--foreground", action="store_true",
                     help="as timeout --foreground: CMD stays in osl-pg's own group (it reads the terminal and "
                          "gets its signals); only CMD is signalled, its children are neither timed out nor ended")
    run.add_argument("--containment", choices=CONTAINMENT_CHOICES, default="process_group",
                     help="process_group (default); cgroup (Linux, a delegated cgroup v2: nothing can leave it; "
                          "exit 125 if unavailable); pid_namespace (Linux, new user + PID namespaces, no root "
                          "needed: nothing can leave them; exit 125 if refused); best_available (the strongest "
                          "this process may use)")
    run.add_argument("--keep-leftovers", action="store_true",
                     help="leave members still running after CMD exits (they are still named)")
    run.add_argument("--json", action="store_const", const="-", metavar="[=FILE]",
                     help="the report (signals sent, leftovers, escapees, exit status) as JSON on stderr instead "
                          "of lines; --json=FILE writes it to FILE")
    run.add_argument("--json-file", dest="json", help=argparse.SUPPRESS)
    talk = run.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="say every signal sent, as timeout -v")
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="no reports on stderr (timeout, leftovers, escapees); errors still are")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    run.set_defaults(func=cmd_run)

    ps = _subcommand(sub, "ps", "show a process group as a tree", PS_DESCRIPTION, PS_EPILOG)
    ps.add_argument("pgid", metavar="PGID", type=parse_pgid)
    ps.add_argument("--json", action="store_true", help="print JSON: {pgid, members: [...], escaped: [...]}")
    ps.set_defaults(func=cmd_ps)

    kill = _subcommand(sub, "kill", "signal a process group (with the library's policy checks)",
                       KILL_DESCRIPTION, KILL_EPILOG)
    kill.add_argument("-s", "--signal", metavar="SIG", type=parse_signal, default=int(signal.SIGTERM),
                      help="signal name or number (default TERM)")
    kill.add_argument("-l", "--list", action="store_true", help="list the signal numbers and names, and exit")
    kill.add_argument("-k", "--kill-after", "--grace", metavar="DURATION", type=parse_duration, default=None,
                      help="then wait up to DURATION for the group to end, and SIGKILL what is left")
    kill.add_argument("--force", action="store_true",
                      help="signal a group with processes of other users too (an elevated context; the OS "
                           "still decides, so this needs e.g. root)")
    kill.add_argument("--json", action="store_true", help="print JSON: {pgid, signal, processes_affected, outcome}")
    kill.add_argument("pgid", metavar="PGID", type=parse_pgid, nargs="?")
    kill.set_defaults(func=cmd_kill)

    bench = sub.add_parser("bench", help="measure spawn, signal and kill latency against the alternatives",
                           description="Spawn, signal and kill latency of osl_pg against subprocess, "
                                       "os.posix_spawn, asyncio, psutil and C floors, interleaved in one run.",
                           epilog=BENCH_EXIT_STATUS.lstrip("\n") + "\n" + BENCH_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--quick", action="store_true", help="fewer rounds: under about 20 s on two cores")
    bench.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    bench.add_argument("--plot", metavar="FILE.png", help="also draw the medians and p90s (needs matplotlib)")
    # For the tests: tiny runs that still go through every code path.
    bench.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    bench.add_argument("--parent-mib", type=int, default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    """`osl-pg bench`. The bench module (statistics, dataclasses, its
    programs) is imported only here: building the parser for `osl-pg run`
    must not pay for it."""
    from . import bench
    return bench.main(args)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `osl-pg` (and `python -m osl_pg`): parse `argv`
    (default sys.argv[1:]), run the subcommand and return its exit status.
    No subcommand prints the usage and returns 2; osl_pg's own errors are
    printed as one line on stderr and return 1; Ctrl-C returns 130."""
    parser = build_parser()
    args, extra = parser.parse_known_args(_json_equals_file(list(sys.argv[1:] if argv is None else argv)))
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return 2
    if extra:  # with the subcommand's own usage status (125 for run)
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    # A refusal is reported once, by the line below; without a handler the
    # audit logger's WARNING for it would reach stderr as a second line.
    audit.quiet_when_unhandled()
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `osl-pg kill -l | head`: the reader left; say nothing, as coreutils
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + int(getattr(signal, "SIGPIPE", 13))
    except (OslError, OSError, ValueError) as e:
        _say(_error_line(e))
        return 1
    except KeyboardInterrupt:
        return 128 + int(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
