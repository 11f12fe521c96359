# Types for the cffi extension built from csrc/ (see csrc/cdef_posix.h and
# csrc/cdef_windows.h for the functions `lib` has). Only osl_pg._posix and
# osl_pg._windows import it.
from typing import Any

ffi: Any
lib: Any
