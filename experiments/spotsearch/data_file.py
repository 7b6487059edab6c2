"""A data file of the user's, for any script's `--data FILE`: CSV, Parquet, .npy or .npz, read
into (X, y) and split into the training part and a held-out part, in place of the script's own
data set. `--data s3://bucket/key` is a table in S3 that the cluster's workers read where it lives
(s3_data.py): all of it is searched, and the best model's report is on `--test-data` if given.
Every problem with the file is one line naming the flag and the file."""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

from spotsearch import node_code
from spotsearch.cluster.messages import ClusterError, shown

# on_nodes.SUFFIXES (the reader's, tests/test_data_file.py checks): written out, since loading the
# node code at a script's top would load joblib's Dask backend, and Dask with it.
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


def location(text: str) -> Path | str:
    """An argparse type: a local file (a Path), or an S3 object (its s3:// URL, a str)."""
    return text if text.startswith("s3://") else Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("your own data (default: the script's own data set)")
    group.add_argument(
        "--data", metavar="FILE", type=location,
        help=f"a CSV, Parquet, .npy or .npz file, one sample per row, searched instead ({', '.join(SUFFIXES)}); "
        "or s3://bucket/key: a table in S3 that the cluster's workers read where it lives, all of it searched",
    )  # fmt: skip
    group.add_argument(
        "--test-data", metavar="FILE", type=location,
        help="held-out data for the best model's report, in place of --held-out's share of --data: a file "
        "as --data, or s3://bucket/key read here with your AWS credentials",
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


def _refuse(path: Path | str, why: str, flag: str = "--data") -> ClusterError:
    return ClusterError(f"{flag} {path}: {why}")


def read(path: Path | str, target: str | None = None, flag: str = "--data") -> tuple:
    """(X, y) from the file, or from the S3 object read here (on_nodes.read_table, which reads
    the workers' data in S3 too)."""
    node = node_code.module()
    try:
        if isinstance(path, Path):
            return node.read_table(path, path.suffix, target)
        return node.read_table(io.BytesIO(_s3_bytes(path, flag)), "." + path.rpartition(".")[2], target)
    except node.DataProblem as problem:
        raise _refuse(path, str(problem), flag) from None


def _s3_bytes(url: str, flag: str) -> bytes:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url.removeprefix("s3://").partition("/")
    try:
        return boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        raise _refuse(
            url, f"cannot be read from S3 ({error.response.get('Error', {}).get('Code', error)})", flag
        ) from None
    except BotoCoreError as error:
        raise _refuse(url, f"cannot be read from S3 ({error})", flag) from None


def split(X, y, held_out: float) -> tuple:
    """(X_train, X_test, y_train, y_test): stratified when every class can be (a classifier's
    labels), else at random; the same each time for the same file."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(X, y, test_size=held_out, random_state=SEED, stratify=y)
    except ValueError:  # a continuous target, or a class with a single row
        return train_test_split(X, y, test_size=held_out, random_state=SEED)


def replaced(args: argparse.Namespace, data: tuple) -> tuple[tuple, dict]:
    """The script's (X_train, X_test, y_train, y_test), or `--data`'s in its place (for data in
    S3, X_train an S3Data and y_train None), and what the run's summary records of the file (its
    path and its content's SHA-256, or its S3 location; the target; the held-out data)."""
    data_given, test_given = getattr(args, "data", None), getattr(args, "test_data", None)
    if data_given is None:
        if test_given is not None:
            raise ClusterError(f"--test-data {test_given}: needs --data (the script's own data set has its own)")
        return data, {}
    X_test, y_test = read(test_given, args.target, "--test-data") if test_given is not None else (None, None)
    record = {**({"target": args.target} if args.target is not None else {}),
              **({"test_data": str(test_given)} if test_given is not None else {})}  # fmt: skip
    if isinstance(data_given, str):  # in S3: read on the cluster
        from spotsearch.s3_data import S3Data

        try:
            table = S3Data(data_given, args.target)
        except ClusterError as error:
            raise _refuse(data_given, str(error).removeprefix("S3Data: ")) from None
        return (table, X_test, None, y_test), {"data": {"s3": data_given, **record}}
    X, y = read(data_given, args.target)
    if len(X) < 4 and test_given is None:
        raise _refuse(data_given, f"has {len(X)} rows: too few to split for a search")
    digest = hashlib.sha256()
    with data_given.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    record = {"file": str(data_given.resolve()), "sha256": digest.hexdigest(), "rows": len(X), **record}
    if test_given is not None:
        return (X, X_test, y, y_test), {"data": record}
    return split(X, y, args.held_out), {"data": {**record, "held_out": args.held_out}}
