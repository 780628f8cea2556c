"""`ringrun launch --dashboard`: a 4-worker job with a SIGKILL, watched through /api/status,
/metrics (parsed by Prometheus' own text-format parser) and the page in headless Chromium (the
DOM must show the members, the fault and a curve; a screenshot is saved); and a dashboard off
loopback, in a network namespace of the test's own, refusing requests without the token."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import ROOT
from launched import Job, wait_for
from test_launch import ringrun_binary

TRAIN = os.path.join(ROOT, "python", "examples", "data_train.py")
SCREENSHOT = os.path.join(ROOT, "target", "dashboard.png")


def free_tcp_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def chromium(*args):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed (.ci/run installs Debian's chromium package)"
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args],
            capture_output=True, text=True, timeout=90)
    return out.stdout


def test_the_page_metrics_and_status_of_a_job_that_loses_a_worker(tmp_path):
    port = free_tcp_port()
    pids = tmp_path / "pids"
    pids.mkdir()
    job = Job(["--np", "4", "--max-restarts", "3", "--dashboard", f"127.0.0.1:{port}", "--",
               sys.executable, TRAIN, "--steps", "100000", "--step-ms", "20",
               "--pid-dir", str(pids)])
    try:
        url = job.url()
        assert url == f"http://127.0.0.1:{port}/", "loopback needs no token"
        status = lambda: json.loads(get(url + "api/status"))  # noqa: E731
        wait_for("4 members training", lambda: sum(
            1 for m in status()["members"] if m["state"] == "up" and (m["step"] or 0) > 20) == 4)
        victim = int(sorted(os.listdir(pids))[1])
        os.kill(victim, signal.SIGKILL)
        def rejoined():
            s = status()
            ok = (s["faults"] and s["world_size"] == 4
                  and s["epoch"] > s["faults"][0]["to_epoch"]
                  and any(m["state"] != "up" for m in s["members"]))
            return s if ok else None

        s = wait_for("the fault, then the restarted worker back in", rejoined)
        fault = s["faults"][0]
        assert fault["size_before"] == 4 and fault["size_after"] == 3, fault
        assert 0 < fault["installed_ms"] <= fault["restored_ms"] <= fault["resumed_ms"] < 5000
        gone = [m for m in s["members"] if m["state"] != "up"]
        assert len(gone) == 1 and gone[0]["state"] in ("down", "left"), gone
        assert len(s["curves"]["loss"]) > 20
        check_metrics(get(url + "metrics"))
        dom = chromium("--dump-dom", url)
        up_rows = re.findall(r'<tr data-state="up"', dom)
        assert len(up_rows) == 4, dom[:3000]
        assert re.search(r'<tr data-state="(down|left)">', dom), "the failed member is listed"
        assert 'class="fault"' in dom and 'class="curve"' in dom, dom[:3000]
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        chromium(f"--screenshot={SCREENSHOT}", "--window-size=1100,900", url)
        assert os.path.getsize(SCREENSHOT) > 10_000
        print("\n".join(l for l in job.err if "straggler" in l), file=sys.stderr)
    finally:
        job.stop()


def test_a_worker_slow_in_its_step_is_named_within_20_steps(monkeypatch):
    monkeypatch.setenv("RINGRUN_SECRET", "straggler-test-secret-0123456789")
    port = free_tcp_port()
    job = Job(["--np", "4", "--dashboard", f"127.0.0.1:{port}", "--", sys.executable, TRAIN,
               "--steps", "100000", "--step-ms", "20", "--slow-rank", "2", "--slow-ms", "40"])
    try:
        url = job.url()

        def flagged():
            s = json.loads(get(url + "api/status"))
            return s if s["stragglers"] else None

        s = wait_for("a straggler flag", flagged)
        step = max(m["step"] or 0 for m in s["members"] if m["state"] == "up")
        assert step <= 20, f"first flagged at step {step}"
        assert [(x["rank"], x["blame"]["kind"]) for x in s["stragglers"]] == [(2, "rank")], s
        assert 0.05 < s["stragglers"][0]["seconds"] < 0.2, s["stragglers"]
        wait_for("the launcher's log line", lambda: any(
            "ringrun: straggler: rank 2 is slow itself" in l for l in job.err))
        metrics = get(url + "metrics")
        assert 'ringrun_straggler{rank="2",blame="rank",peer=""} 1' in metrics, metrics
        out = subprocess.run([ringrun_binary(), "status", "--json", "--seeds",
                              job.seed()], capture_output=True, text=True, timeout=30)
        flags = json.loads(out.stdout)["stragglers"]
        assert [(f["rank"], f["blame"]["kind"]) for f in flags] == [(2, "rank")], out
    finally:
        job.stop()


def check_metrics(text):
    # prometheus-client (Rust) writes OpenMetrics, Prometheus' preferred exposition format.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [s for f in fams.values() for s in f.samples]
    value = lambda name, **labels: next(  # noqa: E731
        s.value for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("ringrun_world_size") == 4
    assert value("ringrun_epoch") >= 3
    assert value("ringrun_members", state="up") == 4
    assert value("ringrun_members", state="down") + value("ringrun_members", state="left") == 1
    assert fams["ringrun_faults"].type == "counter" and value("ringrun_faults_total") >= 1
    assert value("ringrun_restarts_total") == 1
    assert {s.labels["rank"] for s in fams["ringrun_step"].samples} == {"0", "1", "2", "3"}
    hist = fams["ringrun_collective_seconds"]
    assert hist.type == "histogram"
    # Every rank that ran an allreduce yet (a worker that just rejoined may not have).
    ranks = {s.labels["rank"] for s in hist.samples if s.labels["collective"] == "allreduce"}
    assert len(ranks) >= 3, ranks
    for rank in ranks:
        buckets = [s.value for s in hist.samples if s.name.endswith("_bucket")
                   and s.labels["collective"] == "allreduce" and s.labels["rank"] == rank]
        assert buckets == sorted(buckets) and buckets[-1] > 0, (rank, buckets)
    assert sum(s.value for s in samples if s.name == "ringrun_bytes_total"
               and s.labels["collective"] == "allreduce") > 0
    assert value("ringrun_restore_seconds_count") >= 1


def test_a_dashboard_beyond_loopback_wants_the_token(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip"):
        if os.environ.get("RINGRUN_NETNS_REQUIRE") == "1":
            pytest.fail("RINGRUN_NETNS_REQUIRE=1 but network namespaces are not available")
        pytest.skip("needs root and iproute2 for a network namespace (not run)")
    ns = f"rr-dash-{uuid.uuid4().hex[:8]}"
    ip = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"],
                    ["ip", "link", "set", "v0", "up"],
                    ["ip", "link", "set", "v1", "up"]):
            subprocess.run(ip + cmd, check=True)
        job = Job(["--np", "1", "--bind", "10.77.0.1", "--dashboard", "10.77.0.1:8088", "--",
                   "sleep", "60"], prefix=ip)
        try:
            url = job.url()
            assert url.startswith("http://10.77.0.1:8088/?token="), url
            token = url.split("token=", 1)[1]
            probe = ("import sys, urllib.request, urllib.error\n"
                     "try:\n"
                     "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
                     "except urllib.error.HTTPError as e:\n"
                     "    print(e.code)\n")
            code = lambda u: subprocess.run(  # noqa: E731
                ip + [sys.executable, "-c", probe, u], capture_output=True, text=True,
                timeout=30).stdout.strip()
            base = "http://10.77.0.1:8088/"
            assert code(base + "api/status") == "401"
            assert code(base + "metrics") == "401"
            assert code(base + "?token=wrong") == "401"
            assert code(base + f"api/status?token={token}") == "200"
            assert code(url) == "200"
        finally:
            job.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
