"""A torch test worker: joins through ``init_process_group("ringrun")`` and runs one scenario.

``grid``: every collective x dtype x op (x root) through torch.distributed on the ringrun
backend, each checked against Gloo's result for the same inputs (a Gloo group of the same
ranks, made here).
``async``: Work and Future behaviour, and the collective running off the Python thread.
``bad``: mismatched shapes and dtypes across ranks, unsupported ops, dtypes and calls.
``ddp``: torch's DDP on the ringrun backend beside DDP on Gloo, ending with equal weights.
Prints ``checked N`` and exits 0, or names the first difference and exits 1.
"""

import datetime
import os
import sys
import threading
import time

import torch
import torch.distributed as dist

import ringrun
import ringrun.torch  # noqa: F401  (registers the backend)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16,
          torch.int8, torch.uint8, torch.int32, torch.int64]
OPS = {"SUM": dist.ReduceOp.SUM, "PRODUCT": dist.ReduceOp.PRODUCT, "MIN": dist.ReduceOp.MIN,
       "MAX": dist.ReduceOp.MAX, "AVG": dist.ReduceOp.AVG}
COUNT = 37  # odd, so no algorithm splits it evenly


def inputs(dtype, op, rank, count=COUNT):
    """Small integers: exact in every dtype, products of 4 ranks fit int8."""
    g = torch.Generator().manual_seed(1000 * rank + DTYPES.index(dtype) * 10 + len(op))
    if op == "PRODUCT":
        choices = torch.tensor([1, 2] if dtype == torch.uint8 else [-2, -1, 1, 2])
        vals = choices[torch.randint(len(choices), (count,), generator=g)]
    else:
        low = 0 if dtype == torch.uint8 else -20
        vals = torch.randint(low, 21, (count,), generator=g)
    return vals.to(dtype)


class Gloo:
    """The reference: a Gloo process group of the same ranks, called directly."""

    def __init__(self, rank, size):
        port = int(os.environ["GLOO_PORT"])
        store = dist.TCPStore("127.0.0.1", port, size, rank == 0,
                              timeout=datetime.timedelta(seconds=60))
        self.pg = dist.ProcessGroupGloo(store, rank, size, datetime.timedelta(seconds=60))
        self.size = size
        # The same backend as a ProcessGroup, for DDP.
        self.group = dist.ProcessGroup(store, rank, size)
        gloo_type = dist.ProcessGroup.BackendType.GLOO
        self.group._register_backend(torch.device("cpu"), gloo_type, self.pg)
        self.group._set_default_backend(gloo_type)

    def all_reduce(self, t, op):
        if op == "AVG":  # Gloo has no AVG: sum, then divide as torch would
            self.all_reduce(t, "SUM")
            if t.is_floating_point():
                t.div_(self.size)
            else:
                t.copy_(torch.div(t, self.size, rounding_mode="trunc"))
            return
        opts = dist.AllreduceOptions()
        opts.reduceOp = OPS[op]
        self.pg.allreduce([t], opts).wait()

    def broadcast(self, t, root):
        opts = dist.BroadcastOptions()
        opts.rootRank = root
        self.pg.broadcast([t], opts).wait()

    def all_gather(self, t):
        outs = [torch.empty_like(t) for _ in range(self.size)]
        self.pg.allgather([outs], [t]).wait()
        return torch.cat(outs)

    def gather(self, outs, t, root):
        opts = dist.GatherOptions()
        opts.rootRank = root
        self.pg.gather([outs] if outs else [], [t], opts).wait()

    def scatter(self, out, parts, root):
        opts = dist.ScatterOptions()
        opts.rootRank = root
        self.pg.scatter([out], [parts] if self.pg.rank() == root else [], opts).wait()

    def all_to_all(self, out, flat):
        self.pg.alltoall_base(out, flat, [], [], dist.AllToAllOptions()).wait()

    def reduce_scatter(self, flat, op):
        """Gloo's reduce_scatter is not in every build: allreduce, then take this rank's part."""
        full = flat.clone()
        self.all_reduce(full, op)
        n = flat.numel() // self.size
        return full[self.pg.rank() * n : (self.pg.rank() + 1) * n]


class Checks:
    def __init__(self):
        self.n = 0

    def equal(self, got, want, what):
        self.n += 1
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            print(f"MISMATCH {what}: got {got.tolist()} want {want.tolist()}", flush=True)
            sys.exit(1)


