"""Running `ringrun launch` from a test: a job whose output lines are collected, and waiting for
a condition with a deadline."""

import os
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT
from test_launch import ringrun_binary


def _collect(stream, lines):
    for line in stream:
        lines.append(line.rstrip("\n"))


def wait_for(what, check, within=60):
    deadline = time.monotonic() + within
    while True:
        try:
            got = check()
        except (OSError, ValueError, KeyError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Job:
    """`ringrun launch ARGS` (after `prefix`, e.g. `ip netns exec NS`), with the package on
    PYTHONPATH and `env` added; its stdout and stderr lines collected in `out` and `err`."""

    def __init__(self, args, cwd=None, prefix=(), env=None):
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), PYTHONUNBUFFERED="1",
                   **(env or {}))
        self.proc = subprocess.Popen([*prefix, ringrun_binary(), "launch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=cwd)
        self.out, self.err = [], []
        self._readers = [threading.Thread(target=_collect, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out),
                                               (self.proc.stderr, self.err))]
        for r in self._readers:
            r.start()

    def finish(self, within):
        """Waits up to `within` s for the job (killing it after), asserts it succeeded, and
        returns its stdout lines."""
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for r in self._readers:
            r.join(timeout=5)
        sys.stderr.write("\n".join(self.err[-20:] + self.out[-40:]) + "\n")
        assert self.proc.returncode == 0, f"ringrun launch exited with {self.proc.returncode}"
        return self.out

    def url(self):
        return wait_for("the dashboard's URL", lambda: next(
            (l.split("dashboard at ", 1)[1] for l in list(self.err) if "dashboard at " in l),
            None), within=30)

    def seed(self):
        """The launcher's membership address (from its `ringrun status --seeds` hint)."""
        return wait_for("the launcher's seed", lambda: next(
            (l.split("--seeds ", 1)[1].split("`")[0] for l in list(self.err) if "--seeds " in l),
            None), within=30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
