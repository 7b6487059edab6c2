"""DaskClusterStack: one Dask cluster of spot instances, its image, network, identity and TLS."""

from __future__ import annotations

from cdktf import (
    AssetType,
    Fn,
    TerraformAsset,
    TerraformIterator,
    TerraformLocal,
    TerraformOutput,
    TerraformResourceLifecycle,
    TerraformStack,
    TerraformVariable,
    Token,
)
from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.data_aws_ec2_spot_price import DataAwsEc2SpotPrice, DataAwsEc2SpotPriceFilter
from cdktf_cdktf_provider_aws.data_aws_partition import DataAwsPartition
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags
from cdktf_cdktf_provider_aws.ssm_parameter import SsmParameter
from cdktf_cdktf_provider_tls.provider import TlsProvider
from constructs import Construct

from stacks import userdata
from stacks.access import NodeRole
from stacks.config import (
    DASHBOARD_PORT,
    JUPYTER_PORT,
    NODE_ROLES,
    SCHEDULER_PORT,
    ClusterSettings,
)
from stacks.image import ComputationImage
from stacks.jupyter import JupyterToken
from stacks.network import ClusterNetwork
from stacks.nodes import NodeCommon, Scheduler, SchedulerAddress, WorkerGroup
from stacks.tls import ClusterTls
from stacks.uploads import UploadsBucket
from stacks.variables import DeployTimeVariables

# Amazon Linux 2023, resolved at deploy time so nodes always boot a patched image. It ships
# the AWS CLI and the SSM agent; Docker comes from its own repositories at boot.
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def default_tags(settings: ClusterSettings) -> dict[str, str]:
    return {"Project": "dask-spot-cluster", "DaskCluster": settings.name, "ManagedBy": "cdktf", **settings.tags}


def hourly_cost_estimate(
    scope: Construct, settings: ClusterSettings, workers: TerraformLocal, instance_types: TerraformVariable
) -> str:
    """A Terraform expression: what the cluster costs per hour at today's spot prices."""
    types = TerraformIterator.from_list(instance_types.list_value)
    linux = [DataAwsEc2SpotPriceFilter(name="product-description", values=["Linux/UNIX"])]
    worker_prices = DataAwsEc2SpotPrice(
        scope, "worker-spot-prices", for_each=types, instance_type=Token.as_string(types.value), filter=linux
    )
    per_worker = (
        f"max([for p in data.aws_ec2_spot_price.{worker_prices.friendly_unique_id} : tonumber(p.spot_price)]...)"
    )
    scheduler = "0"
    if settings.scheduler_market == "spot":
        kinds = TerraformIterator.from_list(list(settings.scheduler_instance_types))
        prices = DataAwsEc2SpotPrice(
            scope, "scheduler-spot-prices", for_each=kinds, instance_type=Token.as_string(kinds.value), filter=linux
        )
        scheduler = f"max([for p in data.aws_ec2_spot_price.{prices.friendly_unique_id} : tonumber(p.spot_price)]...)"
    return f'${{format("%.3f", local.{workers.friendly_unique_id} * {per_worker} + {scheduler})}}'


