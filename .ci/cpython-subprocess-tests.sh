#!/usr/bin/env bash
# CPython's own Popen tests (Lib/test/test_subprocess.py, shipped with the
# interpreter) against osl_pg.Popen: subprocess.Popen is replaced by
# osl_pg.Popen before the test module is loaded, so the tests' Popen() and
# subprocess.run()/call()/check_output() (which build a Popen) all spawn
# through osl_pg. The tests osl_pg.Popen diverges from on purpose are
# skipped with their reason (README: "osl_pg.Popen"); any other failure fails.
# Usage: .ci/cpython-subprocess-tests.sh [python]   (default: the README's .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
if ! "$py" -c 'import test.test_subprocess' 2>/dev/null; then
  echo "skipped: $("$py" -V 2>&1) ships no test.test_subprocess"
  exit 0
fi

read -r -d '' runner <<'EOF' || true
import subprocess
import sys
import unittest

import osl_pg
from osl_pg import ProcessSpawnOperation

subprocess.Popen = osl_pg.Popen
from test import test_subprocess as t  # noqa: E402  (after the patch: its helper classes subclass ours)

CLASSES = ["ProcessTestCase", "RunFuncTestCase", "POSIXProcessTestCase", "ContextManagerTests"]
NO_PREEXEC = "preexec_fn runs Python in a forked child; osl_pg never forks, so preexec_fn raises TypeError"
DIVERGENCES = {
    "test_preexec": NO_PREEXEC,
    "test_preexec_exception": NO_PREEXEC,
    "test_preexec_gc_module_failure": NO_PREEXEC,
    "test_preexec_fork_failure": NO_PREEXEC,
    "test_preexec_errpipe_does_not_double_close_pipes": NO_PREEXEC,
    "test_close_fds_after_preexec": NO_PREEXEC,
    "test_surrogates_error_message": NO_PREEXEC,
    "test__use_vfork": "mocks subprocess._fork_exec, which osl_pg does not call (it spawns through its C layer)",
    "test_exception_errpipe_normal": "mocks subprocess._fork_exec's error pipe; osl_pg's C layer reports errno itself",
    "test_exception_errpipe_bad_data": "mocks subprocess._fork_exec's error pipe; osl_pg's C layer reports errno itself",
    "test_stopped": "mocks os.waitpid; osl_pg reads the status through its Process handle (waitid WNOWAIT), "
                    "never os.waitpid, so the mock is not seen",
}
# Keywords the native layer maps (ProcessSpawnOperation.with_user etc.):
# until a build has them they raise NotImplementedError.
NEEDS = {"test_user": "with_user", "test_group": "with_group", "test_extra_groups": "with_extra_groups",
         "test_extra_groups_empty_list": "with_extra_groups",  # 3.12+
         "test_extra_groups_invalid_gid_t_values": "with_extra_groups",  # 3.12+
         "test_umask": "with_umask", "test_restore_signals": "with_restore_signals"}
for name, builder in NEEDS.items():
    if not hasattr(ProcessSpawnOperation, builder):
        DIVERGENCES[name] = f"needs ProcessSpawnOperation.{builder}() (the native side), missing in this build"

for cls_name in CLASSES:
    cls = getattr(t, cls_name)
    for name, reason in DIVERGENCES.items():
        if name in cls.__dict__:
            setattr(cls, name, unittest.skip("osl_pg: " + reason)(cls.__dict__[name]))

suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(getattr(t, n)) for n in CLASSES)
result = unittest.TextTestRunner(verbosity=int(sys.argv[1]) if len(sys.argv) > 1 else 1).run(suite)
ours = sum(1 for _, why in result.skipped if why.startswith("osl_pg: "))
print(f"test_subprocess against osl_pg.Popen on Python {sys.version.split()[0]}: ran {result.testsRun}, "
      f"failed {len(result.failures)}, errors {len(result.errors)}, skipped {len(result.skipped)} "
      f"({ours} listed divergences, {len(result.skipped) - ours} skipped by CPython itself)")
sys.exit(0 if result.wasSuccessful() else 1)
EOF

timeout 900 "$py" -c "$runner" "${VERBOSE:-1}"
