"""Data for elastic jobs: which samples each rank reads, exactly once per pass, with a global
batch that does not change when the world does.

    sampler = ringrun.data.ElasticSampler(len(dataset), global_batch=256, seed=0)
    state = ringrun.elastic.State(model=model, opt=opt, sampler=sampler)

    @ringrun.elastic.run
    def train(state):
        while sampler.data_epoch < epochs:
            idx = sampler.next_indices()        # this rank's share of the next global batch
            ...                                 # forward, backward, allreduce (sum), step
            state.commit()                      # commits the sampler's position with the step

The data is a stream of passes (data epochs), each a seeded permutation of the indices that is
never materialised (10^9 samples cost no memory). A step takes the next ``global_batch``
positions and splits them over the current epoch's ranks. The sampler's position is committed
and restored with the ``State``: the step a failure rolls back re-reads the same global batch,
split over the new ranks. With a gradient *sum* over the global batch, a step's math does not
depend on the world size or on faults. ``RINGRUN_DATA_LEDGER=DIR`` records every share read and
every commit; ``ringrun data-check DIR`` reports any index missing or repeated.

As a torch ``batch_sampler`` it yields the batches of the current pass; a ``DataLoader`` with
worker processes fetches batches ahead, so use :class:`DataLoader` here, which takes a batch
from the sampler only when the training loop receives it.
"""

import atexit
import collections
import ctypes
import hashlib
import os

from ._lib import check, lib
from .errors import InvalidArgument, MembershipChanged

__all__ = ["ElasticSampler", "FileSampler", "DataLoader", "input_files", "record_ranges"]


def _index(v, what):
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise InvalidArgument(f"{what} must be an integer, not {type(v).__name__}")
    v = v.__index__()
    if v < 0 or v >= 2**64:
        raise InvalidArgument(f"{what} must be in 0..2^64, not {v}")
    return v


