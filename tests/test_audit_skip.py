"""The audit record is skipped only when nothing could see it: no handler up
to the root, no filter on the audit logger, and a level the last-resort
handler ignores. Everything that can observe a record still gets it."""
import logging
import subprocess
import sys

from osl_pg import ProcessExecutor, ProcessSpawnOperation

from conftest import py


def test_a_handler_up_the_tree_gets_every_record(caplog):
    with caplog.at_level(logging.INFO, logger="osl_pg.audit"):
        result = ProcessExecutor("audit-test").execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "0"]))
        result.process.wait()
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert [r["operation_id"] for r in records] == [result.operation_id]
    assert records[0]["outcome"] == "ok"


def test_a_filter_on_the_audit_logger_sees_records_without_any_handler():
    seen = []

    def remember(record):
        seen.append(record.audit["operation_id"])
        return False

    logger = logging.getLogger("osl_pg.audit")
    logger.addFilter(remember)
    try:
        result = ProcessExecutor("audit-test").execute(ProcessSpawnOperation(sys.executable).with_args(["-c", "0"]))
        result.process.wait()
    finally:
        logger.removeFilter(remember)
    assert seen == [result.operation_id]


def test_without_handlers_a_denial_still_reaches_stderr_and_an_allowed_spawn_prints_nothing():
    code = (
        "import sys\n"
        "from osl_pg import ProcessExecutor, ProcessSpawnOperation, SecurityViolation\n"
        "from osl_pg.policy import AllowListPolicy\n"
        "r = ProcessExecutor('quiet').execute(ProcessSpawnOperation(sys.executable).with_args(['-c', '0']))\n"
        "r.process.wait()\n"
        "sys.stderr.write('--allowed done--\\n')\n"
        "try:\n"
        "    ProcessExecutor('strict', [AllowListPolicy(deny={'*': ['ProcessSpawn']})]).execute(\n"
        "        ProcessSpawnOperation(sys.executable))\n"
        "except SecurityViolation:\n"
        "    pass\n"
    )
    out = subprocess.run(py(code), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = out.stderr.split("--allowed done--\n")
    assert before == ""
    assert "denied" in after and "ProcessSpawn" in after

