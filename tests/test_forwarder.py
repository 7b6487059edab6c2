"""The laptop's side of the dashboard (experiments/spotsearch/cluster/forwarder.py, experiments/tunnel.py):
the client's certificate, through the local forwarder, gets the dashboard page and its websocket."""

from __future__ import annotations

import http.cookiejar
import re
import subprocess
import sys
import urllib.request

from spotsearch.cluster.forwarder import local_link

from . import loopback_cluster
from .gateway_probes import files


def browser():
    """What a browser does with the forwarder's answers: follows the redirect, keeps the cookie."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def test_the_client_certificate_through_the_forwarder_gets_page_and_websocket(gateway_scheduler):
    from tornado.httpclient import HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    url = f"https://127.0.0.1:{gateway_scheduler.gateway_port}/status"
    with local_link(url, *files(gateway_scheduler.tls_dir)) as link:
        (origin, key) = re.fullmatch(r"(http://127\.\d+\.\d+\.\d+:\d+)/status\?dask_link=([\w-]{32})", link).groups()
        with browser().open(link, timeout=120) as response:
            assert response.status == 200
            assert response.url == f"{origin}/status", "the key leaves the address bar"
            page = response.read().decode()
        assert "Bokeh" in page
        # Bokeh's page carries a session token; its websocket subprotocol presents it.
        (token,) = set(re.findall(r'"token":\s*"([^"]+)"', page))
        ws_url = f"{origin.replace('http://', 'ws://')}/status/ws"
        cookie = f"dask_link_{origin.rsplit(':', 1)[1]}={key}"

        async def first_message() -> str:
            request = HTTPRequest(ws_url, headers={"Origin": origin, "Cookie": cookie})
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
        (link,) = re.findall(
            r"^Dask dashboard: (http://127\.\d+\.\d+\.\d+:\d+/status\?dask_link=[\w-]+)$", line.strip()
        )
        with browser().open(link, timeout=120) as response:
            assert response.status == 200
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            print(process.communicate())
    assert process.returncode == 0, out + err
    assert err.strip() == "closed", err


LINK = re.compile(r"http://(127\.\d+\.\d+\.\d+):(\d+)/status\?dask_link=(.+)")


def ask(
    address: tuple[str, int], path: str, host: str | None = None, cookie: str | None = None, origin: str | None = None
) -> tuple[int, dict, bytes]:
    """One request as anything on this machine could send it: status, headers, body."""
    import http.client

    connection = http.client.HTTPConnection(*address, timeout=60)
    headers = {"Cookie": cookie} if cookie else {}
    if host:
        headers["Host"] = host
    if origin:
        headers["Origin"] = origin
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    answer = (response.status, dict(response.getheaders()), response.read())
    connection.close()
    return answer


def test_the_forwarder_serves_only_requests_for_its_address_that_carry_its_key(gateway_scheduler):
    url = f"https://127.0.0.1:{gateway_scheduler.gateway_port}/status"
    with local_link(url, *files(gateway_scheduler.tls_dir)) as link:
        own, port, key = LINK.fullmatch(link).groups()
        at, port, cookie = (own, int(port)), int(port), f"dask_link_{port}={key}"
        # A web page whose name was pointed at this address (DNS rebinding), with or without the key.
        assert ask(at, f"/status?dask_link={key}", host=f"evil.example:{port}")[0] == 421
        assert ask(at, "/status", host=f"evil.example:{port}", cookie=cookie)[0] == 421
        # Its own address only: localhost names 127.0.0.1, where another service may listen.
        assert ask(at, "/status", host=f"localhost:{port}", cookie=cookie)[0] == 421
        # Anything else on this machine, without the key or with a wrong one.
        assert ask(at, "/status")[0] == 403
        assert ask(at, "/status?dask_link=guess")[0] == 403
        assert ask(at, "/status", cookie=f"dask_link_{port}=guess")[0] == 403
        # The printed link: a cookie for the browser's later requests, and the page without the key.
        status, headers, _ = ask(at, f"/status?dask_link={key}&theme=dark")
        assert status == 303 and headers["Location"] == "/status?theme=dark"
        assert headers["Set-Cookie"] == f"{cookie}; HttpOnly; SameSite=Strict; Path=/"
        status, _, page = ask(at, "/status", cookie=cookie)
        assert status == 200 and b"Bokeh" in page


def test_a_page_of_another_local_port_cannot_use_the_cookie(gateway_scheduler):
    """The browser sends the cookie to every port of the forwarder's address: a request whose
    Origin is not the forwarder's own is refused, the websocket's upgrade included; the control
    is its own."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    url = f"https://127.0.0.1:{gateway_scheduler.gateway_port}/status"
    with local_link(url, *files(gateway_scheduler.tls_dir)) as link:
        own, port, key = LINK.fullmatch(link).groups()
        at, port, cookie = (own, int(port)), int(port), f"dask_link_{port}={key}"
        assert ask(at, "/status", cookie=cookie, origin=f"http://{own}:8888")[0] == 403
        assert ask(at, "/status", cookie=cookie, origin="null")[0] == 403
        assert ask(at, "/status", cookie=cookie, origin=f"http://{own}:{port}")[0] == 200

        async def upgrade(origin: str) -> object:
            request = HTTPRequest(f"ws://{own}:{port}/status/ws", headers={"Origin": origin, "Cookie": cookie})
            try:
                connection = await websocket_connect(request, subprotocols=["bokeh"])
            except HTTPClientError as error:
                return error.code
            connection.close()
            return "open"

        assert IOLoop.current().run_sync(lambda: upgrade(f"http://{own}:8888"), timeout=60) == 403


