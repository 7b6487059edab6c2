"""A deployed stack's outputs, as `cdktf deploy --outputs-file` writes them, kept private."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from spotsearch.cluster.messages import ClusterError, console, shown

DEFAULT_OUTPUTS = Path("outputs.json")
DEPLOY_HINT = "cdktf deploy {stack} --outputs-file outputs.json --outputs-file-include-sensitive-outputs"
COST_OUTPUTS = ("region", "worker_instance_types", "scheduler_instance_types", "scheduler_market")
REQUIRED_OUTPUTS = (
    "scheduler_address",
    "dashboard_url",
    "workers",
    "tls_ca_pem",
    "tls_client_cert_pem",
    "tls_client_key_pem",
)


def is_scheduler_address(value: object) -> bool:
    """tls://HOST:PORT, an IPv6 host in brackets."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except (TypeError, ValueError, AttributeError):
        return False
    return parts.scheme == "tls" and bool(parts.hostname) and port is not None and parts.path in ("", "/")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object) -> bool:
    return isinstance(value, str)


def _pem(value: object) -> bool:
    return isinstance(value, str) and "-----BEGIN " in value


# What each output the experiments read must be, when present (REQUIRED_OUTPUTS must be).
FIELDS = {
    "scheduler_address": ("tls://HOST:PORT", is_scheduler_address),
    "dashboard_url": ("an https:// URL", lambda v: isinstance(v, str) and v.startswith("https://")),
    "jupyter_url": ("an https:// URL", lambda v: isinstance(v, str) and v.startswith("https://")),
    "workers": ("a whole number of at least 0", _count),
    "min_workers": ("a whole number of at least 0", _count),
    "max_workers": ("a whole number of at least 0", _count),
    "image_uri": ("a string", _text),
    "region": ("a string", _text),
    "scheduler_instance_types": ("a list of strings", lambda v: isinstance(v, list) and all(map(_text, v))),
    "scheduler_market": ("a string", _text),
    "worker_instance_types": ("a list of strings", lambda v: isinstance(v, list) and all(map(_text, v))),
    "data_sources": ("a list of strings", lambda v: isinstance(v, list) and all(map(_text, v))),
    "uploads_bucket": ("a string", _text),
    "tls_ca_pem": ("a PEM text", _pem),
    "tls_client_cert_pem": ("a PEM text", _pem),
    "tls_client_key_pem": ("a PEM text", _pem),
}


def keep_private(path: Path) -> None:
    """A file holding the cluster's keys, readable by other users of this machine, is made
    private (with one line saying so). Only a regular file of this user's is ever changed:
    anything else is refused, unchanged, in one line."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return
    mode = status.st_mode & 0o777
    if not stat.S_ISREG(status.st_mode):
        raise ClusterError(f"{path}: not a file (an outputs file or a Terraform state is expected)")
    if not mode & 0o077:
        return
    if status.st_uid != os.getuid():
        raise ClusterError(
            f"{path}: holds the cluster's TLS keys and others can read it (mode {mode:04o}), and it is not yours; "
            "ask its owner to `chmod 600` it"
        )
    private = mode & 0o700
    warning = f"{path} holds the cluster's TLS keys and others could read it (mode {mode:04o})"
    try:
        path.chmod(private)
    except OSError as error:  # a read-only file system, say
        raise ClusterError(f"{warning}, and it cannot be made private ({error.strerror or error})") from None
    console(f"warning: {warning}; made it {private:04o}")


def read_outputs(path: Path, stack: str) -> dict:
    """The outputs of one stack, as written by `cdktf deploy --outputs-file`."""
    hint = DEPLOY_HINT.format(stack=stack)
    if path.exists() and not path.is_file():
        raise ClusterError(f"{path}: not a file (an outputs file or a Terraform state is expected)")
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"{path}: not found (looked for {path.absolute()}); if stack {stack!r} is deployed, pass --outputs with "
            f"the file `cdktf deploy` wrote (outputs.json in the project's folder), else deploy it: `{hint}`"
        ) from None
    except json.JSONDecodeError as error:
        raise ClusterError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(document, dict) and document and all(isinstance(outputs, dict) for outputs in document.values()):
        keep_private(path)  # an outputs file (stacks and their outputs): it holds their keys
    if not isinstance(document, dict) or stack not in document:
        found = ", ".join(sorted(document)) if isinstance(document, dict) and document else "none"
        raise ClusterError(f"{path}: no stack named {stack!r} (stacks found: {found})")
    outputs = document[stack]
    if not isinstance(outputs, dict):
        raise ClusterError(f"{path}: stack {stack!r} must be an object of outputs, got {shown(outputs)}")
    for key in REQUIRED_OUTPUTS:
        if key not in outputs:
            extra = (
                " (sensitive outputs need --outputs-file-include-sensitive-outputs)" if key.startswith("tls_") else ""
            )
            raise ClusterError(f"{path}: stack {stack!r} has no output {key!r}; redeploy with `{hint}`{extra}")
    for key, (what, valid) in FIELDS.items():
        if key in outputs and not valid(outputs[key]):
            raise ClusterError(f"{path}: stack {stack!r}: output {key!r} must be {what}, got {shown(outputs[key])}")
    # The state beside a valid outputs file holds every key of the cluster: the same care.
    for state in (path.parent / f"terraform.{stack}.tfstate", path.parent / f"terraform.{stack}.tfstate.backup"):
        keep_private(state)
    return outputs
