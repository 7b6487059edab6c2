"""What a remote run cost: node-hours, priced at the current spot prices of the cluster's types.

An estimate, not a bill: it assumes the Auto Scaling group's price-capacity-optimized choice
pays about the average of the allowed types' lowest current prices (for the workers' group and
the scheduler's), and it prices an
on-demand scheduler at nothing it can look up (EC2's spot API has no on-demand prices).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from statistics import mean


def lowest_spot_prices(ec2, instance_types: Iterable[str]) -> dict[str, float]:
    """The lowest current Linux spot price, across availability zones, of each instance type."""
    types = sorted(set(instance_types))
    now = datetime.datetime.now(datetime.UTC)
    prices: dict[str, float] = {}
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=types, ProductDescriptions=["Linux/UNIX"], StartTime=now
    )
    for page in pages:
        for entry in page["SpotPriceHistory"]:
            price = float(entry["SpotPrice"])
            kind = entry["InstanceType"]
            prices[kind] = min(price, prices.get(kind, price))
    return prices


def estimate(
    *,
    prices: dict[str, float],
    worker_types: list[str],
    scheduler_types: list[str],
    scheduler_market: str,
    worker_node_seconds: float,
    seconds: float,
) -> dict:
    """Node-hours of a run and their estimated cost in USD: the scheduler for `seconds`, the
    worker nodes for as long as each was there (they come and go on an adaptive cluster)."""
    hours, worker_hours = seconds / 3600, worker_node_seconds / 3600
    known = [prices[t] for t in worker_types if t in prices]
    worker_price = mean(known) if known else None
    known = [prices[t] for t in scheduler_types if t in prices]
    scheduler_price = mean(known) if known and scheduler_market == "spot" else None
    cost = (worker_price or 0) * worker_hours + (scheduler_price or 0) * hours
    notes = []
    if worker_price is None:
        notes.append("no spot price found for the worker types")
    if scheduler_market != "spot":
        notes.append("the on-demand scheduler is not included")
    return {
        "node_hours": round(worker_hours + hours, 4),
        "worker_node_hours": round(worker_hours, 4),
        "estimated_cost_usd": round(cost, 4),
        "worker_price_usd_per_hour": worker_price,
        "scheduler_price_usd_per_hour": scheduler_price,
        "notes": notes,
    }


def for_run(outputs: dict, worker_node_seconds: float, seconds: float) -> dict:
    """The estimate of one run on a deployed stack, from the spot prices in its region."""
    import boto3

    ec2 = boto3.client("ec2", region_name=outputs["region"])
    worker_types = list(outputs["worker_instance_types"])
    scheduler_types = list(outputs["scheduler_instance_types"])
    prices = lowest_spot_prices(ec2, [*worker_types, *scheduler_types])
    return estimate(
        prices=prices,
        worker_types=worker_types,
        scheduler_types=scheduler_types,
        scheduler_market=outputs["scheduler_market"],
        worker_node_seconds=worker_node_seconds,
        seconds=seconds,
    )


def for_where(where, worker_node_seconds: float, seconds: float) -> dict | None:
    """The estimate of a run on a deployed stack, or why there is none; None for local runs."""
    if where.kind != "remote" or where.cost_basis is None:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return for_run(where.cost_basis, worker_node_seconds, seconds)
    except (BotoCoreError, ClientError) as error:
        return {"error": f"not estimated: {error}"}


def summary_line(estimate: dict) -> str:
    if "error" in estimate:
        return f"Cost: {estimate['error']}"
    notes = f" ({'; '.join(estimate['notes'])})" if estimate["notes"] else ""
    return (
        f"Cost: {estimate['node_hours']:.3f} node-hours, about USD {estimate['estimated_cost_usd']:.4f} "
        f"at current spot prices{notes}"
    )
