"""Checked by mypy and pyright in .ci/types.sh, never run: the types users
get from the public API (a wrong one is a type error here). pytest does not
collect it (not a test_*.py file)."""
from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any, List

import osl_pg

if TYPE_CHECKING:
    from typing_extensions import assert_type


async def _async_runs() -> None:
    assert_type(await osl_pg.run_async(["true"]), osl_pg.CompletedRun[bytes])
    assert_type(await osl_pg.run_async(["true"], text=True), osl_pg.CompletedRun[str])
    assert_type(await osl_pg.run_async(["true"], encoding="utf-8", timeout=1.0), osl_pg.CompletedRun[str])


def _runs(flag: bool) -> None:
    assert_type(osl_pg.run(["true"]), osl_pg.CompletedRun[bytes])
    assert_type(osl_pg.run(["true"], capture_output=True, check=True), osl_pg.CompletedRun[bytes])
    assert_type(osl_pg.run("true", shell=True, text=True), osl_pg.CompletedRun[str])
    assert_type(osl_pg.run(["true"], encoding="utf-8"), osl_pg.CompletedRun[str])
    assert_type(osl_pg.run(["true"], errors="replace"), osl_pg.CompletedRun[str])
    assert_type(osl_pg.run(["true"], universal_newlines=True), osl_pg.CompletedRun[str])
    assert_type(osl_pg.run(["true"], text=flag), osl_pg.CompletedRun[Any])
    r = osl_pg.run(["true"], capture_output=True, text=True, grace=1.0, bufsize=-1, creationflags=0)
    assert_type(r.stdout, str)
    assert_type(r.pgid, int)
    assert_type(r.leftovers, List[osl_pg.Leftover])
    done: subprocess.CompletedProcess[str] = r  # still a CompletedProcess
    del done


def _errors() -> None:
    try:
        osl_pg.run(["false"], check=True, timeout=1.0)
    except osl_pg.TimeoutExpired as e:
        assert_type(e.pgid, int)
        assert_type(e.leftovers, List[osl_pg.Leftover])
        stdlib_timeout: subprocess.TimeoutExpired = e
        del stdlib_timeout
    except osl_pg.CalledProcessError as e:
        assert_type(e.pgid, int)
        assert_type(e.leftovers, List[osl_pg.Leftover])
        stdlib_error: subprocess.CalledProcessError = e
        del stdlib_error


def _popens() -> None:
    with osl_pg.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as p:
        assert_type(p, osl_pg.Popen[bytes])
        assert_type(p.communicate(b"x")[0], bytes)  # typeshed's Popen.communicate, for Popen[bytes]
        assert_type(p.group, "osl_pg.ProcessGroup | None")
    assert_type(osl_pg.Popen(["cat"], text=True), osl_pg.Popen[str])
    assert_type(osl_pg.Popen(["cat"], encoding="utf-8", grace=2.0), osl_pg.Popen[str])
    assert_type(osl_pg.Popen(["cat"], -1), osl_pg.Popen[bytes])  # a positional bufsize
    stdlib_popen: subprocess.Popen[bytes] = osl_pg.Popen(["true"])
    del stdlib_popen


def _operations() -> None:
    op = osl_pg.ProcessSpawnOperation(["sleep", "1"]).with_new_process_group().with_operation_id("x")
    assert_type(op, osl_pg.ProcessSpawnOperation)
    result = osl_pg.ProcessExecutor("t").execute(op)
    assert_type(result.pgid, "int | None")
    assert_type(result.group, "osl_pg.ProcessGroup | None")
