"""The dashboard (and JupyterLab) of a deployed cluster, as an http://127.0.0.1 link on the laptop.

The scheduler node serves them only over TLS that requires a certificate from the cluster's CA
(its gateway, image/dask_node/gateway.py). The forwarder listens on 127.0.0.1 and reaches the
gateway with the client's certificate: the browser talks plain HTTP to its own machine only,
and needs no certificate imported. Bytes pass both ways unread, so websockets work unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

CHUNK = 64 * 1024


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Trusts only the cluster's CA, and shows the client certificate.

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


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A gateway that refuses or drops a connection is reported by the browser, not as a traceback."""
    if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        return
    loop.default_exception_handler(context)


class Forwarder:
    """127.0.0.1:<port> to a gateway over mutual TLS, served from a thread of its own."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, local_port: int = 0) -> None:
        self._target, self._context, self._local_port = (host, port), context, local_port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target, ssl=self._context)
        except (OSError, ssl.SSLError):
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        except asyncio.CancelledError:  # the forwarder is closing with this connection open
            writer.close()
            target_writer.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_handshake_failures)
        self._stop = self._loop.create_future()
        try:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self._local_port)
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
