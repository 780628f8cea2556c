"""Elastic data-parallel linear regression with numpy over ringrun.

Run as several workers with the launcher's RINGRUN_* environment; kill any of them and the
rest go on from the last commit. ``--reference`` trains alone without ringrun: every worker's
final weights must match it (up to the rounding of a different summation order).

The three lines that make a loop elastic are marked with "# ringrun".
"""

import argparse
import sys
import time

import numpy as np

N, D, LR = 96, 8, 0.05


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D))
    y = x @ np.linspace(-1.0, 1.0, D) + 0.01 * rng.standard_normal(N)
    return x, y


def grad_sum(w, x, y):
    """Sum over the given samples of the squared-error gradient, and of the loss."""
    err = x @ w - y
    return np.concatenate([x.T @ err, [0.5 * float(err @ err)]])


def reference(steps):
    x, y = data()
    w = np.zeros(D)
    for _ in range(steps):
        g = grad_sum(w, x, y)
        w -= LR * g[:D] / N
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--step-ms", type=int, default=0)
    ap.add_argument("--reference", action="store_true")
    args = ap.parse_args()
    if args.reference:
        print("final " + " ".join(f"{v:.17g}" for v in reference(args.steps)))
        return

    import ringrun
    import ringrun.elastic

    ringrun.init()  # ringrun
    x, y = data()
    state = ringrun.elastic.State(w=np.zeros(D), step=0)

    @ringrun.elastic.run  # ringrun
    def train(state):
        while state.step < args.steps:
            rank, size = ringrun.rank(), ringrun.size()
            g = grad_sum(state.w, x[rank::size], y[rank::size])
            ringrun.allreduce(g, op="sum")  # the sum over all N samples, whoever is alive
            state.w -= LR * g[:D] / N
            print(f"step {state.step} size {size} epoch {ringrun.epoch()} loss {g[D] / N:.6f}")
            sys.stdout.flush()
            state.step += 1
            state.commit()  # ringrun
            time.sleep(args.step_ms / 1000)

    train(state)
    # elastic.run marked the last commit as the job's final state (ringrun.finish).
    print("completed at commit", ringrun.completed())
    print("faults", len(ringrun.faults()))
    print("final " + " ".join(f"{v:.17g}" for v in state.w))
    sys.stdout.flush()
    ringrun.finalize()


if __name__ == "__main__":
    main()
