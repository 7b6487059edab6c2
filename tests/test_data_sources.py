"""The worker role's statements for `data_sources` (stacks/data_sources.py), evaluated as IAM
would (tests/test_iam.py's evaluator) without a synthesized stack: reads of exactly the prefixes
and objects named, listing under them only, decryption only through S3 and only for them. The
settings' checks are in tests/test_config.py; the whole role's permissions in tests/test_iam.py."""

from __future__ import annotations

import json

import pytest

from stacks.data_sources import read_statements

from .test_iam import allowed

URLS = ("s3://ml-team-data/emails/", "s3://shared.datasets/2026/digits.parquet", "s3://whole-bucket/")


@pytest.fixture  # made for each test: mutation testing credits only the tests that run the code
def role() -> list[str]:
    return [json.dumps({"Version": "2012-10-17", "Statement": read_statements(URLS, "aws")})]


def test_no_sources_no_statements():
    assert read_statements((), "aws") == []


@pytest.mark.parametrize(
    ("key", "readable"),
    [
        ("ml-team-data/emails/train.parquet", True),
        ("ml-team-data/emails/2026/part-0.csv", True),
        ("ml-team-data/emails", False),
        ("ml-team-data/emails-private/x.csv", False),
        ("ml-team-data/x.csv", False),
        ("shared.datasets/2026/digits.parquet", True),
        ("shared.datasets/2026/digits.parquet.bak", False),
        ("shared.datasets/2026/other.parquet", False),
        ("whole-bucket/anything/at/all.csv", True),
        ("whole-bucket-2/x.csv", False),
        ("another/emails/x.csv", False),
    ],
)
def test_objects_read_are_exactly_those_named(role, key, readable):
    arn = f"arn:aws:s3:::{key}"
    assert allowed(role, "s3:GetObject", arn) == readable
    assert allowed(role, "s3:GetObjectVersion", arn) == readable
    context = {"kms:ViaService": "s3.eu-west-1.amazonaws.com", "kms:EncryptionContext:aws:s3:arn": arn}
    key_arn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert allowed(role, "kms:Decrypt", key_arn, context=context) == readable
    assert not allowed(role, "kms:Decrypt", key_arn, context={"kms:EncryptionContext:aws:s3:arn": arn})
    assert not allowed(
        role, "kms:Decrypt", key_arn, context={**context, "kms:ViaService": "ssm.eu-west-1.amazonaws.com"}
    )
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl"):
        assert not allowed(role, action, arn), action


@pytest.mark.parametrize(
    ("bucket", "prefix", "listed"),
    [
        ("ml-team-data", "emails/", True),
        ("ml-team-data", "emails/2026/", True),
        ("ml-team-data", "emails", False),
        ("ml-team-data", "", False),
        ("ml-team-data", "other/", False),
        ("shared.datasets", "2026/digits.parquet", True),
        ("shared.datasets", "2026/digits.parquet.bak", False),
        ("shared.datasets", "2026/", False),
        ("whole-bucket", "", True),
        ("whole-bucket", "any/", True),
        ("another", "", False),
    ],
)
def test_listing_is_under_the_prefixes_named_only(role, bucket, prefix, listed):
    assert allowed(role, "s3:ListBucket", f"arn:aws:s3:::{bucket}", context={"s3:prefix": prefix}) == listed
    assert not allowed(role, "s3:ListBucket", f"arn:aws:s3:::{bucket}"), "a listing without a prefix"


def test_a_bucket_key_decrypts_through_s3_for_the_buckets_named_only(role):
    """With an S3 Bucket Key the encryption context names the bucket, not the object: S3 still
    asks KMS only for an object the role may read."""
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    through_s3 = {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
    for bucket, named in (("ml-team-data", True), ("whole-bucket", True), ("another", False)):
        context = {**through_s3, "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{bucket}"}
        assert allowed(role, "kms:Decrypt", key_arn, context=context) == named, bucket


def test_each_partition_is_named_in_every_arn():
    text = json.dumps(read_statements(URLS, "aws-cn"))
    assert "arn:aws:" not in text and text.count("arn:aws-cn:") >= 8
