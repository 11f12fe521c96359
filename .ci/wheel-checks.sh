#!/usr/bin/env bash
# wheel-checks.sh - what can be checked here of the prebuilt wheels that
# wheels.yml builds on GitHub's runners (this machine has no docker, macOS or
# Windows runner, so cibuildwheel itself cannot build here):
#
#  1. cibuildwheel reads [tool.cibuildwheel] and lists the builds we promise:
#     CPython 3.9 to the newest for manylinux and musllinux on x86_64 and
#     aarch64, macOS x86_64 and arm64, Windows AMD64, and nothing else.
#  2. The sdist carries everything a build needs: a wheel is built *from the
#     sdist* (not from the checkout).
#  3. That wheel is tagged cp39-abi3, abi3audit finds no symbol outside the
#     3.9 stable ABI, and auditwheel finds no glibc symbol newer than 2.28
#     (so it is manylinux_2_28-compatible even though this glibc is newer);
#     auditwheel repair makes it a manylinux_2_28 wheel, which installs and
#     runs a process group in a fresh venv.
#  4. The C layer compiles warning-free against musl (musl-gcc) and its C
#     tests (tests/c/test_posix.c, test_pidns.c) pass there: the
#     musllinux_1_2 half. Both wheels carry the pid_namespace tier's init,
#     executable.
#  5. What PyPI and a maintainer check before an upload: `twine check
#     --strict` on the sdist and the wheel, `check-wheel-contents` on the
#     wheel, LICENSE in the sdist and in the wheel's .dist-info (with
#     License-Expression: MIT in its METADATA), and a build (sdist, then the
#     wheel from it) whose log has no deprecation warning.
# The tools are pinned in .ci/wheel-requirements.txt.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/osl-pg-wheels.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS
log() { printf '[wheel-checks] %s\n' "$*" >&2; }
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

t0=$SECONDS
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -r "$root/.ci/wheel-requirements.txt" </dev/null >"$work/pip.log" 2>&1 ||
    { cat "$work/pip.log" >&2; exit 1; }
log "tools installed in $((SECONDS - t0)) s"

# --- 1. the build matrix -------------------------------------------------------

for platform in linux macos windows; do
    (cd "$root" && "$work/venv/bin/cibuildwheel" --platform "$platform" --print-build-identifiers) \
        >"$work/ids-$platform.txt"
done
"$work/venv/bin/python" - "$work" <<'PYEOF'
import re, sys
work = sys.argv[1]
expected = {  # platform -> the platform tags every CPython version must have
    "linux": ["manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"],
    "macos": ["macosx_x86_64", "macosx_arm64"],
    "windows": ["win_amd64"],
}
ok = True
for platform, tags in expected.items():
    ids = open(f"{work}/ids-{platform}.txt").read().split()
    versions = sorted({int(m.group(1)) for i in ids if (m := re.match(r"cp3(\d+)t?-", i))})
    missing = [f"cp3{v}-{t}" for v in range(9, 14) for t in tags if f"cp3{v}-{t}" not in ids]
    stray = [i for i in ids if not re.fullmatch(r"cp3\d+t?-(%s)" % "|".join(tags), i)]
    print(f"{platform}: {len(ids)} builds, CPython 3.{versions[0]}..3.{versions[-1]} on {', '.join(tags)}")
    if missing or stray or versions[0] != 9:
        print(f"  FAIL missing {missing} stray {stray}")
        ok = False
sys.exit(0 if ok else 1)
PYEOF

# --- 2. a wheel from the sdist ---------------------------------------------------

t0=$SECONDS
# `build` makes the sdist, then the wheel from the sdist, unpacked in a
# directory of its own (the checkout's build/ and csrc/ are not seen); its
# log holds the backend's whole output (pip wheel -q would hide it).
OSL_PG_CFLAGS="-Wall -Wextra -Werror" "$work/venv/bin/python" -m build -o "$work/dist" "$root" \
    </dev/null >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