class DaskClusterStack(TerraformStack):
    """Everything one cluster needs; `cdktf destroy` removes all of it."""

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        tags = default_tags(settings)
        AwsProvider(self, "aws", region=settings.region, default_tags=[AwsProviderDefaultTags(tags=tags)])
        TlsProvider(self, "tls")

        variables = DeployTimeVariables(self, "variables", settings=settings)
        bounds, instance_types, spot_price = variables.bounds, variables.instance_types, variables.spot_max_price

        network = ClusterNetwork(self, "network", settings=settings)
        image = ComputationImage(self, "image", settings=settings)
        # Looked up once, for the ARNs in both roles' policies.
        partition = DataAwsPartition(self, "partition").partition
        account = DataAwsCallerIdentity(self, "account").account_id
        tls = ClusterTls(self, "tls-material", settings=settings)
        ami = DataAwsSsmParameter(self, "ami", name=AMI_PARAMETER)
        jupyter = JupyterToken(self, "jupyter", settings=settings) if settings.jupyter else None

        price = spot_price.friendly_unique_id
        # Written by the schedulers (userdata/scheduler.sh.tftpl): when the cluster started and the
        # image they run, or that it ended. Terraform creates and destroys it, leaves its value to them.
        state = SsmParameter(
            self, "cluster-state", name=settings.state_parameter, type="SecureString", value=userdata.STATE_NEW,
            description=f"Dask cluster {settings.name}: its start and its scheduler's image, or {userdata.STATE_ENDED}",
            lifecycle=TerraformResourceLifecycle(ignore_changes=["value"]),
        )  # fmt: skip
        # Written by the schedulers' cost meter (image/dask_node/cost_cap.py): what the cluster has
        # spent since the start recorded in the state, so that a replacement carries it on.
        spend = SsmParameter(
            self, "cluster-spend", name=settings.spend_parameter, type="SecureString", value=userdata.STATE_NEW,
            description=f"Dask cluster {settings.name}: USD spent since its start, metered by its scheduler",
            lifecycle=TerraformResourceLifecycle(ignore_changes=["value"]),
        )  # fmt: skip
        common = NodeCommon(
            settings=settings,
            ami_id=ami.insecure_value,
            security_group_id=network.security_group.id,
            image_uri=image.uri,
            registry=Fn.element(Fn.split("/", image.repository.repository_url), 0),
            # Written out: cdktf's Op.eq renders a comparison with "" as `undefined`.
            spot_max_price=f'${{var.{price} == "" ? null : var.{price}}}',
            tags=tags,
            templates=TerraformAsset(self, "userdata", path=str(userdata.TEMPLATE_DIR), type=AssetType.DIRECTORY).path,
            boot_after=[image.pushed, state, spend, *tls.parameters, *([jupyter.parameter] if jupyter else [])],
        )
        address = SchedulerAddress(self, "scheduler-address", common=common, subnet_id=network.scheduler_subnet_id)
        uploads = UploadsBucket(self, "uploads", settings=settings)
        roles = {
            role: NodeRole(
                self, f"{role}-access", settings=settings, role=role, repository_arn=image.repository.arn,
                partition=partition, account=account, scheduler_interface_id=address.interface.id,
                uploads_bucket_arn=uploads.arn,
            )
            for role in NODE_ROLES
        }  # fmt: skip
        scheduler = Scheduler(
            self,
            "scheduler",
            common=common,
            subnet_id=network.scheduler_subnet_id,
            instance_profile_arn=roles["scheduler"].instance_profile.arn,
            address=address,
            # A token, not "${var...}" text: inside templatefile's arguments, text is escaped.
            max_cost_usd=Token.as_string(variables.max_cost_usd.number_value),
        )
        workers_group = WorkerGroup(
            self,
            "worker-group",
            common=common,
            instance_profile_arn=roles["worker"].instance_profile.arn,
            subnet_ids=network.subnet_ids,
            scheduler_private_ip=address.private_ip,
            bounds=bounds,
            instance_types=instance_types.list_value,
        )

        public_ip, private_ip = address.public_ip, address.private_ip
        hourly = hourly_cost_estimate(self, settings, bounds.maximum, instance_types)
        cap = f"var.{variables.max_cost_usd.friendly_unique_id}"
        outputs = {
            "scheduler_address": (f"tls://{public_ip}:{SCHEDULER_PORT}", "Connect clients here (mutual TLS)"),
            "scheduler_private_address": (f"tls://{private_ip}:{SCHEDULER_PORT}", "Address inside the VPC"),
            "dashboard_url": (
                f"https://{public_ip}:{DASHBOARD_PORT}/status",
                "Dask dashboard: TLS, this cluster's client certificate required (the experiments forward it locally)",
            ),
            "image_uri": (image.uri, "The exact image every node runs"),
            "ecr_repository_url": (image.repository.repository_url, "ECR repository of the image"),
            "worker_group_name": (workers_group.group.name, "Auto Scaling group of the workers"),
            "scheduler_group_name": (scheduler.name, "Auto Scaling group of one: the scheduler"),
            "workers": (bounds.minimum.as_number, "Worker nodes the cluster keeps: clients wait for these"),
            "min_workers": (bounds.minimum.as_number, "Fewest worker nodes"),
            "max_workers": (bounds.maximum.as_number, "Most worker nodes"),
            "region": (settings.region, "AWS region"),
            # What experiments need to price a run (experiments/spotsearch/cost.py).
            "worker_instance_types": (instance_types.list_value, "Instance types the workers may run on"),
            "scheduler_instance_types": (
                list(settings.scheduler_instance_types),
                "Instance types the scheduler may run on",
            ),
            "scheduler_market": (settings.scheduler_market, "spot or on-demand"),
            "estimated_hourly_cost_usd": (
                hourly,
                "Current spot prices: max_workers nodes and a spot scheduler, each at its dearest allowed type "
                "(an on-demand scheduler is not included)",
            ),
            "max_cost_usd": (f"${{{cap}}}", "USD the cluster may spend from its start; at this amount it ends itself"),
            "hours_to_cost_cap": (
                f'${{format("%.1f", {cap} / max(tonumber({hourly[2:-1]}), 0.001))}}',
                "Hours the cluster may run at max_workers before it reaches max_cost_usd, at the hourly estimate",
            ),
            "cluster_spend_parameter": (settings.spend_parameter, "SSM parameter: what the cluster has spent"),
            "data_sources": (list(settings.data_sources), "S3 prefixes and objects the workers may read"),
            "uploads_bucket": (uploads.bucket.bucket, "The private bucket the experiments upload data to, once"),
        }
        if jupyter:
            outputs["jupyter_url"] = (
                f"https://{public_ip}:{JUPYTER_PORT}/lab",
                "JupyterLab: TLS, client certificate required (`python experiments/tunnel.py --stack NAME`)",
            )
        for name, (value, description) in outputs.items():
            TerraformOutput(self, name, value=value, description=description)
        if jupyter:
            TerraformOutput(
                self, "jupyter_token", value=jupyter.password.result, sensitive=True, description="JupyterLab token"
            )
        secrets = {
            "tls_ca_pem": tls.ca.cert_pem,
            "tls_client_cert_pem": tls.client_cert.cert_pem,
            "tls_client_key_pem": tls.client_key.private_key_pem,
        }
        for name, value in secrets.items():
            TerraformOutput(self, name, value=value, sensitive=True, description="Client mutual TLS material")
