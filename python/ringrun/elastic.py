"""Elastic training, as in Horovod Elastic: a ``State`` that commits and restores, and the
``run`` decorator that turns a membership change into "restore the last commit, retry".

    state = ringrun.elastic.State(w=np.zeros(10), step=0)

    @ringrun.elastic.run
    def train(state):
        while state.step < 100:
            ...                      # allreduce gradients, update state.w
            state.step += 1
            state.commit()

A commit is cheap (it stays in the members' memory; peers hold copies), so commit every step
or every few: after a failure the survivors resume from the newest commit.
"""

import functools
import json
import sys

from .errors import RECOVERABLE
import ringrun


class State:
    """Named training state: numpy arrays, torch CPU tensors and JSON scalars (int, float,
    str, bool, None, lists/dicts of those). Every rank must hold identical values at a commit
    (the runtime checks the bytes). Arrays and tensors are restored in place, so references
    to them (a model's parameters) stay valid."""

    def __init__(self, **attrs):
        object.__setattr__(self, "_keys", sorted(attrs))
        object.__setattr__(self, "_next", 0)
        object.__setattr__(self, "_on_reset", [])
        for k, v in attrs.items():
            object.__setattr__(self, k, v)
        # Restoring before any commit goes back to the state as constructed.
        object.__setattr__(self, "_initial", self.save())

    def __setattr__(self, k, v):
        # A public attribute set later is state too.
        if not k.startswith("_") and k not in self._keys:
            self._keys.append(k)
            self._keys.sort()
        object.__setattr__(self, k, v)

    def register_reset_callback(self, fn):
        """``fn()`` runs after every restore that follows a failure."""
        self._on_reset.append(fn)

    @property
    def commits(self):
        """The step number of the next commit."""
        return self._next

    def commit(self):
        """Commits the current values on every rank (must be called by all ranks)."""
        ringrun.commit(self._next, self.save())
        object.__setattr__(self, "_next", self._next + 1)
        ringrun.set_step(self._next)

    def restore(self):
        """Waits for a working epoch and loads the newest commit (or the initial values)."""
        got = ringrun.restore()
        if got is None:
            self.load(self._initial)
            object.__setattr__(self, "_next", 0)
        else:
            step, blob = got
            self.load(blob)
            object.__setattr__(self, "_next", step + 1)
        ringrun.set_step(self._next)

    def save(self):
        """The state as bytes: a JSON head (scalars, array shapes) then the raw arrays."""
        scalars, arrays, chunks = {}, [], []
        np, torch = sys.modules.get("numpy"), sys.modules.get("torch")
        for k in self._keys:
            v = getattr(self, k)
            if torch is not None and isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            if np is not None and isinstance(v, np.ndarray):
                arrays.append([k, v.dtype.str, list(v.shape)])
                chunks.append(np.ascontiguousarray(v).tobytes())
            else:
                scalars[k] = v
        head = json.dumps({"scalars": scalars, "arrays": arrays}, sort_keys=True).encode()
        return len(head).to_bytes(8, "little") + head + b"".join(chunks)

    def load(self, blob):
        n = int.from_bytes(blob[:8], "little")
        head = json.loads(blob[8 : 8 + n])
        for k, v in head["scalars"].items():
            object.__setattr__(self, k, v)
        off = 8 + n
        if not head["arrays"]:
            return
        import numpy as np

        torch = sys.modules.get("torch")
        for k, dt, shape in head["arrays"]:
            dtype = np.dtype(dt)
            count = int(np.prod(shape, dtype=np.int64))
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=off).reshape(shape)
            off += count * dtype.itemsize
            cur = getattr(self, k, None)
            if torch is not None and isinstance(cur, torch.Tensor):
                with torch.no_grad():
                    cur.copy_(torch.from_numpy(arr.copy()))
            elif isinstance(cur, np.ndarray) and cur.shape == arr.shape and cur.flags.writeable:
                cur[...] = arr
            else:
                object.__setattr__(self, k, arr.copy())


def run(func):
    """Decorates ``func(state, *args)``: it starts from the group's state (a fresh start, or
    the newest commit), and on ``MembershipChanged`` / ``PeerLost`` / ``Timeout`` restores the
    last commit and calls ``func`` again. Other errors propagate."""

    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        state.restore()
        while True:
            try:
                return func(state, *args, **kwargs)
            except RECOVERABLE as e:
                print(f"ringrun: {type(e).__name__}: {e}; restoring", file=sys.stderr)
                state.restore()
                for fn in state._on_reset:
                    fn()

    return wrapper


__all__ = ["State", "run"]