def grid(rank, size):
    gloo, c = Gloo(rank, size), Checks()
    for dtype in DTYPES:
        for op in OPS:
            mine, ref = inputs(dtype, op, rank), inputs(dtype, op, rank)
            dist.all_reduce(mine, op=OPS[op])
            gloo.all_reduce(ref, op)
            c.equal(mine, ref, f"all_reduce {dtype} {op}")

            flat = inputs(dtype, op, rank, COUNT * size)
            out = torch.empty(COUNT, dtype=dtype)
            dist.reduce_scatter_tensor(out, flat, op=OPS[op])
            c.equal(out, gloo.reduce_scatter(flat, op), f"reduce_scatter_tensor {dtype} {op}")

            parts = list(inputs(dtype, op, rank, COUNT * size).chunk(size))
            out = torch.empty(COUNT, dtype=dtype)
            dist.reduce_scatter(out, parts, op=OPS[op])
            c.equal(out, gloo.reduce_scatter(torch.cat(parts), op), f"reduce_scatter {dtype} {op}")

        for root in range(size):
            mine, ref = inputs(dtype, "b", rank), inputs(dtype, "b", rank)
            dist.broadcast(mine, src=root)
            gloo.broadcast(ref, root)
            c.equal(mine, ref, f"broadcast {dtype} root {root}")

        for root in range(size):
            t = inputs(dtype, "gather", rank)
            mine = [torch.empty_like(t) for _ in range(size)] if rank == root else None
            ref = [torch.empty_like(t) for _ in range(size)] if rank == root else []
            dist.gather(t, mine, dst=root)
            gloo.gather(ref, t, root)
            if rank == root:
                c.equal(torch.cat(mine), torch.cat(ref), f"gather {dtype} root {root}")

            parts = list(inputs(dtype, "scatter", rank, COUNT * size).chunk(size))
            mine, ref = torch.empty(COUNT, dtype=dtype), torch.empty(COUNT, dtype=dtype)
            dist.scatter(mine, parts if rank == root else None, src=root)
            gloo.scatter(ref, parts, root)
            c.equal(mine, ref, f"scatter {dtype} root {root}")

        flat = inputs(dtype, "a2a", rank, COUNT * size)
        mine, ref = torch.empty_like(flat), torch.empty_like(flat)
        dist.all_to_all_single(mine, flat)
        gloo.all_to_all(ref, flat)
        c.equal(mine, ref, f"all_to_all_single {dtype}")
        outs = [torch.empty(COUNT, dtype=dtype) for _ in range(size)]
        dist.all_to_all(outs, list(flat.chunk(size)))
        c.equal(torch.cat(outs), ref, f"all_to_all {dtype}")

        t = inputs(dtype, "g", rank)
        want = gloo.all_gather(t)
        outs = [torch.empty_like(t) for _ in range(size)]
        dist.all_gather(outs, t)
        c.equal(torch.cat(outs), want, f"all_gather {dtype}")
        out = torch.empty(COUNT * size, dtype=dtype)
        dist.all_gather_into_tensor(out, t)
        c.equal(out, want, f"all_gather_into_tensor {dtype}")

    # Non-contiguous tensors go through a contiguous copy and are written back.
    base, ref = inputs(torch.float32, "SUM", rank, 2 * COUNT), inputs(torch.float32, "SUM", rank, 2 * COUNT)
    dist.all_reduce(base[::2])
    part = ref[::2].clone()
    gloo.all_reduce(part, "SUM")
    ref[::2] = part
    c.equal(base, ref, "all_reduce of a strided view")

    # reduce: only the root's tensor changes.
    for root in range(size):
        t = inputs(torch.int32, "r", rank)
        before, full = t.clone(), t.clone()
        gloo.all_reduce(full, "SUM")
        dist.reduce(t, dst=root)
        c.equal(t, full if rank == root else before, f"reduce root {root}")

    # The object collectives, built by torch from the ones above.
    mine = {"rank": rank, "pad": "x" * rank}
    everyone = [{"rank": r, "pad": "x" * r} for r in range(size)]
    got = [None] * size
    dist.all_gather_object(got, mine)
    assert got == everyone, got
    got = [None] * size if rank == size - 1 else None
    dist.gather_object(mine, got, dst=size - 1)
    assert got == (everyone if rank == size - 1 else None), got
    got = [everyone[0] if rank == 0 else None]
    dist.broadcast_object_list(got, src=0)
    assert got == [everyone[0]], got
    got = [None]
    dist.scatter_object_list(got, everyone if rank == 0 else None, src=0)
    assert got == [everyone[rank]], got

    dist.barrier()
    print(f"checked {c.n} rank {rank} size {size}", flush=True)


