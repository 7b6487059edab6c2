"""The scheduler node's TLS gateway (image/dask_node/gateway.py), with real processes on loopback:
no certificate, or one from another CA, is refused; the client's certificate is served; Dask's
own dashboard port listens on loopback only."""

from __future__ import annotations

import ssl
import subprocess

import pytest

from spotsearch.cluster.forwarder import client_context

from . import loopback_cluster
from .gateway_probes import files, http_get, refused


def test_the_client_certificate_is_served(gateway_scheduler):
    """The control for the refusals below: the same request with the right certificate works."""
    context = client_context(*files(gateway_scheduler.tls_dir))
    assert http_get(gateway_scheduler.gateway_port, context).startswith(b"HTTP/1.1 ")
    assert not refused(gateway_scheduler.gateway_port, context)


def test_no_client_certificate_is_refused(gateway_scheduler):
    context = ssl.create_default_context(cafile=str(gateway_scheduler.tls_dir / "ca.pem"))
    context.check_hostname = False
    assert refused(gateway_scheduler.gateway_port, context)


def test_a_certificate_from_another_ca_is_refused(gateway_scheduler, tmp_path):
    loopback_cluster.make_tls(tmp_path)
    context = client_context(str(gateway_scheduler.tls_dir / "ca.pem"), *files(tmp_path)[1:])
    assert refused(gateway_scheduler.gateway_port, context)


def test_the_dask_dashboard_itself_listens_on_loopback_only(gateway_scheduler):
    """The gateway is the only way in: Dask's own port is bound to 127.0.0.1."""
    run = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True)
    listening = [
        line.split()[3] for line in run.stdout.splitlines() if f":{gateway_scheduler.dashboard_port} " in line + " "
    ]
    assert listening == [f"127.0.0.1:{gateway_scheduler.dashboard_port}"]


@pytest.mark.parametrize(
    "route", ["8787", ":8787", ":abc=127.0.0.1:8788", ":8787=:8788", ":0=127.0.0.1:8788", ":8787=127.0.0.1:70000"]
)
def test_a_bad_route_is_refused_as_the_command_line_is_read(route, capsys):
    from dask_node import gateway

    with pytest.raises(SystemExit) as exited:
        gateway.main(["--tls-dir", "/nonexistent", route])
    assert exited.value.code == 2
    assert f"must be [HOST]:PORT=HOST:PORT, such as :8787=127.0.0.1:8788, got {route!r}" in capsys.readouterr().err
