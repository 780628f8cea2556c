"""Loading libringrun and declaring the C signatures (ffi/include/ringrun.h)."""

import ctypes
import importlib.metadata
import os
import shutil
import sys

from .errors import BY_STATUS, JobCompleted, RingrunError

ABI_VERSION = 3

_c_int, _size_t, _u64, _vp = ctypes.c_int, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_void_p


_HERE = os.path.dirname(os.path.abspath(__file__))
_LIB_NAME = "libringrun.dylib" if sys.platform == "darwin" else "libringrun.so"


def _find():
    """RINGRUN_LIB if set, else the library `pip install ./python` put beside this file."""
    env = os.environ.get("RINGRUN_LIB")
    if env:
        return env
    here = os.path.join(_HERE, _LIB_NAME)
    if os.path.exists(here):
        return here
    raise OSError(
        f"{_LIB_NAME} not found beside {_HERE}: install the package with "
        "`pip install ./python` (builds it with cargo) or a ringrun wheel, or set RINGRUN_LIB "
        "to its path (e.g. target/release/libringrun.so)"
    )


def binary():
    """Path of the `ringrun` command installed with this package (its scripts directory:
    a venv's bin/), else the one on PATH. Raises FileNotFoundError if there is none."""
    exe = "ringrun.exe" if sys.platform == "win32" else "ringrun"
    try:
        files = importlib.metadata.distribution("ringrun").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []  # running from a checkout (PYTHONPATH=python)
    for f in files:
        if f.name == exe and f.parent.name in ("bin", "Scripts"):
            path = os.path.normpath(str(f.locate()))
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(exe)
    if found:
        return found
    raise FileNotFoundError(
        "no ringrun command: install the package with `pip install ./python` or build it "
        "with `cargo build --release -p ringrun-launcher`"
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
        "ringrun_alltoall": [_vp, _vp, _size_t, ctypes.c_int32],
        "ringrun_reduce_scatter": [_vp, _vp, _size_t, ctypes.c_int32, ctypes.c_int32],
        "ringrun_barrier": [],
        "ringrun_set_stream": [_vp],
        "ringrun_commit": [_u64, _vp, _size_t],
        "ringrun_restore": [ctypes.POINTER(_u64), ctypes.POINTER(_size_t)],
        "ringrun_restored_copy": [_vp, _size_t],
        "ringrun_set_step": [_u64],
        "ringrun_finish": [],
        "ringrun_completed": [ctypes.POINTER(_u64)],
        "ringrun_fault_count": [ctypes.POINTER(_size_t)],
        "ringrun_faults_json": [ctypes.c_char_p, _size_t, ctypes.POINTER(_size_t)],
        "ringrun_log": [_u64, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_double),
                        _size_t],
        "ringrun_sampler_new": [_u64, _u64, _u64, _c_int, ctypes.POINTER(_vp)],
        "ringrun_sampler_next": [_vp, ctypes.POINTER(ctypes.c_int64), _size_t,
                                 ctypes.POINTER(_size_t)],
        "ringrun_sampler_peek": [_vp, _u64, ctypes.POINTER(ctypes.c_int64), _size_t,
                                 ctypes.POINTER(_size_t)],
        "ringrun_sampler_offset": [_vp, ctypes.POINTER(_u64)],
        "ringrun_sampler_set_offset": [_vp, _u64],
        "ringrun_sampler_data_epoch": [_vp, ctypes.POINTER(_u64)],
    }
    for name, args in sig.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = _c_int
    lib.ringrun_abi_version.argtypes = []
    lib.ringrun_abi_version.restype = ctypes.c_uint32
    lib.ringrun_last_error.argtypes = []
    lib.ringrun_last_error.restype = ctypes.c_char_p
    lib.ringrun_sampler_free.argtypes = [_vp]
    lib.ringrun_sampler_free.restype = None
    return lib


_LIB = None


def lib():
    """The loaded library (loaded on first use, so importing ringrun never fails)."""
    global _LIB
    if _LIB is None:
        path = _find()
        try:
            loaded = _declare(ctypes.CDLL(path))
        except AttributeError as e:  # a function this package calls is missing
            raise OSError(
                f"{path} lacks a function of libringrun this package calls ({e}): it is not "
                "libringrun, or is older than the package; rebuild it, or point RINGRUN_LIB "
                "at a current build"
            ) from e
        got = loaded.ringrun_abi_version()
        if got != ABI_VERSION:
            raise OSError(f"libringrun has ABI version {got}, this package needs {ABI_VERSION}")
        _LIB = loaded
    return _LIB


def check(status):
    """Raises the exception for a non-zero status, with the library's message."""
    if status:
        msg = _LIB.ringrun_last_error().decode("utf-8", "replace")
        error = BY_STATUS.get(status, RingrunError)
        if error is JobCompleted:
            # Uncaught, it ends the process quietly (status 0): say why here.
            print(f"ringrun: {msg}; exiting", file=sys.stderr)
        raise error(msg, status)
