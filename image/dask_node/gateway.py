"""The dashboard and JupyterLab over mutual TLS: the gateway on the scheduler node.

Dask's dashboard has no login, and its own TLS setting does not ask browsers for a certificate
(distributed builds that context for encryption only). So on the scheduler node the dashboard
and JupyterLab listen on loopback, and this gateway serves them to the allowed networks over
TLS that requires the client's certificate: signed by the cluster's CA, with the role "client"
(dask_node.tls.role_of). It passes bytes both ways without reading them, so the dashboard's and
Jupyter's websockets work unchanged. The laptop's side is the forwarder
(experiments/spotsearch/cluster/forwarder.py).

    python -m dask_node.gateway --tls-dir /etc/dask/tls :8787=127.0.0.1:8788 [:8888=127.0.0.1:8889]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from dask_node import tls

CHUNK = 64 * 1024


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """The gateway's side: its own certificate, and a client certificate from the CA required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
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


def _handler(host: str, port: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Only the user's certificate: a worker's key is readable by any task, and the scheduler's
        # is on the node already.
        if tls.role_of(writer.get_extra_info("peercert")) != "client":
            writer.close()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))

    return handle


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A refused client certificate is the gateway working: not worth a traceback in the log."""
    if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        return
    loop.default_exception_handler(context)


def _address(text: str) -> tuple[str | None, int]:
    host, _, port = text.rpartition(":")
    return (host or None), int(port)


def route(text: str) -> tuple[str, str]:
    """LISTEN=TARGET, each [HOST]:PORT: checked as the command line is read."""
    listen, _, target = text.partition("=")
    try:
        if all(0 < _address(part)[1] < 65536 for part in (listen, target)) and _address(target)[0]:
            return listen, target
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be [HOST]:PORT=HOST:PORT, such as :8787=127.0.0.1:8788, got {text[:80]!r}")


async def serve(routes: list[tuple[str, str]], context: ssl.SSLContext) -> None:
    asyncio.get_running_loop().set_exception_handler(_quiet_handshake_failures)
    servers = []
    for listen, target in routes:
        host, port = _address(listen)
        servers.append(await asyncio.start_server(_handler(*_address(target)), host, port, ssl=context))
        print(f"gateway: TLS with client certificates on {listen}, forwarding to {target}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dask_node.gateway", description="serve loopback ports over mutual TLS")
    parser.add_argument("--tls-dir", required=True, help="the node's TLS folder (the scheduler's certificate)")
    parser.add_argument("routes", nargs="+", type=route, metavar="LISTEN=TARGET", help="such as :8787=127.0.0.1:8788")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.routes, server_context(*tls.files(args.tls_dir, "scheduler"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
