"""Values a user may override at deploy time, with `cdktf deploy --var NAME=VALUE` (or TF_VAR_NAME).

Terraform checks overrides with the same rules stacks/config.py applies to cdktf.json, and fails
at plan, before anything is created.
"""

from __future__ import annotations

import json

from cdktf import TerraformLocal, TerraformVariable, TerraformVariableValidationConfig
from constructs import Construct

from stacks.checks import MAX_COST_USD, MAX_WORKER_TYPES, PRICE_RE, node_instance_types
from stacks.config import MAX_WORKERS, ClusterSettings
from stacks.nodes import WorkerBounds


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


class DeployTimeVariables(Construct):
    """The deploy-time variables and the worker bounds they decide.

    Their Terraform names are fixed (the names users pass to --var), whatever the construct's path.
    """

    def __init__(self, scope: Construct, id: str, *, settings: ClusterSettings) -> None:
        super().__init__(scope, id)
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
        cost_cap = TerraformVariable(
            self,
            "max-cost-usd-variable",
            type="number",
            default=settings.max_cost_usd,
            description="USD the cluster may spend from its start; at this amount it ends itself",
            validation=[
                TerraformVariableValidationConfig(
                    condition=f"${{var.max_cost_usd > 0 && var.max_cost_usd <= {MAX_COST_USD}}}",
                    error_message=(
                        f"max_cost_usd: must be an amount of USD above 0 and at most {MAX_COST_USD}, such as 20, "
                        "got ${jsonencode(var.max_cost_usd)}."
                    ),
                )
            ],
        )
        # Outputs of the same names exist too; construct ids must differ, Terraform names need not.
        for variable, name in (
            (workers, "workers"), (low, "min_workers"), (high, "max_workers"), (cost_cap, "max_cost_usd")
        ):  # fmt: skip
            variable.override_logical_id(name)
        instance_types.override_logical_id("worker_instance_types")
        spot_price.override_logical_id("spot_max_price")
        for local, name in ((bounds.minimum, "min_worker_nodes"), (bounds.maximum, "max_worker_nodes")):
            local.override_logical_id(name)
        self.bounds, self.instance_types, self.spot_max_price = bounds, instance_types, spot_price
        self.max_cost_usd = cost_cap
