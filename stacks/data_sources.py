"""The data in S3 a cluster's workers may read (`data_sources`): exactly what the user names.

An entry is `s3://bucket/prefix/` (every object under the prefix; `s3://bucket/` for the whole
bucket) or `s3://bucket/key` (that object alone). The worker role gets reads of those objects,
listing of the bucket under those prefixes only (so that a missing object says "missing", not
"access denied"), and decryption by KMS only through S3 and only for those objects: a bucket's
own KMS key needs no setting of its own, and the key cannot decrypt anything else for the role.
The scheduler, which runs no fit, gets none of it. Nothing is ever written.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from stacks.checks import fail, string_list, unique

# S3's bucket names (general purpose buckets): 3-63 lowercase letters, digits, dots and hyphens,
# a letter or digit at each end, no "..", not an IP address, none of S3's reserved affixes.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
RESERVED_BUCKET_AFFIXES = (("xn--", "sthree-", "amzn-s3-demo-"), ("-s3alias", "--ol-s3", ".mrap", "--x-s3"))
KEY_MAX_BYTES = 1024  # S3's longest object key
# IAM reads * and ? in a resource or a StringLike condition as wildcards and ${...} as a
# variable: in a name they would widen what the role may read.
WIDENING = ("*", "?", "$")
MAX_DATA_SOURCES = 20
# IAM's limit on a role's inline policies together (whitespace not counted), less what the
# worker's policy holds besides the data sources (about 1,600 characters, checked by test_iam).
INLINE_POLICY_CHARS = 10_240
WORKER_POLICY_OTHER_CHARS = 2_500


def split(url: str) -> tuple[str, str]:
    """("bucket", "key or prefix") of an s3:// URL that has been checked."""
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def _bucket_problem(bucket: str) -> str | None:
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        return "the bucket name must be 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end"
    try:
        ipaddress.IPv4Address(bucket)
        return "a bucket name cannot be an IP address"
    except ValueError:
        pass
    prefixes, suffixes = RESERVED_BUCKET_AFFIXES
    if bucket.startswith(prefixes) or bucket.endswith(suffixes):
        return "the bucket name has a prefix or suffix S3 reserves"
    return None


def _key_problem(key: str) -> str | None:
    if key.startswith("/") or "//" in key:
        return "has an empty path segment (//)"
    if any(mark in key for mark in WIDENING):
        return "must not hold * ? or $: IAM would read them as wildcards or variables and widen the access"
    if len(key.encode("utf-8")) > KEY_MAX_BYTES:
        return f"the key or prefix is longer than S3's {KEY_MAX_BYTES} bytes"
    if any(ord(character) < 32 or ord(character) == 127 for character in key):
        return "holds a control character"
    return None


def data_sources(where: str, value: Any) -> tuple[str, ...]:
    """Checked `data_sources`: s3:// URLs of prefixes (ending in /) or objects, at most
    MAX_DATA_SOURCES, none inside another, within IAM's policy size."""
    urls = unique(where, string_list(where, value, allow_empty=True))
    if len(urls) > MAX_DATA_SOURCES:
        raise fail(where, f"at most {MAX_DATA_SOURCES} entries (name a common prefix instead)", len(urls))
    for url in urls:
        if not url.startswith("s3://"):
            raise fail(where, 'each entry must be an S3 location such as "s3://my-bucket/training-data/"', url)
        bucket, key = split(url)
        if "/" not in url[len("s3://") :]:
            raise fail(where, f'name a prefix (ending in /) or an object; the whole bucket is "s3://{bucket}/"', url)
        problem = _bucket_problem(bucket) or _key_problem(key)
        if problem:
            raise fail(where, problem, url)
    for url in urls:
        for other in urls:
            if other != url and other.endswith("/") and url.startswith(other):
                raise fail(where, f"is already inside {other}; keep one", url)
    size = len(json.dumps(read_statements(urls, "aws-us-gov"), separators=(",", ":")))
    if size > INLINE_POLICY_CHARS - WORKER_POLICY_OTHER_CHARS:
        raise fail(
            where,
            f"too long for IAM's {INLINE_POLICY_CHARS}-character role policy ({size} characters for these "
            "entries); name fewer, shorter prefixes",
            list(urls),
        )
    return urls


def read_statements(urls: tuple[str, ...], partition: str) -> list[dict]:
    """The worker role's statements that let it read `urls` (none when there are none)."""
    if not urls:
        return []
    objects = [f"arn:{partition}:s3:::{url[len('s3://') :]}{'*' if url.endswith('/') else ''}" for url in urls]
    statements = [
        {
            "Sid": "ReadDataSources",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": objects,
        },
    ]
    buckets: dict[str, list[str]] = {}
    for url in urls:
        bucket, key = split(url)
        # ListBucket is asked with the key's prefix as `s3:prefix`: the exact prefix, or under it.
        buckets.setdefault(bucket, []).extend([key, f"{key}*"] if key.endswith("/") or not key else [key])
    for number, (bucket, prefixes) in enumerate(buckets.items()):
        statements.append(
            {
                "Sid": f"ListDataSources{number}",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:{partition}:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": prefixes}},
            }
        )
    statements.append(
        {
            # SSE-KMS objects: S3 asks KMS on the reader's behalf, naming the object (or, with an S3
            # Bucket Key, the bucket) in the encryption context; nothing else may be decrypted.
            "Sid": "DecryptDataSourcesThroughS3",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": f"arn:{partition}:kms:*:*:key/*",
            "Condition": {
                "StringLike": {
                    "kms:ViaService": "s3.*.amazonaws.com",
                    "kms:EncryptionContext:aws:s3:arn": objects
                    + sorted({f"arn:{partition}:s3:::{bucket}" for bucket in buckets}),
                }
            },
        }
    )
    return statements
