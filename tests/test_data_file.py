"""A data file of the user's (experiments/spotsearch/data_file.py): `--data FILE` on any script,
read as written, split the same way each time, and every problem with it one line."""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from spotsearch import data_file
from spotsearch.cluster.messages import ClusterError

from .experiment_runs import assert_one_line_error, run_experiment

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
    np.save(tmp_path / "flat.npy", np.arange(5))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(table))
    np.savez(tmp_path / "data.npz", X=np.zeros((4, 2)))
    cases = {
        ("missing.csv", None): "no such file",
        ("data.pkl", None): "not a data file this reads",
        ("data.csv", "price"): "has no column 'price' (--target); its columns: ['a', 'b', 'label', 'last']",
        ("flat.npy", None): "must be a 2-D array with the target as one column, got shape (5,)",
        ("objects.npy", None): "cannot be read (ValueError: ",  # a pickle inside: never loaded
        ("data.npz", None): "has no array 'y'; its arrays: ['X']",
    }
    for (name, target), expected in cases.items():
        with pytest.raises(ClusterError) as refused:
            data_file.read(tmp_path / name, target)
        assert str(refused.value).startswith(f"--data {tmp_path / name}: ") and expected in str(refused.value)
        assert "\n" not in str(refused.value)
    np.save(tmp_path / "data.npy", table.to_numpy())
    with pytest.raises(ClusterError, match=r"--target must be a column number below 4, got '9'"):
        data_file.read(tmp_path / "data.npy", "9")


def test_the_same_file_splits_the_same_way_stratified_when_it_can(tmp_path, table):
    table.to_csv(tmp_path / "data.csv", index=False)
    args = argparse.Namespace(data=tmp_path / "data.csv", target="label", held_out=0.25)
    (X_train, X_test, _, y_test), record = data_file.replaced(args, None)
    again, _ = data_file.replaced(args, None)
    assert X_train.equals(again[0]) and len(X_test) == ROWS // 4
    assert sorted(np.bincount(y_test)) == [5, 5, 5], "each class held out in proportion"
    assert record["data"]["rows"] == ROWS and record["data"]["target"] == "label"
    assert len(record["data"]["sha256"]) == 64
    continuous = argparse.Namespace(data=tmp_path / "data.csv", target="a", held_out=0.25)
    assert len(data_file.replaced(continuous, None)[0][1]) == ROWS // 4, "a continuous target splits at random"
    assert data_file.replaced(argparse.Namespace(data=None), "the script's") == ("the script's", {})


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
