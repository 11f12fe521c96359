"""cffi build script: compiles the C layer of the running OS into osl_pg._native.

Switches (environment):
  OSL_PG_CFLAGS   extra compiler flags, e.g. "-Wall -Wextra -Werror" in CI or
                  "-fsanitize=address,undefined" for a sanitizer build.
"""
import os
import shlex
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA_CFLAGS = shlex.split(os.environ.get("OSL_PG_CFLAGS", ""))

if sys.platform == "win32":
    SOURCE, CDEF, LIBRARIES = "osl_pg_win.c", "cdef_windows.h", []
else:
    SOURCE, CDEF = "osl_pg_posix.c", "cdef_posix.h"
    # dlsym() lives in libdl before glibc 2.34; musl and newer glibc ship an
    # empty libdl, so linking it is harmless there. macOS has it in libSystem.
    LIBRARIES = ["dl"] if sys.platform.startswith("linux") else []

ffibuilder = FFI()
with open(os.path.join(HERE, CDEF)) as f:
    ffibuilder.cdef(f.read())

ffibuilder.set_source(
    "osl_pg._native",
    '#include "osl_pg.h"',
    sources=[os.path.relpath(os.path.join(HERE, SOURCE))],
    include_dirs=[os.path.relpath(HERE)],
    libraries=LIBRARIES,
    extra_compile_args=EXTRA_CFLAGS,
    extra_link_args=[f for f in EXTRA_CFLAGS if f.startswith("-fsanitize")],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
