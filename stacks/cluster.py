"""DaskClusterStack: one Dask cluster of spot instances, its image, network, identity and TLS."""

from __future__ import annotations

import json

from cdktf import (
    AssetType,
    Fn,
    TerraformAsset,
    TerraformIterator,
    TerraformLocal,
    TerraformOutput,
    TerraformStack,
    TerraformVariable,
    TerraformVariableValidationConfig,
    Token,
)
from cdktf_cdktf_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktf_cdktf_provider_aws.data_aws_ec2_spot_price import DataAwsEc2SpotPrice, DataAwsEc2SpotPriceFilter
from cdktf_cdktf_provider_aws.data_aws_partition import DataAwsPartition
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags
from cdktf_cdktf_provider_tls.provider import TlsProvider
from constructs import Construct

from stacks import userdata
from stacks.access import NodeRole
from stacks.config import (
    DASHBOARD_PORT,
    JUPYTER_PORT,
    MAX_WORKER_TYPES,
    MAX_WORKERS,
    NODE_ROLES,
    PRICE_RE,
    SCHEDULER_PORT,
    ClusterSettings,
    node_instance_types,
)
from stacks.image import ComputationImage
from stacks.jupyter import JupyterToken
from stacks.network import ClusterNetwork
from stacks.nodes import NodeCommon, Scheduler, WorkerBounds, WorkerGroup
from stacks.tls import ClusterTls

# Amazon Linux 2023, resolved at deploy time so nodes always boot a patched image. It ships
# the AWS CLI and the SSM agent; Docker comes from its own repositories at boot.
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def _hcl(pattern: str) -> str:
    """A Python regex as a quoted HCL string, so Terraform checks overrides by the same rule."""
    return '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _whole_between(variable: str, low: int, high: int) -> str:
    """A Terraform condition: the number variable is a whole number from low to high."""
    v = f"var.{variable}"
    return f"${{{v} >= {low} && {v} <= {high} && floor({v}) == {v}}}"


def _whole_number_rule(variable: str, low: int, high: int) -> TerraformVariableValidationConfig:
    """The variable must be a whole number from low to high; the error names it and its value."""
    return TerraformVariableValidationConfig(
        condition=_whole_between(variable, low, high),
        error_message=f"{variable}: must be a whole number from {low} to {high}, got ${{jsonencode(var.{variable})}}.",
    )


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
        price = DataAwsEc2SpotPrice(
            scope, "scheduler-spot-price", instance_type=settings.scheduler_instance_type, filter=linux
        )
        scheduler = f"tonumber(data.aws_ec2_spot_price.{price.friendly_unique_id}.spot_price)"
    return f'${{format("%.3f", local.{workers.friendly_unique_id} * {per_worker} + {scheduler})}}'


