"""The bytes of a committed state: a JSON tree whose leaves are scalars or references to raw
tensor bytes appended after it. Deterministic (every rank must produce identical bytes for
identical values) and free of pickle (a restored blob never runs code). Handles what
``state_dict()`` of torch modules and optimizers holds: nested dicts with int keys, lists,
tuples, tensors of any dtype (bfloat16 and bool included), numpy arrays and Python scalars."""

import sys


def encode(v, chunks):
    """The JSON form of ``v``; tensor and array bytes are appended to ``chunks``."""
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if torch is not None and isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        chunks.append(raw)
        return {"__tensor__": [str(t.dtype).replace("torch.", ""), list(t.shape), len(raw)]}
    if np is not None and isinstance(v, np.ndarray):
        raw = np.ascontiguousarray(v).tobytes()
        chunks.append(raw)
        return {"__array__": [v.dtype.str, list(v.shape), len(raw)]}
    if np is not None and isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {"__dict__": [[encode(k, chunks), encode(x, chunks)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"__tuple__": [encode(x, chunks) for x in v]}
    if isinstance(v, list):
        return [encode(x, chunks) for x in v]
    raise TypeError(
        f"ringrun.elastic.State cannot commit a {type(v).__name__}: use tensors, arrays, "
        "scalars, lists and dicts of those, or objects with state_dict()/load_state_dict()"
    )


class Reader:
    """The appended bytes, read in order by successive ``decode`` calls."""

    def __init__(self, data):
        self.data, self.off = data, 0

    def take(self, n):
        out = self.data[self.off : self.off + n]
        self.off += n
        return out


def decode(enc, data):
    """The value ``encode`` described; ``data`` holds the appended bytes, in order."""
    return _decode(enc, data if isinstance(data, Reader) else Reader(data))


def _decode(enc, r):
    if isinstance(enc, list):
        return [_decode(x, r) for x in enc]
    if not isinstance(enc, dict):
        return enc
    if "__tensor__" in enc:
        import torch

        dtype, shape, n = enc["__tensor__"]
        dt = getattr(torch, dtype)
        raw = bytearray(r.take(n))
        if not raw:
            return torch.empty(shape, dtype=dt)
        return torch.frombuffer(raw, dtype=torch.uint8).view(dt).reshape(shape)
    if "__array__" in enc:
        import numpy as np

        dtype, shape, n = enc["__array__"]
        return np.frombuffer(bytes(r.take(n)), dtype=np.dtype(dtype)).reshape(shape).copy()
    if "__tuple__" in enc:
        return tuple(_decode(x, r) for x in enc["__tuple__"])
    if "__dict__" in enc:
        return {_freeze(_decode(k, r)): _decode(v, r) for k, v in enc["__dict__"]}
    raise ValueError(f"ringrun.elastic.State: unknown entry {sorted(enc)} in a committed state")


def _freeze(k):
    return tuple(k) if isinstance(k, list) else k


def copy_into(cur, value):
    """Copies ``value`` into the tensor or array ``cur`` of the same shape and dtype, in place
    (so references to ``cur`` see the restored values); False if it cannot."""
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if torch is not None and isinstance(cur, torch.Tensor):
        if isinstance(value, torch.Tensor) and value.shape == cur.shape:
            with torch.no_grad():
                cur.copy_(value)
            return True
        if np is not None and isinstance(value, np.ndarray) and value.shape == tuple(cur.shape):
            with torch.no_grad():
                cur.copy_(torch.from_numpy(value))
            return True
        return False
    if np is not None and isinstance(cur, np.ndarray) and cur.flags.writeable:
        if isinstance(value, np.ndarray) and value.shape == cur.shape:
            cur[...] = value
            return True
    return False
