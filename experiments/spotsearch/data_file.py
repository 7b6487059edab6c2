"""A data file of the user's, for any script's `--data FILE`: CSV, Parquet, .npy or .npz, read
into (X, y) and split into the training part and a held-out part, in place of the script's own
data set. Every problem with the file is one line naming the flag and the file."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from spotsearch.cluster.messages import ClusterError, shown

SUFFIXES = (".csv", ".parquet", ".npy", ".npz")
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
    """(X, y) from the file: a table's columns but the target (a DataFrame, so that a pipeline
    can name its columns) and the target's; an array's columns but the target's."""
    import numpy as np
    import pandas as pd

    if path.suffix.lower() not in SUFFIXES:
        raise _refuse(path, f"not a data file this reads ({', '.join(SUFFIXES)})")
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path)
        elif path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
        else:
            arrays = np.load(path, allow_pickle=False)  # a pickle in an array file runs code: refused
    except FileNotFoundError:
        raise _refuse(path, "no such file") from None
    except (OSError, ValueError, ImportError) as error:  # unreadable, malformed, a pickled array
        raise _refuse(path, f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if path.suffix.lower() in (".csv", ".parquet"):
        name = target if target is not None else table.columns[-1]
        if name not in table.columns:
            raise _refuse(path, f"has no column {shown(name)} (--target); its columns: {shown(list(table.columns))}")
        if len(table.columns) < 2:
            raise _refuse(path, "needs a column to predict from besides the target")
        return table.drop(columns=[name]), table[name].to_numpy()
    if path.suffix.lower() == ".npz":
        with arrays:  # an .npz file is read lazily, from a file kept open until closed
            names = ("X", target or "y")
            missing = [name for name in names if name not in arrays.files]
            if missing:
                raise _refuse(path, f"has no array {shown(missing[0])}; its arrays: {shown(arrays.files)}")
            X, y = (arrays[name] for name in names)
    else:
        if arrays.ndim != 2 or arrays.shape[1] < 2:
            raise _refuse(path, f"must be a 2-D array with the target as one column, got shape {arrays.shape}")
        try:
            column = int(target) if target is not None else arrays.shape[1] - 1
            y = arrays[:, column]
        except (ValueError, IndexError):
            raise _refuse(
                path, f"--target must be a column number below {arrays.shape[1]}, got {shown(target)}"
            ) from None
        X = np.delete(arrays, column, axis=1)
    if len(X) != len(y):
        raise _refuse(path, f"X has {len(X)} rows and y {len(y)}")
    return X, y


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
