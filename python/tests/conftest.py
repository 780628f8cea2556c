"""Shared fixtures: finding libringrun.so and running groups of worker processes."""

import glob
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # the package, uninstalled


def _library():
    if os.environ.get("RINGRUN_LIB"):
        return os.environ["RINGRUN_LIB"]
    found = glob.glob(os.path.join(ROOT, "target", "*", "libringrun.so"))
    found += glob.glob(os.path.join(ROOT, "target", "*", "deps", "libringrun.so"))
    return max(found, key=os.path.getmtime) if found else None


LIB = _library()
if LIB is None:
    pytest.exit("libringrun.so not built: run `cargo build -p ringrun-ffi` or set RINGRUN_LIB", 1)
os.environ["RINGRUN_LIB"] = LIB


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    def __init__(self, proc, node):
        self.proc, self.node, self.lines = proc, node, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            print(f"[node {self.node}] {line}", file=sys.stderr)
            self.lines.append(line)

    def has(self, prefix):
        return any(line.startswith(prefix) for line in list(self.lines))


class Group:
    """n worker processes of one job, started with the launcher's RINGRUN_* environment;
    ``extra_env`` is a dict, or a function of the node giving one."""

    def __init__(self, argv, n, name, extra_env=None):
        ports = [free_udp_port() for _ in range(n)]
        seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
        run_id = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.workers = []
        for node in range(n):
            env = dict(os.environ)
            env.update(
                RINGRUN_SECRET="python-test-secret-0123456789",
                RINGRUN_RUN_ID=run_id,
                RINGRUN_NODE_ID=str(node),
                RINGRUN_MEMBER_PORT=str(ports[node]),
                RINGRUN_SEEDS=seeds,
                RINGRUN_INITIAL_SIZE=str(n),
                RINGRUN_MIN_SIZE=str(min(n, 2)),
                RINGRUN_RESTORE_TIMEOUT_MS="30000",
                RINGRUN_OP_TIMEOUT_MS="20000",
                PYTHONPATH=os.path.dirname(HERE),
                PYTHONUNBUFFERED="1",
            )
            env.update((extra_env(node) if callable(extra_env) else extra_env) or {})
            proc = subprocess.Popen(
                [sys.executable, *argv], env=env, stdout=subprocess.PIPE, text=True
            )
            self.workers.append(Worker(proc, node))

    def wait_line(self, node, prefix, within=30):
        deadline = time.monotonic() + within
        while not self.workers[node].has(prefix):
            assert time.monotonic() < deadline, f"node {node} never printed {prefix!r}"
            time.sleep(0.005)

    def kill(self, node):
        w = self.workers[node]
        w.proc.kill()
        w.proc.wait()
        self.workers[node] = None

    def finish(self, within=60):
        """Waits for every live worker; asserts each exited 0; returns their lines."""
        deadline = time.monotonic() + within
        out = []
        for w in self.workers:
            if w is None:
                continue
            try:
                rc = w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"node {w.node} did not finish in {within}s")
            time.sleep(0.05)
            assert rc == 0, f"node {w.node} exited with {rc}"
            out.append(w.lines)
        return out

    def close(self):
        for w in self.workers:
            if w is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


@pytest.fixture
def group():
    started = []

    def start(argv, n, name, extra_env=None):
        g = Group(argv, n, name, extra_env)
        started.append(g)
        return g

    yield start
    for g in started:
        g.close()
