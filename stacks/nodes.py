"""The machines: a scheduler group of one at a fixed address, and an Auto Scaling group of spot workers."""

from __future__ import annotations

from dataclasses import dataclass

from cdktf import (
    Fn,
    ITerraformDependable,
    TerraformIterator,
    TerraformLocal,
    TerraformResourceLifecycle,
    Token,
)
from cdktf_cdktf_provider_aws.autoscaling_group import (
    AutoscalingGroup,
    AutoscalingGroupInstanceRefresh,
    AutoscalingGroupInstanceRefreshPreferences,
    AutoscalingGroupMixedInstancesPolicy,
    AutoscalingGroupMixedInstancesPolicyInstancesDistribution,
    AutoscalingGroupMixedInstancesPolicyLaunchTemplate,
    AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification,
    AutoscalingGroupTag,
)
from cdktf_cdktf_provider_aws.eip import Eip
from cdktf_cdktf_provider_aws.launch_template import (
    LaunchTemplate,
    LaunchTemplateBlockDeviceMappings,
    LaunchTemplateBlockDeviceMappingsEbs,
    LaunchTemplateIamInstanceProfile,
    LaunchTemplateMetadataOptions,
    LaunchTemplateNetworkInterfaces,
    LaunchTemplateTagSpecifications,
)
from cdktf_cdktf_provider_aws.network_interface import NetworkInterface
from constructs import Construct

from stacks import userdata
from stacks.config import MIN_WORKERS_TAG, ClusterSettings

ROOT_DEVICE = "/dev/xvda"  # Amazon Linux 2023's root device name


@dataclass(frozen=True)
class WorkerBounds:
    """Fewest and most worker nodes: Terraform values, so `--var` can change them at deploy time."""

    minimum: TerraformLocal
    maximum: TerraformLocal


@dataclass(frozen=True, kw_only=True)
class NodeCommon:
    """What the scheduler and the workers share, built once by the stack."""

    settings: ClusterSettings
    ami_id: str
    security_group_id: str
    image_uri: str
    registry: str
    spot_max_price: str  # Terraform expression; null caps at the on-demand price
    tags: dict[str, str]
    templates: str  # where the user-data templates are, relative to the stack's directory
    # Nodes must not boot before their image and TLS material exist.
    boot_after: list[ITerraformDependable]


def _user_data(common: NodeCommon, role: str, variables: dict[str, object]) -> str:
    """Render the role's templates with Terraform's templatefile and join them into one script."""
    parts = [Fn.templatefile(f"{common.templates}/{name}", variables) for name in userdata.template_files(role)]
    return Fn.join("\n", parts)


def _launch_template(
    scope: Construct, common: NodeCommon, *, role: str, user_data: str, instance_profile_arn: str
) -> LaunchTemplate:
    """A node of `role` as its Auto Scaling group launches it: patched AMI, encrypted gp3 root,
    IMDSv2 only, a public address for ECR and SSM, powered off means terminated."""
    s = common.settings
    name_tag = {"Name": f"{s.resource_prefix}-{role}", "DaskRole": role}
    return LaunchTemplate(
        scope,
        "template",
        name=f"{s.resource_prefix}-{role}",
        image_id=common.ami_id,
        update_default_version=True,
        iam_instance_profile=LaunchTemplateIamInstanceProfile(arn=instance_profile_arn),
        network_interfaces=[
            LaunchTemplateNetworkInterfaces(
                device_index=0,
                associate_public_ip_address="true",
                delete_on_termination="true",
                security_groups=[common.security_group_id],
            )
        ],
        metadata_options=LaunchTemplateMetadataOptions(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
        ),
        block_device_mappings=[
            LaunchTemplateBlockDeviceMappings(
                device_name=ROOT_DEVICE,
                ebs=LaunchTemplateBlockDeviceMappingsEbs(
                    volume_type="gp3",
                    volume_size=s.root_volume_gb,
                    encrypted="true",
                    delete_on_termination="true",
                ),
            )
        ],
        ebs_optimized="true",
        monitoring={"enabled": True},
        # Idle shutdown and the lifetime cap power the node off; that must end the billing.
        instance_initiated_shutdown_behavior="terminate",
        # Compressed: EC2 takes 16 KB of user-data; cloud-init runs gzipped scripts as they are.
        user_data=Fn.base64gzip(user_data),
        # Provider default tags stop at the launch template itself; these reach the
        # instances, their volumes and network interfaces.
        tag_specifications=[
            LaunchTemplateTagSpecifications(resource_type=kind, tags={**common.tags, **name_tag})
            for kind in ("instance", "volume", "network-interface")
        ],
    )


def _group_tags(common: NodeCommon, role: str) -> list[AutoscalingGroupTag]:
    name_tag = {"Name": f"{common.settings.resource_prefix}-{role}", "DaskRole": role}
    return [
        AutoscalingGroupTag(key=key, value=value, propagate_at_launch=True)
        for key, value in {**common.tags, **name_tag}.items()
    ]


def _mixed_instances(
    common: NodeCommon, template: LaunchTemplate, types: object, *, on_demand: int
) -> AutoscalingGroupMixedInstancesPolicy:
    """`on_demand` nodes on demand, the rest spot, from the pools with the most spare capacity
    at the lowest price among `types` (a list, or a Terraform list value)."""
    iterator = TerraformIterator.from_list(types)
    return AutoscalingGroupMixedInstancesPolicy(
        instances_distribution=AutoscalingGroupMixedInstancesPolicyInstancesDistribution(
            on_demand_base_capacity=on_demand,
            on_demand_percentage_above_base_capacity=0,
            spot_allocation_strategy="price-capacity-optimized",
            spot_max_price=common.spot_max_price,
        ),
        launch_template=AutoscalingGroupMixedInstancesPolicyLaunchTemplate(
            launch_template_specification=AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification(
                launch_template_id=template.id,
                version=Token.as_string(template.latest_version),
            ),
            override=iterator.dynamic({"instance_type": iterator.value}),
        ),
    )


