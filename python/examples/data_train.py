"""Elastic linear regression whose data comes from ``ringrun.data.ElasticSampler``: every
sample is read exactly once per pass and every step trains on the same global batch, however
many workers are alive, so the final weights are bit for bit those of a one-worker run.

    ringrun launch --np 4 -- python data_train.py --steps 300

The gradient is summed in fixed point (each sample's gradient rounded to a multiple of 2^-32,
summed as int64), so the sum does not depend on how the batch is split over the ranks; with
floating-point sums it would differ in the last bits between world sizes. The sampler is held
in the ``State``, so a restore puts it back where the committed step left it.
"""

import argparse
import hashlib
import os
import sys
import time

import numpy as np

D, LR, SCALE = 8, 0.05, float(2**32)


def samples(idx):
    """Sample ``i``'s features and target, a function of ``i`` alone (no dataset in memory)."""
    i = np.asarray(idx, dtype=np.float64)[:, None]
    x = np.sin(i * np.arange(1, D + 1) * 0.37 + np.arange(D))
    y = x @ np.linspace(-1.0, 1.0, D) + 0.01 * np.cos(i[:, 0] * 1.7)
    return x, y


def grad_sum(w, idx):
    """The sum over ``idx`` of each sample's squared-error gradient, then of its loss, in
    fixed point."""
    x, y = samples(idx)
    err = x @ w - y
    per_sample = np.concatenate([x * err[:, None], 0.5 * err[:, None] ** 2], axis=1)
    return np.rint(per_sample * SCALE).astype(np.int64).sum(axis=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--step-ms", type=int, default=0)
    ap.add_argument("--pid-dir", help="write this worker's pid there (for fault injection)")
    ap.add_argument("--slow-rank", type=int, default=-1,
                    help="the worker of this launch rank sleeps --slow-ms more a step")
    ap.add_argument("--slow-ms", type=int, default=0)
    args = ap.parse_args()

    import ringrun
    import ringrun.elastic
    from ringrun.data import ElasticSampler

    if args.pid_dir:
        with open(os.path.join(args.pid_dir, str(os.getpid())), "w") as f:
            f.write(os.environ.get("RANK", ""))
    ringrun.init()
    sampler = ElasticSampler(args.samples, args.batch, seed=11)
    state = ringrun.elastic.State(w=np.zeros(D), step=0, sampler=sampler)

    @ringrun.elastic.run
    def train(state):
        while state.step < args.steps:
            idx = sampler.next_indices()  # this rank's share of the global batch
            g = grad_sum(state.w, idx)
            ringrun.allreduce(g, op="sum")  # the global batch's gradient, exactly
            state.w -= LR * (g[:D] / SCALE) / args.batch
            ringrun.log(state.step, loss=g[D] / SCALE / args.batch)  # the dashboard's curve
            print(f"step {state.step} size {ringrun.size()} epoch {ringrun.epoch()} "
                  f"data_epoch {sampler.data_epoch}", flush=True)
            state.step += 1
            state.commit()
            slow = args.slow_ms if os.environ.get("RANK") == str(args.slow_rank) else 0
            time.sleep((args.step_ms + slow) / 1000)

    train(state)
    digest = hashlib.sha256(state.w.tobytes()).hexdigest()
    print(f"faults {ringrun.faults()!r}".replace("\n", " "), flush=True)
    print(f"final {digest} " + " ".join(f"{v:.17g}" for v in state.w), flush=True)
    ringrun.finalize()


if __name__ == "__main__":
    sys.exit(main())