class DaskClusterStack(TerraformStack):
    """Everything one cluster needs; `cdktf destroy` removes all of it."""

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
        tags = default_tags(settings)
        AwsProvider(self, "aws", region=settings.region, default_tags=[AwsProviderDefaultTags(tags=tags)])
        TlsProvider(self, "tls")

        bounds, instance_types, spot_price = self._deploy_time_variables(settings)

        network = ClusterNetwork(self, "network", settings=settings)
        image = ComputationImage(self, "image", settings=settings)
        # Looked up once, for the ARNs in both roles' policies.
        partition = DataAwsPartition(self, "partition").partition
        account = DataAwsCallerIdentity(self, "account").account_id
        roles = {
            role: NodeRole(
                self, f"{role}-access", settings=settings, role=role, repository_arn=image.repository.arn,
                partition=partition, account=account,
            )
            for role in NODE_ROLES
        }  # fmt: skip
        tls = ClusterTls(self, "tls-material", settings=settings)
        ami = DataAwsSsmParameter(self, "ami", name=AMI_PARAMETER)
        jupyter = JupyterToken(self, "jupyter", settings=settings) if settings.jupyter else None

        price = spot_price.friendly_unique_id
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
            boot_after=[image.pushed, *tls.parameters, *([jupyter.parameter] if jupyter else [])],
        )
        scheduler = Scheduler(
            self,
            "scheduler",
            common=common,
            subnet_id=network.scheduler_subnet_id,
            instance_profile_name=roles["scheduler"].instance_profile.name,
        )
        workers_group = WorkerGroup(
            self,
            "worker-group",
            common=common,
            instance_profile_arn=roles["worker"].instance_profile.arn,
            subnet_ids=network.subnet_ids,
            scheduler_private_ip=scheduler.instance.private_ip,
            bounds=bounds,
            instance_types=instance_types.list_value,
        )

        public_ip = scheduler.instance.public_ip
        private_ip = scheduler.instance.private_ip
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
            "workers": (bounds.minimum.as_number, "Worker nodes the cluster keeps: clients wait for these"),
            "min_workers": (bounds.minimum.as_number, "Fewest worker nodes"),
            "max_workers": (bounds.maximum.as_number, "Most worker nodes"),
            "region": (settings.region, "AWS region"),
            # What experiments need to price a run (experiments/cost.py).
            "worker_instance_types": (instance_types.list_value, "Instance types the workers may run on"),
            "scheduler_instance_type": (settings.scheduler_instance_type, "Instance type of the scheduler"),
            "scheduler_market": (settings.scheduler_market, "spot or on-demand"),
            "estimated_hourly_cost_usd": (
                hourly_cost_estimate(self, settings, bounds.maximum, instance_types),
                "Current spot prices: max_workers nodes at the dearest allowed type, plus a spot scheduler "
                "(an on-demand scheduler is not included)",
            ),
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

    def _deploy_time_variables(
        self, settings: ClusterSettings
    ) -> tuple[WorkerBounds, TerraformVariable, TerraformVariable]:
        """Values a user may override with `cdktf deploy --var NAME=VALUE` (or TF_VAR_NAME).

        Terraform checks overrides with the same rules stacks/config.py applies to cdktf.json,
        and fails at plan, before anything is created.
        """
        workers = TerraformVariable(
            self,
            "workers-variable",
            type="number",
            default=0,
            description=(
                "A fixed number of worker nodes, overriding min_workers and max_workers; 0 (the default) leaves "
                "them in charge"
            ),
            validation=[
                TerraformVariableValidationConfig(
                    condition=_whole_between("workers", 0, MAX_WORKERS),
                    error_message=(
                        f"workers: must be a whole number from 1 to {MAX_WORKERS} (a fixed size), or 0 to use "
                        "min_workers and max_workers, got ${jsonencode(var.workers)}."
                    ),
                )
            ],
        )
        low = TerraformVariable(
            self,
            "min-workers-variable",
            type="number",
            default=settings.min_workers,
            description="Fewest worker nodes, kept even when the cluster has no work",
            validation=[_whole_number_rule("min_workers", 0, MAX_WORKERS)],
        )
        high = TerraformVariable(
            self,
            "max-workers-variable",
            type="number",
            default=settings.max_workers,
            description="Most worker nodes the cluster grows to when its work asks for them",
            validation=[
                _whole_number_rule("max_workers", 1, MAX_WORKERS),
                # Refers to the other variables: Terraform 1.9 or later checks it, at plan.
                TerraformVariableValidationConfig(
                    condition="${var.workers > 0 || var.min_workers <= var.max_workers}",
                    error_message=(
                        "min_workers: must be at most max_workers, got ${var.min_workers} > ${var.max_workers}."
                    ),
                ),
            ],
        )
        bounds = WorkerBounds(
            minimum=TerraformLocal(self, "min_worker_nodes", "${var.workers > 0 ? var.workers : var.min_workers}"),
            maximum=TerraformLocal(self, "max_worker_nodes", "${var.workers > 0 ? var.workers : var.max_workers}"),
        )
        instance_types = TerraformVariable(
            self,
            "worker-instance-types-variable",
            type="list(string)",
            default=list(settings.worker_instance_types),
            description="Interchangeable x86_64 instance types for the workers",
            validation=[
                TerraformVariableValidationConfig(
                    condition="${length(var.worker_instance_types) > 0}",
                    error_message="worker_instance_types: must not be empty, got [].",
                ),
                TerraformVariableValidationConfig(
                    # The same list stacks/config.py checks cdktf.json against, from botocore.
                    condition=(
                        "${alltrue([for t in var.worker_instance_types : "
                        f"contains({json.dumps(node_instance_types())}, t)])}}"
                    ),
                    error_message=(
                        "worker_instance_types: each entry must be an x86_64 EC2 instance type such as "
                        "c6i.xlarge (the image is built for linux/amd64; Graviton, Apple, high-memory and "
                        "Xen-era types cannot run a node), got ${jsonencode(var.worker_instance_types)}."
                    ),
                ),
                TerraformVariableValidationConfig(
                    condition=(
                        "${length(distinct(var.worker_instance_types)) == length(var.worker_instance_types) && "
                        f"length(var.worker_instance_types) <= {MAX_WORKER_TYPES}}}"
                    ),
                    error_message=(
                        f"worker_instance_types: at most {MAX_WORKER_TYPES} types, each listed once, "
                        "got ${jsonencode(var.worker_instance_types)}."
                    ),
                ),
            ],
        )
        spot_price = TerraformVariable(
            self,
            "spot_max_price",
            type="string",
            default=settings.spot_max_price or "",
            description="Highest spot price in USD per hour per node; empty caps at the on-demand price",
            validation=[
                TerraformVariableValidationConfig(
                    condition=(
                        '${var.spot_max_price == "" || '
                        f"(can(regex({_hcl(PRICE_RE.pattern)}, var.spot_max_price)) && "
                        "try(tonumber(var.spot_max_price) > 0, false))}"
                    ),
                    error_message=(
                        'spot_max_price: must be empty or a positive price in USD per hour such as "0.25", '
                        "got ${jsonencode(var.spot_max_price)}."
                    ),
                )
            ],
        )
        # Outputs of the same names exist too; construct ids must differ, Terraform names need not.
        for variable, name in ((workers, "workers"), (low, "min_workers"), (high, "max_workers")):
            variable.override_logical_id(name)
        instance_types.override_logical_id("worker_instance_types")
        return bounds, instance_types, spot_price
