"""The command-line layer of an experiment script: where-to-run flags, and its exit status.

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args()
    with cli.connect_from_args(args) as (client, where):
        ...

`run` turns a ClusterError into its one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.cluster.connect import DEFAULT_TIMEOUT, connect
from experiments.cluster.messages import ClusterError, Stopped
from experiments.cluster.outputs import DEFAULT_OUTPUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to run (default: a local Dask cluster, no cloud)")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--stack", metavar="NAME", help="a deployed stack, read from the outputs file")
    target.add_argument("--scheduler", metavar="ADDRESS", help="a scheduler address such as tls://203.0.113.7:8786")
    group.add_argument(
        "--outputs", metavar="FILE", type=Path, default=DEFAULT_OUTPUTS, help="cdktf outputs (default: %(default)s)"
    )
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate (with --scheduler)")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --scheduler)")
    group.add_argument("--tls-key", metavar="FILE", help="client private key (with --scheduler)")
    group.add_argument(
        "--workers", metavar="N", type=int, help="worker nodes to wait for (default: the stack's minimum)"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="how long to wait for the scheduler and the worker nodes (default: %(default)g)",
    )


def connect_from_args(args: argparse.Namespace):
    """`connect` with the values of `add_arguments`' flags."""
    return connect(
        stack=args.stack,
        scheduler=args.scheduler,
        outputs=args.outputs,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        workers=args.workers,
        timeout=args.timeout,
    )


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def run(main: Callable[[], int | None]) -> None:
    """Run an experiment's main: user-fixable problems end as one line and exit status 2;
    SIGTERM and SIGHUP end it as Ctrl-C does (temporary files removed), with status 128 + signal.

    The startup (imports, starting or reaching the cluster) runs without the garbage collector,
    which would only scan the million objects that imports create, again and again: ~0.3 s on
    two cores. `connect` turns it back on. The same holds at exit, where the interpreter's last
    collections would scan it all once more (~0.5 s): the heap is frozen first.
    """
    gc.disable()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:  # not one the caller chose to ignore (nohup)
            signal.signal(signum, _stop)
    try:
        status = main() or 0
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    except Stopped as stopped:
        print(f"stopped ({stopped})", file=sys.stderr)
        status = 128 + stopped.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(status)
