"""A search of the emulated laptop on data in S3, or on the same data as arrays; prints one JSON
line: its best candidate, its mean test scores, and the bytes the laptop sent meanwhile (its
network namespace's interface counter), or the one line a refusal gave.

    python s3_search.py OUTPUTS_FILE STACK HOW URL [FITS_FOLDER]

HOW: s3 (S3Data), upload (arrays, uploaded to the stack's bucket once), send (arrays sent with
the search, the upload turned off). FITS_FOLDER: saved fits, for a resume.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import boto3
import pandas as pd
from distributed import Client
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spotsearch import Cluster, ClusterError, S3Data, fit_on_cluster, uploads

GRID = {"logisticregression__C": [0.01, 1.0]}


def sent_bytes() -> int:
    return int(Path("/sys/class/net/eth0/statistics/tx_bytes").read_text())


def main(outputs: str, stack: str, how: str, url: str, fits: str | None = None) -> int:
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)), GRID, cv=3)
    if how == "send":
        uploads.UPLOAD_FROM_BYTES = float("inf")
    if how in ("upload", "send"):  # the user's own copy, read here before the search (not counted)
        bucket, _, key = url.removeprefix("s3://").partition("/")
        body = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        table = pd.read_parquet(io.BytesIO(body))
        data = (table.drop(columns=["label"]), table["label"].to_numpy())
    else:
        data = (S3Data(url, target="label"),)
    with Cluster(stack=stack, outputs=outputs) as cluster, Client(cluster):
        before = sent_bytes()
        try:
            fit_on_cluster(search, *data, progress=False, saved_fits=fits)
        except ClusterError as refused:
            print(json.dumps({"refused": str(refused)}), flush=True)
            return 0
        sent = sent_bytes() - before
    print(json.dumps({"best": search.best_params_, "scores": search.cv_results_["mean_test_score"].tolist(),
                      "sent": sent}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
