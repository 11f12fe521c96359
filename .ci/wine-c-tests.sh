#!/usr/bin/env bash
# wine-c-tests.sh - build the Windows C layer (csrc/osl_pg_win.c) with mingw
# and run its C test (tests/windows/test_job.c) under Wine in a fresh, private
# WINEPREFIX. Idempotent; needs no stdin or display; safe under
# `set -euo pipefail` from .ci/run. Exit status 0 only if every check passed.
# The Wine plumbing (and the Wine 8 facts behind it) is in wine-lib.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WINE_LOG_TAG=wine-c-tests
# shellcheck source=wine-lib.sh
. "$root/.ci/wine-lib.sh"
wine_init

# --- build ---------------------------------------------------------------

build=$wine_work/build
mkdir -p "$build"
warn=(-Wall -Wextra -Werror)
# Warnings differ with the optimiser (maybe-uninitialized needs -O), so the
# library must be clean at -O0 and -O2; the test runs the -O1 build, the level
# at which mingw once miscompiled the job pid list indexing.
for opt in -O0 -O2; do
    "$WINE_CC" "$opt" "${warn[@]}" -I"$root/csrc" -c "$root/csrc/osl_pg_win.c" \
        -o "$build/osl_pg_win$opt.o"
done
"$WINE_CC" -O1 "${warn[@]}" -I"$root/csrc" "$root/tests/windows/test_job.c" \
    "$root/csrc/osl_pg_win.c" -o "$build/test_job.exe"
wlog "built $build/test_job.exe"

# --- prefix and run ------------------------------------------------------

wine_boot
out=$wine_work/test_job.log
status=0
wine_run "$out" 300 "$build/test_job.exe" || status=$?
# msvcrt writes CRLF; the summary must be a line of its own.
wine_check "$out" "$status" '^[0-9]+ passed, [0-9]+ failed$' ' 0 failed$'
