"""The nodes' identity: one IAM role and instance profile with only what a node needs."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.data_aws_partition import DataAwsPartition
from cdktf_cdktf_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from constructs import Construct

from stacks.config import ClusterSettings


def node_secret(
    scope: Construct, id: str, *, settings: ClusterSettings, name: str, description: str, value: str
) -> SsmParameter:
    """A SecureString under the one SSM path the node role may read (see NodeRole)."""
    return SsmParameter(
        scope, id, name=settings.node_parameter(name), description=description, type="SecureString", value=value
    )


class NodeRole(Construct):
    """Role and instance profile shared by the scheduler and the workers.

    The worker group's ARN is only known once the group exists, so the group permission is
    granted afterwards with :meth:`allow_scaling`.
    """

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings, repository_arn: str) -> None:
        super().__init__(scope, id)
        self._settings = settings
        partition = DataAwsPartition(self, "partition").partition
        account = DataAwsCallerIdentity(self, "account").account_id
        self.role = IamRole(
            self,
            "role",
            name=f"{settings.resource_prefix}-node",
            description=f"Nodes of Dask cluster {settings.name}",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
        # Session Manager is the only way in: there is no SSH key and no SSH port.
        IamRolePolicyAttachment(
            self,
            "ssm-core",
            role=self.role.name,
            policy_arn=f"arn:{partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
        )
        parameters_arn = f"arn:{partition}:ssm:{settings.region}:{account}:parameter/{settings.node_parameter_path}/*"
        IamRolePolicy(
            self,
            "pull-and-read",
            role=self.role.id,
            name="pull-image-read-secrets",
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        # GetAuthorizationToken has no resource scope in IAM; the token only
                        # lets the node pull what the statement below allows.
                        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                        {
                            "Sid": "PullThisClusterImage",
                            "Effect": "Allow",
                            "Action": [
                                "ecr:BatchCheckLayerAvailability",
                                "ecr:BatchGetImage",
                                "ecr:GetDownloadUrlForLayer",
                            ],
                            "Resource": repository_arn,
                        },
                        {
                            "Sid": "ReadThisClusterSecrets",
                            "Effect": "Allow",
                            "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                            "Resource": parameters_arn,
                        },
                    ],
                }
            ),
        )
        self.instance_profile = IamInstanceProfile(
            self, "profile", name=f"{settings.resource_prefix}-node", role=self.role.name
        )

    def allow_scaling(self, worker_group_arn: str) -> None:
        """Let nodes set the desired capacity of this cluster's worker group, and only that."""
        IamRolePolicy(
            self,
            "scale-workers",
            role=self.role.id,
            name="scale-this-worker-group",
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "ScaleThisWorkerGroup",
                            "Effect": "Allow",
                            "Action": "autoscaling:SetDesiredCapacity",
                            "Resource": worker_group_arn,
                        }
                    ],
                }
            ),
        )
