"""Reaching the scheduler, waiting for worker nodes, and metering them while a search runs."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable

from spotsearch.cluster.messages import ClusterError, console
from spotsearch.cluster.polling import Poller

# A scheduler that is not up yet is normal for minutes (a cluster booting); one that ended (idle,
# or at its lifetime cap) never comes back: both look the same from here, so the user hears it now.
ENDED_HINT_SECONDS = 5.0


def probe(address: str, security, timeout: float, *, stack: str | None = None,
          ended: Callable[[], str | None] | None = None) -> None:  # fmt: skip
    """Tell an unreachable scheduler from a TLS rejection before Dask retries either for long.

    A TLS 1.3 server checks the client's certificate after the handshake: the probe reads the
    scheduler's first message (a Dask server speaks first), where a rejection shows. `ended`
    says, once the scheduler has been silent a few seconds, whether the cluster is over for good
    (at its cost cap): then that line, at once, rather than a wait for the timeout."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tls":
        raise ClusterError(f"{address}: the cluster only accepts tls:// addresses")
    host, port = parse_host_port(location)
    context: ssl.SSLContext = security.get_connection_args("client")["ssl_context"]
    deadline = time.monotonic() + timeout
    console(f"connecting to {address} (for up to {timeout:g} s)")
    waiting = Heartbeat(f"waiting for the scheduler at {address}", deadline)
    hint_at = time.monotonic() + ENDED_HINT_SECONDS
    while True:
        handshake_done = False
        try:
            with socket.create_connection((host, port), timeout=min(10.0, timeout)) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    handshake_done = True
                    if not tls.recv(1):
                        raise ConnectionResetError("closed by the scheduler")
                return
        except ssl.SSLError as error:
            raise ClusterError(
                f"{address}: TLS rejected ({error.reason or error}); use the certificates of this cluster's deployment"
            ) from None
        except OSError as error:
            if handshake_done:  # the scheduler let TLS through, then cut the connection: our certificate
                raise ClusterError(
                    f"{address}: TLS rejected (the scheduler closed the connection: {error}); use the certificates "
                    "of this cluster's deployment"
                ) from None
            if hint_at is not None and time.monotonic() >= hint_at:
                hint_at = None
                if ended is not None and (line := ended()):
                    raise ClusterError(line) from None
                redeploy = f"`cdktf deploy {stack}`" if stack else "`cdktf deploy`"
                console(
                    f"  no answer from {address} yet: a cluster that is starting takes a few minutes; one that was "
                    f"idle for its idle timeout or reached its lifetime or cost cap has ended, and {redeploy} starts "
                    "it again"
                )
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{address}: scheduler not reachable within {timeout:g} s; is the cluster up, "
                    "and is your address in allowed_cidrs?"
                ) from None
            waiting.beat()
            time.sleep(1.0)


def scheduler_identity(client) -> dict:
    """The scheduler's `identity(n_workers=-1)`, read with msgpack only (not
    `client.scheduler_info`): what the scheduler hands on from the workers (their `extra`,
    `metrics`) is read as plain data, never unpickled on the laptop."""
    from distributed.core import PooledRPCCall

    scheduler = PooledRPCCall(client.scheduler.address, client.rpc, deserializers=["msgpack"])
    return client.sync(scheduler.identity, n_workers=-1)


def worker_nodes(client) -> int:
    """Worker nodes, not processes: a node may run several Dask workers."""
    from distributed.comm.addressing import get_address_host

    return len({get_address_host(address) for address in scheduler_identity(client)["workers"]})


HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """Says what the client waits for, with the time left, at least every HEARTBEAT_SECONDS."""

    def __init__(self, what: str, deadline: float) -> None:
        self.what, self.deadline = what, deadline
        self.reset()

    def reset(self) -> None:
        """Something was just said: the next line is due a full interval from now."""
        self.last = time.monotonic()

    def beat(self, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            console(f"  still {self.what}{detail}: {max(0.0, self.deadline - now):.0f} s left (Ctrl-C to stop)")


def wait_for_nodes(client, expected: int, timeout: float, report: Callable[[int, int], None]) -> None:
    deadline = time.monotonic() + timeout
    waiting = Heartbeat(f"waiting for {expected} worker node(s)", deadline)
    seen = -1
    while (count := worker_nodes(client)) < expected:
        if count != seen:
            report(count, expected)
            seen = count
            waiting.reset()
        else:
            waiting.beat(f", {count} joined")
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"only {count} of {expected} worker nodes joined within {timeout:g} s; check the worker "
                "group in the AWS console, or pass --workers/--timeout"
            )
        time.sleep(1.0)
    report(count, expected)


class NodeMeter:
    """Worker nodes over time, looked at every `interval` seconds: says when the count changes,
    and adds up node-seconds (what an adaptive cluster's run is billed for)."""

    def __init__(self, client, on_change: Callable[[int, int], object], interval: float = 1.0) -> None:
        self._client, self._on_change = client, on_change
        self._poller = Poller(self._sample, interval, "node-meter")
        self.node_seconds = 0.0
        self.peak = 0

    def _sample(self) -> None:
        try:
            count, now = worker_nodes(self._client), time.monotonic()
        except (OSError, TimeoutError):  # no scheduler just now (the search waits for it): next look
            return
        self.node_seconds += self._count * (now - self._since)
        if count != self._count:
            self._on_change(self._count, count)
        self._count, self._since, self.peak = count, now, max(self.peak, count)

    def start(self) -> NodeMeter:
        self._count, self._since = worker_nodes(self._client), time.monotonic()
        self.peak = self._count
        self._poller.start()
        return self

    def stop(self, *, last_look: bool = True) -> None:
        self._poller.stop(last_look=last_look)

    def __enter__(self) -> NodeMeter:
        return self.start()

    def __exit__(self, error_type, *_) -> None:
        # A last look only after a search that ended well: after an error the count goes in no
        # report, and its scheduler may be gone for good (asking one waits for the client's timeout).
        self.stop(last_look=error_type is None)
