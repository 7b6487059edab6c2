"""A deployed stack's outputs, as `cdktf deploy --outputs-file` writes them, kept private."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.cluster.messages import ClusterError, console

DEFAULT_OUTPUTS = Path("outputs.json")
DEPLOY_HINT = "cdktf deploy {stack} --outputs-file outputs.json --outputs-file-include-sensitive-outputs"
COST_OUTPUTS = ("region", "worker_instance_types", "scheduler_instance_type", "scheduler_market")
REQUIRED_OUTPUTS = (
    "scheduler_address",
    "dashboard_url",
    "workers",
    "tls_ca_pem",
    "tls_client_cert_pem",
    "tls_client_key_pem",
)


def keep_private(path: Path) -> None:
    """A file holding the cluster's keys, readable by other users of this machine, is made
    private (with one line saying so), or refused when it is not ours to change."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & 0o700)
    except PermissionError:
        raise ClusterError(
            f"{path}: holds the cluster's TLS keys and others can read it (mode {mode:04o}); "
            "ask its owner to `chmod 600` it"
        ) from None
    console(f"warning: {path} holds the cluster's TLS keys and others could read it (mode {mode:04o}); made it 0600")


def read_outputs(path: Path, stack: str) -> dict:
    """The outputs of one stack, as written by `cdktf deploy --outputs-file`."""
    hint = DEPLOY_HINT.format(stack=stack)
    # The state beside it holds every key of the cluster: it gets the same care.
    for secret in (path, path.parent / f"terraform.{stack}.tfstate", path.parent / f"terraform.{stack}.tfstate.backup"):
        keep_private(secret)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"{path}: not found; deploy first with `{hint}`, or pass --outputs FILE") from None
    except json.JSONDecodeError as error:
        raise ClusterError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict) or stack not in document:
        found = ", ".join(sorted(document)) if isinstance(document, dict) and document else "none"
        raise ClusterError(f"{path}: no stack named {stack!r} (stacks found: {found})")
    outputs = document[stack]
    for key in REQUIRED_OUTPUTS:
        if key not in outputs:
            extra = (
                " (sensitive outputs need --outputs-file-include-sensitive-outputs)" if key.startswith("tls_") else ""
            )
            raise ClusterError(f"{path}: stack {stack!r} has no output {key!r}; redeploy with `{hint}`{extra}")
    return outputs
