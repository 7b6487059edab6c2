"""Requests to a node's TLS gateway as a test sends them, for the gateway's, trust and forwarder tests."""

from __future__ import annotations

import socket
import ssl


def files(folder, role="client"):
    """A role's TLS files in a cluster's TLS folder: CA, certificate, key."""
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
