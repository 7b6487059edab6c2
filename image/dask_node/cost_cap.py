"""Ends the cluster at its dollar cap (max_cost_usd): a scheduler preload that meters its spend.

Every `--cost-interval` seconds it asks AWS what the cluster runs (its instances, found by their
DaskCluster tag) and adds what each cost since the round before:

- the instance, from its launch or the last round, at its spot price in its zone now (the spot
  price history), or on demand at its on-demand price (the Pricing API);
- its root volume (`--cost-volume-gb`, gp3 at its us-east-1 list price);
- each public IPv4 address on it, the scheduler's Elastic IP included, at AWS's hourly price.

The total is kept in the SSM parameter `--cost-spend-parameter`, tied to the cluster's start in
its state parameter: a replacement scheduler carries it on, and counts the instances that ran
meanwhile from the last round kept. A round whose AWS calls fail adds nothing; the next one
counts that time. Each round is an event on the `spotsearch-cost` topic, which clients read
(spotsearch's spend watch); at 80% of the cap one event, once per cluster, says so; at the cap
the scheduler closes with a line its node's watch takes as the cluster's end, as when idle.

Dask takes one preload with options of its own: dask_node.idle_shutdown, which also decides the
cluster's end, takes the cap's (`--cost-cap-usd` and the others) and starts it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from dataclasses import asdict, dataclass

from tornado.ioloop import PeriodicCallback

log = logging.getLogger("distributed.scheduler.cost-cap")
TOPIC = "spotsearch-cost"  # spotsearch.cluster.spend reads it; dask_node.trust keeps workers off it
WARN_AT = 0.8
CLIENT_WARNING = "max_cost_usd: "  # starts the warning every client shows
# List prices in USD (us-east-1, 2026): gp3 storage per GB-month, a public IPv4 address per hour.
GP3_USD_PER_GB_MONTH = 0.08
HOURS_PER_MONTH = 730
PUBLIC_IPV4_USD_PER_HOUR = 0.005
# Between the event that says the cap ended the cluster and the close: clients' streams carry it
# first, so a running search names why its scheduler went.
CLOSE_DELAY_SECONDS = 2.0
ACTIVE_STATES = ["pending", "running", "shutting-down", "stopping"]


@dataclass
class Spend:
    """What the cluster that started at `started` (epoch seconds) has spent, counted up to `metered_at`."""

    started: int
    spent_usd: float
    metered_at: float
    cap_usd: float
    warned: bool = False
    ended: bool = False

    @classmethod
    def kept(cls, value: str, started: int, cap_usd: float) -> Spend:
        """The spend kept in SSM if it is this cluster start's; else none yet, from the start."""
        try:
            kept = json.loads(value)
            if kept["started"] == started:
                # A redeploy that changed the cap warns again at 80% of the new one.
                return cls(**{**kept, "cap_usd": cap_usd, "warned": kept["warned"] and kept["cap_usd"] == cap_usd})
        except (ValueError, KeyError, TypeError):
            pass
        return cls(started=started, spent_usd=0.0, metered_at=float(started), cap_usd=cap_usd)


def public_addresses(instance: dict) -> int:
    """Public IPv4 addresses on an instance's interfaces (an Elastic IP is one of them)."""
    found = set()
    for interface in instance.get("NetworkInterfaces", []):
        for private in interface.get("PrivateIpAddresses", []):
            if private.get("Association", {}).get("PublicIp"):
                found.add(private["Association"]["PublicIp"])
        if interface.get("Association", {}).get("PublicIp"):
            found.add(interface["Association"]["PublicIp"])
    if instance.get("PublicIpAddress"):
        found.add(instance["PublicIpAddress"])
    return len(found)


