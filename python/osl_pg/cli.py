"""The osl-pg command line."""
import argparse
import json
import logging
import os
import signal
import sys
from typing import Dict, List, Optional, Tuple

from ._backend import backend
from .errors import OslError
from .executor import ProcessExecutor
from .group import DEFAULT_GRACE, ProcessGroup, scan_group, set_child_subreaper
from .operations import ProcessSignalOperation, ProcessSpawnOperation, signal_name
from .process import WaitTimeout
from .terminal import ForegroundTerminal
from .tiers import ExitWatch, PgidTier

EXIT_TIMEOUT = 124  # as coreutils timeout
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
FORWARDED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

RUN_EXAMPLES = """examples:
  osl-pg run -- sh examples/spawn-children.sh
      runs the script as a group leader; its leftover children are killed and named
  osl-pg run --timeout 5 --grace 2 -- make test
      after 5 s: SIGTERM to the whole tree, SIGKILL 2 s later, exit status 124
"""

PS_EXAMPLES = """examples:
  osl-pg ps 4242
      PID    PPID STATE     USER       COMMAND
     4242    4000 sleeping  alice      sh -c sleep 100 & setsid sleep 200 & wait
     4243    4242 sleeping  alice        sleep 100
     4244    4242 sleeping  alice        [escaped to group 4244] sleep 200
  osl-pg ps --json 4242 | jq '.members[].pid'
"""

