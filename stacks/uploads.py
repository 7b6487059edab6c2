"""The cluster's bucket for the data a laptop uploads once (experiments/spotsearch/uploads.py),
which the workers then read inside AWS for every later search, reconnect and resume.

Private (every public access blocked, ACLs off), encrypted at rest (SSE-S3), reachable over TLS
only, each object gone UPLOAD_DAYS days after its upload (an unfinished upload too), and the
whole bucket with `cdktf destroy`, whatever it holds. The workers read under UPLOADS_PREFIX
only (stacks/access.py); nothing on the cluster writes it.
"""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import (
    S3BucketLifecycleConfiguration,
    S3BucketLifecycleConfigurationRule,
    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload,
    S3BucketLifecycleConfigurationRuleExpiration,
    S3BucketLifecycleConfigurationRuleFilter,
)
from cdktf_cdktf_provider_aws.s3_bucket_ownership_controls import (
    S3BucketOwnershipControls,
    S3BucketOwnershipControlsRule,
)
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_public_access_block import S3BucketPublicAccessBlock
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
    S3BucketServerSideEncryptionConfigurationRuleA,
    S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA,
)
from constructs import Construct

from stacks.config import ClusterSettings

UPLOADS_PREFIX = "uploads/"
# Long enough for a week of searches on the same data; a cluster lives 14 days at most.
UPLOAD_DAYS = 7


class UploadsBucket(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        # A name of Terraform's making after the prefix: bucket names are global across accounts.
        self.bucket = S3Bucket(self, "bucket", bucket_prefix=f"{settings.resource_prefix}-uploads-", force_destroy=True)
        bucket = self.bucket.id
        S3BucketPublicAccessBlock(
            self, "private", bucket=bucket, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True,
        )  # fmt: skip
        S3BucketOwnershipControls(
            self, "no-acls", bucket=bucket, rule=S3BucketOwnershipControlsRule(object_ownership="BucketOwnerEnforced")
        )
        by_default = S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA(
            sse_algorithm="AES256"
        )
        S3BucketServerSideEncryptionConfigurationA(
            self, "encrypted", bucket=bucket,
            rule=[S3BucketServerSideEncryptionConfigurationRuleA(apply_server_side_encryption_by_default=by_default)],
        )  # fmt: skip
        S3BucketLifecycleConfiguration(
            self, "expiry", bucket=bucket,
            rule=[
                S3BucketLifecycleConfigurationRule(
                    id="uploads-expire", status="Enabled", filter=[S3BucketLifecycleConfigurationRuleFilter(prefix="")],
                    expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=UPLOAD_DAYS)],
                    abort_incomplete_multipart_upload=[
                        S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(days_after_initiation=UPLOAD_DAYS)
                    ],
                )
            ],
        )  # fmt: skip
        arn = self.bucket.arn
        tls_only = {
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
        S3BucketPolicy(
            self, "tls-only", bucket=bucket, policy=json.dumps({"Version": "2012-10-17", "Statement": [tls_only]})
        )

    @property
    def arn(self) -> str:
        return self.bucket.arn


def read_statements(bucket_arn: str) -> list[dict]:
    """The worker role's reads of the uploads (the laptop's, under UPLOADS_PREFIX)."""
    return [
        {
            "Sid": "ReadUploads",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{bucket_arn}/{UPLOADS_PREFIX}*",
        },
        {
            "Sid": "ListUploads",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [UPLOADS_PREFIX, f"{UPLOADS_PREFIX}*"]}},
        },
    ]
