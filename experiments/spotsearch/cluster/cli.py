"""The command-line layer of an experiment script: where-to-run flags, their values, and its exit status.

    parser = cli.Parser(description=__doc__)
    cli.add_arguments(parser)
    args = parser.parse_args()
    with cli.connect_from_args(args) as (client, where):
        ...

Every bad value is refused while the command line is read, before anything starts or is
written: one line naming the flag and the value, exit status 2. `run` does the same for a
ClusterError.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from spotsearch.cluster.connect import DEFAULT_TIMEOUT, connect
from spotsearch.cluster.messages import ClusterError, Stopped, shown
from spotsearch.cluster.outputs import DEFAULT_OUTPUTS, is_scheduler_address

# Longer than anyone waits for a node, short enough for every timer below it (Dask's, asyncio's).
MAX_SECONDS = 7 * 24 * 3600


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, without the usage block (`--help` shows it): exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_SECONDS:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_SECONDS}, got {shown(text)}"
        )
    return value


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {shown(text)}")
        return value

    return parse


def scheduler_address(text: str) -> str:
    if not is_scheduler_address(text):
        raise argparse.ArgumentTypeError(f"must be tls://HOST:PORT, such as tls://203.0.113.7:8786, got {shown(text)}")
    return text


def writable_folder(text: str) -> Path:
    """A folder that exists or can be made: checked now, not after the search."""
    if not text.strip():  # Path("") is the current folder: not what an empty value means
        raise argparse.ArgumentTypeError(f"must name a folder, got {shown(text)}")
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{shown(text)}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{shown(text)}: {existing} is not writable")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to run (default: a local Dask cluster, no cloud)")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--stack", metavar="NAME", help="a deployed stack, read from the outputs file")
    target.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        type=scheduler_address,
        help="a scheduler address such as tls://203.0.113.7:8786",
    )
    group.add_argument(
        "--outputs", metavar="FILE", type=Path, default=DEFAULT_OUTPUTS, help="cdktf outputs (default: %(default)s)"
    )
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate (with --scheduler)")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --scheduler)")
    group.add_argument("--tls-key", metavar="FILE", help="client private key (with --scheduler)")
    group.add_argument(
        "--workers", metavar="N", type=whole_number(0), help="worker nodes to wait for (default: the stack's minimum)"
    )
    group.add_argument(
        "--processes", metavar="N", type=whole_number(1, 256),
        help="the local cluster as N worker processes of one thread, for fits that hold Python's GIL "
        "(text pipelines, your own transformers); default: a thread per core in this process",
    )  # fmt: skip
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=seconds,
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
        processes=args.processes,
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
