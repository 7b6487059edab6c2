"""A data file of the user's, for any script's `--data FILE`: CSV, Parquet, .npy or .npz, read
into (X, y) and split into the training part and a held-out part, in place of the script's own
data set. Every problem with the file is one line naming the flag and the file."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError, shown

SUFFIXES = node_code.module().SUFFIXES
HELD_OUT = 0.2  # of a file's rows, kept for the best model's held-out evaluation
SEED = 0  # of the split: the same file splits the same way, so `--resume` finds the same data


def fraction(text: str) -> float:
    """An argparse type: a fraction strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 such as 0.2, got {shown(text)}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own data (default: the script's own data set)")
    group.add_argument(
        "--data", metavar="FILE", type=Path,
        help=f"a CSV, Parquet, .npy or .npz file, one sample per row, searched instead ({', '.join(SUFFIXES)})",
    )  # fmt: skip
    group.add_argument(
        "--target", metavar="COLUMN",
        help="what to predict: a column's name (CSV, Parquet) or number (.npy), or a .npz file's array of it "
        "(default: the last column; a .npz file's X and y arrays)",
    )  # fmt: skip
    group.add_argument(
        "--held-out", type=fraction, default=HELD_OUT, metavar="FRACTION",
        help="of --data's rows, kept out of the search for the best model's report (default: %(default)s)",
    )  # fmt: skip


def _refuse(path: Path, why: str) -> ClusterError:
    return ClusterError(f"--data {path}: {why}")


def read(path: Path, target: str | None = None) -> tuple:
    """(X, y) from the file (on_nodes.read_table, which reads the workers' data in S3 too)."""
    node = node_code.module()
    try:
        return node.read_table(path, path.suffix, target)
    except node.DataProblem as problem:
        raise _refuse(path, str(problem)) from None


def split(X, y, held_out: float) -> tuple:
    """(X_train, X_test, y_train, y_test): stratified when every class can be (a classifier's
    labels), else at random; the same each time for the same file."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(X, y, test_size=held_out, random_state=SEED, stratify=y)
    except ValueError:  # a continuous target, or a class with a single row
        return train_test_split(X, y, test_size=held_out, random_state=SEED)


def replaced(args: argparse.Namespace, data: tuple) -> tuple[tuple, dict]:
    """The script's (X_train, X_test, y_train, y_test), or `--data`'s in its place, and what
    the run's summary records of the file (its path, its content's SHA-256, the target)."""
    if getattr(args, "data", None) is None:
        return data, {}
    X, y = read(args.data, args.target)
    if len(X) < 4:
        raise _refuse(args.data, f"has {len(X)} rows: too few to split for a search")
    digest = hashlib.sha256()
    with args.data.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    record = {"file": str(args.data.resolve()), "sha256": digest.hexdigest(), "rows": len(X), "held_out": args.held_out}
    if args.target is not None:
        record["target"] = args.target
    return split(X, y, args.held_out), {"data": record}