class ElasticSampler:
    """The next global batch's indices, split over the current epoch's ranks.

    ``num_samples``: indices ``0..num_samples``; ``global_batch``: indices per step over all
    ranks (1..num_samples); ``seed``: every pass's permutation; ``shuffle=False`` reads each
    pass in order. Every rank must build the same sampler: the first ``next_indices`` of every
    epoch checks that all ranks hold the same parameters and position, and raises
    :class:`~ringrun.InvalidArgument` on every rank if not."""

    def __init__(self, num_samples, global_batch, seed=0, shuffle=True):
        self._spec = (
            _index(num_samples, "num_samples"),
            _index(global_batch, "global_batch"),
            _index(seed, "seed"),
            bool(shuffle),
        )
        handle = ctypes.c_void_p()
        check(lib().ringrun_sampler_new(*self._spec[:3], int(self._spec[3]), ctypes.byref(handle)))
        self._handle = handle
        self._out = (ctypes.c_int64 * self._spec[1])()

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle and _LIB_ALIVE:
            lib().ringrun_sampler_free(handle)

    num_samples = property(lambda self: self._spec[0])
    global_batch = property(lambda self: self._spec[1])
    seed = property(lambda self: self._spec[2])
    shuffle = property(lambda self: self._spec[3])

    @property
    def offset(self):
        """Indices handed out so far over all ranks: the position that is committed."""
        out = ctypes.c_uint64()
        check(lib().ringrun_sampler_offset(self._handle, ctypes.byref(out)))
        return out.value

    @property
    def data_epoch(self):
        """The pass over the data that the next step starts in (0 first)."""
        out = ctypes.c_uint64()
        check(lib().ringrun_sampler_data_epoch(self._handle, ctypes.byref(out)))
        return out.value

    def next_indices(self):
        """This rank's share of the next global batch (a numpy int64 array where numpy is
        installed, else a list); the sampler moves on by one global batch."""
        n = ctypes.c_size_t()
        check(lib().ringrun_sampler_next(self._handle, self._out, self._spec[1], ctypes.byref(n)))
        return _as_array(self._out, n.value)

    def peek(self, offset=None):
        """This rank's share of the global batch at stream position ``offset`` (default: the
        next one), without moving on or recording anything."""
        offset = self.offset if offset is None else _index(offset, "offset")
        n = ctypes.c_size_t()
        out = (ctypes.c_int64 * self._spec[1])()
        check(lib().ringrun_sampler_peek(self._handle, offset, out, self._spec[1],
                                         ctypes.byref(n)))
        return _as_array(out, n.value)

    def state_dict(self):
        n, b, seed, shuffle = self._spec
        return {"offset": self.offset, "num_samples": n, "global_batch": b, "seed": seed,
                "shuffle": shuffle}

    def load_state_dict(self, d):
        mine = self.state_dict()
        for k in ("num_samples", "global_batch", "seed", "shuffle"):
            if d.get(k) != mine[k]:
                raise InvalidArgument(
                    f"the restored sampler has {k}={d.get(k)!r}, this one {mine[k]!r}")
        check(lib().ringrun_sampler_set_offset(self._handle, _index(d["offset"], "offset")))

    def steps_left_in_pass(self):
        """Steps that start in the current pass (the last may run into the next pass)."""
        n, b = self._spec[:2]
        return -(-((self.data_epoch + 1) * n - self.offset) // b)

    def __len__(self):
        return self.steps_left_in_pass()

    def __iter__(self):
        """The batches (lists of indices) of the current pass, as a torch ``batch_sampler``."""
        for _ in range(self.steps_left_in_pass()):
            yield _as_list(self.next_indices())

    def __repr__(self):
        n, b, seed, shuffle = self._spec
        return (f"ElasticSampler(num_samples={n}, global_batch={b}, seed={seed}, "
                f"shuffle={shuffle}, offset={self.offset})")


def _as_array(buf, n):
    try:
        import numpy as np
    except ImportError:
        return list(buf[:n])
    return np.frombuffer(buf, dtype=np.int64, count=n).copy()


def _as_list(a):
    return a.tolist() if hasattr(a, "tolist") else list(a)


def input_files():
    """The job's input files as ``[(path, size_in_bytes)]``, in the launcher's order: every
    file of ``ringrun launch --input``, whatever this worker's launch-time share
    (``INPUT_FILE_LIST``) was. Empty when the job has no input."""
    manifest = os.environ.get("RINGRUN_INPUT_MANIFEST")
    if not manifest:
        return []
    out = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                size, path = line.split("\t", 1)
                out.append((path, int(size)))
    return out


def record_ranges(files, records_per_unit):
    """Units of ``records_per_unit`` records: ``files`` is ``[(path, record_count)]``; returns
    ``[(path, start, stop)]``, each file cut into consecutive ranges."""
    per = _index(records_per_unit, "records_per_unit")
    if per == 0:
        raise InvalidArgument("records_per_unit must be positive")
    return [(path, s, min(s + per, n)) for path, n in files for s in range(0, n, per)]


class FileSampler(ElasticSampler):
    """The sampler over units of input rather than samples: files (by default the job's
    ``--input`` files) or ``(path, start, stop)`` record ranges (:func:`record_ranges`). Each
    step hands this rank its share of ``global_batch`` units; the units' list takes part in
    the permutation's seed, so ranks with different lists fail the first step's check."""

    def __init__(self, global_batch, units=None, seed=0, shuffle=True):
        units = [p for p, _ in input_files()] if units is None else list(units)
        if not units:
            raise InvalidArgument("no input units (no --input files, or an empty list)")
        digest = hashlib.sha256(repr(units).encode()).digest()
        self.units = units
        super().__init__(len(units), global_batch,
                         _index(seed, "seed") ^ int.from_bytes(digest[:8], "little"), shuffle)

    def next_units(self):
        """This rank's units of the next global batch."""
        return [self.units[i] for i in _as_list(self.next_indices())]


class DataLoader:
    """A torch ``DataLoader`` over ``dataset`` whose batches come from ``sampler``, exact under
    prefetching: the loader fetches batches ahead with :meth:`ElasticSampler.peek`, and the
    sampler moves on (and records, and checks) only when the training loop receives a batch,
    so the committed position is always the batches trained on. Iterating it gives the rest of
    the current pass. Other keyword arguments go to ``torch.utils.data.DataLoader``."""

    def __init__(self, dataset, sampler, **kwargs):
        import torch.utils.data

        for k in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if k in kwargs:
                raise InvalidArgument(f"DataLoader: {k} is the ElasticSampler's to decide")
        self.sampler = sampler
        self._ahead = _Ahead(sampler)
        self._loader = torch.utils.data.DataLoader(dataset, batch_sampler=self._ahead, **kwargs)

    def __len__(self):
        return self.sampler.steps_left_in_pass()

    def __iter__(self):
        expected = self._ahead.expected = collections.deque()
        for batch in self._loader:
            want = expected.popleft()
            got = _as_list(self.sampler.next_indices())
            if got != want:
                raise MembershipChanged(
                    "the world changed while batches were fetched ahead; restore and iterate "
                    "the loader again")
            yield batch


class _Ahead:
    """The batch sampler a :class:`DataLoader` hands torch: the current pass's batches from the
    sampler's position, by peeking; each one is also queued for the check on delivery."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.expected = collections.deque()

    def __len__(self):
        return self.sampler.steps_left_in_pass()

    def __iter__(self):
        start, step = self.sampler.offset, self.sampler.global_batch
        for k in range(self.sampler.steps_left_in_pass()):
            batch = _as_list(self.sampler.peek(start + k * step))
            self.expected.append(batch)
            yield batch


# Interpreter shutdown may tear modules down before samplers: free only until then.
_LIB_ALIVE = True


@atexit.register
def _shutdown():
    global _LIB_ALIVE
    _LIB_ALIVE = False
