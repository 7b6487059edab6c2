"""Data from the laptop crosses the network once per deployed cluster (experiments/spotsearch/uploads.py):
uploaded to the stack's bucket under its content's digest, resumed where an upload stopped,
never uploaded twice, and searched as data in S3 with the answer plain scikit-learn gives.
S3 is moto's on loopback; the "deployed" cluster is two worker processes with a stack's Where."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spotsearch import fit_on_cluster, uploads
from spotsearch.cluster.connect import Where

BUCKET = "dask-lab-uploads-20261207000000000000000001"


@pytest.fixture(scope="module")
def s3(aws_on_loopback):
    import boto3

    client = boto3.session.Session().client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def deployed(s3):
    """Worker processes (moto's S3 their AWS), and a client that looks like a deployed stack's."""
    from distributed import Client, LocalCluster

    where = Where("remote", "tls://x:8786", None, 2, 2, stack="lab", data_sources=(), uploads_bucket=BUCKET)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.cluster = type("Deployed", (), {"where": where})()
        yield client


def search() -> GridSearchCV:
    return GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                        {"logisticregression__C": [0.01, 1.0]}, cv=3)  # fmt: skip


def keys(s3) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.mark.parametrize("as_frame", [False, True])
def test_large_data_is_uploaded_once_and_searched_where_it_lies(deployed, s3, monkeypatch, capsys, as_frame):
    monkeypatch.setattr(uploads, "UPLOAD_FROM_BYTES", 1)
    X, y = load_breast_cancer(return_X_y=True, as_frame=as_frame)
    before = set(keys(s3))
    parts, upload = [], uploads.upload
    monkeypatch.setattr(uploads, "upload", lambda *args: parts.append(args[2]) or upload(*args))
    fitted = fit_on_cluster(search(), X, y, progress=False)
    expected = search().fit(X, y)
    assert fitted.best_params_ == expected.best_params_
    assert np.allclose(fitted.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"])
    assert np.array_equal(fitted.predict(X), expected.predict(X))
    (key,) = set(keys(s3)) - before
    assert parts == [key] and key.startswith("uploads/") and key.endswith(".parquet" if as_frame else ".npz")
    assert "uploading the data to the cluster's bucket, once" in capsys.readouterr().err
    # A second search on the same data (a copy of it): nothing more is uploaded.
    fit_on_cluster(search(), X.copy(), y.copy(), progress=False)
    assert parts == [key] and "the data is in the cluster's bucket already" in capsys.readouterr().err


def test_an_upload_cut_short_goes_on_from_the_parts_s3_holds(s3, monkeypatch, tmp_path):
    monkeypatch.setattr(uploads, "PART_BYTES", 5 << 20)  # S3's smallest part
    path = tmp_path / "data.npz"
    path.write_bytes(np.random.default_rng(0).bytes(12 << 20))  # three parts

    class CutAfterOnePart:
        def __init__(self, real, cut: bool) -> None:
            self.real, self.cut, self.sent = real, cut, []

        def __getattr__(self, name):
            return getattr(self.real, name)

        def upload_part(self, **kwargs):
            if self.cut and self.sent:
                raise KeyboardInterrupt  # Ctrl-C, after the first part went
            self.sent.append(kwargs["PartNumber"])
            return self.real.upload_part(**kwargs)

    first = CutAfterOnePart(s3, cut=True)
    with pytest.raises(KeyboardInterrupt):
        uploads.upload(first, BUCKET, "uploads/cut.npz", path)
    assert first.sent == [1]
    second = CutAfterOnePart(s3, cut=False)
    uploads.upload(second, BUCKET, "uploads/cut.npz", path)
    assert second.sent == [2, 3], "the part S3 held was sent again"
    assert s3.get_object(Bucket=BUCKET, Key="uploads/cut.npz")["Body"].read() == path.read_bytes()
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="uploads/cut.npz").get("Uploads")


def test_the_files_bytes_depend_on_the_content_alone(tmp_path):
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    digests = set()
    for data in ((X, y), (X.copy(), y.copy())):
        for frame in (True, False):
            folder = tmp_path / f"{len(digests)}-{frame}"
            folder.mkdir()
            path, _ = uploads._written(*(data if frame else (data[0].to_numpy(), data[1].to_numpy())), folder)
            digests.add((frame, uploads._digest(path)))
    assert len(digests) == 2, "the same data written twice gave two files"


def test_data_no_file_holds_as_it_is_small_data_and_dask_ml_go_with_the_search(deployed, tmp_path, monkeypatch):
    y = np.arange(4) % 2
    assert uploads._written(np.array([["a", 1]] * 4, dtype=object), y, tmp_path) is None
    assert uploads._written(pd.DataFrame(np.zeros((4, 2))), y, tmp_path) is None  # columns 0 and 1
    assert uploads._written(pd.DataFrame({uploads.TARGET: np.zeros(4)}), y, tmp_path) is None
    assert uploads.uploaded(deployed, np.zeros((4, 2)), y) is None, "4 rows uploaded"
    monkeypatch.setattr(uploads, "UPLOAD_FROM_BYTES", 1)
    assert uploads.uploaded(deployed, np.zeros((4, 2)), None) is None, "a search without y"


def test_without_credentials_the_data_goes_with_the_search_and_says_why(deployed, monkeypatch, capsys):
    monkeypatch.setattr(uploads, "UPLOAD_FROM_BYTES", 1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    X, y = load_breast_cancer(return_X_y=True)
    assert uploads.uploaded(deployed, X, y) is None
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"warning: cannot upload the data to s3://{BUCKET}/ (") and "goes with the search" in line


def test_saved_fits_are_of_the_users_data_whether_it_went_up_or_with_the_search(deployed, monkeypatch, tmp_path):
    """A search stopped while its data went with it (too small then, no credentials) resumes on
    the same data uploaded, and the other way round: the saved fits are of the user's arrays."""
    from .restartable_cluster import CountedSaves

    X, y = load_breast_cancer(return_X_y=True)
    monkeypatch.setattr(uploads, "UPLOAD_FROM_BYTES", float("inf"))
    first = CountedSaves(tmp_path / "fits")
    fit_on_cluster(search(), X, y, saved_fits=first, progress=False)
    monkeypatch.setattr(uploads, "UPLOAD_FROM_BYTES", 1)
    resumed = CountedSaves(tmp_path / "fits")
    fitted = fit_on_cluster(search(), X, y, saved_fits=resumed, progress=False)
    assert len(first.saves) == 6 and resumed.saves == [] and resumed.reused == 6
    assert fitted.best_params_ == search().fit(X, y).best_params_
