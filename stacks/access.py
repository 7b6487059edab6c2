"""The nodes' identities: one IAM role per node kind (scheduler, worker) with only what it needs.

Every Dask task runs with its node's role (containers share the host's network, so the
instance metadata service is within their reach): a role grants nothing a task should not
have. No AWS managed policy is attached; each grants far more than its name says
(AmazonSSMManagedInstanceCore reads every SSM parameter in the account).
"""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from constructs import Construct

from stacks.config import NODE_ROLES, ClusterSettings
from stacks.data_sources import read_statements
from stacks.uploads import read_statements as uploads_read_statements
from stacks.userdata import scheduler_group_name, worker_group_name

# What the SSM agent needs for Session Manager, the only way onto a node (no SSH key, no SSH
# port). These actions have no resource to scope them to.
SESSION_MANAGER_CHANNELS = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]


def autoscaler_statements(group_arn: str) -> list[dict]:
    """What image/dask_node/worker_autoscaler.py needs beyond setting the size: its own group only."""
    return [
        # Describe calls have no resource scope in IAM; they show groups and instances, not change
        # them. The instances' private addresses are how workers are matched to nodes.
        {
            "Sid": "ReadWorkerGroupsAndNodes",
            "Effect": "Allow",
            "Action": ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"],
            "Resource": "*",
        },
        {
            "Sid": "RemoveChosenWorkerNodes",
            "Effect": "Allow",
            "Action": ["autoscaling:SetInstanceProtection", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            "Resource": group_arn,
        },
    ]


def scheduler_statements(
    *,
    partition: str,
    region_account: str,
    settings: ClusterSettings,
    interface_id: str,
    state_arn: str,
    spend_arn: str,
    group_arn: str,
) -> list[dict]:
    """What a scheduler instance needs to take over from the one before it: this cluster's
    scheduler interface only, onto this cluster's scheduler instances only; the cluster's
    state (when it started, or that it ended), which it keeps; and what the cluster spends,
    which it meters (image/dask_node/cost_cap.py)."""
    ec2 = f"arn:{partition}:ec2:{region_account}"
    return [
        # EC2 authorizes the interface and the instance separately: each has its statement.
        {
            "Sid": "TakeTheSchedulerInterface",
            "Effect": "Allow",
            "Action": "ec2:AttachNetworkInterface",
            "Resource": f"{ec2}:network-interface/{interface_id}",
        },
        {
            "Sid": "OntoThisClustersSchedulers",
            "Effect": "Allow",
            "Action": "ec2:AttachNetworkInterface",
            "Resource": f"{ec2}:instance/*",
            # The tag Auto Scaling itself puts on the group's instances: no principal can set or
            # change an `aws:` tag, where any allowed ec2:CreateTags could forge DaskRole.
            "Condition": {
                "StringEquals": {"aws:ResourceTag/aws:autoscaling:groupName": scheduler_group_name(settings)}
            },
        },
        {
            "Sid": "KeepClusterState",
            "Effect": "Allow",
            "Action": "ssm:PutParameter",
            "Resource": [state_arn, spend_arn],
        },
        {"Sid": "ReadClusterSpend", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": spend_arn},
        # Prices have no resource scope in IAM; they are public figures. The Pricing API is asked
        # for an on-demand scheduler's price only.
        {
            "Sid": "PriceTheNodes",
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeSpotPriceHistory",
                *(["pricing:GetProducts"] if settings.scheduler_market == "on-demand" else []),
            ],
            "Resource": "*",
        },
        # At a spot notice: out of its own group, which then launches the next scheduler.
        {
            "Sid": "HandOverAtSpotNotice",
            "Effect": "Allow",
            "Action": "autoscaling:DetachInstances",
            "Resource": group_arn,
        },
    ]


def node_secret(
    scope: Construct, id: str, *, settings: ClusterSettings, role: str, name: str, description: str, value: str
) -> SsmParameter:
    """A SecureString under the SSM path that only `role`'s nodes may read (see NodeRole)."""
    return SsmParameter(
        scope,
        id,
        name=settings.secret_parameter(role, name),
        description=description,
        type="SecureString",
        value=value,
    )


class NodeRole(Construct):
    """The role and instance profile of one node kind.

    Both kinds pull this cluster's image, read their own secrets and the cluster's state, and may
    set the desired capacity of this cluster's worker group (to 0 when the cluster ends). The
    scheduler's autoscaler may also protect and terminate instances of that group, and no other;
    a scheduler may set its own group's size, take the scheduler's interface and keep the state.
    Workers may read the S3 data the settings name (`data_sources`) and the laptop's uploads
    (stacks/uploads.py), and nothing else in S3.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: ClusterSettings,
        role: str,
        repository_arn: str,
        partition: str,
        account: str,
        scheduler_interface_id: str,
        uploads_bucket_arn: str,
    ) -> None:
        super().__init__(scope, id)
        assert role in NODE_ROLES, role
        self.role = IamRole(
            self,
            "role",
            name=f"{settings.resource_prefix}-{role}",
            description=f"{role.capitalize()} nodes of Dask cluster {settings.name}",
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
        region_account = f"{settings.region}:{account}"
        secrets_arn = f"arn:{partition}:ssm:{region_account}:parameter/{settings.secret_path(role)}/*"
        groups = f"arn:{partition}:autoscaling:{region_account}:autoScalingGroup:*:autoScalingGroupName"
        group_arn = f"{groups}/{worker_group_name(settings)}"
        state_arn = f"arn:{partition}:ssm:{region_account}:parameter{settings.state_parameter}"
        scheduler_group_arn = f"{groups}/{scheduler_group_name(settings)}"
        statements = [
            # GetAuthorizationToken has no resource scope in IAM; the token only lets the
            # node pull what the next statement allows.
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "PullThisClusterImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": repository_arn,
            },
            {
                "Sid": "ReadOwnSecretsAndClusterState",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                "Resource": [secrets_arn, state_arn],
            },
            {
                # The scheduler's own group too: the cluster's end must stop its replacements.
                "Sid": "ScaleThisClustersGroups",
                "Effect": "Allow",
                "Action": "autoscaling:SetDesiredCapacity",
                "Resource": [group_arn, *([scheduler_group_arn] if role == "scheduler" else [])],
            },
            *(autoscaler_statements(group_arn) if role == "scheduler" else []),
            *(
                scheduler_statements(
                    partition=partition,
                    region_account=region_account,
                    settings=settings,
                    interface_id=scheduler_interface_id,
                    state_arn=state_arn,
                    spend_arn=f"arn:{partition}:ssm:{region_account}:parameter{settings.spend_parameter}",
                    group_arn=scheduler_group_arn,
                )
                if role == "scheduler"
                else []
            ),
            # The data the user named, and what the laptop uploaded: read by the fits, on the workers only.
            *(read_statements(settings.data_sources, partition) if role == "worker" else []),
            *(uploads_read_statements(uploads_bucket_arn) if role == "worker" else []),
            {
                "Sid": "SessionManagerRegistration",
                "Effect": "Allow",
                "Action": "ssm:UpdateInstanceInformation",
                "Resource": f"arn:{partition}:ec2:{region_account}:instance/*",
            },
            {"Sid": "SessionManagerChannels", "Effect": "Allow", "Action": SESSION_MANAGER_CHANNELS, "Resource": "*"},
        ]
        IamRolePolicy(
            self,
            "policy",
            role=self.role.id,
            name=f"{role}-node",
            policy=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
        self.instance_profile = IamInstanceProfile(
            self, "profile", name=f"{settings.resource_prefix}-{role}", role=self.role.name
        )
