"""ringrun: fault-tolerant elastic allreduce for data-parallel training (ctypes over the C
ABI of libringrun).

Collectives are in place and take numpy arrays, torch CPU tensors or any writable,
C-contiguous buffer-protocol object. Failures raise the exceptions of ``ringrun.errors``;
``ringrun.elastic.run`` turns a membership change into "restore the last commit and retry".
"""

import ctypes
import json
import sys

from . import _buffers
from ._lib import check, lib
from .errors import (  # noqa: F401  (re-exported)
    RECOVERABLE,
    InternalError,
    InvalidArgument,
    JobCompleted,
    MembershipChanged,
    Mismatch,
    NoQuorum,
    NotInitialized,
    PeerLost,
    RingrunError,
    Timeout,
)

__all__ = [
    "init", "finalize", "is_initialized", "rank", "size", "epoch", "allreduce",
    "allreduce_many", "broadcast", "allgather", "alltoall", "barrier", "commit", "restore",
    "finish", "completed", "faults", "set_step", "log", "RingrunError", "MembershipChanged",
    "PeerLost", "Timeout", "InvalidArgument", "NotInitialized", "InternalError", "Mismatch",
    "NoQuorum", "JobCompleted",
]


def init():
    """Joins the group described by the launcher's ``RINGRUN_*`` environment; blocks until
    this process is a member of an agreed epoch. Does nothing if already initialised."""
    if is_initialized():
        return
    check(lib().ringrun_init())


def finalize():
    """Leaves the group (the others re-form without this process at once)."""
    check(lib().ringrun_finalize())


def is_initialized():
    out = ctypes.c_int()
    check(lib().ringrun_initialized(ctypes.byref(out)))
    return bool(out.value)


def _int_out(fn, ctype=ctypes.c_int):
    out = ctype()
    check(fn(ctypes.byref(out)))
    return out.value


def rank():
    """This process's rank in the current epoch (may change after a membership change)."""
    return _int_out(lib().ringrun_rank)


def size():
    """Members in the current epoch."""
    return _int_out(lib().ringrun_size)


def epoch():
    """The current epoch number; it grows with every membership change."""
    return _int_out(lib().ringrun_epoch, ctypes.c_uint64)


def allreduce(array, op="sum", dtype=None):
    """Reduces ``array`` across all ranks, in place; returns it. ``op``: sum, prod, min, max
    or avg. ``dtype`` overrides the element type of a raw buffer (e.g. "bfloat16" for a
    uint16 array)."""
    code = _buffers.op_code(op)
    ptr, count, dt, _keep = _buffers.describe(array, True, dtype)
    _order_after(array)
    check(lib().ringrun_allreduce(ptr, ptr, count, dt, code))
    return array


def _order_after(array):
    """For a CUDA tensor: the collective starts after the work torch enqueued on its current
    stream, and the call returns once the result is on the device."""
    stream = _buffers.cuda_stream(array)
    if stream is not None:
        check(lib().ringrun_set_stream(stream))


def allreduce_many(arrays, op="sum", dtype=None):
    """Reduces several arrays of one dtype in one fused operation, in place."""
    code = _buffers.op_code(op)
    descs = [_buffers.describe(a, True, dtype) for a in arrays]
    if len({d[2] for d in descs}) > 1:
        raise InvalidArgument("allreduce_many needs arrays of one dtype")
    n = len(descs)
    ptrs = (ctypes.c_void_p * n)(*[d[0] for d in descs])
    counts = (ctypes.c_size_t * n)(*[d[1] for d in descs])
    dt = descs[0][2] if descs else 0
    if arrays:
        _order_after(arrays[0])
    check(lib().ringrun_allreduce_many(ptrs, counts, n, dt, code))
    return arrays


def broadcast(array, root=0, dtype=None):
    """Replaces ``array`` on every rank with rank ``root``'s, in place; returns it."""
    ptr, count, dt, _keep = _buffers.describe(array, True, dtype)
    _order_after(array)
    check(lib().ringrun_broadcast(ptr, count, dt, int(root)))
    return array