def test_idle_connections_are_closed_and_capped_so_no_local_user_holds_the_forwarder(gateway_scheduler, monkeypatch):
    import socket
    import time

    from spotsearch.cluster import forwarder

    monkeypatch.setattr(forwarder, "HEAD_SECONDS", 1.0)
    monkeypatch.setattr(forwarder, "MAX_WAITING", 3)
    context = forwarder.client_context(*files(gateway_scheduler.tls_dir))
    with forwarder.Forwarder("127.0.0.1", gateway_scheduler.gateway_port, context) as local:
        at, key = (local.host, local.port), local.key
        idle = [socket.create_connection(at) for _ in range(3)]
        deadline = time.monotonic() + 30
        while local.waiting < 3:  # the forwarder has taken them
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with socket.create_connection(at) as beyond:
            beyond.settimeout(30)
            assert beyond.recv(1) == b"", "a connection beyond the cap is closed at once"
        started = time.monotonic()
        for connection in idle:
            connection.settimeout(30)
            assert connection.recv(1) == b"", "an idle connection is closed"
            connection.close()
        assert time.monotonic() - started < 25
        # The control: once they are gone, the printed link is served.
        assert ask(at, f"/status?dask_link={key}")[0] == 303


class CookieRecorder:
    """A local web server of someone else's, on `host`: it records the Cookie header of each request."""

    def __init__(self, host: str) -> None:
        import http.server
        import threading

        self.cookies: list[str | None] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                recorder.cookies.append(self.headers.get("Cookie"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


def test_the_cookie_reaches_no_other_local_service(gateway_scheduler):
    """The forwarder listens on a loopback address of its own (Linux answers on all of
    127.0.0.0/8), so the browser's cookie for it goes to no service on 127.0.0.1 or localhost.
    The control: a service on the forwarder's own address, another port, does get it (a cookie
    is sent to every port of its host), as every service of 127.0.0.1 did before."""
    import socket

    url = f"https://127.0.0.1:{gateway_scheduler.gateway_port}/status"
    with local_link(url, *files(gateway_scheduler.tls_dir)) as link:
        own, port, _ = LINK.fullmatch(link).groups()
        assert own != "127.0.0.1"
        with socket.socket() as probe:  # nothing of the forwarder's on 127.0.0.1
            assert probe.connect_ex(("127.0.0.1", int(port))) != 0
        opener = browser()
        with opener.open(link, timeout=120) as response:
            assert response.status == 200, "the browser holds the cookie now"
        with CookieRecorder("127.0.0.1") as elsewhere, CookieRecorder(own) as beside:
            opener.open(elsewhere.url, timeout=60).close()
            opener.open(elsewhere.url.replace("127.0.0.1", "localhost"), timeout=60).close()
            opener.open(beside.url, timeout=60).close()
        assert elsewhere.cookies == [None, None]
        assert beside.cookies == [f"dask_link_{port}={LINK.fullmatch(link).group(3)}"]


def test_where_127_0_0_1_is_the_only_loopback_address_the_forwarder_uses_it(monkeypatch):
    """macOS answers on 127.0.0.1 alone: binding another loopback address fails there."""
    import errno
    import socket

    from spotsearch.cluster import forwarder

    assert forwarder.own_loopback() != "127.0.0.1", "the control: this Linux answers on all of 127.0.0.0/8"

    def refuse(self, address):
        raise OSError(errno.EADDRNOTAVAIL, "Can't assign requested address")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    assert forwarder.own_loopback() == "127.0.0.1"
