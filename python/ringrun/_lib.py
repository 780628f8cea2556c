"""Loading libringrun and declaring the C signatures (ffi/include/ringrun.h)."""

import ctypes
import os
import sys

from .errors import BY_STATUS, RingrunError

ABI_VERSION = 1

_c_int, _size_t, _u64, _vp = ctypes.c_int, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_void_p


def _find():
    env = os.environ.get("RINGRUN_LIB")
    if env:
        return env
    name = "libringrun.dylib" if sys.platform == "darwin" else "libringrun.so"
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    if os.path.exists(here):
        return here
    raise OSError(
        f"{name} not found: set RINGRUN_LIB to its path "
        "(e.g. target/release/libringrun.so) or copy it into the ringrun package"
    )


def _declare(lib):
    sig = {
        "ringrun_init": [],
        "ringrun_finalize": [],
        "ringrun_initialized": [ctypes.POINTER(_c_int)],
        "ringrun_rank": [ctypes.POINTER(_c_int)],
        "ringrun_size": [ctypes.POINTER(_c_int)],
        "ringrun_epoch": [ctypes.POINTER(_u64)],
        "ringrun_allreduce": [_vp, _vp, _size_t, ctypes.c_int32, ctypes.c_int32],
        "ringrun_allreduce_many": [
            ctypes.POINTER(_vp),
            ctypes.POINTER(_size_t),
            _size_t,
            ctypes.c_int32,
            ctypes.c_int32,
        ],
        "ringrun_broadcast": [_vp, _size_t, ctypes.c_int32, _c_int],
        "ringrun_allgather": [_vp, _vp, _size_t, ctypes.c_int32],
        "ringrun_reduce_scatter": [_vp, _vp, _size_t, ctypes.c_int32, ctypes.c_int32],
        "ringrun_barrier": [],
        "ringrun_set_stream": [_vp],
        "ringrun_commit": [_u64, _vp, _size_t],
        "ringrun_restore": [ctypes.POINTER(_u64), ctypes.POINTER(_size_t)],
        "ringrun_restored_copy": [_vp, _size_t],
        "ringrun_set_step": [_u64],
        "ringrun_fault_count": [ctypes.POINTER(_size_t)],
        "ringrun_faults_json": [ctypes.c_char_p, _size_t, ctypes.POINTER(_size_t)],
    }
    for name, args in sig.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = _c_int
    lib.ringrun_abi_version.argtypes = []
    lib.ringrun_abi_version.restype = ctypes.c_uint32
    lib.ringrun_last_error.argtypes = []
    lib.ringrun_last_error.restype = ctypes.c_char_p
    return lib


_LIB = None


def lib():
    """The loaded library (loaded on first use, so importing ringrun never fails)."""
    global _LIB
    if _LIB is None:
        loaded = _declare(ctypes.CDLL(_find()))
        got = loaded.ringrun_abi_version()
        if got != ABI_VERSION:
            raise OSError(f"libringrun has ABI version {got}, this package needs {ABI_VERSION}")
        _LIB = loaded
    return _LIB


def check(status):
    """Raises the exception for a non-zero status, with the library's message."""
    if status:
        msg = _LIB.ringrun_last_error().decode("utf-8", "replace")
        raise BY_STATUS.get(status, RingrunError)(msg, status)
