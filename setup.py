# Build wiring only: all metadata is in pyproject.toml.
import sysconfig

from setuptools import setup

# cffi compiles osl_pg._native against CPython's stable ABI (Py_LIMITED_API),
# so one wheel per platform serves CPython 3.9 and every later version: tag
# it cp39-abi3. Free-threaded CPython has no stable ABI before 3.15; its
# wheels keep their version-specific tag.
options = {} if sysconfig.get_config_var("Py_GIL_DISABLED") else {"bdist_wheel": {"py_limited_api": "cp39"}}

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"], options=options)