def on_demand_price(pricing, region: str, instance_type: str) -> float:
    """Linux, shared tenancy, USD per hour, from the Pricing API."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
               "preInstalledSw": "NA", "capacitystatus": "Used"}  # fmt: skip
    answer = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in filters.items()],
        MaxResults=1,
    )
    for product in answer["PriceList"]:
        for term in json.loads(product)["terms"]["OnDemand"].values():
            for dimension in term["priceDimensions"].values():
                return float(dimension["pricePerUnit"]["USD"])
    raise LookupError(f"no on-demand price for {instance_type} in {region}")


class CostMeter:
    """One round at a time: what the cluster spent since the last, added to what it had spent."""

    def __init__(self, *, ec2, ssm, pricing_client, cluster: str, region: str, cap_usd: float,
                 state_parameter: str, spend_parameter: str, volume_gb: int, clock=time.time) -> None:  # fmt: skip
        self.ec2, self.ssm, self.pricing_client = ec2, ssm, pricing_client
        self.cluster, self.region, self.cap_usd, self.volume_gb = cluster, region, cap_usd, volume_gb
        self.state_parameter, self.spend_parameter, self.clock = state_parameter, spend_parameter, clock
        self.on_demand: dict[str, float] = {}
        self.spend: Spend | None = None

    def _parameter(self, name: str) -> str:
        return self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]

    def _started(self) -> int:
        first = self._parameter(self.state_parameter).split(" ", 1)[0]
        if not first.isdigit():
            raise LookupError(f"the cluster's state is {first!r}, not its start")
        return int(first)

    def _instances(self) -> list[dict]:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": "tag:DaskCluster", "Values": [self.cluster]},
                {"Name": "instance-state-name", "Values": ACTIVE_STATES},
            ]
        )
        return [i for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]]

    def _spot_prices(self, types: set[str]) -> dict[tuple[str, str], float]:
        """The current spot price of each (zone, type)."""
        if not types:
            return {}
        now = datetime.datetime.now(datetime.UTC)
        pages = self.ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=sorted(types), ProductDescriptions=["Linux/UNIX"], StartTime=now
        )
        prices = {}
        for page in pages:
            for entry in page["SpotPriceHistory"]:
                prices[entry["AvailabilityZone"], entry["InstanceType"]] = float(entry["SpotPrice"])
        return prices

    def _hourly(self, instance: dict, spot: dict) -> float:
        kind, zone = instance["InstanceType"], instance["Placement"]["AvailabilityZone"]
        if instance.get("InstanceLifecycle") == "spot":
            if (zone, kind) not in spot:
                raise LookupError(f"no spot price for {kind} in {zone}")
            price = spot[zone, kind]
        else:
            if kind not in self.on_demand:
                self.on_demand[kind] = on_demand_price(self.pricing_client(), self.region, kind)
            price = self.on_demand[kind]
        volume = self.volume_gb * GP3_USD_PER_GB_MONTH / HOURS_PER_MONTH
        return price + volume + public_addresses(instance) * PUBLIC_IPV4_USD_PER_HOUR

    def meter(self) -> tuple[Spend, bool]:
        """One round: the spend, kept in SSM, and whether it just passed WARN_AT of the cap."""
        if self.spend is None:
            started = self._started()
            self.spend = Spend.kept(self._parameter(self.spend_parameter), started, self.cap_usd)
        now, spend = self.clock(), self.spend
        instances = self._instances()
        spot = self._spot_prices({i["InstanceType"] for i in instances if i.get("InstanceLifecycle") == "spot"})
        added = 0.0
        for instance in instances:
            since = max(spend.metered_at, instance["LaunchTime"].timestamp())
            added += self._hourly(instance, spot) * max(0.0, now - since) / 3600
        warn = not spend.warned and spend.spent_usd + added >= WARN_AT * self.cap_usd
        kept = Spend(**{**asdict(spend), "spent_usd": spend.spent_usd + added, "metered_at": now,
                        "warned": spend.warned or warn, "ended": spend.spent_usd + added >= self.cap_usd})  # fmt: skip
        self.ssm.put_parameter(Name=self.spend_parameter, Value=json.dumps(asdict(kept)), Type="SecureString",
                               Overwrite=True)  # fmt: skip
        self.spend = kept
        return kept, warn


class CostCap:
    """The scheduler's side: a round in a thread, its event, and the close at the cap."""

    def __init__(self, scheduler, meter: CostMeter, close_delay: float = CLOSE_DELAY_SECONDS) -> None:
        self.scheduler, self.meter, self.close_delay = scheduler, meter, close_delay
        self.closing = False
        self.failing: str | None = None

    async def check(self) -> None:
        if self.closing:
            return
        try:
            spend, warn = await asyncio.to_thread(self.meter.meter)
        except Exception as error:  # AWS unreachable or throttled, a price not found: the next round counts the time
            if str(error) != self.failing:
                log.warning("could not meter the cluster's spend this round (%s); the next round counts it", error)
            self.failing = str(error)
            return
        self.failing = None
        event = {"spent_usd": round(spend.spent_usd, 4), "cap_usd": spend.cap_usd, "metered_at": spend.metered_at,
                 "warning": warn, "ended": spend.ended}  # fmt: skip
        self.scheduler.log_event(TOPIC, event)
        log.info("the cluster has spent $%.4f of its $%.2f cap", spend.spent_usd, spend.cap_usd)
        if warn and not spend.ended:
            line = (f"the cluster has spent {100 * spend.spent_usd / spend.cap_usd:.0f}% of its cost cap "
                    f"(${spend.spent_usd:.2f} of ${spend.cap_usd:.2f}); it ends at the cap")  # fmt: skip
            log.warning(line)
            # Every Client shows a `warn` event's text as a warning (a notebook's too); a plain
            # string, never a pickle. spotsearch's searches say it their own way (CLIENT_WARNING).
            self.scheduler.log_event("warn", f"{CLIENT_WARNING}{line}")
        if spend.ended:
            self.closing = True
            log.info("cost cap of $%.2f reached ($%.4f spent): closing the scheduler", spend.cap_usd, spend.spent_usd)
            self.scheduler.log_event("warn", f"{CLIENT_WARNING}the cluster has reached its cost cap "
                                     f"(${spend.spent_usd:.2f} of ${spend.cap_usd:.2f}) and ends now")  # fmt: skip
            await asyncio.sleep(self.close_delay)
            self.scheduler._ongoing_background_tasks.call_soon(self.scheduler.close, reason="cluster-cost-cap")


def start(scheduler, *, cap_usd: float, cluster: str, region: str, state_parameter: str, spend_parameter: str,
          volume_gb: int, interval: float) -> None:  # fmt: skip
    """Meter the cluster's spend every `interval` seconds in `scheduler`, and close it at `cap_usd`."""
    import boto3

    meter = CostMeter(
        ec2=boto3.client("ec2", region_name=region),
        ssm=boto3.client("ssm", region_name=region),
        # The Pricing API answers in us-east-1 for every region; asked only for on-demand nodes.
        pricing_client=lambda: boto3.client("pricing", region_name="us-east-1"),
        cluster=cluster, region=region, cap_usd=cap_usd, state_parameter=state_parameter,
        spend_parameter=spend_parameter, volume_gb=volume_gb,
    )  # fmt: skip
    cap = CostCap(scheduler, meter)
    scheduler.periodic_callbacks["cluster-cost-cap"] = PeriodicCallback(cap.check, interval * 1000)
    scheduler._ongoing_background_tasks.call_soon(cap.check)  # the first round at once, not an interval later
    log.info("the cluster ends once it has spent $%.2f (metered every %.0f s)", cap_usd, interval)
