"""The client's TLS material: private temporary files, checked before Dask reads them."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spotsearch.cluster.messages import ClusterError


@contextlib.contextmanager
def private_tls_files(outputs: dict) -> Iterator[dict[str, str]]:
    """The client's TLS material as files only this user can read, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dask-tls-") as folder:  # created with mode 0700
        paths = {}
        for name, key in (("ca", "tls_ca_pem"), ("cert", "tls_client_cert_pem"), ("key", "tls_client_key_pem")):
            path = Path(folder) / f"{name}.pem"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(outputs[key])
            paths[name] = str(path)
        yield paths


def security_for(ca: str | None, cert: str | None, key: str | None):
    """Mutual TLS from the given files, or from Dask's own configuration when none are given."""
    from distributed.security import Security

    if not (ca or cert or key):
        security = Security()  # distributed.comm.tls.* from ~/.config/dask or DASK_ environment
        if not security.tls_ca_file:
            raise ClusterError(
                "no TLS files: pass --tls-ca, --tls-cert and --tls-key, or set distributed.comm.tls in Dask's config"
            )
        return security
    missing = [flag for flag, value in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)) if not value]
    if missing:
        raise ClusterError(f"{', '.join(missing)}: required with the other TLS options")
    check_tls_files(ca, cert, key)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def check_tls_files(ca: str, cert: str, key: str) -> None:
    """One line naming the flag for a missing, unreadable, empty or wrong PEM file, before
    Dask builds its TLS context from them (and fails with a long traceback)."""
    expected = {"--tls-ca": (ca, "CERTIFICATE"), "--tls-cert": (cert, "CERTIFICATE"), "--tls-key": (key, "PRIVATE KEY")}
    for flag, (value, kind) in expected.items():
        path = Path(value)
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            raise ClusterError(f"{flag}: no such file {value}") from None
        except IsADirectoryError:
            raise ClusterError(f"{flag}: {value} is a directory, not a PEM file") from None
        except PermissionError:
            raise ClusterError(f"{flag}: cannot read {value} (permission denied)") from None
        if not text.strip():
            raise ClusterError(f"{flag}: {value} is empty")
        if f"-----BEGIN {kind}-----" not in text and not (kind == "PRIVATE KEY" and " PRIVATE KEY-----" in text):
            raise ClusterError(f"{flag}: {value} holds no PEM {kind.lower()} (-----BEGIN {kind}-----)")
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as error:
        raise ClusterError(f"--tls-ca: {ca} is not a valid CA certificate ({error.reason or error})") from None
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ClusterError(
            f"--tls-cert, --tls-key: {cert} and {key} are not a certificate and its own key ({error.reason or error})"
        ) from None
