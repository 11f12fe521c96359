"""The osl-pg command line."""
import argparse
import json
import os
import signal
import sys
from typing import List, Optional

from .errors import OslError
from .executor import ProcessExecutor
from .group import DEFAULT_GRACE, ProcessGroup, scan_group
from .operations import ProcessSignalOperation, ProcessSpawnOperation, signal_name
from .process import WaitTimeout

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


def _say(msg: str) -> None:
    print(f"osl-pg: {msg}", file=sys.stderr, flush=True)


def _describe(members: List[object]) -> str:
    return ", ".join(f"{m.pid} ({m.name})" for m in members)  # type: ignore[attr-defined]


class _Terminal:
    """Hands the controlling terminal to the child's group while it runs
    (so it can read the terminal and gets Ctrl-C itself), and takes it back
    afterwards, ignoring SIGTTOU for the handback."""

    def __init__(self) -> None:
        self.fd: Optional[int] = None
        try:
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                self.fd = 0
        except OSError:
            self.fd = None

    def give(self, pgid: int) -> None:
        if self.fd is not None:
            self._set(pgid)

    def restore(self) -> None:
        if self.fd is not None:
            self._set(os.getpgrp())

    def _set(self, pgid: int) -> None:
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self.fd, pgid)  # type: ignore[arg-type]
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, old)


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _say("run: no command given (usage: osl-pg run [--timeout S] [--grace S] -- CMD ARGS...)")
        return 2
    op = ProcessSpawnOperation(command[0]).with_args(command[1:]).with_new_process_group()
    try:
        result = ProcessExecutor("osl-pg-run").execute(op)
    except FileNotFoundError as e:
        _say(str(e))
        return EXIT_NOT_FOUND
    except (PermissionError, OSError) as e:
        _say(str(e))
        return EXIT_CANNOT_RUN
    group: ProcessGroup = result.group  # type: ignore[assignment]
    proc = result.process
    assert proc is not None and group is not None
    terminal = _Terminal()
    terminal.give(group.pgid)

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
            rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        leftovers = [m for m in group.members() if not m.zombie]
        if leftovers:
            _say(f"command exited; killing {len(leftovers)} leftover member(s) of group {group.pgid}: "
                 f"{_describe(leftovers)}")
        group.terminate(args.grace)
    finally:
        terminal.restore()
        for s, h in previous.items():
            signal.signal(s, h)
        group.close()
    if timed_out:
        return EXIT_TIMEOUT
    return rc if rc >= 0 else 128 - rc


def cmd_ps(args: argparse.Namespace) -> int:
    import psutil
    members = scan_group(args.pgid)
    if not members:
        _say(f"no process group {args.pgid}")
        return 1
    rows = []
    for m in members:
        try:
            p = psutil.Process(m.pid)
            with p.oneshot():
                user, cmd, state = p.username(), " ".join(p.cmdline()) or p.name(), p.status()
        except psutil.Error:
            user, cmd, state = "?", m.name, "gone"
        rows.append({"pid": m.pid, "ppid": m.ppid, "state": state, "user": user, "command": cmd})
    if args.json:
        print(json.dumps({"pgid": args.pgid, "members": rows}, indent=2))
        return 0
    by_parent = {}
    pids = {r["pid"] for r in rows}
    for r in rows:
        by_parent.setdefault(r["ppid"] if r["ppid"] in pids else None, []).append(r)
    print(f"{'PID':>7} {'PPID':>7} {'STATE':<9} {'USER':<10} COMMAND")

    def show(parent: Optional[int], depth: int) -> None:
        for r in sorted(by_parent.get(parent, []), key=lambda r: r["pid"]):
            print(f"{r['pid']:>7} {r['ppid'] or 0:>7} {r['state']:<9} {r['user'][:10]:<10} "
                  f"{'  ' * depth}{r['command']}")
            show(r["pid"], depth + 1)

    show(None, 0)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    sig = _parse_signal(args.signal)
    executor = ProcessExecutor("osl-pg-kill")
    # The policy check runs inside execute(); a refusal raises PermissionError.
    result = executor.execute(ProcessSignalOperation.signal_group(args.pgid, sig))
    print(f"sent {signal_name(sig)} to process group {args.pgid} "
          f"({result.get_metadata('processes_affected')} member(s))")
    if args.grace is not None and sig != signal.SIGKILL:
        report = _wait_gone_or_kill(args.pgid, args.grace)
        print(report)
    return 0


def _wait_gone_or_kill(pgid: int, grace: float) -> str:
    import time
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(not m.zombie for m in scan_group(pgid)):
            return f"process group {pgid} is gone"
        time.sleep(0.01)
    ProcessExecutor("osl-pg-kill").execute(ProcessSignalOperation.signal_group(pgid, int(signal.SIGKILL)))
    return f"process group {pgid} outlived {grace:g} s: sent SIGKILL"


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
                        epilog="examples:\n  osl-pg ps 4242\n  osl-pg ps --json 4242",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("pgid", type=int)
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.set_defaults(func=cmd_ps)

    kill = sub.add_parser("kill", help="signal a process group (with the library's policy checks)",
                          epilog="examples:\n  osl-pg kill 4242\n  osl-pg kill -s INT --grace 5 4242",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    kill.add_argument("-s", "--signal", default="TERM", help="signal name or number (default TERM)")
    kill.add_argument("--grace", type=float, default=None, help="then wait this long and SIGKILL what is left")
    kill.add_argument("pgid", type=int)
    kill.set_defaults(func=cmd_kill)

    from . import bench  # its heavy imports happen only when it runs
    bench.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OslError, OSError, ValueError) as e:
        _say(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
