#!/usr/bin/env bash
# wine-c-tests.sh - build the Windows C layer (csrc/osl_pg_win.c) with mingw
# and run its C test (tests/windows/test_job.c) under Wine in a fresh, private
# WINEPREFIX. Idempotent; needs no stdin or display; safe under
# `set -euo pipefail` from .ci/run. Exit status 0 only if every check passed.
#
# Facts this relies on are in /work/shared/WINDOWS-TESTING.md: Wine 8 needs
# pipes, not files, as std handles of a Windows program; wineserver 8 can
# crash (and the program then still exits 0), so the summary line is required
# and "wineserver crashed" fails the run; processes left by a crashed
# wineserver survive `wineserver -k`, so leftovers are found by our
# WINEPREFIX in their environment, and only those are killed.
set -euo pipefail

started=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
apt_pkgs=(gcc-mingw-w64-x86-64-win32 wine wine64)
cc=x86_64-w64-mingw32-gcc

log() { printf '[wine-c-tests] %s\n' "$*" >&2; }

# --- tools ---------------------------------------------------------------

# Debian puts the wine wrapper in /usr/bin and the real 64-bit loader and
# wineserver in /usr/lib/wine; other layouts use /opt/wine-*/bin.
export PATH="$PATH:/usr/lib/wine:/usr/lib64/wine:/opt/wine-stable/bin:/opt/wine-devel/bin"

find_wine() {
    local c
    for c in /usr/lib/wine/wine64 "$(command -v wine64 || true)" \
        "$(command -v wine || true)"; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

find_wineserver() {
    local c
    for c in "$(command -v wineserver || true)" /usr/lib/wine/wineserver64 \
        /usr/lib/wine/wineserver; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

have_tools() {
    command -v "$cc" >/dev/null 2>&1 && find_wine >/dev/null &&
        find_wineserver >/dev/null
}

if ! have_tools; then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            log "missing ${apt_pkgs[*]} and not root (no sudo)"
            exit 1
        }
        sudo=(sudo -n)
    fi
    log "installing ${apt_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq </dev/null
    "${sudo[@]}" apt-get install -y -qq "${apt_pkgs[@]}" </dev/null >/dev/null
    have_tools || {
        log "tools still missing after apt-get install"
        exit 1
    }
fi
wine=$(find_wine)
wineserver=$(find_wineserver)
log "wine: $wine ($("$wine" --version 2>/dev/null || echo '?')), wineserver: $wineserver"

# --- a private prefix, always cleaned up ---------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/osl-pg-wine.XXXXXX")
prefix=$work/prefix

# Kill what is left of *our* Wine: processes whose environment names our
# prefix. Nothing else is touched (other prefixes, other runs, other users).
kill_our_leftovers() {
    local env_file pid pids=()
    for env_file in /proc/[0-9]*/environ; do
        pid=${env_file#/proc/}
        pid=${pid%/environ}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if tr '\0' '\n' 2>/dev/null <"$env_file" | grep -qxF "WINEPREFIX=$prefix"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        log "killing leftover processes of $prefix: ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
}

# Run a command in our prefix. WINEPREFIX is given to Wine's commands only,
# never exported, so that tee, grep and this shell never match the scan above.
in_prefix() { WINEPREFIX=$prefix "$@"; }

# Let our wineserver finish (it exits a few seconds after its last process),
# then end whatever of ours outlived it: after a wineserver crash nothing
# else will, and those processes still hold the output pipe open.
settle() {
    in_prefix timeout 30 "$wineserver" -w >/dev/null 2>&1 </dev/null
    kill_our_leftovers
}

cleanup() {
    local rc=$?
    set +e
    in_prefix timeout 20 "$wineserver" -k >/dev/null 2>&1 </dev/null
    kill_our_leftovers
    sleep 0.2
    kill_our_leftovers
    rm -rf "$work"
    log "done in $((SECONDS - started)) s (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="  # no Mono/Gecko install prompts
export WINEARCH=win64
export WINELOADER=${WINELOADER:-$wine}
unset DISPLAY WAYLAND_DISPLAY  # never open windows, even on a desktop

# --- build ---------------------------------------------------------------

build=$work/build
mkdir -p "$build"
warn=(-Wall -Wextra -Werror)
# Warnings differ with the optimiser (maybe-uninitialized needs -O), so the
# library must be clean at -O0 and -O2; the test runs the -O1 build, the level
# at which mingw once miscompiled the job pid list indexing.
for opt in -O0 -O2; do
    "$cc" "$opt" "${warn[@]}" -I"$root/csrc" -c "$root/csrc/osl_pg_win.c" \
        -o "$build/osl_pg_win$opt.o"
done
"$cc" -O1 "${warn[@]}" -I"$root/csrc" "$root/tests/windows/test_job.c" \
    "$root/csrc/osl_pg_win.c" -o "$build/test_job.exe"
log "built $build/test_job.exe"

# --- prefix and run ------------------------------------------------------

t0=$SECONDS
in_prefix timeout -k 10 180 "$wine" wineboot --init </dev/null >"$work/wineboot.log" 2>&1 || {
    cat "$work/wineboot.log" >&2
    log "wineboot --init failed"
    exit 1
}
in_prefix timeout -k 10 120 "$wineserver" -w
log "prefix ready in $((SECONDS - t0)) s"

t0=$SECONDS
out=$work/test_job.log
set +e
# Std handles must be pipes under Wine: stdin from /dev/null, output via tee.
# The left side settles before it exits, so tee always sees EOF.
(
    in_prefix timeout -k 10 300 "$wine" "$build/test_job.exe" </dev/null 2>&1
    rc=$?
    settle
    exit "$rc"
) | tee "$out"
status=${PIPESTATUS[0]}
set -e
log "test_job.exe exited $status after $((SECONDS - t0)) s"

fail=0
# msvcrt writes CRLF; the summary must be a line of its own.
summary=$(tr -d '\r' <"$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1 || true)
if [[ -z $summary ]]; then
    log "FAIL: no 'N passed, N failed' summary line"
    fail=1
elif [[ $summary != *" 0 failed" ]]; then
    log "FAIL: $summary"
    fail=1
fi
if grep -qi 'wineserver crashed' "$out"; then
    log "FAIL: wineserver crashed"
    fail=1
fi
if ((status != 0)); then
    log "FAIL: exit status $status"
    fail=1
fi
exit "$fail"
