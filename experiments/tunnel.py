#!/usr/bin/env python
"""Open a deployed cluster's dashboard (and JupyterLab) on this machine, over mutual TLS.

    python experiments/tunnel.py --stack dask

prints http://127.x.y.z links (this machine's loopback) that stay open until Ctrl-C. The scheduler node serves both only
to clients with this cluster's certificate (its gateway); the links reach it with the client
certificate from the outputs file (experiments/spotsearch/cluster/forwarder.py).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from pathlib import Path

from spotsearch.cluster import cli
from spotsearch.cluster.forwarder import local_link
from spotsearch.cluster.outputs import DEFAULT_OUTPUTS, read_outputs
from spotsearch.cluster.tls_files import private_tls_files


def main() -> int:
    gc.enable()  # `cli.run` turns it off for a startup; this process may run for hours
    parser = cli.Parser(description="Open a deployed cluster's dashboard (and JupyterLab) on localhost")
    parser.add_argument("--stack", metavar="NAME", required=True, help="a deployed stack, read from the outputs file")
    parser.add_argument(
        "--outputs", metavar="FILE", type=Path, default=DEFAULT_OUTPUTS, help="cdktf outputs (default: %(default)s)"
    )
    args = parser.parse_args()
    outputs = read_outputs(args.outputs, args.stack)
    services = [("Dask dashboard", outputs["dashboard_url"])]
    if outputs.get("jupyter_url"):
        services.append(("JupyterLab (token: jupyter_token in the outputs file)", outputs["jupyter_url"]))
    with private_tls_files(outputs) as tls, contextlib.ExitStack() as links:
        for what, url in services:
            link = links.enter_context(local_link(url, tls["ca"], tls["cert"], tls["key"]))
            print(f"{what}: {link}", flush=True)
        print("Open the links in your browser; Ctrl-C closes them.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:  # how this command is meant to end
            print("closed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
