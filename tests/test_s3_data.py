"""Searches on data in S3 (experiments/spotsearch/s3_data.py): each worker reads the object where
it lives, this process holds only y and sends no X, and the search's answer is the one plain
scikit-learn gives on the same data in memory. S3 is moto's, on loopback; the workers are
processes of their own, which find it through AWS_ENDPOINT_URL as nodes find AWS."""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spotsearch import AdaptiveSearchCV, S3Data, fit_on_cluster, node_code
from spotsearch.cluster.connect import Where
from spotsearch.cluster.messages import ClusterError

from .restartable_cluster import CountedSaves
from .search_cases import assert_clean

BUCKET = "ml-team-data"
GRID = {"logisticregression__C": [0.01, 0.1, 1.0]}


def table() -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    return data.frame.rename(columns={"target": "label"})


def put(s3, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3(aws_on_loopback):
    import boto3

    client = boto3.session.Session().client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    frame = table()
    put(client, "emails/train.parquet", parquet(frame))
    put(client, "emails/train.csv", frame.to_csv(index=False).encode())
    buffer = io.BytesIO()
    np.save(buffer, frame.to_numpy())
    put(client, "emails/train.npy", buffer.getvalue())
    return client


@pytest.fixture(scope="module")
def s3_cluster(s3):
    """Two worker processes, started with moto's S3 as their AWS (the environment they inherit)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def search() -> GridSearchCV:
    return GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), GRID, cv=3)


def plain(estimator, X, y):
    return estimator.fit(X, y)


def test_a_search_on_s3_data_answers_as_scikit_learn_does_in_memory_and_sends_no_x(s3_cluster, monkeypatch):
    frame = table()
    X, y = frame.drop(columns=["label"]), frame["label"].to_numpy()
    expected = plain(search(), X, y)
    scattered = []
    original = type(s3_cluster).scatter

    def recording(self, data, *args, **kwargs):
        scattered.append(len(data) if isinstance(data, bytes) else sys.getsizeof(data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(type(s3_cluster), "scatter", recording)
    fitted = fit_on_cluster(search(), S3Data(f"s3://{BUCKET}/emails/train.parquet", target="label"), progress=False)
    assert fitted.best_params_ == expected.best_params_
    assert np.allclose(fitted.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"])
    # The refit ran on the cluster, on the same data: the same model, the columns' names kept.
    assert list(fitted.feature_names_in_) == list(X.columns)
    assert np.array_equal(fitted.predict(X), expected.predict(X)) and fitted.refit_time_ > 0
    assert np.allclose(fitted.best_estimator_[-1].coef_, expected.best_estimator_[-1].coef_)
    # What this process sent: the search and scikit-learn's settings, never the 570 rows' table.
    assert sum(scattered) < len(parquet(frame)) / 2, scattered
    assert_clean(s3_cluster)
    tables = s3_cluster.run(lambda: len(sys.modules[node_code.NAME]._tables))
    assert set(tables.values()) == {0}, f"tables left in the workers' memory: {tables}"


@pytest.mark.parametrize("key", ["emails/train.csv", "emails/train.npy"])
def test_csv_and_npy_objects_are_read_as_local_files_are(s3_cluster, key):
    frame = table()
    target = "label" if key.endswith(".csv") else None  # .npy: the last column
    X = frame.drop(columns=["label"])
    expected = plain(search(), X if target else X.to_numpy(), frame["label"].to_numpy())
    fitted = fit_on_cluster(search(), S3Data(f"s3://{BUCKET}/{key}", target=target), progress=False)
    assert fitted.best_params_ == expected.best_params_
    assert np.allclose(fitted.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"])


def test_several_metrics_a_callable_refit_and_the_halving_search_choose_as_scikit_learn_does(s3_cluster):
    frame = table()
    X, y = frame.drop(columns=["label"]), frame["label"].to_numpy()
    data = S3Data(f"s3://{BUCKET}/emails/train.parquet", target="label")
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))

    def fewest_mistakes_then_simplest(results):
        return int(np.argmax(results["mean_test_score"] - 1e-9 * np.arange(len(results["params"]))))

    cases = [
        GridSearchCV(estimator, GRID, cv=3, scoring=["accuracy", "balanced_accuracy"], refit="balanced_accuracy"),
        GridSearchCV(estimator, GRID, cv=3, refit=fewest_mistakes_then_simplest),
        GridSearchCV(estimator, GRID, cv=3, scoring=["accuracy", "recall"], refit=False),
        HalvingGridSearchCV(estimator, GRID, cv=3, factor=2, random_state=0),
    ]
    for case in cases:
        expected = plain(case.__sklearn_clone__(), X, y)
        fitted = fit_on_cluster(case, data, progress=False)
        for name in ("best_index_", "best_score_", "best_params_"):
            assert hasattr(fitted, name) == hasattr(expected, name), name
            if hasattr(expected, name):
                assert getattr(fitted, name) == getattr(expected, name), name
        assert hasattr(fitted, "best_estimator_") == hasattr(expected, "best_estimator_")
        if case.refit:
            assert np.array_equal(fitted.predict(X), expected.predict(X))
        assert fitted.refit == case.refit  # the user's setting, as it was


def test_the_adaptive_search_runs_on_s3_data(s3_cluster):
    from scipy.stats import loguniform

    search = AdaptiveSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        {"logisticregression__C": loguniform(1e-3, 10)}, n_trials=4, cv=3, random_state=0,
        scoring=["accuracy", "balanced_accuracy"], refit="balanced_accuracy",
    )  # fmt: skip
    fitted = fit_on_cluster(search, S3Data(f"s3://{BUCKET}/emails/train.parquet", target="label"), progress=False)
    assert len(fitted.cv_results_["params"]) == 4 and fitted.best_score_ > 0.9
    assert fitted.best_estimator_.score(table().drop(columns=["label"]), table()["label"]) > 0.9


def test_a_resume_finds_its_fits_and_refuses_an_object_that_changed(s3_cluster, s3, tmp_path):
    frame = table()
    put(s3, "emails/resumed.parquet", parquet(frame))
    data = S3Data(f"s3://{BUCKET}/emails/resumed.parquet", target="label")
    first = CountedSaves(tmp_path / "fits")
    fit_on_cluster(search(), data, saved_fits=first, progress=False)
    resumed = CountedSaves(tmp_path / "fits")
    fit_on_cluster(search(), data, saved_fits=resumed, progress=False)
    assert len(first.saves) == 9 and resumed.saves == [], "a resume ran fits again"
    changed = frame.copy()
    changed.iloc[0, 0] += 1  # one value of X: y is the same, the object is not
    put(s3, "emails/resumed.parquet", parquet(changed))
    with pytest.raises(ClusterError) as refused:
        fit_on_cluster(search(), data, saved_fits=tmp_path / "fits", progress=False)
    assert "are of another data (data: X differs)" in str(refused.value), refused.value


def test_every_problem_with_the_data_is_one_line_before_any_fit(s3_cluster, monkeypatch):
    url = f"s3://{BUCKET}/emails/train.parquet"
    cases = {
        S3Data(f"s3://{BUCKET}/emails/missing.parquet"): f"s3://{BUCKET}/emails/missing.parquet: no such object in S3",
        S3Data(f"s3://{BUCKET}/other/train.csv"): f"s3://{BUCKET}/other/train.csv: no such object in S3",
        S3Data("s3://another-bucket/emails/train.csv"): "s3://another-bucket/emails/train.csv: no such object in S3",
        S3Data(url, target="price"): f"{url}: has no column 'price' (the target); its columns: ['mean radius',",
    }
    for data, line in cases.items():
        with pytest.raises(ClusterError) as refused:
            fit_on_cluster(search(), data, progress=False)
        assert str(refused.value).startswith(line) and "\n" not in str(refused.value), refused.value
    for bad, line in {
        "emails/train.parquet": "S3Data: give an S3 object such as s3://my-data/train.parquet, not",
        f"s3://{BUCKET}/emails/": "S3Data: give an S3 object such as",
        f"s3://{BUCKET}/emails/train.pkl": f"S3Data: s3://{BUCKET}/emails/train.pkl is not a data file this reads",
    }.items():
        with pytest.raises(ClusterError, match=line.replace(".", r"\.")):
            S3Data(bad)
    with pytest.raises(ClusterError, match="S3Data holds y too"):
        fit_on_cluster(search(), S3Data(url), np.zeros(3), progress=False)
    assert_clean(s3_cluster)
    # A file larger than a worker may hold for it: the worker says so (its share made tiny here).
    node = node_code.module()
    set_share = lambda share: setattr(sys.modules[node_code.NAME], "MEMORY_SHARE", share)  # noqa: E731
    s3_cluster.run(set_share, 1e-9)
    try:
        for key in ("emails/train.parquet", "emails/train.csv"):
            spec = {"name": f"{node.TABLE}large", "bucket": BUCKET, "key": key, "target": None, "version": None,
                    "etag": None}  # fmt: skip
            future = s3_cluster.submit(node.table_facts, spec, pure=False)
            with pytest.raises(node.DataProblem, match=r" bytes, more than a worker may hold for it \(\d+ bytes"):
                future.result()
            future.release()
    finally:
        s3_cluster.run(set_share, node.MEMORY_SHARE)


def test_a_deployed_stack_reads_only_its_data_sources(s3_cluster, monkeypatch):
    """A location outside the stack's data_sources is refused on this machine, naming the setting;
    inside them, read (here by workers that could read anything: the refusal is this check's)."""
    where = Where("remote", "tls://x:8786", None, 2, 2, stack="lab", data_sources=(f"s3://{BUCKET}/emails/",))
    monkeypatch.setattr(s3_cluster, "cluster", type("Deployed", (), {"where": where})())
    with pytest.raises(ClusterError) as refused:
        fit_on_cluster(search(), S3Data(f"s3://{BUCKET}/other/train.csv"), progress=False)
    assert str(refused.value) == (
        f"s3://{BUCKET}/other/train.csv: not among the S3 data this cluster's workers may read (data_sources: "
        f"s3://{BUCKET}/emails/); add it to clusters.lab.data_sources in cdktf.json and run cdktf deploy lab"
    )
    fitted = fit_on_cluster(search(), S3Data(f"s3://{BUCKET}/emails/train.csv", target="label"), progress=False)
    assert fitted.best_score_ > 0.9


def test_dask_ml_searches_are_refused_in_one_line(s3_cluster):
    from dask_ml.model_selection import GridSearchCV as DaskGridSearchCV

    with pytest.raises(ClusterError, match="dask-ml's GridSearchCV needs X in this process"):
        fit_on_cluster(DaskGridSearchCV(LogisticRegression(), {"C": [1]}), S3Data(f"s3://{BUCKET}/emails/train.csv"))


def test_an_object_that_changes_mid_search_ends_it_in_one_line(s3_cluster, s3):
    from spotsearch.search import data_on_cluster

    frame = table()
    put(s3, "emails/changing.parquet", parquet(frame))
    data = S3Data(f"s3://{BUCKET}/emails/changing.parquet", target="label")
    X, y = data_on_cluster(s3_cluster, search(), data, None, {}, 60)
    put(s3, "emails/changing.parquet", parquet(frame.iloc[::-1]))
    # The read made for `opened` is dropped too: every fit's read finds the object changed.
    s3_cluster.run(lambda: sys.modules[node_code.NAME]._tables.clear())
    with pytest.raises(ClusterError) as refused:
        fit_on_cluster(search(), X, y, progress=False)
    assert str(refused.value) == (
        f"s3://{BUCKET}/emails/changing.parquet: changed in S3 since the search began (another ETag); "
        "start the search again"
    )
    assert_clean(s3_cluster)


def test_a_search_on_s3_data_goes_on_after_its_scheduler_is_lost(s3, tmp_path):
    """The workers that come back with a new scheduler at the same address read the object
    again; the search ends as an uninterrupted one, with only the fits not saved run again."""
    from .restartable_cluster import RestartableCluster

    frame = table()
    X, y = frame.drop(columns=["label"]), frame["label"].to_numpy()
    grid = {"logisticregression__C": list(np.logspace(-3, 2, 10))}
    wide = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), grid, cv=3)
    saved = CountedSaves(tmp_path / "fits")
    data = S3Data(f"s3://{BUCKET}/emails/train.parquet", target="label")
    at_loss = RestartableCluster(tmp_path).fit_losing_the_scheduler(wide, data, None, saved, after=5, progress=False)
    expected = plain(wide.__sklearn_clone__(), X, y)
    assert 5 <= at_loss < 30 and len(saved) == 30
    assert wide.best_params_ == expected.best_params_
    assert np.allclose(wide.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"])
    assert np.array_equal(wide.predict(X), expected.predict(X))
