"""Turning numpy arrays, torch tensors (CPU or CUDA) and buffer-protocol objects into (address,
count, dtype code), with every check done here, in Python, before the C call: a wrong dtype or a
non-contiguous or read-only buffer never reaches the library. A CUDA tensor's address is device
memory: the library runs it on the group's device side (NCCL, or staged through host memory)."""

import ctypes
import sys

from .errors import InvalidArgument

# The C ABI's dtype codes (ringrun.h): RINGRUN_FLOAT32 ... RINGRUN_INT64.
DTYPES = {
    "float32": 0,
    "float64": 1,
    "float16": 2,
    "bfloat16": 3,
    "int8": 4,
    "uint8": 5,
    "int32": 6,
    "int64": 7,
}
SIZES = {0: 4, 1: 8, 2: 2, 3: 2, 4: 1, 5: 1, 6: 4, 7: 8}
OPS = {"sum": 0, "prod": 1, "min": 2, "max": 3, "avg": 4, "average": 4, "mean": 4}

# struct format characters of the buffer protocol, by kind.
_FORMATS = {"f": "float32", "d": "float64", "e": "float16", "b": "int8", "B": "uint8"}
_SIGNED = {"h", "i", "l", "q", "n"}

_np_codes = {}  # numpy dtype -> code, filled lazily so numpy stays optional


def op_code(op):
    if isinstance(op, str):
        # The exact spelling first: lower() costs more than the lookup.
        code = OPS.get(op)
        if code is None:
            code = OPS.get(op.lower())
        if code is not None:
            return code
    raise InvalidArgument(f"unknown op {op!r}: use one of sum, prod, min, max, avg")


def _explicit(dtype, itemsize, what):
    code = DTYPES.get(str(dtype))
    if code is None:
        raise InvalidArgument(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if SIZES[code] != itemsize:
        raise InvalidArgument(f"{what}: dtype {dtype} needs {SIZES[code]}-byte elements")
    return code


def _numpy(arr, writable, dtype):
    code = _np_codes.get(arr.dtype)
    if code is None or dtype is not None:
        if dtype is not None:
            code = _explicit(dtype, arr.dtype.itemsize, "array")
        elif arr.dtype.isnative and arr.dtype.name in DTYPES:
            code = _np_codes[arr.dtype] = DTYPES[arr.dtype.name]
        else:
            raise InvalidArgument(
                f"unsupported array dtype {arr.dtype}: use one of {', '.join(DTYPES)}"
            )
    flags = arr.flags
    if not flags.c_contiguous:
        raise InvalidArgument("array is not C-contiguous (use numpy.ascontiguousarray)")
    if flags.writeable and arr.nbytes:
        # A buffer export costs a quarter of __array_interface__ (a dict built per call), and
        # while it is held numpy cannot resize the array under the call.
        view = ctypes.c_char.from_buffer(arr)
        return ctypes.addressof(view), arr.size, code, view
    if writable and not flags.writeable:
        raise InvalidArgument("array is read-only")
    return arr.__array_interface__["data"][0], arr.size, code, arr


def _torch(t, writable, dtype):
    if t.device.type not in ("cpu", "cuda"):
        raise InvalidArgument(f"tensor is on {t.device}: only CPU and CUDA tensors are supported")
    if not t.is_contiguous():
        raise InvalidArgument("tensor is not contiguous (use .contiguous())")
    name = str(t.dtype).replace("torch.", "")
    if dtype is not None:
        code = _explicit(dtype, t.element_size(), "tensor")
    elif name in DTYPES:
        code = DTYPES[name]
    else:
        raise InvalidArgument(f"unsupported tensor dtype {t.dtype}")
    return t.data_ptr(), t.numel(), code, t


def _generic(obj, writable, dtype):
    try:
        mv = memoryview(obj)
    except TypeError:
        raise InvalidArgument(f"{type(obj).__name__} is not an array or buffer") from None
    if not mv.c_contiguous:
        raise InvalidArgument("buffer is not C-contiguous")
    fmt = mv.format.lstrip("@=")
    if dtype is not None:
        code = _explicit(dtype, mv.itemsize, "buffer")
    elif fmt in _FORMATS:
        code = DTYPES[_FORMATS[fmt]]
    elif fmt in _SIGNED and mv.itemsize in (4, 8):
        code = DTYPES[f"int{mv.itemsize * 8}"]
    else:
        raise InvalidArgument(f"unsupported buffer format {mv.format!r}")
    count = mv.nbytes // SIZES[code]
    if mv.nbytes == 0:
        return None, 0, code, mv
    if mv.readonly:
        if writable:
            raise InvalidArgument("buffer is read-only")
        keep = bytearray(mv.cast("B"))  # an input only: a private copy gives it an address
        mv = memoryview(keep)
    holder = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
    return ctypes.addressof(holder), count, code, (holder, mv, obj)


def describe(obj, writable=True, dtype=None):
    """(address, count, dtype code, keep-alive) for one buffer."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        return _numpy(obj, writable, dtype)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _torch(obj, writable, dtype)
    return _generic(obj, writable, dtype)


def cuda_stream(obj):
    """The raw CUDA stream torch enqueues work on for a CUDA tensor, else None: the library
    orders the collective after it (ringrun_set_stream)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, torch.Tensor) or obj.device.type != "cuda":
        return None
    return torch.cuda.current_stream(obj.device).cuda_stream
