# wine-lib.sh - shared by the Wine test scripts (.ci/wine-c-tests.sh,
# .ci/wine-py-tests.sh); source it, then call wine_init. Needs bash with
# `set -euo pipefail`.
#
# Facts this relies on are in /work/shared/WINDOWS-TESTING.md: Wine 8 needs
# pipes, not files, as std handles of a Windows program; wineserver 8 can
# crash (and the program then still exits 0), so the summary line is required
# and "wineserver crashed" fails the run; processes left by a crashed
# wineserver survive `wineserver -k`, so leftovers are found by our
# WINEPREFIX in their environment, and only those are killed.

WINE_APT_PKGS=(gcc-mingw-w64-x86-64-win32 wine wine64)
WINE_CC=x86_64-w64-mingw32-gcc
wine_started=$SECONDS

wlog() { printf '[%s] %s\n' "${WINE_LOG_TAG:-wine}" "$*" >&2; }

# Debian puts the wine wrapper in /usr/bin and the real 64-bit loader and
# wineserver in /usr/lib/wine; other layouts use /opt/wine-*/bin.
export PATH="$PATH:/usr/lib/wine:/usr/lib64/wine:/opt/wine-stable/bin:/opt/wine-devel/bin"

_wine_first_executable() {
    local c
    for c in "$@"; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}

find_wine() {
    _wine_first_executable /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"
}

find_wineserver() {
    _wine_first_executable "$(command -v wineserver || true)" /usr/lib/wine/wineserver64 /usr/lib/wine/wineserver
}

_wine_have_tools() {
    command -v "$WINE_CC" >/dev/null 2>&1 && find_wine >/dev/null && find_wineserver >/dev/null
}

# apt-get install what is missing (as root, or with passwordless sudo).
wine_install_tools() {
    _wine_have_tools && return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            wlog "missing ${WINE_APT_PKGS[*]} and not root (no sudo)"
            return 1
        }
        sudo=(sudo -n)
    fi
    wlog "installing ${WINE_APT_PKGS[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq </dev/null
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${WINE_APT_PKGS[@]}" </dev/null >/dev/null
    _wine_have_tools || {
        wlog "tools still missing after apt-get install"
        return 1
    }
}

# Kill what is left of *our* Wine: processes whose environment names our
# prefix. Nothing else is touched (other prefixes, other runs, other users).
wine_kill_leftovers() {
    local env_file pid pids=()
    for env_file in /proc/[0-9]*/environ; do
        pid=${env_file#/proc/}
        pid=${pid%/environ}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if tr '\0' '\n' 2>/dev/null <"$env_file" | grep -qxF "WINEPREFIX=$wine_prefix"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        wlog "killing leftover processes of $wine_prefix: ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
}

# Run a command in our prefix. WINEPREFIX is given to Wine's commands only,
# never exported, so that tee, grep and this shell never match the scan above.
in_prefix() { WINEPREFIX=$wine_prefix "$@"; }

# Let our wineserver finish (it exits a few seconds after its last process),
# then end whatever of ours outlived it: after a wineserver crash nothing
# else will, and those processes still hold the output pipe open.
wine_settle() {
    in_prefix timeout 30 "$wineserver" -w >/dev/null 2>&1 </dev/null
    wine_kill_leftovers
}

_wine_cleanup() {
    local rc=$?
    set +e
    in_prefix timeout 20 "$wineserver" -k >/dev/null 2>&1 </dev/null
    wine_kill_leftovers
    sleep 0.2
    wine_kill_leftovers
    rm -rf "$wine_work"
    wlog "done in $((SECONDS - wine_started)) s (exit $rc)"
    exit "$rc"
}

# Tools, a private work directory ($wine_work, removed on exit) and a fresh
# prefix in it ($wine_prefix), ready to run programs in.
wine_init() {
    wine_install_tools
    wine=$(find_wine)
    wineserver=$(find_wineserver)
    wlog "wine: $wine ($("$wine" --version 2>/dev/null || echo '?')), wineserver: $wineserver"
    wine_work=$(mktemp -d "${TMPDIR:-/tmp}/osl-pg-wine.XXXXXX")
    wine_prefix=$wine_work/prefix
    trap _wine_cleanup EXIT
    trap 'exit 130' INT TERM

    export WINEDEBUG=-all
    export WINEDLLOVERRIDES="mscoree,mshtml=" # no Mono/Gecko install prompts
    export WINEARCH=win64
    export WINELOADER=${WINELOADER:-$wine}
    unset DISPLAY WAYLAND_DISPLAY # never open windows, even on a desktop
}

wine_boot() {
    local t0=$SECONDS
    in_prefix timeout -k 10 180 "$wine" wineboot --init </dev/null >"$wine_work/wineboot.log" 2>&1 || {
        cat "$wine_work/wineboot.log" >&2
        wlog "wineboot --init failed"
        return 1
    }
    in_prefix timeout -k 10 120 "$wineserver" -w
    wlog "prefix ready in $((SECONDS - t0)) s"
}

# wine_run LOG TIMEOUT PROGRAM ARGS...: run a Windows program in our prefix,
# output to the terminal and LOG; returns its exit status. Std handles must
# be pipes under Wine: stdin from /dev/null, output via tee. The left side
# settles before it exits, so tee always sees EOF.
wine_run() {
    local out=$1 limit=$2 status t0=$SECONDS
    shift 2
    set +e
    (
        in_prefix timeout -k 10 "$limit" "$wine" "$@" </dev/null 2>&1
        rc=$?
        wine_settle
        exit "$rc"
    ) | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    wlog "$(basename "$1") exited $status after $((SECONDS - t0)) s"
    return "$status"
}

# wine_check LOG STATUS SUMMARY_ERE GOOD_ERE: 0 when the program exited 0,
# its last summary line (matching SUMMARY_ERE, CRs removed) exists and
# matches GOOD_ERE, and wineserver did not crash.
wine_check() {
    local out=$1 status=$2 summary fail=0
    summary=$(tr -d '\r' <"$out" | grep -E "$3" | tail -n 1 || true)
    if [[ -z $summary ]]; then
        wlog "FAIL: no summary line (/$3/) in the output"
        fail=1
    elif ! grep -qE "$4" <<<"$summary"; then
        wlog "FAIL: $summary"
        fail=1
    else
        wlog "summary: $summary"
    fi
    if grep -qi 'wineserver crashed' "$out"; then
        wlog "FAIL: wineserver crashed"
        fail=1
    fi
    if ((status != 0)); then
        wlog "FAIL: exit status $status"
        fail=1
    fi
    return "$fail"
}
