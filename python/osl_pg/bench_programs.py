"""The programs `osl-pg bench` spawns: a static exit-only binary, a static
binary that sleeps until killed, and shell scripts that build process trees.

/bin/true is a poor probe for spawn latency: the dynamic loader maps libc and
relocates before main(), which costs more than the spawn being measured. The
bench therefore writes a minimal static ELF (one program header, three or four
instructions) into a cache directory at run time. No compiler is needed, so it
works from a wheel; on a machine this module has no code for (not Linux, or
not x86_64/aarch64), or where the cache cannot hold executables, it falls back
to /bin/true and `sleep` and says so.
"""
from __future__ import annotations

import hashlib
import os
import platform
import select
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (import time)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

# Machine code per (machine, program). Linux syscall ABI only.
#   x86_64  exit:  mov eax, 60 (exit); xor edi, edi; syscall
#   x86_64  pause: mov eax, 34 (pause); syscall; jmp back to the mov
#   aarch64 exit:  mov x0, #0; mov x8, #93 (exit); svc #0
#   aarch64 pause: x0..x3 = 0; mov x8, #73 (ppoll: no fds, no timeout, so it
#                  sleeps until a signal); svc #0; b back to the start
_CODE: Dict[Tuple[str, str], Tuple[int, bytes]] = {
    ("x86_64", "exit"): (62, bytes.fromhex("b83c00000031ff0f05")),
    ("x86_64", "pause"): (62, bytes.fromhex("b8220000000f05ebf7")),
    ("aarch64", "exit"): (183, struct.pack("<3I", 0xD2800000, 0xD2800BA8, 0xD4000001)),
    ("aarch64", "pause"): (183, struct.pack("<7I", 0xD2800000, 0xD2800001, 0xD2800002, 0xD2800003,
                                            0xD2800928, 0xD4000001, 0x17FFFFFA)),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_LOAD_ADDRESS = 0x400000


def static_elf(machine: str, program: str) -> Optional[bytes]:
    """A complete static ELF64 executable running `program` ("exit" or
    "pause") on Linux/`machine`, or None when there is no code for it."""
    machine = _MACHINE_ALIASES.get(machine, machine)
    found = _CODE.get((machine, program))
    if found is None:
        return None
    e_machine, code = found
    ehsize, phsize = 64, 56
    size = ehsize + phsize + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, SysV ABI
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, e_machine, 1, _LOAD_ADDRESS + ehsize + phsize,
                                 ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0)
    # One PT_LOAD segment, readable and executable, mapping the whole file.
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, _LOAD_ADDRESS, _LOAD_ADDRESS, size, size, 0x1000)
    return header + segment + code


@dataclass
class Program:
    """What the bench runs: argv[0] is the path."""

    argv: List[str]
    static: bool
    description: str
    notes: List[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.argv[0]

    def as_json(self) -> Dict[str, object]:
        return {"argv": self.argv, "static": self.static, "description": self.description, "notes": self.notes}


def _cache_dirs() -> List[str]:
    dirs = []
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = os.path.expanduser("~")
    if xdg:
        dirs.append(os.path.join(xdg, "osl_pg"))
    elif home and home != "~":
        dirs.append(os.path.join(home, ".cache", "osl_pg"))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    dirs.append(os.path.join(tempfile.gettempdir(), f"osl_pg-{uid}"))
    return dirs


def _install(directory: str, name: str, data: bytes) -> str:
    """Write `data` as an executable `directory/name` unless it is already
    there; the temporary name + rename keeps concurrent runs from seeing a
    half-written file."""
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            if f.read() == data and os.access(path, os.X_OK):
                return path
    except OSError:
        pass
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _exits_zero(argv: List[str]) -> bool:
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ)
    except OSError:
        return False
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _keeps_running(argv: List[str]) -> bool:
    """Start `argv`, check it is still running 20 ms later, kill it."""
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ)
    except OSError:
        return False
    time.sleep(0.02)
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return True
    return False