def async_ops(rank, size):
    c = Checks()
    t = torch.full((1 << 20,), float(rank + 1))
    work = dist.all_reduce(t, async_op=True)
    assert work.wait() is True
    c.equal(t, torch.full((1 << 20,), float(size * (size + 1) // 2)), "async all_reduce")

    t = torch.full((8,), float(rank + 1))
    fut = dist.all_reduce(t, async_op=True).get_future()
    res = fut.wait()
    c.equal(res[0], torch.full((8,), float(size * (size + 1) // 2)), "future value")

    # Off the Python thread: rank 0 issues the call at once, the others a second later; while
    # rank 0's collective waits, its Python thread keeps running.
    t = torch.ones(4)
    if rank != 0:
        time.sleep(1.0)
    work = dist.all_reduce(t, async_op=True)
    if rank == 0 and size > 1:
        spins, end = 0, time.monotonic() + 0.5
        while time.monotonic() < end:
            spins += 1
        assert not work.is_completed(), "the collective finished before its peers called it"
        assert spins > 10_000, f"the Python thread ran only {spins} loops while the call waited"
        print(f"python thread ran {spins} loops during the collective", flush=True)
    work.wait()
    c.equal(t, torch.full((4,), float(size)), "off-thread all_reduce")
    assert dist.get_rank() == ringrun.rank() and dist.get_world_size() == ringrun.size()
    assert dist.get_backend() == "ringrun", dist.get_backend()
    print(f"checked {c.n} rank {rank} size {size}", flush=True)


def ddp(rank, size):
    """torch's DDP unmodified on the ringrun backend, beside the same DDP on Gloo: several
    buckets, no_sync accumulation, an unused parameter (find_unused_parameters), and async
    allreduces overlapping backward. The two models must end equal (to float rounding: the two
    backends may add in different orders)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    gloo = Gloo(rank, size)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 8)
            self.unused = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    models = []
    for pg in (None, gloo.group):
        torch.manual_seed(1)
        net = Net().double()
        # 1 KiB buckets: many of them, each its own allreduce.
        m = DDP(net, process_group=pg, bucket_cap_mb=1 / 1024, find_unused_parameters=True)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        for step in range(6):
            x, y = torch.randn(4, 32, generator=g).double(), torch.randn(4, 8, generator=g).double()
            opt.zero_grad()
            with m.no_sync():  # accumulate locally, no communication
                torch.nn.functional.mse_loss(m(x), y).backward()
            torch.nn.functional.mse_loss(m(x * 0.5), y).backward()
            opt.step()
        models.append(net)
    c = Checks()
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        c.n += 1
        if not torch.allclose(p, q, rtol=1e-9, atol=1e-12):
            print(f"MISMATCH ddp parameter {name}: {(p - q).abs().max().item()}", flush=True)
            sys.exit(1)
    assert torch.equal(models[0].unused.weight, models[1].unused.weight)
    # Every rank saw different data: the replicas agree only if the gradients were averaged.
    flat = torch.cat([p.detach().reshape(-1) for p in models[0].parameters()])
    for other in gloo.all_gather(flat).chunk(size):
        c.equal(other, flat, "ddp replicas across ranks")
    print(f"checked {c.n} rank {rank} size {size}", flush=True)


def expect(exc, fn, what):
    try:
        fn()
    except exc as e:
        print(f"{what}: {type(e).__name__}: {e}", flush=True)
        return e
    print(f"NO ERROR for {what}", flush=True)
    sys.exit(1)


def bad(rank, size):
    # Raised before anything is sent: nothing to undo.
    expect(NotImplementedError, lambda: dist.send(torch.ones(2), dst=(rank + 1) % size), "send")
    uneven = [1] * (size - 1) + [2]
    expect(NotImplementedError, lambda: dist.all_to_all_single(
        torch.ones(size + 1), torch.ones(size + 1), uneven, uneven), "all_to_all_single")
    even = [2] * size
    expect(ValueError, lambda: dist.all_to_all_single(
        torch.ones(size), torch.ones(size), even, even), "all_to_all_single splits")
    if rank == 0:  # the root alone checks its list, before it sends anything
        expect(ValueError, lambda: dist.scatter(torch.empty(2), [torch.ones(2)] * (size + 1)),
               "scatter list")
    # A subgroup would run over the whole job: refused where it is made. A group of every rank
    # is the world.
    if rank < size - 1:
        expect(NotImplementedError, lambda: dist.new_group(list(range(size - 1))), "new_group")
    else:
        assert dist.new_group(list(range(size - 1))) == dist.GroupMember.NON_GROUP_MEMBER
    everyone = dist.new_group(list(range(size)))
    t = torch.ones(2)
    dist.all_reduce(t, group=everyone)
    assert torch.equal(t, torch.full((2,), float(size))), t
    expect(ValueError, lambda: dist.all_reduce(torch.ones(2, dtype=torch.bool)), "bool dtype")
    expect(ValueError, lambda: dist.all_reduce(torch.ones(2, dtype=torch.int32),
                                               op=dist.ReduceOp.BAND), "BAND")
    # Shapes and dtypes that differ across ranks: an error naming the mismatch on every rank.
    state = ringrun.elastic.State(step=0)
    state.restore()
    e = expect(ringrun.RingrunError, lambda: dist.all_reduce(torch.ones(4 + rank)), "shape")
    assert "mismatch" in str(e).lower() or isinstance(e, ringrun.Mismatch), e
    state.restore()
    dtype = torch.float32 if rank == 0 else torch.float64
    e = expect(ringrun.RingrunError, lambda: dist.all_reduce(torch.ones(4, dtype=dtype)), "dtype")
    state.restore()
    # The group works again.
    t = torch.ones(3)
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((3,), float(dist.get_world_size()))), t
    print(f"checked bad rank {rank} size {size}", flush=True)


def main():
    import ringrun.elastic  # noqa: F401

    dist.init_process_group("ringrun")
    rank, size = dist.get_rank(), dist.get_world_size()
    assert rank == int(os.environ["RANK"]), (rank, os.environ["RANK"])
    {"grid": grid, "async": async_ops, "bad": bad, "ddp": ddp}[sys.argv[1]](rank, size)
    dist.destroy_process_group()
    ringrun.finalize()


if __name__ == "__main__":
    main()
