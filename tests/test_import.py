"""What `import osl_pg` costs a program that only imports it (#12): none of
the heavy modules below is imported until a feature needs it. A fresh
interpreter tells, not this one (pytest imported all of them already)."""
import subprocess
import sys

# Each costs milliseconds of a bare start: typing ~5-8 ms, asyncio ~15 ms,
# psutil ~5 ms, dataclasses ~10 ms with inspect (which imports ast and dis).
HEAVY = ("typing", "asyncio", "psutil", "dataclasses", "inspect", "logging")

PROBE = """
import sys
heavy = {heavy!r}
before = {{m for m in heavy if m in sys.modules}}
import osl_pg
print(" ".join(sorted(before)))
print(" ".join(m for m in heavy if m in sys.modules and m not in before))
"""


def _import_in_a_fresh_interpreter():
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True,
                         text=True, check=True).stdout
    before, added = out.split("\n")[:2]
    return before.split(), added.split()


def test_import_osl_pg_imports_none_of_the_heavy_modules():
    before, added = _import_in_a_fresh_interpreter()
    assert before == [], f"the interpreter's start already imported {before}: the check below would prove nothing"
    assert added == [], f"import osl_pg imported {added}"



CLI_PROBE = """
import sys
from osl_pg.cli import main
rc = main(["run", "--", {true!r}])
print(rc)
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_osl_pg_run_of_a_command_that_leaves_nothing_reads_no_process_table():
    # `osl-pg run -- true` used to import psutil (to list the finished
    # group's members) and the bench module (to build its parser): ~35 ms of
    # its ~75. A command that leaves nothing needs neither.
    import shutil
    heavy = HEAVY + ("osl_pg.bench", "statistics")
    out = subprocess.run([sys.executable, "-c", CLI_PROBE.format(true=shutil.which("true"), heavy=heavy)],
                         capture_output=True, text=True, check=True).stdout
    rc, loaded = out.split("\n")[:2]
    assert rc == "0"
    assert loaded.split() == [], f"osl-pg run -- true imported {loaded}"
