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

from . import _codec
from .errors import RECOVERABLE
import ringrun


class State:
    """Named training state: torch modules and optimizers (committed as their state_dicts),
    any object with ``state_dict()`` / ``load_state_dict()`` (an LR scheduler, a sampler),
    torch tensors, numpy arrays and JSON scalars (int, float, str, bool, None, lists/dicts of
    those). Every rank must hold identical values at a commit (the runtime checks the bytes).
    Restoring works in place: tensors and arrays are copied into, modules and optimizers get
    ``load_state_dict``, so references to them (a model's parameters, a DDP wrapper, an
    optimizer's param groups) stay valid."""

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
        """Commits the current values on every rank (must be called by all ranks). Raises the
        membership change if a collective of the step failed (a DDP bucket whose allreduce
        failed completes unchanged; the step must not be committed)."""
        _raise_pending_failure()
        ringrun.commit(self._next, self.save())
        object.__setattr__(self, "_next", self._next + 1)
        ringrun.set_step(self._next)

    def restore(self):
        """Waits for a working epoch and loads the newest commit (or the initial values)."""
        got = ringrun.restore()
        _clear_pending_failure()
        if got is None:
            self.load(self._initial)
            object.__setattr__(self, "_next", 0)
        else:
            step, blob = got
            self.load(blob)
            object.__setattr__(self, "_next", step + 1)
        ringrun.set_step(self._next)

    def save(self):
        """The state as bytes: a JSON head (scalars, tensor shapes) then the raw tensors."""
        chunks = []
        head = {k: _codec.encode(_stateful(getattr(self, k)), chunks) for k in self._keys}
        head = json.dumps(head, sort_keys=True).encode()
        return len(head).to_bytes(8, "little") + head + b"".join(chunks)

    def load(self, blob):
        n = int.from_bytes(blob[:8], "little")
        head = json.loads(blob[8 : 8 + n])
        data = _codec.Reader(memoryview(blob)[8 + n :])
        for k, enc in head.items():
            cur = getattr(self, k, None)
            value = _codec.decode(enc, data)
            if hasattr(cur, "load_state_dict") and hasattr(cur, "state_dict"):
                cur.load_state_dict(value)
            elif not _codec.copy_into(cur, value):
                object.__setattr__(self, k, value)


def _stateful(v):
    """What is committed for ``v``: its state_dict for a module, optimizer or other stateful
    object, else ``v`` itself."""
    if hasattr(v, "state_dict") and hasattr(v, "load_state_dict") and not isinstance(v, type):
        return v.state_dict()
    return v


def _raise_pending_failure():
    torch_backend = sys.modules.get("ringrun.torch")
    if torch_backend is not None and torch_backend.pending_failure() is not None:
        raise torch_backend.pending_failure()


def _clear_pending_failure():
    torch_backend = sys.modules.get("ringrun.torch")
    if torch_backend is not None:
        torch_backend.clear_failure()


def _recoverable(e):
    """Whether ``e`` is a membership change: a ringrun error, or any error raised while a
    collective of the torch backend has failed since the last restore (DDP re-raises a failed
    bucket allreduce as a RuntimeError)."""
    if isinstance(e, RECOVERABLE):
        return True
    torch_backend = sys.modules.get("ringrun.torch")
    return torch_backend is not None and torch_backend.pending_failure() is not None


def run(func):
    """Decorates ``func(state, *args)``: it starts from the group's state (a fresh start, or
    the newest commit), and on ``MembershipChanged`` / ``PeerLost`` / ``Timeout`` restores the
    last commit and calls ``func`` again. Other errors propagate. When ``func`` returns, the
    last commit is the job's final state (``ringrun.finish``). A worker that comes back after
    the others finished gets that final state (``func`` then finds its work done), or, when
    no member holds it any more, ``JobCompleted`` ends the process with status 0."""

    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        state.restore()
        while True:
            try:
                result = func(state, *args, **kwargs)
                if state.commits > 0:  # there is a committed state to finish with
                    ringrun.finish()
                return result
            except Exception as e:
                if not _recoverable(e):
                    raise
                print(f"ringrun: {type(e).__name__}: {e}; restoring", file=sys.stderr)
                state.restore()
                for fn in state._on_reset:
                    fn()

    return wrapper


__all__ = ["State", "run"]
