#!/usr/bin/env bash
# types.sh VENV - the type checks, in VENV (the README's venv, with osl_pg
# installed in it): mypy --strict and pyright on python/osl_pg (their
# settings are in pyproject.toml), both again for Windows on the modules
# only Windows runs, and pyright --verifytypes on the installed package
# (the public API must be 100% typed), and tests/typing: the types users get.
# Versions: .ci/types-requirements.txt.
# pyright's PyPI package fetches its node package (npm) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "${1:-.venv}" && pwd)
"$venv/bin/pip" install -q --disable-pip-version-check -r .ci/types-requirements.txt
windows_only=(python/osl_pg/_backend.py python/osl_pg/_windows.py python/osl_pg/job_tier.py)

echo "+ mypy (strict)"
"$venv/bin/mypy"
"$venv/bin/mypy" --platform win32 --follow-imports=silent "${windows_only[@]}"
echo "+ pyright"
"$venv/bin/pyright" --pythonpath "$venv/bin/python"
"$venv/bin/pyright" --pythonpath "$venv/bin/python" --pythonplatform Windows "${windows_only[@]}"
echo "+ the types users get: tests/typing (assert_type on run(), Popen, the errors, the operations)"
"$venv/bin/mypy" --strict tests/typing
"$venv/bin/pyright" --pythonpath "$venv/bin/python" tests/typing
echo "+ pyright --verifytypes osl_pg"
# From outside the checkout: pyproject.toml's [tool.pyright] would point it
# at the sources; this checks what users install. External packages (psutil,
# pytest) are theirs to type.
(cd / && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" pyright --verifytypes osl_pg --ignoreexternal) > "$venv/verifytypes.txt" || {
  cat "$venv/verifytypes.txt"; exit 1; }
grep "completeness score" "$venv/verifytypes.txt"
