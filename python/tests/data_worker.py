"""A test worker for ringrun.data: joins from the RINGRUN_* environment and runs one scenario,
printing what the tests compare."""

import json
import sys

import ringrun
from ringrun.data import DataLoader, ElasticSampler, FileSampler


def mismatch(seed):
    """Ranks built samplers with different seeds: the first step fails on every rank."""
    sampler = ElasticSampler(100, 10, seed=seed)
    try:
        sampler.next_indices()
    except ringrun.InvalidArgument as e:
        print("refused", e, flush=True)
        assert sampler.offset == 0, "a refused step moved the sampler"
        return
    print("accepted", flush=True)


def loaders():
    """A pass through ElasticSampler as torch's batch_sampler (no worker processes) and one
    through ringrun.data.DataLoader with two prefetching worker processes: both give each
    rank its share of the same global batches as the sampler alone."""
    import torch.utils.data

    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.tensor([i, i * i])

    for kind in ("plain", "prefetch"):
        sampler = ElasticSampler(40, 6, seed=3)
        twin = ElasticSampler(40, 6, seed=3)
        if kind == "plain":
            loader = torch.utils.data.DataLoader(Squares(), batch_sampler=sampler)
        else:
            loader = DataLoader(Squares(), sampler, num_workers=2, prefetch_factor=3)
        steps = 0
        for batch in loader:
            want = twin.peek()
            twin.next_indices()
            assert batch[:, 0].tolist() == want.tolist(), (kind, batch, want)
            steps += 1
        assert sampler.offset == twin.offset == 42 and sampler.data_epoch == 1, sampler
        print(f"loader {kind} steps {steps}", flush=True)


def files():
    """One pass of FileSampler over the job's --input files: every rank prints its units."""
    sampler = FileSampler(global_batch=2)
    for _ in range(len(sampler)):
        units = sampler.next_units()
        print("units " + json.dumps(units), flush=True)


def main():
    ringrun.init()
    scenario = sys.argv[1]
    if scenario == "mismatch":
        mismatch(seed=ringrun.rank())
    elif scenario == "loaders":
        loaders()
    elif scenario == "files":
        files()
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    ringrun.finalize()


if __name__ == "__main__":
    main()
