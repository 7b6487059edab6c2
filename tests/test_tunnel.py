"""The dashboard behind the TLS gateway, with real processes on loopback: no certificate, or one
from another CA, is refused; the client's certificate, through the local forwarder, gets the
dashboard page and its websocket."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest

from experiments.tunnel import client_context, local_link

from . import loopback_cluster


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    cluster = loopback_cluster.start(tmp_path_factory.mktemp("gateway"), workers=())
    yield cluster
    cluster.stop()


def files(folder, role="client"):
    return str(folder / "ca.pem"), str(folder / f"{role}.pem"), str(folder / f"{role}.key")


def http_get(port: int, context: ssl.SSLContext) -> bytes:
    """One HTTP request over TLS to the gateway; what came back (nothing if refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(100)


def refused(port: int, context: ssl.SSLContext) -> bool:
    try:
        return http_get(port, context) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_the_client_certificate_is_served(scheduler):
    """The control for the refusals below: the same request with the right certificate works."""
    context = client_context(*files(scheduler.tls_dir))
    assert http_get(scheduler.gateway_port, context).startswith(b"HTTP/1.1 ")
    assert not refused(scheduler.gateway_port, context)


def test_no_client_certificate_is_refused(scheduler):
    context = ssl.create_default_context(cafile=str(scheduler.tls_dir / "ca.pem"))
    context.check_hostname = False
    assert refused(scheduler.gateway_port, context)


def test_a_certificate_from_another_ca_is_refused(scheduler, tmp_path):
    loopback_cluster.make_tls(tmp_path)
    context = client_context(str(scheduler.tls_dir / "ca.pem"), *files(tmp_path)[1:])
    assert refused(scheduler.gateway_port, context)


def test_the_dask_dashboard_itself_listens_on_loopback_only(scheduler):
    """The gateway is the only way in: Dask's own port is bound to 127.0.0.1."""
    run = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True)
    listening = [line.split()[3] for line in run.stdout.splitlines() if f":{scheduler.dashboard_port} " in line + " "]
    assert listening == [f"127.0.0.1:{scheduler.dashboard_port}"]


def test_the_client_certificate_through_the_forwarder_gets_page_and_websocket(scheduler):
    from tornado.httpclient import HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    url = f"https://127.0.0.1:{scheduler.gateway_port}/status"
    with local_link(url, *files(scheduler.tls_dir)) as link:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/status", link)
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
            page = response.read().decode()
        assert "Bokeh" in page
        # Bokeh's page carries a session token; its websocket subprotocol presents it.
        (token,) = set(re.findall(r'"token":\s*"([^"]+)"', page))
        ws_url = link.replace("http://", "ws://") + "/ws"

        async def first_message() -> str:
            request = HTTPRequest(ws_url, headers={"Origin": link.rsplit("/", 1)[0]})
            connection = await websocket_connect(request, subprotocols=["bokeh", token])
            try:
                return await connection.read_message()
            finally:
                connection.close()

        message = IOLoop.current().run_sync(first_message, timeout=30)
    assert message and '"msgtype":"ACK"' in message.replace(" ", "")


def test_tunnel_command_prints_local_links_and_stops_on_ctrl_c(scheduler, tmp_path):
    import os
    import signal

    outputs = scheduler.outputs_file(tmp_path / "outputs.json")
    outputs.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "experiments/tunnel.py", "--stack", "loopback", "--outputs", str(outputs)],
        cwd=loopback_cluster.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        (link,) = re.findall(r"^Dask dashboard: (http://127\.0\.0\.1:\d+/status)$", line.strip())
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            print(process.communicate())
    assert process.returncode == 0, out + err
    assert err.strip() == "closed", err
