"""Bad input is rejected in Python, before any C call, and status codes map to exceptions.
Runs in this process without joining a group."""

import numpy as np
import pytest

import ringrun
from ringrun import _buffers


def test_wrong_dtypes_are_rejected_before_the_call():
    for bad in (np.zeros(3, np.complex64), np.zeros(3, bool), np.zeros(3, np.uint16),
                np.zeros(3, ">f4"), np.array([object()])):
        with pytest.raises(ringrun.InvalidArgument):
            ringrun.allreduce(bad)


def test_non_contiguous_and_read_only_are_rejected():
    with pytest.raises(ringrun.InvalidArgument, match="contiguous"):
        ringrun.allreduce(np.zeros((4, 4), np.float32)[:, 1])
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ringrun.InvalidArgument, match="read-only"):
        ringrun.allreduce(ro)
    with pytest.raises(ringrun.InvalidArgument, match="read-only"):
        ringrun.allreduce(b"abcd")
    with pytest.raises(ringrun.InvalidArgument):
        ringrun.allreduce(12)


def test_bad_op_and_dtype_override():
    with pytest.raises(ringrun.InvalidArgument, match="unknown op"):
        ringrun.allreduce(np.zeros(2, np.float32), op="median")
    with pytest.raises(ringrun.InvalidArgument, match="2-byte"):
        ringrun.allreduce(np.zeros(2, np.float32), dtype="bfloat16")
    assert _buffers.describe(np.zeros(2, np.uint16), True, "bfloat16")[2] == 3


def test_calls_without_init_raise_not_initialized():
    assert not ringrun.is_initialized()
    with pytest.raises(ringrun.NotInitialized, match="not initialised"):
        ringrun.allreduce(np.zeros(4, np.float32))
    with pytest.raises(ringrun.NotInitialized):
        ringrun.rank()
    with pytest.raises(ringrun.NotInitialized):
        ringrun.barrier()
    ringrun.finalize()  # idempotent


def test_exception_hierarchy():
    assert issubclass(ringrun.PeerLost, ringrun.MembershipChanged)
    assert issubclass(ringrun.InvalidArgument, ValueError)
    assert all(issubclass(e, ringrun.RingrunError) for e in ringrun.RECOVERABLE)


def test_a_library_without_the_packages_functions_is_named_not_loaded(monkeypatch):
    """An old or foreign library under RINGRUN_LIB is refused with its path, not left to fail
    at its first missing symbol."""
    import ctypes.util

    from ringrun import _lib

    libm = ctypes.util.find_library("m")
    assert libm, "the C math library is needed as the foreign library"
    monkeypatch.setattr(_lib, "_LIB", None)
    monkeypatch.setenv("RINGRUN_LIB", libm)
    with pytest.raises(OSError, match="lacks a function of libringrun"):
        _lib.lib()
