"""The process group behind ``ringrun.torch``: tensors described for the C calls, the Work
handed back, the runner that keeps collectives in call order, and ``ProcessGroupRingrun``."""

import ctypes
import queue
import threading

import torch
import torch.distributed as dist

import ringrun

from . import _buffers
from ._lib import check, lib
from .errors import RECOVERABLE, InvalidArgument

BACKEND = "ringrun"

_OPS = {
    dist.ReduceOp.SUM: "sum",
    dist.ReduceOp.PRODUCT: "prod",
    dist.ReduceOp.MIN: "min",
    dist.ReduceOp.MAX: "max",
    dist.ReduceOp.AVG: "avg",
}

_OP_CODES = {red: _buffers.op_code(name) for red, name in _OPS.items()}
_DTYPE_CODES = {
    getattr(torch, name): code for name, code in _buffers.DTYPES.items() if hasattr(torch, name)
}

_UNSUPPORTED = ("send", "recv", "recv_anysource", "monitored_barrier")


def _op(opts):
    code = _OP_CODES.get(opts.reduceOp.op)
    if code is None:
        raise InvalidArgument(
            f"ringrun backend: reduce op {opts.reduceOp.op} is not supported "
            "(use SUM, PRODUCT, MIN, MAX or AVG)"
        )
    return code


class _Dense:
    """A tensor as the C call sees it: a contiguous buffer (the tensor itself, or a copy that
    is written back after the call), checked and described before anything is sent."""

    def __init__(self, tensor, writable=True):
        self.tensor = tensor
        self.buf = tensor if tensor.is_contiguous() else tensor.contiguous()
        code = _DTYPE_CODES.get(tensor.dtype)
        if code is not None and tensor.is_cpu:  # the common case, without describe()'s checks
            self.ptr, self.count, self.dtype = self.buf.data_ptr(), self.buf.numel(), code
        else:
            self.ptr, self.count, self.dtype, _ = _buffers.describe(self.buf, writable)
        self.stream = _buffers.cuda_stream(tensor) if tensor.is_cuda else None

    def write_back(self):
        if self.buf is not self.tensor:
            self.tensor.copy_(self.buf)


class Work(dist._Work):
    """One collective. ``wait()`` blocks until it ran and raises its error; ``get_future()``
    completes with ``result`` or with the error. A queued Work has its event and future from
    the start (the communication thread finishes it); one that ran on the caller's thread is
    finished before anyone sees it, so it makes them only when asked."""

    def __init__(self, result, queued):
        super().__init__()
        self._result = result
        self._error = None
        self._future = torch.futures.Future() if queued else None
        self._done = threading.Event() if queued else None

    def _finish(self, error):
        self._error = error
        if self._done is None:
            return
        self._done.set()
        if error is None:
            self._future.set_result(self._result)
        else:
            self._future.set_exception(error)

    def wait(self, timeout=None):
        secs = None
        if timeout is not None and hasattr(timeout, "total_seconds"):
            secs = timeout.total_seconds() or None
        if self._done is not None and not self._done.wait(secs):
            raise ringrun.Timeout(f"ringrun backend: work not finished within {secs} s")
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self):
        return self._done is None or self._done.is_set()

    def is_success(self):
        return self.is_completed() and self._error is None

    def exception(self):
        return self._error

    def result(self):
        self.wait()
        return self._result

    def get_future(self):
        if self._future is None:
            self._future = torch.futures.Future()
            if self._error is None:
                self._future.set_result(self._result)
            else:
                self._future.set_exception(self._error)
        return self._future


class _Runner:
    """Runs collectives one at a time, in call order (every rank issues the same sequence, so
    the order is the same everywhere): queued ones on the communication thread, and a blocking
    call (``async_op=False``) made while nothing is queued on the caller's thread, which saves
    two thread hand-offs per call. ``_turn`` is held while any collective runs."""

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._turn = threading.Lock()
        self._pending = 0
        self._thread = threading.Thread(target=self._loop, name="ringrun-comm", daemon=True)
        self._thread.start()

    def submit(self, run, result, opts=None):
        with self._mutex:
            inline = self._pending == 0 and getattr(opts, "asyncOp", True) is False
            self._pending += 1
            work = Work(result, queued=not inline)
            if not inline:
                self._queue.put((run, work))
        if inline:
            self._run(run, work)
        return work

    def _run(self, run, work):
        with self._turn:
            try:
                run()
            except BaseException as e:  # handed to the caller through the Work
                _note_failure(e)
                error = e
            else:
                error = None
        with self._mutex:
            self._pending -= 1
        work._finish(error)

    def _loop(self):
        while True:
            self._run(*self._queue.get())


