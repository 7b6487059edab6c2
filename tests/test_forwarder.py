"""The laptop's side of the dashboard (experiments/cluster/forwarder.py, experiments/tunnel.py):
the client's certificate, through the local forwarder, gets the dashboard page and its websocket."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

from experiments.cluster.forwarder import local_link

from . import loopback_cluster


def files(folder, role="client"):
    return str(folder / "ca.pem"), str(folder / f"{role}.pem"), str(folder / f"{role}.key")


def test_the_client_certificate_through_the_forwarder_gets_page_and_websocket(gateway_scheduler):
    from tornado.httpclient import HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    url = f"https://127.0.0.1:{gateway_scheduler.gateway_port}/status"
    with local_link(url, *files(gateway_scheduler.tls_dir)) as link:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/status", link)
        with urllib.request.urlopen(link, timeout=120) as response:
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

        message = IOLoop.current().run_sync(first_message, timeout=120)
    assert message and '"msgtype":"ACK"' in message.replace(" ", "")


def test_tunnel_command_prints_local_links_and_stops_on_ctrl_c(gateway_scheduler, tmp_path):
    import os
    import signal

    outputs = gateway_scheduler.outputs_file(tmp_path / "outputs.json")
    outputs.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "experiments/tunnel.py", "--stack", "loopback", "--outputs", str(outputs)],
        cwd=loopback_cluster.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        (link,) = re.findall(r"^Dask dashboard: (http://127\.0\.0\.1:\d+/status)$", line.strip())
        with urllib.request.urlopen(link, timeout=120) as response:
            assert response.status == 200
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            print(process.communicate())
    assert process.returncode == 0, out + err
    assert err.strip() == "closed", err