def _static_program(kind: str) -> Tuple[Optional[str], List[str]]:
    """(path, notes): the generated static program, or None and why not."""
    if not sys.platform.startswith("linux"):
        return None, [f"no static {kind} program for {sys.platform}"]
    data = static_elf(platform.machine(), kind)
    if data is None:
        return None, [f"no static {kind} program for machine {platform.machine()}"]
    machine = _MACHINE_ALIASES.get(platform.machine(), platform.machine())
    name = f"{kind}-{machine}-{hashlib.sha256(data).hexdigest()[:12]}"
    check = _exits_zero if kind == "exit" else _keeps_running
    notes = []
    for directory in _cache_dirs():
        try:
            path = _install(directory, name, data)
        except OSError as e:
            notes.append(f"cannot write {directory}: {e.strerror}")
            continue
        if check([path]):
            return path, notes
        notes.append(f"{path} does not run (noexec mount?)")
    return None, notes


def _program(kind: str, does: str, fallback: List[str], cost: str) -> Program:
    path, notes = _static_program(kind)
    if path is not None:
        return Program([path], True, f"static ELF, {os.path.getsize(path)} bytes, {does}", notes)
    exe = shutil.which(fallback[0]) or f"/bin/{fallback[0]}"
    notes.append(f"falling back to {exe}: {cost}")
    return Program([exe, *fallback[1:]], False, f"{' '.join(fallback)} (dynamically linked)", notes)


def exit_program() -> Program:
    """A program that exits 0 at once: the static ELF, else /bin/true."""
    return _program("exit", "exit(0)", ["true"], "its dynamic loading dominates the spawn times")


def pause_program() -> Program:
    """A program that sleeps until killed: the static ELF, else `sleep`."""
    return _program("pause", "sleeps until killed", ["sleep", "100000"], "trees take longer to build")


# --------------------------------------------------------------------------
# process trees

# `sh -c SCRIPT sh PROGRAM ARGS...`: every member runs PROGRAM ("$@"). Job
# control is off in a non-interactive shell, so background jobs stay in the
# leader's process group. Each shell prints "r" once its children exist
# (forked; they may not have exec'd yet, but they are members already), then
# execs PROGRAM itself, so every member is a sleeping process.
_FLAT = 'i=0; while [ $i -lt {n} ]; do "$@" & i=$((i+1)); done; echo r; exec "$@"'
_TREE = ('i=0; while [ $i -lt {a} ]; do ( j=0; while [ $j -lt {b} ]; do "$@" & j=$((j+1)); done; '
         'echo r; exec "$@" ) & i=$((i+1)); done; exec "$@"')


@dataclass(frozen=True)
class TreeShape:
    """A process group to kill: the leader has `children` children, and in a
    "tree" each of those has `grandchildren` children of its own (three
    levels). "flat" has no grandchildren."""

    kind: str
    children: int
    grandchildren: int = 0

    @property
    def members(self) -> int:
        return 1 + self.children * (1 + self.grandchildren)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.members}"

    def argv(self, member: Program) -> Tuple[List[str], int]:
        """(argv of the tree's builder, how many "r" lines announce that the
        tree is complete)."""
        if self.kind == "flat":
            script, ready_lines = _FLAT.format(n=self.children), 1
        else:
            script, ready_lines = _TREE.format(a=self.children, b=self.grandchildren), self.children
        sh = shutil.which("sh") or "/bin/sh"
        return [sh, "-c", script, "sh", *member.argv], ready_lines


def await_ready(fd: int, lines: int, timeout: float = 30.0) -> None:
    """Read the builders' "r" lines from pipe `fd` until `lines` arrived."""
    deadline = time.monotonic() + timeout
    got = 0
    while got < lines:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError(f"process tree not built after {timeout:g} s ({got}/{lines} builders ready)")
        data = os.read(fd, 4096)
        if not data:
            raise RuntimeError("the tree builder exited before the tree was built")
        got += data.count(b"r")
