"""An ordinary DDP training script on the ringrun backend, made elastic.

    ringrun launch --np 4 --min-np 4 -- python python/examples/ddp_train.py --steps 200

A small MLP learns a synthetic regression with DDP, SGD with momentum and a
DistributedSampler. What ringrun adds to a plain DDP script is three lines: the backend's
name, ``ringrun.torch.DistributedDataParallel`` (torch's DDP with three settings for
membership changes), a ``ringrun.elastic.State`` holding the model and the optimizer, and the
``ringrun.elastic.run`` decorator. Kill a worker (``kill -9``) and the others stop at once with a
membership change; the launcher restarts it, it rejoins, the step in flight is thrown away and
every worker restores the last commit from its peers' memory. With ``--min-np 4`` the world is
the same before and after, the restarted worker takes its launch rank back, and the final
weights equal a fault-free run's bit for bit. With a smaller ``--min-np`` the survivors go on
alone meanwhile (the sampler then splits each pass over fewer ranks, so the result is close to,
not equal to, the fault-free one).

Each worker prints ``step N size S loss L`` lines, the SHA-256 of its final weights
(``final <hex>``), and rank 0 the fault report as JSON (``faults [...]``).
"""

import argparse
import hashlib
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler, TensorDataset

import ringrun
import ringrun.elastic
import ringrun.torch


def data(samples, dim):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(samples, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    return TensorDataset(x, torch.tanh(x @ w) + 0.05 * torch.randn(samples, 1, generator=g))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32, help="samples per rank and step")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--step-ms", type=int, default=0, help="sleep per step (to aim a kill)")
    ap.add_argument("--static", action="store_true",
                    help="plain torch DDP (fine while no member changes)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    dist.init_process_group("ringrun")
    torch.manual_seed(0)  # every rank builds the same initial model
    model = torch.nn.Sequential(
        torch.nn.Linear(args.dim, args.hidden), torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, 1),
    )
    # torch's DDP with three settings for membership changes: no init-time broadcast (a
    # joiner's replica comes from state.restore()), buckets that never rebuild (a restarted
    # worker lays them out as the survivors do) and gradients averaged over the current members.
    ddp = DDP(model) if args.static else ringrun.torch.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    dataset = data(args.samples, args.dim)
    per_pass = args.samples // (args.batch * 4)

    state = ringrun.elastic.State(model=model, opt=opt, step=0)

    @ringrun.elastic.run
    def train(state):
        while state.step < args.steps:
            rank, size = dist.get_rank(), dist.get_world_size()
            epoch, i = divmod(state.step, per_pass)
            sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, seed=0)
            sampler.set_epoch(epoch)
            idx = list(sampler)[i * args.batch : (i + 1) * args.batch]
            x, y = dataset[idx]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            loss.backward()
            opt.step()
            print(f"step {state.step} size {size} loss {loss.item():.6f}", flush=True)
            state.step += 1
            state.commit()
            time.sleep(args.step_ms / 1000)

    train(state)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    print(f"final {digest.hexdigest()}", flush=True)
    if dist.get_rank() == 0:
        print("faults " + json.dumps(ringrun.faults()), flush=True)
    dist.destroy_process_group()
    ringrun.finalize()


if __name__ == "__main__":
    main()
