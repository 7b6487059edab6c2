#!/usr/bin/env python
"""The dashboard and JupyterLab behind mutual TLS: a gateway on the scheduler node, a forwarder
on the laptop.

Dask's dashboard has no login, and its own TLS setting does not ask browsers for a certificate
(distributed builds that context for encryption only). So on the scheduler node the dashboard
and JupyterLab listen on loopback, and the gateway serves them to the allowed networks over TLS
that requires a certificate signed by the cluster's CA. On the laptop the forwarder listens on
127.0.0.1 and reaches the gateway with the client's certificate: the browser talks plain HTTP
to its own machine only, and needs no certificate imported. Both pass bytes both ways without
reading them, so the dashboard's and Jupyter's websockets work unchanged.

    python experiments/tunnel.py --stack dask      # local links to the dashboard (and JupyterLab)
    python -m experiments.tunnel gateway ...       # what the scheduler node runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as `python experiments/tunnel.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 64 * 1024


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """The gateway's side: its own certificate, and a client certificate from the CA required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """The forwarder's side: trusts only the cluster's CA, and shows the client certificate.

    Node certificates name their role, not an address (the scheduler's public IP is only known
    after it starts), so the CA, private to this cluster, is what identifies the gateway.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    return context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass  # the other side went away: close ours too
    finally:
        writer.close()


def _handler(host: str, port: int, tls: ssl.SSLContext | None):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port, ssl=tls)
        except (OSError, ssl.SSLError):
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        except asyncio.CancelledError:  # the forwarder is closing with this connection open
            writer.close()
            target_writer.close()

    return handle


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A refused client certificate is the gateway working: not worth a traceback in the log."""
    if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        return
    loop.default_exception_handler(context)


def _address(text: str) -> tuple[str | None, int]:
    host, _, port = text.rpartition(":")
    return (host or None), int(port)


async def _gateway(routes: list[tuple[str, str]], context: ssl.SSLContext) -> None:
    asyncio.get_running_loop().set_exception_handler(_quiet_handshake_failures)
    servers = []
    for listen, target in routes:
        host, port = _address(listen)
        target_host, target_port = _address(target)
        servers.append(await asyncio.start_server(_handler(target_host, target_port, None), host, port, ssl=context))
        print(f"gateway: TLS with client certificates on {listen}, forwarding to {target}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


class Forwarder:
    """127.0.0.1:<port> to a gateway over mutual TLS, served from a thread of its own."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, local_port: int = 0) -> None:
        self._target, self._context, self._local_port = (host, port), context, local_port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.port = 0

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_handshake_failures)
        self._stop = self._loop.create_future()
        try:
            server = await asyncio.start_server(_handler(*self._target, self._context), "127.0.0.1", self._local_port)
        except OSError as error:
            self._error = error
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop

    def __enter__(self) -> Forwarder:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="tls-forwarder", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop and self._stop and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone
                self._loop.call_soon_threadsafe(self._stop.set_result, None)
        # Wait for the loop to wind down here, not during the interpreter's own shutdown.
        self._thread.join(timeout=5)


@contextlib.contextmanager
def local_link(url: str, ca: str, cert: str, key: str, *, local_port: int = 0) -> Iterator[str]:
    """An http://127.0.0.1 link that reaches an https:// gateway URL with the client certificate."""
    parts = urlsplit(url)
    if parts.scheme != "https":  # a plain link (an older stack): nothing to forward
        yield url
        return
    with Forwarder(parts.hostname, parts.port or 443, client_context(ca, cert, key), local_port=local_port) as fwd:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        yield f"http://127.0.0.1:{fwd.port}{path}"


def main() -> int:
    from experiments import cluster

    gc.enable()  # `cluster.run` turns it off for a startup; this process may run for hours
    if sys.argv[1:2] == ["gateway"]:
        parser = argparse.ArgumentParser(prog="tunnel gateway", description="serve loopback ports over mutual TLS")
        parser.add_argument("--tls-ca-file", required=True)
        parser.add_argument("--tls-cert", required=True)
        parser.add_argument("--tls-key", required=True)
        parser.add_argument("routes", nargs="+", metavar="LISTEN=TARGET", help="such as :8787=127.0.0.1:8788")
        args = parser.parse_args(sys.argv[2:])
        routes = [tuple(route.split("=", 1)) for route in args.routes]
        asyncio.run(_gateway(routes, server_context(args.tls_ca_file, args.tls_cert, args.tls_key)))
        return 0

    parser = argparse.ArgumentParser(description="Open a deployed cluster's dashboard (and JupyterLab) on localhost")
    parser.add_argument("--stack", metavar="NAME", required=True, help="a deployed stack, read from the outputs file")
    parser.add_argument(
        "--outputs",
        metavar="FILE",
        type=Path,
        default=cluster.DEFAULT_OUTPUTS,
        help="cdktf outputs (default: %(default)s)",
    )
    args = parser.parse_args()
    outputs = cluster.read_outputs(args.outputs, args.stack)
    services = [("Dask dashboard", outputs["dashboard_url"])]
    if outputs.get("jupyter_url"):
        services.append(("JupyterLab (token: jupyter_token in the outputs file)", outputs["jupyter_url"]))
    with cluster.private_tls_files(outputs) as tls, contextlib.ExitStack() as links:
        for what, url in services:
            link = links.enter_context(local_link(url, tls["ca"], tls["cert"], tls["key"]))
            print(f"{what}: {link}", flush=True)
        print("Open the links in your browser; Ctrl-C closes them.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:  # how this command is meant to end
            print("closed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from experiments import cluster

    cluster.run(main)