log "$(basename "$sdist") -> $(basename "$wheel") in $((SECONDS - t0)) s"
[[ $(basename "$wheel") == *-cp39-abi3-linux_*.whl ]] || { log "FAIL: not a cp39-abi3 wheel"; exit 1; }
# setuptools warns of what its next major release drops (the TOML-table
# license, license classifiers, ...) as a *DeprecationWarning in the log.
if grep -n -i "deprecat" "$work/build.log" >&2; then
    log "FAIL: the build printed a deprecation warning (above; the whole log: $work/build.log)"
    exit 1
fi
log "build: no deprecation warning in $(wc -l <"$work/build.log") lines of build output"

# --- 3. abi3 and manylinux_2_28 --------------------------------------------------

"$work/venv/bin/abi3audit" --strict --assume-minimum-abi3 3.9 "$wheel" >"$work/abi3audit.log" 2>&1 ||
    { cat "$work/abi3audit.log" >&2; log "FAIL: abi3audit"; exit 1; }
log "abi3audit: only the 3.9 stable ABI is used"
"$work/venv/bin/auditwheel" show "$wheel" >"$work/show.log" 2>&1 || { cat "$work/show.log" >&2; exit 1; }
tag=$(tr '\n' ' ' <"$work/show.log" | grep -oE '"manylinux_2_[0-9]+_[a-z0-9_]+"' | tr -d '"' | head -n 1)
minor=$(sed -E 's/manylinux_2_([0-9]+)_.*/\1/' <<<"$tag")
log "auditwheel show: consistent with $tag"
[[ -n $tag && $minor -le 28 ]] || { cat "$work/show.log" >&2; log "FAIL: needs a glibc newer than 2.28"; exit 1; }
arch=$(uname -m)
PATH="$work/venv/bin:$PATH" auditwheel repair --plat "manylinux_2_28_$arch" -w "$work/repaired" "$wheel" \
    >"$work/repair.log" 2>&1 || { cat "$work/repair.log" >&2; exit 1; }
