"""The dashboard (and JupyterLab) of a deployed cluster, as an http://127.x.y.z link on the laptop.

The scheduler node serves them only over TLS that requires a certificate from the cluster's CA
(its gateway, image/dask_node/gateway.py). The forwarder listens on 127.0.0.1 and reaches the
gateway with the client's certificate: the browser talks plain HTTP to its own machine only,
and needs no certificate imported. Where the system answers on all of 127.0.0.0/8 (Linux) it
listens on an address of its own, drawn at random from it; where it does not (macOS has only
127.0.0.1 on its loopback interface), on 127.0.0.1. Bytes pass both ways unread, so websockets
work unchanged.

Anything on this machine can open a connection to 127.0.0.1: another user, or a web page whose
name an attacker points at 127.0.0.1 (DNS rebinding). So each connection's first request is read
before anything is forwarded: its Host must be this forwarder's own address, and it must carry
the link's key, as the `dask_link` parameter of the printed link (answered with a cookie for the
browser's later requests, and a redirect to the same page without it) or as that cookie. A
browser keeps a connection to one origin only, so its first request speaks for the rest.

A browser sends a cookie to every port of the address that set it. On an address of its own,
the forwarder's cookie reaches no other local service (those on 127.0.0.1 or localhost, a
notebook server or a web app under development). On 127.0.0.1 it does, and a page served from
another local port could open the dashboard's websocket with it: a request that carries an
`Origin` (every websocket upgrade from a page, every cross-site request) must name this
forwarder's own. A
connection that has not sent its first request within HEAD_SECONDS is closed, and at most
MAX_WAITING wait for theirs: no local user can hold connections open until a run ends for want
of file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import ssl
import threading
from collections.abc import Iterator
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

CHUNK = 64 * 1024
LINK_KEY = "dask_link"  # the printed link's parameter; the cookie is named after it and the port
MAX_HEAD = 64 * 1024  # a request head longer than this is refused
HEAD_SECONDS = 10.0  # what a connection may take to send its first request's head
MAX_WAITING = 64  # connections waiting for their first request, at most (a browser opens six or so)


def own_loopback() -> str:
    """A loopback address for this forwarder alone: 127.a.b.c at random where the system
    answers on all of 127.0.0.0/8 (Linux), else 127.0.0.1 (macOS)."""
    import socket

    address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:  # EADDRNOTAVAIL: this system has 127.0.0.1 only
            return "127.0.0.1"
    return address


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


def _answer(status: str, extra: str = "", body: str = "") -> bytes:
    """A whole HTTP response from the forwarder itself; the connection closes after it."""
    data = body.encode()
    head = f"HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
    return (head + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


class Forwarder:
    """<own loopback address>:<port> to a gateway over mutual TLS, served from a thread of its
    own, for requests to this address that carry `key` (see the module's docstring)."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, *, local_port: int = 0, local_host: str | None = None
    ) -> None:
        self._target, self._context, self._local_port = (host, port), context, local_port
        self.host = local_host or own_loopback()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.port = 0
        self.key = secrets.token_urlsafe(24)
        self.waiting = 0  # connections that have not sent their first request yet (changed on the loop only)

    def _admit(self, head: bytes) -> bytes | None:
        """None to forward the request; else the forwarder's own answer to it."""
        lines = head.decode("latin-1").split("\r\n")
        try:
            _, target, _ = lines[0].split(" ")
        except ValueError:
            return _answer("400 Bad Request")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        own = (f"{self.host}:{self.port}", *([f"localhost:{self.port}"] if self.host == "127.0.0.1" else []))
        if headers.get("host", "").lower() not in own:
            return _answer("421 Misdirected Request", body="not a request for this link\n")
        if "origin" in headers and headers["origin"].lower() not in {f"http://{address}" for address in own}:
            return _answer("403 Forbidden", body="a page of another origin may not use this link\n")
        cookie_name = f"{LINK_KEY}_{self.port}"
        path, _, query = target.partition("?")
        given = dict(parse_qsl(query, keep_blank_values=True)).get(LINK_KEY)
        if given is not None and hmac.compare_digest(given, self.key):
            rest = urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != LINK_KEY])
            location = path + (f"?{rest}" if rest else "")
            cookie = f"Set-Cookie: {cookie_name}={self.key}; HttpOnly; SameSite=Strict; Path=/\r\n"
            return _answer("303 See Other", f"Location: {location}\r\n{cookie}")
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(headers.get("cookie", ""))
        if cookie_name in cookies and hmac.compare_digest(cookies[cookie_name].value, self.key):
            return None
        return _answer("403 Forbidden", body="open the link this machine printed (it carries the link's key)\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.waiting >= MAX_WAITING:
            writer.close()
            return
        self.waiting += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError):
            writer.close()
            return
        finally:
            self.waiting -= 1
        if (answer := self._admit(head)) is not None:
            with contextlib.suppress(OSError):
                writer.write(answer)
                await writer.drain()
            writer.close()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target, ssl=self._context)
        except (OSError, ssl.SSLError):
            writer.close()
            return
        try:
            target_writer.write(head)
            await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        except asyncio.CancelledError:  # the forwarder is closing with this connection open
            writer.close()
            target_writer.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_handshake_failures)
        self._stop = self._loop.create_future()
        try:
            server = await asyncio.start_server(self._handle, self.host, self._local_port, limit=MAX_HEAD)
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
    """An http://127.x.y.z link (see `own_loopback`) that reaches an https:// gateway URL with the
    client certificate, carrying the forwarder's key (see `without_key` for a copy to keep)."""
    parts = urlsplit(url)
    if parts.scheme != "https":  # a plain link (an older stack): nothing to forward
        yield url
        return
    with Forwarder(parts.hostname, parts.port or 443, client_context(ca, cert, key), local_port=local_port) as fwd:
        query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), (LINK_KEY, fwd.key)])
        yield f"http://{fwd.host}:{fwd.port}{parts.path}?{query}"


def without_key(link: str) -> str:
    """The link as it may be written down (a run's summary): the forwarder's key left out."""
    parts = urlsplit(link)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != LINK_KEY])
    return parts._replace(query=query).geturl()
