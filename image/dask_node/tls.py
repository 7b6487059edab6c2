"""A node's TLS material: one folder (the stack chooses it and passes it as `--tls-dir`) holding
the cluster's CA and the node role's certificate and key."""

from __future__ import annotations

from pathlib import Path

ROLES = ("scheduler", "worker", "client")


def files(tls_dir: str, role: str) -> tuple[str, str, str]:
    """(CA certificate, the role's certificate, the role's key) in the node's TLS folder."""
    folder = Path(tls_dir)
    return str(folder / "ca.pem"), str(folder / f"{role}.pem"), str(folder / f"{role}.key")


def role_of(peercert: dict | None) -> str | None:
    """The cluster role a verified peer certificate names (its organizational unit, set by
    stacks/tls.py): "scheduler", "worker" or "client"; None for any other certificate."""
    for attributes in (peercert or {}).get("subject", ()):
        for name, value in attributes:
            if name == "organizationalUnitName" and value in ROLES:
                return value
    return None


def security(tls_dir: str, role: str):
    """Dask's mutual TLS as `role` ("scheduler" or "worker"), for the node's own clients."""
    from distributed.security import Security

    ca, cert, key = files(tls_dir, role)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


# What the node's daemons read from the scheduler: plain data only. The scheduler hands on some
# values workers sent (their `extra`, `metrics`) without reading them; read with Dask's default
# deserializers, a pickle among them would run in the daemon, with the scheduler role's
# credentials (dask_node/trust.py refuses such values too).
PLAIN_ONLY = ["msgpack"]


def scheduler_rpc(address: str, security, **options):
    """An rpc to the scheduler, as the node's own client, that unpickles nothing it reads."""
    from distributed.core import rpc

    connection_args = security.get_connection_args("client") if security is not None else {}
    return rpc(address, connection_args=connection_args, deserializers=PLAIN_ONLY, **options)
