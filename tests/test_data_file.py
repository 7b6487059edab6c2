"""A data file of the user's (experiments/spotsearch/data_file.py): `--data FILE` on any script,
read as written, split the same way each time, and every problem with it one line."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spotsearch import data_file
from spotsearch.cluster.messages import ClusterError

from .experiment_runs import assert_one_line_error, only_run_folder, run_experiment

ROWS = 60


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.normal(size=ROWS), "b": rng.normal(size=ROWS), "label": np.arange(ROWS) % 3, "last": np.arange(ROWS)}
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_tables_target_is_the_column_named_or_the_last(tmp_path, table, suffix):
    path = tmp_path / f"data{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    X, y = data_file.read(path, "label")
    assert list(X.columns) == ["a", "b", "last"] and y.tolist() == table["label"].tolist()
    X, y = data_file.read(path)
    assert list(X.columns) == ["a", "b", "label"] and y.tolist() == list(range(ROWS))


def test_an_arrays_target_is_a_column_number_or_the_npz_files_y(tmp_path, table):
    array = table.to_numpy()
    np.save(tmp_path / "data.npy", array)
    X, y = data_file.read(tmp_path / "data.npy", "2")
    assert X.shape == (ROWS, 3) and y.tolist() == table["label"].tolist()
    assert data_file.read(tmp_path / "data.npy")[1].tolist() == list(range(ROWS))
    np.savez(tmp_path / "data.npz", X=array[:, :2], y=array[:, 2], other=array[:, 3])
    X, y = data_file.read(tmp_path / "data.npz")
    assert X.shape == (ROWS, 2) and y.tolist() == table["label"].tolist()
    assert data_file.read(tmp_path / "data.npz", "other")[1].tolist() == list(range(ROWS))


def test_every_problem_with_the_file_is_one_line_naming_it(tmp_path, table):
    table.to_csv(tmp_path / "data.csv", index=False)
    table[["a"]].to_csv(tmp_path / "one.csv", index=False)
    np.save(tmp_path / "flat.npy", np.arange(5))
    np.save(tmp_path / "narrow.npy", np.zeros((5, 1)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(table))
    np.savez(tmp_path / "data.npz", X=np.zeros((4, 2)))
    np.savez(tmp_path / "uneven.npz", X=np.zeros((4, 2)), y=np.zeros(3))
    np.save(tmp_path / "data.npy", table.to_numpy())
    cases = {
        ("missing.csv", None): "no such file",
        ("data.pkl", None): "not a data file this reads (.csv, .parquet, .npy, .npz)",
        ("data.csv", "price"): "has no column 'price' (the target); its columns: ['a', 'b', 'label', 'last']",
        ("one.csv", None): "needs a column to predict from besides the target",
        ("flat.npy", None): "must be a 2-D array with the target as one column, got shape (5,)",
        ("narrow.npy", None): "must be a 2-D array with the target as one column, got shape (5, 1)",
        ("data.npy", "9"): "the target must be a column number below 4, got '9'",
        ("data.npy", "label"): "the target must be a column number below 4, got 'label'",
        ("data.npz", None): "has no array 'y'; its arrays: ['X']",
        ("uneven.npz", None): "X has 4 rows and y 3",
    }
    for (name, target), expected in cases.items():
        with pytest.raises(ClusterError) as refused:
            data_file.read(tmp_path / name, target)
        assert str(refused.value) == f"--data {tmp_path / name}: {expected}"
    # A pickle inside an array file is never loaded (it could run code): numpy's own refusal, in one line.
    with pytest.raises(ClusterError) as refused:
        data_file.read(tmp_path / "objects.npy")
    assert str(refused.value) == (
        f"--data {tmp_path / 'objects.npy'}: cannot be read (ValueError: Object arrays cannot be loaded when "
        "allow_pickle=False)"
    )
    # The smallest files that are data: one column to predict from, beside the target.
    table[["a", "label"]].to_csv(tmp_path / "two.csv", index=False)
    assert list(data_file.read(tmp_path / "two.csv")[0].columns) == ["a"]
    np.save(tmp_path / "two.npy", table[["a", "label"]].to_numpy())
    assert data_file.read(tmp_path / "two.npy")[0].shape == (ROWS, 1)
    table.head(3).to_csv(tmp_path / "three.csv", index=False)
    args = argparse.Namespace(data=tmp_path / "three.csv", target=None, held_out=0.2)
    with pytest.raises(ClusterError) as refused:
        data_file.replaced(args, None)
    assert str(refused.value) == f"--data {tmp_path / 'three.csv'}: has 3 rows: too few to split for a search"
    table.head(4).to_csv(tmp_path / "four.csv", index=False)
    four = argparse.Namespace(data=tmp_path / "four.csv", target=None, held_out=0.5)
    assert len(data_file.replaced(four, None)[0][0]) == 2


def test_the_suffixes_the_flags_name_are_those_the_reader_reads():
    from spotsearch import node_code

    assert data_file.SUFFIXES == node_code.module().SUFFIXES


def test_the_flags_and_their_checks():
    parser = argparse.ArgumentParser()
    data_file.add_arguments(parser)
    args = parser.parse_args(["--data", "emails.parquet", "--target", "spam", "--held-out", "0.3"])
    assert (args.data, args.target, args.held_out) == (Path("emails.parquet"), "spam", 0.3)
    assert vars(parser.parse_args([])) == {"data": None, "test_data": None, "target": None, "held_out": 0.2}
    args = parser.parse_args(["--data", "s3://my-data/emails.parquet", "--test-data", "test.csv"])
    assert (args.data, args.test_data) == ("s3://my-data/emails.parquet", Path("test.csv"))
    for text in ("0", "1", "-0.1", "1.5", "a fifth", "nan"):
        with pytest.raises(argparse.ArgumentTypeError) as refused:
            data_file.fraction(text)
        assert str(refused.value) == f"must be a fraction between 0 and 1 such as 0.2, got {text!r}"
    assert data_file.fraction("0.999") == 0.999


def test_the_same_file_splits_the_same_way_stratified_when_it_can(tmp_path, table):
    table.to_csv(tmp_path / "data.csv", index=False)
    args = argparse.Namespace(data=tmp_path / "data.csv", target="label", held_out=0.3)
    (X_train, X_test, _, y_test), record = data_file.replaced(args, None)
    again, _ = data_file.replaced(args, None)
    assert X_train.equals(again[0]) and len(X_test) == 18 and len(X_train) == 42
    assert sorted(np.bincount(y_test)) == [6, 6, 6], "each class held out in proportion"
    assert record == {
        "data": {
            "file": str(args.data.resolve()),
            "sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
            "rows": ROWS,
            "held_out": 0.3,
            "target": "label",
        }
    }
    continuous = argparse.Namespace(data=tmp_path / "data.csv", target="a", held_out=0.3)
    (X_train, X_test, y_train, _), _ = data_file.replaced(continuous, None)
    assert len(X_test) == 18 and len(y_train) == 42, "a continuous target splits at random"
    assert list(X_train.index) == list(data_file.replaced(continuous, None)[0][0].index), "the same way each time"
    assert data_file.replaced(argparse.Namespace(data=None), "the script's") == ("the script's", {})
    assert data_file.replaced(argparse.Namespace(), "the script's") == ("the script's", {}), "a parser without --data"


def test_a_large_file_is_hashed_whole(tmp_path):
    """Read in chunks: a file of several chunks hashes as a whole."""
    rows = np.random.default_rng(0).normal(size=(60_000, 5))  # 2.4 MB: three chunks
    np.save(tmp_path / "big.npy", rows)
    _, record = data_file.replaced(argparse.Namespace(data=tmp_path / "big.npy", target=None, held_out=0.1), None)
    assert record["data"]["sha256"] == hashlib.sha256((tmp_path / "big.npy").read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_shipped_script_searches_the_users_file(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rows = 300  # a part of digits, as a user's own file
    np.savez(tmp_path / "mine.npz", X=X[:rows], y=y[:rows])
    run = run_experiment("--data", str(tmp_path / "mine.npz"), "--held-out", "0.5", "--results", "runs", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["data"]["rows"] == rows and summary["data"]["held_out"] == 0.5
    assert summary["data"]["file"] == str(tmp_path / "mine.npz")
    assert summary["status"] == "finished" and summary["test_accuracy"] > 0.8
    assert len(pd.read_csv(folder / "cv_results.csv")) == 18, "the script's own search, on the file's data"
    refused = run_experiment("--data", str(tmp_path / "nothing.csv"), "--results", "runs", cwd=tmp_path)
    assert_one_line_error(refused, f"--data {tmp_path / 'nothing.csv'}: no such file")
    assert len(list((tmp_path / "runs").iterdir())) == 1, "nothing is made for a run that did not start"


def test_data_in_s3_is_searched_on_the_cluster_and_test_data_read_here(tmp_path, table, aws_on_loopback):
    """`--data s3://...`: an S3Data, all of it searched (nothing split here); `--test-data`, a
    local file or an S3 object read here, is the held-out data; each problem one line."""
    import io

    import boto3

    from spotsearch.s3_data import S3Data

    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="flags-data")
    body = io.BytesIO()
    table.to_parquet(body)
    s3.put_object(Bucket="flags-data", Key="test.parquet", Body=body.getvalue())
    table.head(10).to_csv(tmp_path / "test.csv", index=False)
    args = argparse.Namespace(data="s3://flags-data/train.parquet", target="label", held_out=0.2,
                              test_data="s3://flags-data/test.parquet")  # fmt: skip
    (X_train, X_test, y_train, y_test), record = data_file.replaced(args, None)
    assert isinstance(X_train, S3Data) and (X_train.url, X_train.target, y_train) == (args.data, "label", None)
    assert list(X_test.columns) == ["a", "b", "last"] and y_test.tolist() == table["label"].tolist()
    assert record == {"data": {"s3": args.data, "target": "label", "test_data": "s3://flags-data/test.parquet"}}
    # A local file with its own held-out data: nothing split off it.
    table.to_csv(tmp_path / "data.csv", index=False)
    local = argparse.Namespace(
        data=tmp_path / "data.csv", target="label", held_out=0.2, test_data=tmp_path / "test.csv"
    )
    (X_train, X_test, _, y_test), record = data_file.replaced(local, None)
    assert len(X_train) == ROWS and len(X_test) == 10 and "held_out" not in record["data"]
    refusals = {
        ("s3://flags-data/", None): "--data s3://flags-data/: give an S3 object such as s3://my-data/train.parquet, "
        "not 's3://flags-data/'",
        ("s3://flags-data/train.parquet", "s3://flags-data/missing.parquet"): "--test-data "
        "s3://flags-data/missing.parquet: cannot be read from S3 (NoSuchKey)",
        (
            "s3://flags-data/train.parquet",
            tmp_path / "missing.csv",
        ): f"--test-data {tmp_path / 'missing.csv'}: no such file",
        (None, tmp_path / "test.csv"): f"--test-data {tmp_path / 'test.csv'}: needs --data (the script's own data set "
        "has its own)",
    }
    for (data, test), line in refusals.items():
        with pytest.raises(ClusterError) as refused:
            data_file.replaced(argparse.Namespace(data=data, target="label", held_out=0.2, test_data=test), None)
        assert str(refused.value) == line


@pytest.mark.slow
def test_a_shipped_script_searches_data_in_s3_and_resumes_it(tmp_path, aws_on_loopback):
    import io

    import boto3
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    s3 = boto3.session.Session().client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="script-data")
    for name, rows in (("train", slice(0, 300)), ("test", slice(300, 500))):
        body = io.BytesIO()
        np.savez(body, X=X[rows], y=y[rows])
        s3.put_object(Bucket="script-data", Key=f"{name}.npz", Body=body.getvalue())
    flags = ("--data", "s3://script-data/train.npz", "--test-data", "s3://script-data/test.npz", "--results", "runs")
    refused = run_experiment(*flags, cwd=tmp_path)  # the script's default engine, dask-ml's
    assert_one_line_error(refused, "fit_on_cluster: dask-ml's GridSearchCV needs X in this process; data in S3")
    flags = (*flags, "--engine", "scikit-learn")
    run = run_experiment(*flags, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    folder = only_run_folder(tmp_path / "runs")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["data"]["s3"] == "s3://script-data/train.npz" and summary["data"]["rows"] == 300
    assert summary["data"]["etag"].startswith('"') and summary["status"] == "finished"
    assert summary["test_accuracy"] > 0.8, "evaluated on the held-out object, read here"
    # As a run stopped midway leaves it (tests/test_svc_digits.py stops one for real): half its fits.
    fits = sorted((folder / "fits").glob("*.fit"))
    for path in fits[::2]:
        path.unlink()
    summary = json.loads((folder / "summary.json").read_text())
    summary["status"] = "interrupted"
    del summary["timings_seconds"]
    (folder / "summary.json").write_text(json.dumps(summary))
    resumed = run_experiment(*flags, "--resume", str(folder), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {folder}: {len(fits[1::2])} fits saved" in resumed.stderr
    again = json.loads((folder / "summary.json").read_text())
    assert again["resumed"] == {"fits_reused": len(fits[1::2])} and again["best_params"] == summary["best_params"]