class SchedulerAddress(Construct):
    """The scheduler's own network interface and Elastic IP, which outlive any one instance.

    Each scheduler instance attaches the interface at boot, so clients (the public Elastic IP
    in outputs.json) and workers (its private address) always reach the scheduler at the same
    place. An interface lives in one availability zone: the scheduler's group launches there.
    """

    def __init__(self, scope: Construct, id: str, *, common: NodeCommon, subnet_id: str) -> None:
        super().__init__(scope, id)
        s = common.settings
        name = {"Name": f"{s.resource_prefix}-scheduler", "DaskRole": "scheduler"}
        self.interface = NetworkInterface(
            self,
            "interface",
            subnet_id=subnet_id,
            security_groups=[common.security_group_id],
            description=f"Dask cluster {s.name}: the scheduler's address, moved to each scheduler instance",
            tags=name,
            # The scheduler instance attaches it; Terraform must not undo that on a redeploy.
            lifecycle=TerraformResourceLifecycle(ignore_changes=["attachment"]),
        )
        self.public_ip = Eip(self, "public", domain="vpc", network_interface=self.interface.id, tags=name).public_ip
        self.private_ip = self.interface.private_ip


class Scheduler(Construct):
    """An Auto Scaling group of one that runs `dask scheduler`: a scheduler that is reclaimed,
    crashes or is terminated is replaced, and the replacement takes over the same address.

    Spot over several types unless the settings say on-demand. MinSize is 0 and MaxSize 1: the
    cluster's end sets the desired capacity to 0, and a redeploy sets it back to 1.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        common: NodeCommon,
        subnet_id: str,
        instance_profile_arn: str,
        address: SchedulerAddress,
        max_cost_usd: str,
    ) -> None:
        super().__init__(scope, id)
        s = common.settings
        self.name = userdata.scheduler_group_name(s)
        self.user_data = _user_data(
            common,
            "scheduler",
            userdata.scheduler_variables(
                s, common.image_uri, common.registry, interface_id=address.interface.id, address=address.private_ip,
                max_cost_usd=max_cost_usd,
            ),
        )  # fmt: skip
        self.launch_template = _launch_template(
            self, common, role="scheduler", user_data=self.user_data, instance_profile_arn=instance_profile_arn
        )
        on_demand = 1 if s.scheduler_market == "on-demand" else 0
        self.group = AutoscalingGroup(
            self,
            "group",
            name=self.name,
            min_size=0,
            max_size=1,
            desired_capacity=1,
            vpc_zone_identifier=[subnet_id],  # the interface's subnet, so its zone
            wait_for_capacity_timeout="0",
            mixed_instances_policy=_mixed_instances(
                common, self.launch_template, list(s.scheduler_instance_types), on_demand=on_demand
            ),
            tag=_group_tags(common, "scheduler"),
            # A redeploy that changes the scheduler's template (a new image, say) replaces the
            # running scheduler, the old one first: the new one needs its address. Searches
            # reconnect; worker nodes on another image make way for nodes on the new one.
            instance_refresh=AutoscalingGroupInstanceRefresh(
                strategy="Rolling",
                preferences=AutoscalingGroupInstanceRefreshPreferences(
                    min_healthy_percentage=0, max_healthy_percentage=100
                ),
            ),
            depends_on=common.boot_after,
        )


class WorkerGroup(Construct):
    """Launch template plus an Auto Scaling group that is 100% spot over several types.

    The group's size is the scheduler's autoscaler's to set, between the bounds; Terraform sets
    it once, at creation, to the minimum. Bounds, instance types and the spot price cap are
    Terraform values so they can be changed at deploy time with ``--var``.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        common: NodeCommon,
        instance_profile_arn: str,
        subnet_ids: list[str],
        scheduler_private_ip: str,
        bounds: WorkerBounds,
        instance_types: list[str],
    ) -> None:
        super().__init__(scope, id)
        s = common.settings
        self.name = userdata.worker_group_name(s)
        self.user_data = _user_data(
            common, "worker", userdata.worker_variables(s, common.image_uri, common.registry, scheduler_private_ip)
        )
        self.launch_template = _launch_template(
            self, common, role="worker", user_data=self.user_data, instance_profile_arn=instance_profile_arn
        )
        self.group = AutoscalingGroup(
            self,
            "group",
            name=self.name,
            min_size=0,
            max_size=bounds.maximum.as_number,
            desired_capacity=bounds.minimum.as_number,
            # Only the autoscaler chooses which nodes go (idle ones, their workers retired
            # first); the group itself never picks a node to remove when its size drops.
            protect_from_scale_in=True,
            vpc_zone_identifier=subnet_ids,
            capacity_rebalance=True,
            # The nodes' own readiness (image pulled, scheduler reached) is checked in
            # user-data; Terraform need not wait for instances to be in service.
            wait_for_capacity_timeout="0",
            mixed_instances_policy=_mixed_instances(common, self.launch_template, instance_types, on_demand=0),
            tag=[
                *_group_tags(common, "worker"),
                AutoscalingGroupTag(key=MIN_WORKERS_TAG, value=bounds.minimum.as_string, propagate_at_launch=False),
            ],
            depends_on=common.boot_after,
            lifecycle=TerraformResourceLifecycle(
                # The autoscaler owns the size; a redeploy must not reset a cluster mid-search.
                ignore_changes=["desired_capacity"],
            ),
        )
