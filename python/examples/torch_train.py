"""Elastic data-parallel training of a small torch model over ringrun (CPU tensors).

Same contract as numpy_train.py: run several workers with the RINGRUN_* environment; kill
one and the others continue from the last commit. Skipped with a message without torch.
"""

import argparse
import sys
import time

try:
    import torch
except ImportError:
    print("SKIPPED: torch is not installed")
    sys.exit(0)

import ringrun
import ringrun.elastic

N, D = 128, 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--step-ms", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(N, D, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, D, dtype=torch.float64) + 0.01 * torch.randn(N, dtype=torch.float64)
    model = torch.nn.Linear(D, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    ringrun.init()
    # Parameters are restored in place, so the model and optimizer keep their references.
    state = ringrun.elastic.State(weight=model.weight.data, step=0)

    @ringrun.elastic.run
    def train(state):
        while state.step < args.steps:
            rank, size = ringrun.rank(), ringrun.size()
            opt.zero_grad()
            xs, ys = x[rank::size], y[rank::size]
            loss = 0.5 * ((model(xs).squeeze(1) - ys) ** 2).sum() / N
            loss.backward()
            ringrun.allreduce(model.weight.grad, op="sum")
            opt.step()
            print(f"step {state.step} size {size} loss {loss.item():.6f}", flush=True)
            state.step += 1
            state.commit()
            time.sleep(args.step_ms / 1000)

    train(state)
    print("final " + " ".join(f"{v:.10g}" for v in model.weight.data.flatten().tolist()))
    ringrun.finalize()


if __name__ == "__main__":
    main()
