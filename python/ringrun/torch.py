"""The ``torch.distributed`` backend ``"ringrun"``.

    import ringrun.torch                      # registers the backend
    torch.distributed.init_process_group("ringrun")
    model = torch.nn.parallel.DistributedDataParallel(model)

Under ``ringrun launch`` no rendezvous store is needed: ``init_process_group`` joins the ringrun
group from the launcher's environment, and ``get_rank()`` / ``get_world_size()`` are the current
epoch's (they change after a membership change). Collectives run in call order: asynchronous
ones (``async_op=True``, and DDP's bucket allreduces) on one communication thread per process,
off the Python thread (the C calls release the GIL), so DDP overlaps them with the backward
pass; a blocking call made while nothing is queued runs on the caller's thread. A Work's
``wait()`` raises the ringrun error of a failed collective and its ``get_future()`` completes
with the output tensors or that error, as Gloo's do.

Supported on CPU tensors (and CUDA tensors, through the library's device side) of the dtypes
of the C ABI: ``all_reduce`` (SUM, PRODUCT, MIN, MAX, AVG), ``broadcast``, ``all_gather``,
``all_gather_into_tensor``, ``reduce_scatter`` / ``reduce_scatter_tensor``, ``reduce``,
``gather``, ``scatter``, ``all_to_all`` / ``all_to_all_single`` with equal splits (CPU
tensors), ``barrier`` and their coalesced forms (and so torch's object collectives).
Point-to-point calls and uneven all-to-all splits raise ``NotImplementedError`` naming the
call, and so does ``new_group`` of a subset of the ranks (a group of every rank works).
Non-contiguous tensors go through a contiguous copy.

Elastic training: ``ringrun.elastic.State`` holds modules and optimizers; after a membership
change, DDP keeps working without being re-wrapped (see ``elastic_comm_hook``).
"""

import importlib
import os
import threading

import torch
import torch.distributed as dist

import ringrun

from ._torch_pg import (  # noqa: F401  (re-exported)
    BACKEND,
    ProcessGroupRingrun,
    Work,
    _note_failure,
    clear_failure,
    pending_failure,
)
from .errors import RECOVERABLE

# torch.distributed.rendezvous is also the name of a function there.
_rendezvous = importlib.import_module("torch.distributed.rendezvous")


def elastic_comm_hook(state, bucket):
    """A DDP communication hook that averages each bucket over the *current* epoch's members
    (``model.register_comm_hook(None, ringrun.torch.elastic_comm_hook)``). DDP's own averaging
    divides by a world size it may have cached; this hook follows membership changes. A bucket
    whose allreduce fails completes unchanged and records the failure: the step is then thrown
    away by the next commit or collective, which raises the membership change (torchft's
    contract), so DDP's bookkeeping never sees a broken future."""
    pg = dist.distributed_c10d._get_default_group()
    buf = bucket.buffer()
    fut = torch.futures.Future()
    work = pg.allreduce([buf], _avg_opts())

    def done(f):
        try:
            f.value()
        except Exception as e:  # noqa: BLE001 - recorded, surfaced at the next commit
            _note_failure(e if isinstance(e, RECOVERABLE) else ringrun.MembershipChanged(str(e)))
        fut.set_result(buf)

    work.get_future().add_done_callback(done)
    return fut


class DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DDP, set up for training through membership changes (what torchft's DDP wrapper
    does for its manager):

    - ``init_sync=False``: a worker that joins a running job gets its replica from
      ``ringrun.elastic.State.restore()``, not from an init-time broadcast the others are not
      making;
    - ``find_unused_parameters=True``: DDP then never rebuilds its buckets after the first
      step, so a restarted worker (in its first step) and the survivors (long past theirs)
      lay out the same buckets;
    - ``elastic_comm_hook``: gradients are averaged over the current epoch's members.

    Other arguments are DDP's; pass the two flags explicitly to override them."""

    def __init__(self, module, *args, **kwargs):
        kwargs.setdefault("init_sync", False)
        kwargs.setdefault("find_unused_parameters", True)
        super().__init__(module, *args, **kwargs)
        self.register_comm_hook(None, elastic_comm_hook)


def _avg_opts():
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.AVG
    return opts


def _create(store, rank, size, timeout):
    ringrun.init()
    # init_process_group makes the default group before it is registered; a later call is
    # new_group's. A group of every rank is the job's world, a subset is not: refused here,
    # as it would otherwise run its collectives over the whole job.
    if dist.is_initialized() and size != ringrun.size():
        raise NotImplementedError(
            f"ringrun backend: new_group of {size} of the job's {ringrun.size()} ranks is not "
            "supported (ringrun's collectives span the whole job; a group of every rank works, "
            "and a subgroup that need not survive membership changes can use backend='gloo')"
        )
    return ProcessGroupRingrun()


class _LazyStore(dist.Store):
    """The env:// rendezvous store under ``ringrun launch``: made only if something uses it
    (a Gloo subgroup, say). The ringrun backend never does, so a worker restarted alone never
    waits on a store hosted by a rank that may be gone."""

    def __init__(self, make):
        super().__init__()
        self._make, self._real, self._lock = make, None, threading.Lock()
        self._timeout = None

    def _store(self):
        with self._lock:
            if self._real is None:
                self._real = self._make()
                if self._timeout is not None:
                    self._real.set_timeout(self._timeout)
            return self._real

    def set(self, key, value):
        self._store().set(key, value)

    def get(self, key):
        return self._store().get(key)

    def add(self, key, value):
        return self._store().add(key, value)

    def compare_set(self, key, expected, desired):
        return self._store().compare_set(key, expected, desired)

    def wait(self, keys, timeout=None):
        return self._store().wait(keys) if timeout is None else self._store().wait(keys, timeout)

    def check(self, keys):
        return self._store().check(keys)

    def delete_key(self, key):
        return self._store().delete_key(key)

    def num_keys(self):
        return self._store().num_keys()

    def set_timeout(self, timeout):
        # init_process_group sets the timeout on every store: remembered, not a use.
        with self._lock:
            self._timeout = timeout
            if self._real is not None:
                self._real.set_timeout(timeout)


_env_handler = _rendezvous._rendezvous_handlers["env"]


def _ringrun_env_handler(url, timeout=_rendezvous.default_pg_timeout, **kwargs):
    if not os.environ.get("RINGRUN_RUN_ID") or os.environ.get("RINGRUN_TORCH_STORE") == "env":
        yield from _env_handler(url, timeout, **kwargs)
        return
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    def make():
        inner = _env_handler(url, timeout, **kwargs)
        store, _, _ = next(inner)
        return store

    yield (_LazyStore(make), rank, size)
    raise RuntimeError("Unable to perform re-rendezvous using env:// method")


def _register():
    if BACKEND.upper() in dist.Backend._plugins:
        return
    dist.Backend.register_backend(BACKEND, _create, devices=["cpu", "cuda"])
    _rendezvous._rendezvous_handlers["env"] = _ringrun_env_handler


_register()

__all__ = [
    "BACKEND", "DistributedDataParallel", "ProcessGroupRingrun", "Work", "elastic_comm_hook",
    "clear_failure", "pending_failure",
]
