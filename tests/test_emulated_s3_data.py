"""Searches on data in S3, emulated end to end (tests/emulated/): the worker nodes read moto's S3
with their role's credentials from the metadata service, as on AWS; the laptop sends the search,
not the data. The stack's `data_sources` names one prefix; a location outside it is refused on
the laptop in one line. Arrays on the laptop go to the stack's bucket once: a second search and
a resume send nothing more. The bytes are the laptop's network interface's own count.
(moto does not enforce IAM: what the role may read is proven by tests/test_iam.py.)"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stacks.content import PROJECT_ROOT as ROOT

from .conftest import EMULATED_DATA_SOURCE
from .emulated.harness import EmulatedDeploy
from .emulated.laptop import STACK, finish

pytestmark = pytest.mark.slow
BUCKET = "emu-data"
ROWS, COLUMNS = 30_000, 40  # 9.6 MB as float64: above what the laptop uploads rather than sends


def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, COLUMNS))
    label = (X[:, :5].sum(axis=1) + rng.normal(size=ROWS) > 0).astype(int)
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(COLUMNS)]).assign(label=label)


@pytest.fixture(scope="module")
def cluster(emulated_s3_stack, tmp_path_factory):
    settings, document = emulated_s3_stack
    folder = tmp_path_factory.mktemp("s3-data")
    with EmulatedDeploy(settings, document, folder) as deploy:
        deploy.aws("s3", "create_bucket", Bucket=BUCKET)
        buffer = io.BytesIO()
        table().to_parquet(buffer)
        deploy.aws("s3", "put_object", Bucket=BUCKET, Key="emails/train.parquet", Body=buffer.getvalue())
        deploy.aws("s3", "put_object", Bucket=BUCKET, Key="private/train.parquet", Body=buffer.getvalue())
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 300, "scheduler up")
        deploy.start_group()
        scheduler.wait_until(lambda: len(deploy.workers) == 2, 120, "the worker nodes launched")
        for worker in deploy.workers.values():
            worker.wait_until(lambda w=worker: "worker up" in w.log(), 300, "worker up")
        deploy.outputs_file = deploy.write_outputs(folder / "outputs.json", STACK)
        yield deploy


def search_on_laptop(cluster: EmulatedDeploy, how: str, url: str, *fits: str) -> dict:
    process = cluster.on_laptop(
        sys.executable, str(ROOT / "tests" / "emulated" / "s3_search.py"), str(cluster.outputs_file), STACK, how, url,
        *fits, cwd=cluster.folder, aws=True,
    )  # fmt: skip
    output = finish(process)
    return json.loads(output.strip().splitlines()[-1])


def test_worker_nodes_read_the_data_in_s3_and_the_laptop_sends_none_of_it(cluster, tmp_path):
    url = f"{EMULATED_DATA_SOURCE}train.parquet"
    frame = table()
    X, y = frame.drop(columns=["label"]), frame["label"].to_numpy()
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
                          {"logisticregression__C": [0.01, 1.0]}, cv=3).fit(X, y)  # fmt: skip
    sent = {}
    for how in ("send", "s3", "upload", "upload again", "resume", "resume again"):
        fits = [str(tmp_path / "fits")] if how.startswith("resume") else []
        answer = search_on_laptop(cluster, how.split()[0].replace("resume", "upload"), url, *fits)
        assert answer["best"] == search.best_params_, how
        assert np.allclose(answer["scores"], search.cv_results_["mean_test_score"]), how
        sent[how] = answer["sent"]
    table_bytes = X.to_numpy().nbytes
    print("bytes the laptop sent:", json.dumps(sent), f"(X is {table_bytes} bytes)")
    assert sent["send"] > table_bytes, "the control: arrays sent with the search leave the laptop"
    # What every search sends besides the data (the connection, the search, its fits' calls): under 1 MB.
    for how in ("s3", "upload again", "resume", "resume again"):
        assert sent[how] < 1_000_000, (how, sent)
    assert sent["upload"] > table_bytes * 0.8, "the first search uploads the data (Parquet: a little smaller)"


def test_a_location_outside_data_sources_is_refused_on_the_laptop_naming_the_setting(cluster):
    answer = search_on_laptop(cluster, "s3", f"s3://{BUCKET}/private/train.parquet")
    assert answer == {
        "refused": f"s3://{BUCKET}/private/train.parquet: not among the S3 data this cluster's workers may read "
        f"(data_sources: {EMULATED_DATA_SOURCE}); add it to clusters.{STACK}.data_sources in cdktf.json and run "
        f"cdktf deploy {STACK}"
    }