_last_failure = None


def _note_failure(error):
    global _last_failure
    if isinstance(error, RECOVERABLE):
        _last_failure = error


def pending_failure():
    """The recoverable error of a collective that failed since the last restore, or None:
    ``ringrun.elastic`` treats an exception raised after it (DDP wraps the error of a bucket
    allreduce in a RuntimeError) as that membership change."""
    return _last_failure


def clear_failure():
    global _last_failure
    _last_failure = None


def _unflatten(flat, outs):
    """Copies consecutive equal parts of ``flat``, one for each of ``outs`` (none for none)."""
    for o, part in zip(outs, flat.chunk(len(outs)) if outs else ()):
        o.copy_(part.view(o.shape))


def _call(dense, fn, *args):
    """One C call, ordered after torch's current stream for a CUDA tensor."""
    if dense.stream is not None:
        check(lib().ringrun_set_stream(dense.stream))
    check(fn(*args))


class ProcessGroupRingrun(dist.ProcessGroup):
    """The world of the current ringrun epoch as a torch process group."""

    def __init__(self):
        super().__init__(ringrun.rank(), ringrun.size())
        self._runner = _Runner()

    # Identity: the current epoch's, read from the library on every call.
    def getRank(self):
        return ringrun.rank()

    def getSize(self):
        return ringrun.size()

    def getBackendName(self):
        return BACKEND

    def __repr__(self):
        return f"ProcessGroupRingrun(rank={ringrun.rank()}, size={ringrun.size()})"

    # Collectives.
    def allreduce(self, tensors, opts=None):
        code = _op(opts or dist.AllreduceOptions())
        dense = [_Dense(t) for t in tensors]

        def run():
            for d in dense:
                _call(d, lib().ringrun_allreduce, d.ptr, d.ptr, d.count, d.dtype, code)
                d.write_back()

        return self._runner.submit(run, tensors, opts)

    def allreduce_coalesced(self, tensors, opts=None):
        code = _op(opts or dist.AllreduceCoalescedOptions())
        dense = [_Dense(t) for t in tensors]
        if len({d.dtype for d in dense}) > 1:
            raise InvalidArgument("ringrun backend: allreduce_coalesced needs one dtype")

        def run():
            n = len(dense)
            ptrs = (ctypes.c_void_p * n)(*[d.ptr for d in dense])
            counts = (ctypes.c_size_t * n)(*[d.count for d in dense])
            if n:
                _call(dense[0], lib().ringrun_allreduce_many, ptrs, counts, n,
                      dense[0].dtype, code)
            for d in dense:
                d.write_back()

        return self._runner.submit(run, tensors)

    def broadcast(self, tensors, opts=None):
        root = (opts or dist.BroadcastOptions()).rootRank
        dense = [_Dense(t) for t in tensors]

        def run():
            for d in dense:
                _call(d, lib().ringrun_broadcast, d.ptr, d.count, d.dtype, int(root))
                d.write_back()

        return self._runner.submit(run, tensors, opts)

    def reduce(self, tensors, opts=None):
        """Every rank computes the reduction; only ``opts.rootRank``'s tensor takes it."""
        opts = opts or dist.ReduceOptions()
        code, root = _op(opts), opts.rootRank
        pairs = [(t, _Dense(t.detach().clone(memory_format=torch.contiguous_format)))
                 for t in tensors]

        def run():
            for t, d in pairs:
                _call(d, lib().ringrun_allreduce, d.ptr, d.ptr, d.count, d.dtype, code)
                if ringrun.rank() == root:
                    t.copy_(d.buf)

        return self._runner.submit(run, tensors, opts)

    def _gather_into(self, out, inp):
        """Queues one allgather of ``inp`` into the flat tensor ``out`` (size × inp)."""
        src = _Dense(inp, writable=False)
        dst = _Dense(out)
        if dst.dtype != src.dtype or dst.count != src.count * self.getSize():
            raise InvalidArgument(
                f"ringrun backend: all_gather output has {out.numel()} elements of {out.dtype}, "
                f"needs {src.count * self.getSize()} of {inp.dtype}"
            )

        def run():
            _call(src, lib().ringrun_allgather, src.ptr, dst.ptr, src.count, src.dtype)
            dst.write_back()

        return run

    def allgather(self, output_tensors, input_tensors, opts=None):
        steps = []
        for outs, inp in zip(output_tensors, input_tensors):
            if len(outs) != self.getSize():
                raise InvalidArgument(
                    f"ringrun backend: all_gather got {len(outs)} output tensors for a world "
                    f"of {self.getSize()}"
                )
            flat = torch.empty((len(outs) * inp.numel(),), dtype=inp.dtype, device=inp.device)
            gather = self._gather_into(flat, inp)

            def run(gather=gather, flat=flat, outs=outs):
                gather()
                _unflatten(flat, outs)

            steps.append(run)
        return self._runner.submit(lambda: [s() for s in steps], output_tensors, opts)

    def _allgather_base(self, output, input, opts=None):
        return self._runner.submit(self._gather_into(output, input), [output], opts)

    all_gather_single = _allgather_base

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        steps = [self._gather_into(o, i) for o, i in zip(outputs, inputs)]
        return self._runner.submit(lambda: [s() for s in steps], outputs)

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def gather(self, output_tensors, input_tensors, opts=None):
        """Every rank gathers (one all_gather); only ``opts.rootRank`` keeps the result."""
        root = (opts or dist.GatherOptions()).rootRank
        size, keep = self.getSize(), self.getRank() == root
        if len(input_tensors) != 1:
            raise InvalidArgument("ringrun backend: gather takes one input tensor")
        inp = input_tensors[0]
        outs = output_tensors[0] if keep and output_tensors else []
        if keep and len(outs) != size:
            raise InvalidArgument(
                f"ringrun backend: gather got {len(outs)} output tensors for a world of {size}"
            )
        flat = torch.empty((size * inp.numel(),), dtype=inp.dtype, device=inp.device)
        gather = self._gather_into(flat, inp)

        def run():
            gather()
            _unflatten(flat, outs)

        return self._runner.submit(run, output_tensors, opts)

    def scatter(self, output_tensors, input_tensors, opts=None):
        """The root's list goes to every rank as one broadcast of its concatenation; each rank
        keeps its part (``size`` times the data a point-to-point scatter moves)."""
        root = (opts or dist.ScatterOptions()).rootRank
        size, me = self.getSize(), self.getRank()
        if len(output_tensors) != 1:
            raise InvalidArgument("ringrun backend: scatter takes one output tensor")
        out = output_tensors[0]
        if me == root:
            ins = input_tensors[0] if input_tensors else []
            if len(ins) != size or any(
                i.numel() != out.numel() or i.dtype != out.dtype for i in ins
            ):
                raise InvalidArgument(
                    f"ringrun backend: scatter needs {size} input tensors of {out.numel()} "
                    f"elements of {out.dtype}, got {[(i.numel(), i.dtype) for i in ins]}"
                )
            flat = torch.cat([i.reshape(-1) for i in ins])
        else:
            flat = torch.empty((size * out.numel(),), dtype=out.dtype, device=out.device)
        whole = _Dense(flat)

        def run():
            _call(whole, lib().ringrun_broadcast, whole.ptr, whole.count, whole.dtype, int(root))
            n = out.numel()
            out.copy_(flat[me * n : (me + 1) * n].view(out.shape))

        return self._runner.submit(run, output_tensors, opts)

    def _scatter_into(self, out, inp, opts):
        """Queues one reduce-scatter of the flat ``inp`` (size × out) into ``out``."""
        code = _op(opts or dist.ReduceScatterOptions())
        src = _Dense(inp, writable=False)
        dst = _Dense(out)
        if dst.dtype != src.dtype or src.count != dst.count * self.getSize():
            raise InvalidArgument(
                f"ringrun backend: reduce_scatter input has {inp.numel()} elements of "
                f"{inp.dtype}, needs {dst.count * self.getSize()} of {out.dtype}"
            )

        def run():
            _call(src, lib().ringrun_reduce_scatter, src.ptr, dst.ptr, dst.count,
                  dst.dtype, code)
            dst.write_back()

        return run

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        steps = []
        for out, ins in zip(output_tensors, input_tensors):
            if len(ins) != self.getSize():
                raise InvalidArgument(
                    f"ringrun backend: reduce_scatter got {len(ins)} input tensors for a "
                    f"world of {self.getSize()}"
                )
            flat = torch.cat([i.reshape(-1) for i in ins])
            steps.append(self._scatter_into(out, flat, opts))
        return self._runner.submit(lambda: [s() for s in steps], output_tensors, opts)

    def _reduce_scatter_base(self, output, input, opts=None):
        return self._runner.submit(self._scatter_into(output, input, opts), [output], opts)

    reduce_scatter_single = _reduce_scatter_base

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        steps = [self._scatter_into(o, i, opts) for o, i in zip(outputs, inputs)]
        return self._runner.submit(lambda: [s() for s in steps], outputs)

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def _alltoall_flat(self, out, inp):
        """Queues one all-to-all of the flat ``inp`` into the flat ``out`` (equal blocks)."""
        if inp.is_cuda or out.is_cuda:
            raise NotImplementedError("ringrun backend: all_to_all takes CPU tensors")
        src, dst = _Dense(inp, writable=False), _Dense(out)
        size = self.getSize()
        if dst.dtype != src.dtype or dst.count != src.count or src.count % size:
            raise InvalidArgument(
                f"ringrun backend: all_to_all needs input and output of one dtype and size, "
                f"split into {size} equal blocks; got {inp.numel()} elements of {inp.dtype} "
                f"and {out.numel()} of {out.dtype}"
            )

        def run():
            _call(src, lib().ringrun_alltoall, src.ptr, dst.ptr, src.count // size, src.dtype)
            dst.write_back()

        return run

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        """``all_to_all_single``: equal splits only (ringrun's all-to-all has equal blocks)."""
        for splits, t in ((output_split_sizes, output), (input_split_sizes, input)):
            if splits and len(set(splits)) > 1:
                raise NotImplementedError(
                    f"ringrun backend: all_to_all_single with uneven splits {list(splits)} is "
                    "not supported (equal splits are)"
                )
            if splits and (len(splits) != self.getSize() or sum(splits) != t.shape[0]):
                raise InvalidArgument(
                    f"ringrun backend: all_to_all_single splits {list(splits)} do not split "
                    f"{t.shape[0]} rows among {self.getSize()} ranks"
                )
        return self._runner.submit(self._alltoall_flat(output, input), [output], opts)

    def alltoall(self, output_tensors, input_tensors, opts=None):
        """``all_to_all``: one tensor to and from each rank, all of one size and dtype."""
        size = self.getSize()
        sizes = {t.numel() for t in list(output_tensors) + list(input_tensors)}
        if len(input_tensors) != size or len(output_tensors) != size or len(sizes) > 1:
            raise NotImplementedError(
                f"ringrun backend: all_to_all needs {size} input and output tensors of one size "
                f"(ringrun's all-to-all has equal blocks); got sizes "
                f"{[t.numel() for t in input_tensors]} and {[t.numel() for t in output_tensors]}"
            )
        flat_in = torch.cat([t.reshape(-1) for t in input_tensors])
        flat_out = torch.empty_like(flat_in)
        exchange = self._alltoall_flat(flat_out, flat_in)

        def run():
            exchange()
            _unflatten(flat_out, output_tensors)

        return self._runner.submit(run, output_tensors, opts)

    def barrier(self, opts=None):
        return self._runner.submit(lambda: check(lib().ringrun_barrier()), [], opts)


def _unsupported(name):
    def call(self, *args, **kwargs):
        raise NotImplementedError(
            f"ringrun backend: {name} is not supported (ringrun has all_reduce, broadcast, "
            "all_gather, reduce_scatter, reduce, gather, scatter, all_to_all and barrier)"
        )

    call.__name__ = name
    return call


for _name in _UNSUPPORTED:
    setattr(ProcessGroupRingrun, _name, _unsupported(_name))
