"""Per-call cost of the Python path, to compare with `ringrun bench` (same sizes, float32,
sum, 2 local ranks):

    python python/bench.py --np 2            # starts the workers itself
    ringrun bench --np 2 -b 8 -e 16M -f 2097152

`--sweep LO:HI:FACTOR` under `ringrun launch` (default flags) times `ringrun.allreduce` at
`ringrun bench`'s sizes instead: `benches/python_path/run.sh` runs the two side by side.

For 8 B and 16 MiB it times three loops on every rank: the raw ctypes call with a cached
pointer (the ABI floor), `ringrun.allreduce(numpy_array)` (the Python wrapper), and prints the
difference (the wrapper's overhead) and the bus bandwidth (busbw = bytes/t * 2(n-1)/n).
"""

import argparse
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def timed(fn, iters, warmup):
    import ringrun

    for _ in range(warmup):
        fn()
    ringrun.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def sweep(iters, lo, hi, factor):
    """One line per size, `ringrun bench`'s sizes and columns: bytes, time (us), busbw."""
    import numpy as np

    import ringrun

    ringrun.init()
    n, rank = ringrun.size(), ringrun.rank()
    if rank == 0:
        print(f"# python path: {n} ranks, float32 sum, in place, ringrun.allreduce(numpy)")
        print(f"{'bytes':>12} {'time_us':>10} {'busbw_GB/s':>10}")
    nbytes = lo
    while nbytes <= hi:
        a = np.ones(max(1, nbytes // 4), np.float32)
        it = max(5, min(iters, int(iters * 65536 / max(nbytes, 65536))))
        t = timed(lambda: ringrun.allreduce(a, op="sum"), it, it // 10 + 2)
        if rank == 0:
            bus = a.nbytes / t * 2 * (n - 1) / n / 1e9
            print(f"{a.nbytes:>12} {t * 1e6:>10.2f} {bus:>10.3f}", flush=True)
        nbytes *= factor
    ringrun.finalize()


def worker(iters):
    import numpy as np

    import ringrun
    from ringrun._lib import lib

    ringrun.init()
    n, rank = ringrun.size(), ringrun.rank()
    c = lib()
    rows = []
    for nbytes in (8, 16 << 20):
        a = np.ones(nbytes // 4, np.float32)
        ptr, count = a.ctypes.data, a.size
        it = iters if nbytes <= 1 << 16 else max(5, iters // 200)
        raw = timed(lambda: c.ringrun_allreduce(ptr, ptr, count, 0, 0), it, it // 10 + 1)
        py = timed(lambda: ringrun.allreduce(a, op="sum"), it, it // 10 + 1)
        bus = nbytes / py * 2 * (n - 1) / n / 1e9
        rows.append((nbytes, raw * 1e6, py * 1e6, (py - raw) * 1e6, bus))
    if rank == 0:
        print(f"# {n} ranks, float32 sum, in place")
        print(f"{'bytes':>10} {'ctypes_us':>10} {'python_us':>10} {'added_us':>9} {'busbw_GB/s':>10}")
        for r in rows:
            print(f"{r[0]:>10} {r[1]:>10.2f} {r[2]:>10.2f} {r[3]:>9.2f} {r[4]:>10.3f}")
    ringrun.finalize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument(
        "--sweep",
        metavar="LO:HI:FACTOR",
        help="under `ringrun launch`: time sizes LO..HI bytes (times FACTOR) like ringrun bench",
    )
    args = ap.parse_args()
    if args.sweep:
        lo, hi, factor = (int(x) for x in args.sweep.split(":"))
        return sweep(args.iters, lo, hi, factor)
    if args.worker:
        return worker(args.iters)
    ports = []
    for _ in range(args.np):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    procs = []
    for node in range(args.np):
        env = dict(os.environ)
        env.update(
            RINGRUN_SECRET="python-bench-secret-0123456789",
            RINGRUN_RUN_ID=f"bench-{os.getpid()}",
            RINGRUN_NODE_ID=str(node),
            RINGRUN_MEMBER_PORT=str(ports[node]),
            RINGRUN_SEEDS=",".join(f"127.0.0.1:{p}" for p in ports),
            RINGRUN_INITIAL_SIZE=str(args.np),
            RINGRUN_MIN_SIZE=str(args.np),
        )
        cmd = [sys.executable, __file__, "--worker", "--iters", str(args.iters)]
        procs.append(subprocess.Popen(cmd, env=env))
    sys.exit(max(p.wait(timeout=600) for p in procs))


if __name__ == "__main__":
    main()