KILL_EXAMPLES = """examples:
  osl-pg kill 4242                      SIGTERM to every member of group 4242
  osl-pg kill -s INT --grace 5 4242     SIGINT; SIGKILL whatever still runs 5 s later
  osl-pg kill --json -s KILL 4242
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


def _describe(members: List[object]) -> str:
    return ", ".join(f"{m.pid} ({m.name})" for m in members)  # type: ignore[attr-defined]


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _say("run: no command given (usage: osl-pg run [--timeout S] [--grace S] -- CMD ARGS...)")
        return 2
    op = ProcessSpawnOperation(command[0]).with_args(command[1:]).with_new_process_group()
    try:
        # Orphans of the tree come to us rather than to init: they are
        # reaped and counted with the group, and escapees can be named.
        set_child_subreaper(True)
    except NotImplementedError:
        pass
    try:
        result = ProcessExecutor("osl-pg-run").execute(op)
    except FileNotFoundError as e:
        _say(_error_line(e))
        return EXIT_NOT_FOUND
    except (PermissionError, OSError) as e:
        _say(_error_line(e))
        return EXIT_CANNOT_RUN
    group: ProcessGroup = result.group  # type: ignore[assignment]
    proc = result.process
    assert proc is not None and group is not None
    terminal = ForegroundTerminal(0)  # the child's group gets the terminal while it runs
    terminal.give_to_group(group)

    def forward(sig: int, _frame: object) -> None:
        try:
            group.signal(sig)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    timed_out = False
    try:
        try:
            rc = proc.wait(args.timeout)
        except WaitTimeout:
            timed_out = True
            _say(f"timeout after {args.timeout:g} s: terminating process group {group.pgid}")
            report = group.terminate(args.grace)
            if report.escalated:
                _say(f"killed after {args.grace:g} s grace: {_describe(report.by_outcome('killed'))}")
            if not report.all_gone:
                _say(f"still running after SIGKILL (stuck in the kernel?): {_describe(report.by_outcome('running'))}")
            rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        leftovers = [m for m in group.members() if not m.zombie]
        if leftovers:
            _say(f"command exited; killing {len(leftovers)} leftover member(s) of group {group.pgid}: "
                 f"{_describe(leftovers)}")
        escaped = _escapees(group)
        group.terminate(args.grace)
        if escaped:
            # Out of reach of the group's signals: named, not hunted down.
            _say(f"{len(escaped)} descendant(s) left group {group.pgid} (setsid/setpgid) and keep running: "
                 + ", ".join(f"{pid} ({name}, now group {pgid})" for pid, (name, pgid) in sorted(escaped.items())))
    finally:
        terminal.restore()
        for s, h in previous.items():
            signal.signal(s, h)
        group.close()
    if timed_out:
        return EXIT_TIMEOUT
    return rc if rc >= 0 else 128 - rc


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


def _ps_row(pid: int, ppid: Optional[int], name: str) -> dict:
    """What ps shows of one process; fields it may not read stay "?"."""
    import psutil
    row = {"pid": pid, "ppid": ppid, "state": "?", "user": "?", "command": name}
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


def cmd_ps(args: argparse.Namespace) -> int:
    members = scan_group(args.pgid)
    if not members:
        _say(f"no process group {args.pgid}")
        return 1
    rows = [dict(_ps_row(m.pid, m.ppid, m.name), escaped=False) for m in members]
    # Descendants that left the group (setsid/setpgid): a group signal
    # misses them. Known while a parent link to the group remains (see
    # osl_pg.tiers.DescendantTracker).
    for e in PgidTier(args.pgid, "process_group").escaped():
        rows.append(dict(_ps_row(e.pid, e.ppid, e.name), escaped=True, pgid=e.pgid))
    if args.json:
        print(json.dumps({"pgid": args.pgid, "members": [r for r in rows if not r["escaped"]],
                          "escaped": [r for r in rows if r["escaped"]]}, indent=2))
        return 0
    by_parent: dict = {}
    pids = {r["pid"] for r in rows}
    for r in rows:
        by_parent.setdefault(r["ppid"] if r["ppid"] in pids else None, []).append(r)
    print(f"{'PID':>7} {'PPID':>7} {'STATE':<9} {'USER':<10} COMMAND")

    def show(parent: Optional[int], depth: int) -> None:
        for r in sorted(by_parent.get(parent, []), key=lambda r: r["pid"]):
            mark = f"[escaped to group {r['pgid']}] " if r["escaped"] else ""
            print(f"{r['pid']:>7} {r['ppid'] or 0:>7} {r['state']:<9} {r['user'][:10]:<10} "
                  f"{'  ' * depth}{mark}{r['command']}")
            show(r["pid"], depth + 1)

    show(None, 0)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    sig = _parse_signal(args.signal)
    executor = ProcessExecutor("osl-pg-kill")
    # The policy check runs inside execute(); a refusal raises PermissionError
    # (SecurityViolation) before anything is sent.
    result = executor.execute(ProcessSignalOperation.signal_group(args.pgid, sig))
    affected = int(result.get_metadata("processes_affected") or 0)
    report = {"pgid": args.pgid, "signal": signal_name(sig), "processes_affected": affected}
    lines = [f"sent {signal_name(sig)} to process group {args.pgid} ({affected} member(s))"]
    if args.grace is not None:
        if sig == signal.SIGKILL:
            outcome = "gone" if _wait_empty(args.pgid, args.grace) else "still running"
        else:
            outcome = _wait_gone_or_kill(executor, args.pgid, args.grace)
        report["outcome"] = outcome
        lines.append({"gone": f"process group {args.pgid} is gone",
                      "killed": f"process group {args.pgid} outlived {args.grace:g} s: killed with SIGKILL",
                      "still running": f"process group {args.pgid} still has running members"}[outcome])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
    return 1 if report.get("outcome") == "still running" else 0


def _wait_empty(pgid: int, timeout: float) -> bool:
    """True once no member of `pgid` runs (zombies do not count), False
    after `timeout` seconds. Sleeps on the members' pidfds where there are
    some, rescanning for members forked meanwhile."""
    import time
    deadline = time.monotonic() + timeout
    with ExitWatch() as exits:
        while True:
            live = exits.live(backend.group_pids(pgid))
            if not live:
                return True
            if time.monotonic() >= deadline:
                return False
            exits.wait(live, deadline)


def _wait_gone_or_kill(executor: ProcessExecutor, pgid: int, grace: float) -> str:
    """"gone" within `grace`, else SIGKILL (through the policy again) and
    "killed", or "still running" if that did not end it either."""
    if _wait_empty(pgid, grace):
        return "gone"
    try:
        executor.execute(ProcessSignalOperation.signal_group(pgid, int(signal.SIGKILL)))
    except ProcessLookupError:  # the last member died just now
        return "gone"
    return "killed" if _wait_empty(pgid, max(grace, 1.0)) else "still running"


def _parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal, name))
    except AttributeError:
        raise SystemExit(f"osl-pg: unknown signal {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osl-pg", description="Spawn process trees and control or kill all of them.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run a command as a process group leader; end the whole tree with it",
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--timeout", type=float, default=None, help="seconds before the whole tree is terminated")
    run.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                     help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_GRACE:g})")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(func=cmd_run)

    ps = sub.add_parser("ps", help="show a process group as a tree",
                        description="Show the members of process group PGID as a tree (pid, ppid, state, user,\n"
                                    "command). Descendants of members that left the group (setsid, setpgid) are\n"
                                    "shown under their parent, marked [escaped to group N].\n"
                                    "Exit status 1 when the group does not exist.",
                        epilog=PS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("pgid", type=int)
    ps.add_argument("--json", action="store_true", help="print JSON: {pgid, members: [...], escaped: [...]}")
    ps.set_defaults(func=cmd_ps)

    kill = sub.add_parser("kill", help="signal a process group (with the library's policy checks)",
                          description="Send a signal to every member of process group PGID, after the same\n"
                                      "policy checks as the library: this program's own group or session, and\n"
                                      "groups with processes of other users, are refused.\n"
                                      "Exit status 1 on a refusal or when the group does not exist.",
                          epilog=KILL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    kill.add_argument("-s", "--signal", default="TERM", help="signal name or number (default TERM)")
    kill.add_argument("--grace", type=float, default=None,
                      help="then wait up to this many seconds for the group to end, and SIGKILL what is left")
    kill.add_argument("--json", action="store_true", help="print JSON: {pgid, signal, processes_affected, outcome}")
    kill.add_argument("pgid", type=int)
    kill.set_defaults(func=cmd_kill)

    from . import bench  # its heavy imports happen only when it runs
    bench.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # A refusal is reported once, by the line below; without a handler the
    # audit logger's WARNING for it would reach stderr as a second line.
    audit_logger = logging.getLogger("osl_pg.audit")
    if not audit_logger.hasHandlers():
        audit_logger.addHandler(logging.NullHandler())
    try:
        return int(args.func(args))
    except (OslError, OSError, ValueError) as e:
        _say(_error_line(e))
        return 1
    except KeyboardInterrupt:
        return 128 + int(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
