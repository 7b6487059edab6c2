"""Data from this machine crosses the network once per deployed cluster.

A search on a deployed stack whose X and y are UPLOAD_FROM_BYTES or more goes through the
stack's private bucket (stacks/uploads.py): the data is written to a file named by its content's
SHA-256, uploaded there unless it already is (a resumable multipart upload, with a progress bar),
and the search then runs on it as on any data in S3 (s3_data.py): the workers read it inside
AWS. A second search on the same data, a reconnect after a lost scheduler, a resume and a worker
node that joins later send nothing more from this machine. Smaller data, data the files cannot
hold as written (object arrays, a DataFrame with columns that are not strings), dask-ml's
searches and every other cluster get the data sent with the search, as before.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import zipfile
from pathlib import Path

from spotsearch.cluster.messages import console
from spotsearch.s3_data import S3Data

UPLOAD_FROM_BYTES = 8 << 20  # below, sending the data with the search costs about as much
PART_BYTES = 8 << 20  # of a multipart upload: S3 takes 5 MiB to 5 GiB, and 10,000 parts
MAX_PARTS = 10_000
PREFIX = "uploads/"  # stacks/uploads.py's UPLOADS_PREFIX: what the workers may read
TARGET = "spotsearch_target"  # y's column in a table uploaded with X


def _size(value) -> int:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is None and hasattr(value, "memory_usage"):  # a DataFrame or a Series
        nbytes = int(value.memory_usage(index=False, deep=True).sum())
    return int(nbytes or 0)


def _written(X, y, folder: Path) -> tuple[Path, str | None] | None:
    """X and y in one file whose bytes depend on their content only; None if no file holds them
    as they are. Returns the file and the target S3Data reads."""
    import numpy as np
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        if not all(isinstance(name, str) for name in X.columns) or TARGET in X.columns:
            return None
        path = folder / "data.parquet"
        try:
            X.assign(**{TARGET: np.asarray(y)}).to_parquet(path)
        except (ValueError, TypeError, ImportError, OverflowError):  # pyarrow cannot hold it as it is
            return None
        return path, TARGET
    if not isinstance(X, np.ndarray) or X.dtype.hasobject or np.asarray(y).dtype.hasobject:
        return None
    # numpy's savez stamps each member with the time: a zip of our own, with a fixed one.
    path = folder / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in (("X", X), ("y", np.asarray(y))):
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return path, None


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def upload(s3, bucket: str, key: str, path: Path) -> None:
    """`path` to s3://bucket/key in parts; an upload of the same key that an earlier run began
    (Ctrl-C, a lost connection) goes on from the parts S3 already holds."""
    from tqdm import tqdm

    size = path.stat().st_size
    part_bytes = max(PART_BYTES, math.ceil(size / MAX_PARTS))
    begun = [u for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) if u["Key"] == key]
    upload_id = begun[0]["UploadId"] if begun else s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    held = {}
    if begun:
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
            held |= {part["PartNumber"]: part["ETag"] for part in page.get("Parts", [])}
    parts = []
    with path.open("rb") as file, tqdm(total=size, unit="B", unit_scale=True, desc="upload", disable=None) as bar:
        for number in range(1, max(1, math.ceil(size / part_bytes)) + 1):
            chunk = file.read(part_bytes)
            etag = f'"{hashlib.md5(chunk).hexdigest()}"'  # noqa: S324 (S3's own ETag of a part)
            if held.get(number) != etag:
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            bar.update(len(chunk))
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def uploaded(client, X, y) -> S3Data | None:
    """X and y as data in the deployed stack's bucket, uploaded now unless they already are;
    None when they go with the search instead (see the module's docstring)."""
    where = getattr(getattr(client, "cluster", None), "where", None)
    bucket = getattr(where, "uploads_bucket", None)
    if not bucket or y is None or _size(X) + _size(y) < UPLOAD_FROM_BYTES:
        return None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    with tempfile.TemporaryDirectory(prefix="spotsearch-upload-") as folder:
        if (written := _written(X, y, Path(folder))) is None:
            return None
        path, target = written
        key = f"{PREFIX}{_digest(path)}{path.suffix}"
        region = (where.cost_basis or {}).get("region")
        s3 = boto3.session.Session(region_name=region).client("s3")
        try:
            if _exists(s3, bucket, key):
                console(f"the data is in the cluster's bucket already (s3://{bucket}/{key}): nothing to upload")
            else:
                size = path.stat().st_size
                console(f"uploading the data to the cluster's bucket, once: {size / 1e6:.1f} MB")
                upload(s3, bucket, key, path)
        except (ClientError, BotoCoreError) as error:  # no credentials, say: the search still runs
            console(f"warning: cannot upload the data to s3://{bucket}/ ({error}); it goes with the search instead")
            return None
    return S3Data(f"s3://{bucket}/{key}", target=target)
