# Build wiring only: all metadata is in pyproject.toml.
import os
import shlex
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
        flags = shlex.split(os.environ.get("OSL_PG_CFLAGS", ""))
        objects = self.compiler.compile([INIT_SOURCE], output_dir=self.build_temp, include_dirs=["csrc"],
                                        extra_postargs=["-O2", *flags])
        out = self._init_path()
        self.compiler.link_executable(objects, INIT_NAME, output_dir=os.path.dirname(out),
                                      extra_postargs=[f for f in flags if f.startswith("-fsanitize")])
        os.chmod(out, 0o755)

    def get_outputs(self) -> list:
        outputs = list(super().get_outputs())
        if sys.platform.startswith("linux"):
            outputs.append(self._init_path())
        return outputs


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"], options=options, cmdclass={"build_ext": build_ext_and_init})
