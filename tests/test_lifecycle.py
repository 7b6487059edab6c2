"""Lifecycle for real: the spot watcher against a local server playing the instance metadata
service, and the idle timeout on a real `dask scheduler` started with the node's command line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from . import loopback_cluster
from .conftest import ROOT

WATCHER = ROOT / "image" / "spot_watcher.py"
TOKEN = "imds-session-token"


class FakeMetadata(ThreadingHTTPServer):
    """IMDSv2 as EC2 serves it: a PUT for a token, then GETs that must carry it."""

    def __init__(self, local_ipv4: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.local_ipv4 = local_ipv4
        self.notice: dict | None = None
        self.reads: list[tuple[str, bool]] = []  # (path, carried the token)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, status: int, body: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._reply(200, TOKEN)
        else:
            self._reply(400)

    def do_GET(self) -> None:
        authorized = self.headers.get("X-aws-ec2-metadata-token") == TOKEN
        self.server.reads.append((self.path, authorized))
        if not authorized:
            return self._reply(401)
        if self.path == "/latest/meta-data/local-ipv4":
            return self._reply(200, self.server.local_ipv4)
        if self.path == "/latest/meta-data/spot/instance-action" and self.server.notice:
            return self._reply(200, json.dumps(self.server.notice))
        return self._reply(404)


def watcher(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WATCHER), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_worker_watcher_retires_its_node_gracefully_on_a_notice(tmp_path):
    cluster = loopback_cluster.start(tmp_path)
    metadata = FakeMetadata(local_ipv4="127.0.0.3")
    try:
        with cluster.client(wait_for_nodes=2) as client:
            doomed = next(w for w in client.scheduler_info(n_workers=-1)["workers"] if "127.0.0.3" in w)
            result = client.submit(lambda: list(range(1000)), workers=[doomed], pure=False)
            assert result.result() == list(range(1000))

            process = watcher("--role", "worker", "--scheduler", cluster.address, "--tls-dir", str(cluster.tls_dir),
                              "--metadata-url", metadata.url, "--interval", "0.2")  # fmt: skip
            time.sleep(1.5)
            assert process.poll() is None, "the watcher must keep polling while there is no notice"
            metadata.notice = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}
            noticed = time.monotonic()
            output, _ = process.communicate(timeout=60)
            drained_in = time.monotonic() - noticed

            assert process.returncode == 0, output
            assert drained_in < 30, f"draining took {drained_in:.0f} s of the two minutes"
            assert "spot interruption notice: terminate at 2026-11-26T12:00:00Z" in output
            assert f"retired 1 Dask worker(s) of 127.0.0.3 before the interruption: {doomed}" in output
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert doomed not in workers and len(workers) == 1, "only this node's worker retires"
            # Its result moved to the other node instead of being lost with the instance.
            assert result.result() == list(range(1000))
            assert all("127.0.0.2" in w for w in client.who_has(result)[result.key])
        cluster.processes["worker-127.0.0.3"].wait(timeout=60)  # the nanny closes, it does not restart
    finally:
        cluster.stop()
        metadata.shutdown()
    polls = [path for path, _ in metadata.reads if path.endswith("spot/instance-action")]
    assert len(polls) >= 5, "polls repeatedly"
    assert all(authorized for _, authorized in metadata.reads), "every metadata read must use an IMDSv2 token"


def test_scheduler_watcher_warns_that_the_search_is_lost():
    metadata = FakeMetadata(local_ipv4="127.0.0.1")
    metadata.notice = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}
    try:
        process = watcher("--role", "scheduler", "--metadata-url", metadata.url, "--interval", "0.2")
        output, _ = process.communicate(timeout=60)
    finally:
        metadata.shutdown()
    assert process.returncode == 0
    assert "this is the scheduler: the cluster and any running search end with it at 2026-11-26T12:00:00Z" in output
    assert "scheduler_market: on-demand" in output


def test_watcher_keeps_watching_through_metadata_outages(tmp_path):
    """No metadata service at all: the watcher logs and keeps polling rather than dying."""
    process = watcher(
        "--role", "scheduler", "--metadata-url", f"http://127.0.0.1:{loopback_cluster.free_port()}", "--interval", "0.2"
    )
    try:
        time.sleep(2)
        assert process.poll() is None
    finally:
        process.kill()
        output, _ = process.communicate(timeout=30)
    assert "instance metadata not reachable" in output


@pytest.mark.timeout(240)
def test_scheduler_exits_after_the_idle_timeout(tmp_path):
    """The node's own `dask scheduler` command with idle_timeout_minutes=1: it exits by itself
    once nothing has run for a minute, which is what stops the node and the worker group."""
    cluster = loopback_cluster.start(tmp_path, workers=("127.0.0.2",), idle_timeout_minutes=1)
    try:
        with cluster.client() as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        finished = time.monotonic()
        code = cluster.processes["scheduler"].wait(timeout=180)
        idle = time.monotonic() - finished
    finally:
        cluster.stop()
    assert code == 0
    assert 50 < idle < 150, f"exited after {idle:.0f} s idle, expected about a minute"
    assert "idle" in (tmp_path / "scheduler.log").read_text().lower()
