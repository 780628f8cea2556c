"""How stale the dashboard is: a worker logs its wall clock as a scalar every 50 ms; this script
polls /api/status every 10 ms and notes, for each logged point, how long after it was logged it
first appeared. The page itself refreshes every 500 ms on top.

    python3 benches/dashboard/latency.py [--seconds 20]    (uses target/release/ringrun)
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = """
import time, ringrun
ringrun.init()
for step in range(100000):
    ringrun.log(step, wall=time.time())
    time.sleep(0.05)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"),
               RINGRUN_LIB=os.path.join(ROOT, "target/release/libringrun.so"))
    job = subprocess.Popen([os.path.join(ROOT, "target/release/ringrun"), "launch", "--np", "2",
                            "--dashboard", str(port), "--", sys.executable, "-c", WORKER],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, lags = set(), []
    end = time.time() + args.seconds
    try:
        while time.time() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                    status = json.load(r)
            except OSError:
                time.sleep(0.1)
                continue
            now = time.time()
            for step, wall in status["curves"].get("wall", []):
                if step not in seen:
                    seen.add(step)
                    lags.append(now - wall)
            time.sleep(0.01)
    finally:
        job.terminate()
        job.wait(timeout=20)
    lags = sorted(lags[5:])  # after the first reports
    ms = lambda q: 1e3 * lags[min(len(lags) - 1, int(q * len(lags)))]  # noqa: E731
    print(f"points {len(lags)}: /api/status lag median {1e3 * statistics.median(lags):.0f} ms, "
          f"p90 {ms(0.9):.0f} ms, max {1e3 * lags[-1]:.0f} ms; the page adds up to 500 ms")


if __name__ == "__main__":
    main()
