# Build wiring only: all metadata is in pyproject.toml.
import os
import shlex
import subprocess
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

# cffi compiles osl_pg._native against CPython's stable ABI (Py_LIMITED_API),
# so one wheel per platform serves CPython 3.9 and every later version: tag
# it cp39-abi3. Free-threaded CPython has no stable ABI before 3.15; its
# wheels keep their version-specific tag.
options = {} if sysconfig.get_config_var("Py_GIL_DISABLED") else {"bdist_wheel": {"py_limited_api": "cp39"}}

INIT_SOURCE = "csrc/osl_pg_init.c"
INIT_NAME = "_osl_pg_init"


class build_ext_and_init(build_ext):
    """build_ext, plus (on Linux) osl_pg/_osl_pg_init: the C program that is
    pid 1 of the pid_namespace tier's namespaces. An executable, not an
    extension: it runs without Python. It goes next to osl_pg._native, in
    the build tree for a wheel and in python/osl_pg for an editable install
    (build_ext --inplace), with the same OSL_PG_CFLAGS."""

    def run(self) -> None:
        super().run()
        if sys.platform.startswith("linux"):
            self._build_init()

    def _init_path(self) -> str:
        return os.path.join(os.path.dirname(self.get_ext_fullpath("osl_pg._native")), INIT_NAME)

    def _build_init(self) -> None:
        # The init is exec'd for every spawn of its tier, so its start-up is
        # on the hot path: measured here (spawn + wait of an exit-only
        # program through it), a static musl build adds ~130 us to the
        # namespaces' cost, a static glibc one ~400 us (IRELATIVE and TLS
        # set-up, 750 KB mapped), a dynamic one ~750 us (ld.so). So: static
        # musl where musl-gcc is installed, else static with the C library
        # here (a musllinux build's own compiler is musl's), else dynamic.
        # Sanitizer builds are dynamic (ASan has no static runtime).
        flags = shlex.split(os.environ.get("OSL_PG_CFLAGS", ""))
        sanitized = any(f.startswith("-fsanitize") for f in flags)
        cc = shlex.split(os.environ.get("CC", "") or sysconfig.get_config_var("CC") or "cc")[:1]
        out = self._init_path()
        os.makedirs(os.path.dirname(out), exist_ok=True)
        attempts = [] if sanitized else [(["musl-gcc"], ["-static"]), (cc, ["-static"])]
        attempts.append((cc, []))
        errors = []
        for compiler, link in attempts:
            cmd = [*compiler, "-O2", "-Icsrc", *flags, INIT_SOURCE, "-o", out, *link]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:  # no such compiler
                errors.append(f"{' '.join(cmd)}: {e}")
                continue
            if done.returncode == 0:
                print(f"built {out} with: {' '.join(cmd)}")
                os.chmod(out, 0o755)
                return
            errors.append(f"{' '.join(cmd)}:\n{done.stderr}")
        raise RuntimeError("cannot build osl_pg's pid_namespace init:\n" + "\n".join(errors))

    def get_outputs(self) -> list:
        outputs = list(super().get_outputs())
        if sys.platform.startswith("linux"):
            outputs.append(self._init_path())
        return outputs


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"], options=options, cmdclass={"build_ext": build_ext_and_init})