repaired=$(ls "$work"/repaired/*.whl)
log "auditwheel repair: $(basename "$repaired")"
# The pid_namespace tier's init is a program of its own in the package: it
# must be in both wheels, executable (the mode bits travel in the zip).
for w in "$wheel" "$repaired"; do
    "$work/venv/bin/python" - "$w" <<'PYEOF' || { log "FAIL: no executable osl_pg/_osl_pg_init in $w"; exit 1; }
import stat, sys, zipfile
info = zipfile.ZipFile(sys.argv[1]).getinfo("osl_pg/_osl_pg_init")
mode = info.external_attr >> 16
assert stat.S_ISREG(mode) and mode & 0o111 == 0o111, oct(mode)
PYEOF
done
log "both wheels carry osl_pg/_osl_pg_init, executable"

python3 -m venv "$work/try"
"$work/try/bin/pip" install -q "$repaired" </dev/null >"$work/pip-try.log" 2>&1 || { cat "$work/pip-try.log" >&2; exit 1; }
(cd "$work" && "$work/try/bin/python" - <<'PYEOF'
import os, osl_pg, sys
from osl_pg import PIPE, ProcessExecutor, ProcessSpawnOperation
assert "site-packages" in osl_pg.__file__, osl_pg.__file__
r = ProcessExecutor("wheel-check").execute(ProcessSpawnOperation(sys.executable)
    .with_args(["-c", "import sys; sys.stdin.read()"]).with_stdin(PIPE).with_new_process_group())
assert os.getpgid(r.pid) == r.pid  # it runs until its stdin closes
r.process.stdin.close()
assert r.group.wait(30) == 0
print(f"[wheel-checks] installed wheel ran a group leader (pid {r.pid}) from {os.path.dirname(osl_pg.__file__)}",
      file=sys.stderr)
init = os.path.join(os.path.dirname(osl_pg.__file__), "_osl_pg_init")
assert os.access(init, os.X_OK), init
try:
    r = osl_pg.run(["sh", "-c", "exit 7"], containment="pid_namespace")
    assert r.returncode == 7, r
    print("[wheel-checks] the installed wheel's init ran a pid_namespace group", file=sys.stderr)
except osl_pg.NamespaceUnavailable as e:
    print(f"[wheel-checks] pid_namespace not run (refused here: {e})", file=sys.stderr)
PYEOF
)

# --- 4. musl ------------------------------------------------------------------------

if ! command -v musl-gcc >/dev/null; then
    log "installing musl-tools"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools </dev/null >/dev/null ||
        { apt-get update -qq </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools </dev/null >/dev/null; }
fi
# musl has dlsym in libc and an empty libdl.a, so -ldl is harmless there.
musl-gcc -std=c99 -Wall -Wextra -Werror -O2 -c "$root/csrc/osl_pg_posix.c" -I"$root/csrc" -o "$work/musl.o"
musl-gcc -Wall -Wextra -Werror -g -O1 -I"$root/csrc" "$root/tests/c/test_posix.c" "$root/csrc/osl_pg_posix.c" \
    -ldl -o "$work/test_posix_musl"
file "$work/test_posix_musl" | grep -q 'ld-musl' || { log "FAIL: not linked against musl"; exit 1; }
"$work/test_posix_musl" >"$work/musl.log" 2>&1 || { cat "$work/musl.log" >&2; log "FAIL: C tests on musl"; exit 1; }
log "musl: $(grep -E '^features' "$work/musl.log" || true); $(tail -n 1 "$work/musl.log")"
# The pid_namespace init and spawn on musl (static, as setup.py builds it).
musl-gcc -std=c99 -Wall -Wextra -Werror -O2 -static -I"$root/csrc" "$root/csrc/osl_pg_init.c" -o "$work/init_musl"
musl-gcc -Wall -Wextra -Werror -g -O1 -I"$root/csrc" "$root/tests/c/test_pidns.c" "$root/csrc/osl_pg_posix.c" \
    -ldl -o "$work/test_pidns_musl"
"$work/test_pidns_musl" "$work/init_musl" >"$work/musl-pidns.log" 2>&1 ||
    { cat "$work/musl-pidns.log" >&2; log "FAIL: pid_namespace C tests on musl"; exit 1; }
log "musl pid_namespace: $(tail -n 1 "$work/musl-pidns.log")"
# --- 5. what an upload is checked for -------------------------------------------

"$work/venv/bin/twine" check --strict "$sdist" "$wheel" >"$work/twine.log" 2>&1 ||
    { cat "$work/twine.log" >&2; log "FAIL: twine check"; exit 1; }
log "twine check --strict: $(grep -c PASSED "$work/twine.log") of 2 PASSED"
"$work/venv/bin/check-wheel-contents" "$wheel" >"$work/cwc.log" 2>&1 ||
    { cat "$work/cwc.log" >&2; log "FAIL: check-wheel-contents"; exit 1; }
log "check-wheel-contents: $(tail -n 1 "$work/cwc.log")"
"$work/venv/bin/python" - "$sdist" "$wheel" <<'PYEOF'
import email.parser, sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as t:
    names = t.getnames()
top = names[0].split("/")[0]
assert f"{top}/LICENSE" in names, f"no LICENSE at the top of {sdist}"
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    licenses = [n for n in info if n.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses, f"no LICENSE in the wheel's .dist-info: {info}"
    meta = email.parser.Parser().parsestr(z.read(next(n for n in info if n.endswith("/METADATA"))).decode())
assert meta["License-Expression"] == "MIT", meta["License-Expression"]
assert "LICENSE" in meta.get_all("License-File", []), meta.get_all("License-File")
assert not [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")], "a license classifier too"
print(f"[wheel-checks] LICENSE in the sdist ({top}/LICENSE) and the wheel ({', '.join(licenses)}); "
      f"METADATA {meta['Metadata-Version']}: License-Expression: {meta['License-Expression']}", file=sys.stderr)
PYEOF
log "done in $((SECONDS - started)) s"
