"""`ringrun status` on a launched job that lost a worker: the failed life stays listed (down,
beside its restart), live workers show their step and rate, and `--watch` redraws."""

import json
import os
import signal
import subprocess
import sys
import time

from launched import Job, wait_for
from test_dashboard import TRAIN, free_tcp_port
from test_launch import ringrun_binary

SECRET = "status-history-secret-0123456789"


def status(port, *extra):
    out = subprocess.run([ringrun_binary(), "status", "--seeds", f"127.0.0.1:{port}", *extra],
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, RINGRUN_SECRET=SECRET))
    return out


def test_status_keeps_the_failed_member_and_shows_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGRUN_SECRET", SECRET)
    port = free_tcp_port()
    pids = tmp_path / "pids"
    pids.mkdir()
    job = Job(["--np", "3", "--port", str(port), "--", sys.executable, TRAIN, "--steps", "100000",
               "--step-ms", "20", "--pid-dir", str(pids)])
    try:
        members = lambda: json.loads(status(port, "--json").stdout)["members"]  # noqa: E731
        wait_for("3 workers past 25 steps", lambda: sum(
            1 for m in members() if (m["step"] or 0) > 25 and (m["steps_per_s"] or 0) > 0) == 3)
        clean = json.loads(status(port, "--json").stdout)
        assert clean["stragglers"] == [], f"a straggler flagged in a clean run: {clean}"
        os.kill(int(sorted(os.listdir(pids))[0]), signal.SIGKILL)

        def history():
            ms = members()
            down = [m for m in ms if m["state"] == "down"]
            live = [m for m in ms if m["state"] == "alive" and m["step"] is not None]
            return (down, live) if down and len(live) == 3 else None

        down, live = wait_for("the failed life beside its restart", history)
        assert len(down) == 1 and down[0]["step"] is None, down
        restarted = [m for m in live if m["id"] == down[0]["id"]]
        assert restarted and restarted[0]["incarnation"] > down[0]["incarnation"], live
        table = status(port).stdout
        assert " down " in table and "STEPS/S" in table, table
        watch = subprocess.Popen([ringrun_binary(), "status", "--watch", "--seeds",
                                  f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        watch.send_signal(signal.SIGINT)
        out = watch.communicate(timeout=10)[0]
        assert out.count("STEPS/S") >= 2 and "\x1b[2J" in out, out[-2000:]
    finally:
        job.stop()
