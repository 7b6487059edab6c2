"""The machines: one scheduler instance and an Auto Scaling group of spot workers."""

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
    AutoscalingGroupMixedInstancesPolicy,
    AutoscalingGroupMixedInstancesPolicyInstancesDistribution,
    AutoscalingGroupMixedInstancesPolicyLaunchTemplate,
    AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification,
    AutoscalingGroupTag,
)
from cdktf_cdktf_provider_aws.instance import (
    Instance,
    InstanceInstanceMarketOptions,
    InstanceInstanceMarketOptionsSpotOptions,
    InstanceMetadataOptions,
    InstanceRootBlockDevice,
)
from cdktf_cdktf_provider_aws.launch_template import (
    LaunchTemplate,
    LaunchTemplateBlockDeviceMappings,
    LaunchTemplateBlockDeviceMappingsEbs,
    LaunchTemplateIamInstanceProfile,
    LaunchTemplateMetadataOptions,
    LaunchTemplateNetworkInterfaces,
    LaunchTemplateTagSpecifications,
)
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


class Scheduler(Construct):
    """A single instance running `dask scheduler`; spot unless the settings say on-demand."""

    def __init__(
        self, scope: Construct, id: str, *, common: NodeCommon, subnet_id: str, instance_profile_name: str
    ) -> None:
        super().__init__(scope, id)
        s = common.settings
        market = None
        if s.scheduler_market == "spot":
            market = InstanceInstanceMarketOptions(
                market_type="spot",
                spot_options=InstanceInstanceMarketOptionsSpotOptions(
                    spot_instance_type="one-time",
                    instance_interruption_behavior="terminate",
                    max_price=common.spot_max_price,
                ),
            )
        self.user_data = _user_data(
            common, "scheduler", userdata.scheduler_variables(s, common.image_uri, common.registry)
        )
        self.instance = Instance(
            self,
            "instance",
            ami=common.ami_id,
            instance_type=s.scheduler_instance_type,
            instance_market_options=market,
            subnet_id=subnet_id,
            vpc_security_group_ids=[common.security_group_id],
            associate_public_ip_address=True,
            iam_instance_profile=instance_profile_name,
            metadata_options=InstanceMetadataOptions(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            root_block_device=InstanceRootBlockDevice(
                volume_type="gp3",
                volume_size=s.root_volume_gb,
                encrypted=True,
                delete_on_termination=True,
                tags={**common.tags, "Name": f"{s.resource_prefix}-scheduler"},
            ),
            ebs_optimized=True,
            monitoring=True,
            # Idle shutdown and the lifetime cap power the node off; that must end the billing.
            instance_initiated_shutdown_behavior="terminate",
            user_data=self.user_data,
            user_data_replace_on_change=True,
            tags={"Name": f"{s.resource_prefix}-scheduler", "DaskRole": "scheduler"},
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
        name_tag = {"Name": f"{s.resource_prefix}-worker", "DaskRole": "worker"}
        self.launch_template = LaunchTemplate(
            self,
            "template",
            name=f"{s.resource_prefix}-worker",
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
            instance_initiated_shutdown_behavior="terminate",
            user_data=Fn.base64encode(self.user_data),
            # Provider default tags stop at the launch template itself; these reach the
            # instances, their volumes and network interfaces.
            tag_specifications=[
                LaunchTemplateTagSpecifications(resource_type=kind, tags={**common.tags, **name_tag})
                for kind in ("instance", "volume", "network-interface")
            ],
        )
        types = TerraformIterator.from_list(instance_types)
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
            mixed_instances_policy=AutoscalingGroupMixedInstancesPolicy(
                instances_distribution=AutoscalingGroupMixedInstancesPolicyInstancesDistribution(
                    on_demand_base_capacity=0,
                    on_demand_percentage_above_base_capacity=0,
                    spot_allocation_strategy="price-capacity-optimized",
                    spot_max_price=common.spot_max_price,
                ),
                launch_template=AutoscalingGroupMixedInstancesPolicyLaunchTemplate(
                    launch_template_specification=AutoscalingGroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecification(
                        launch_template_id=self.launch_template.id,
                        version=Token.as_string(self.launch_template.latest_version),
                    ),
                    override=types.dynamic({"instance_type": types.value}),
                ),
            ),
            tag=[
                *(
                    AutoscalingGroupTag(key=key, value=value, propagate_at_launch=True)
                    for key, value in {**common.tags, **name_tag}.items()
                ),
                AutoscalingGroupTag(key=MIN_WORKERS_TAG, value=bounds.minimum.as_string, propagate_at_launch=False),
            ],
            depends_on=common.boot_after,
            lifecycle=TerraformResourceLifecycle(
                # The autoscaler owns the size; a redeploy must not reset a cluster mid-search.
                ignore_changes=["desired_capacity"],
            ),
        )
