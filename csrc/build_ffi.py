"""cffi build script: compiles the C layer of the running OS into osl_pg._native.

Switches (environment):
  OSL_PG_CFLAGS   extra compiler flags, e.g. "-Wall -Wextra -Werror" in CI or
                  "-fsanitize=address,undefined" for a sanitizer build.
"""
import os
import platform as pyplatform
import shlex
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA_CFLAGS = shlex.split(os.environ.get("OSL_PG_CFLAGS", ""))


def make_ffibuilder(platform: str = sys.platform) -> FFI:
    """The FFI for `platform` (a sys.platform value). Taking it as an
    argument lets .ci/wine-py-tests.sh emit the Windows module's C on Linux."""
    if platform == "win32":
        source, cdef, libraries, link_args = "osl_pg_win.c", "cdef_windows.h", [], []
    else:
        source, cdef = "osl_pg_posix.c", "cdef_posix.h"
        # dlsym() lives in libdl before glibc 2.34; musl and newer glibc ship an
        # empty libdl, so linking it is harmless there. macOS has it in libSystem.
        libraries = ["dl"] if platform.startswith("linux") else []
        # osl_pg_posix.c binds the old dlsym version, which lives in libdl on
        # the oldest glibc a manylinux_2_28 wheel must load on. A glibc >= 2.34
        # has only a stub libdl.so.2 (and no libdl.so for -ldl), so name the
        # file to keep it NEEDED: loaded on an older glibc, it provides dlsym.
        glibc = platform.startswith("linux") and pyplatform.libc_ver()[0] == "glibc"
        link_args = ["-Wl,--no-as-needed", "-l:libdl.so.2"] if glibc else []

    builder = FFI()
    with open(os.path.join(HERE, cdef)) as f:
        builder.cdef(f.read())

    builder.set_source(
        "osl_pg._native",
        '#include "osl_pg.h"',
        sources=[os.path.relpath(os.path.join(HERE, source))],
        include_dirs=[os.path.relpath(HERE)],
        libraries=libraries,
        extra_compile_args=EXTRA_CFLAGS,
        extra_link_args=link_args + [f for f in EXTRA_CFLAGS if f.startswith("-fsanitize")],
    )
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