def allgather(array, dtype=None):
    """Every rank's ``array``, concatenated along the first axis in rank order (numpy and
    torch inputs give the same kind back; other buffers give a bytearray)."""
    ptr, count, dt, _keep = _buffers.describe(array, False, dtype)
    n = size()
    out = _like(array, n)
    optr, ocount, _, _okeep = _buffers.describe(out, True, _buffers_name(dt))
    if ocount != count * n:
        raise InternalError("allgather output has the wrong size")
    _order_after(array)
    check(lib().ringrun_allgather(ptr, optr, count, dt))
    return out


def alltoall(array, dtype=None):
    """All-to-all with equal blocks: ``array`` is ``size`` blocks (split along the first axis,
    or flat); block ``j`` goes to rank ``j``. Returns the same shape and kind, block ``j`` from
    rank ``j``."""
    ptr, count, dt, _keep = _buffers.describe(array, False, dtype)
    n = size()
    if count % n:
        raise InvalidArgument(f"alltoall: {count} elements do not split into {n} equal blocks")
    out = _like(array, 1)
    optr, ocount, _, _okeep = _buffers.describe(out, True, _buffers_name(dt))
    if ocount != count:
        raise InternalError("alltoall output has the wrong size")
    _order_after(array)
    check(lib().ringrun_alltoall(ptr, optr, count // n, dt))
    return out


def _buffers_name(code):
    return next(k for k, v in _buffers.DTYPES.items() if v == code)


def _like(array, n):
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if np is not None and isinstance(array, np.ndarray):
        shape = (n * array.shape[0],) + array.shape[1:] if array.ndim else (n,)
        return np.empty(shape, dtype=array.dtype)
    if torch is not None and isinstance(array, torch.Tensor):
        shape = (n * array.shape[0],) + tuple(array.shape[1:]) if array.dim() else (n,)
        return torch.empty(shape, dtype=array.dtype, device=array.device)
    return bytearray(memoryview(array).nbytes * n)


def barrier():
    check(lib().ringrun_barrier())


def commit(step, data):
    """Commits ``data`` (bytes-like) as the state after ``step``; every rank must commit the
    same step and bytes."""
    buf = bytes(data)
    check(lib().ringrun_commit(int(step), buf, len(buf)))


def restore():
    """Waits for a working epoch and returns ``(step, bytes)`` of the newest commit any member
    holds, or ``None`` on a fresh start."""
    step, n = ctypes.c_uint64(), ctypes.c_size_t()
    check(lib().ringrun_restore(ctypes.byref(step), ctypes.byref(n)))
    if step.value == 2**64 - 1:
        return None
    buf = ctypes.create_string_buffer(max(n.value, 1))
    check(lib().ringrun_restored_copy(buf, n.value))
    return step.value, buf.raw[: n.value]


def finish():
    """Marks the last commit as the job's final state; every rank calls it after its last
    ``commit``. A worker started later (a restart that came too late) then gets the final
    state from ``restore`` or raises ``JobCompleted``, instead of training again from the
    start. A second call does nothing."""
    check(lib().ringrun_finish())


def completed():
    """The job's final step once this process holds the final state (it called ``finish``,
    or ``restore`` returned the final state), else ``None``."""
    step = _int_out(lib().ringrun_completed, ctypes.c_uint64)
    return None if step == 2**64 - 1 else step


def set_step(step):
    """Tells the fault report which step the caller is on (for steps rolled back)."""
    check(lib().ringrun_set_step(int(step)))


def log(step, **scalars):
    """Logs named values for ``step`` (``ringrun.log(step, loss=0.3, lr=1e-3)``): the training
    curves of the job's dashboard (``ringrun launch --dashboard``). Cheap, and never waits for
    a collective running on another thread."""
    names = list(scalars)
    try:
        values = [float(scalars[k]) for k in names]
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"log: every value must be a number ({e})") from None
    n = len(names)
    c_names = (ctypes.c_char_p * n)(*[k.encode() for k in names])
    c_values = (ctypes.c_double * n)(*values)
    check(lib().ringrun_log(int(step), c_names, c_values, n))


def faults():
    """The fault report: one dict per recovery (epochs, sizes, reason, phase times in ms,
    steps rolled back)."""
    n = ctypes.c_size_t()
    check(lib().ringrun_faults_json(None, 0, ctypes.byref(n)))
    buf = ctypes.create_string_buffer(n.value + 1)
    check(lib().ringrun_faults_json(buf, n.value + 1, ctypes.byref(n)))
    return json.loads(buf.value.decode())
