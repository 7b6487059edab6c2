"""The cost cap (image/dask_node/cost_cap.py): its meter against moto (instances, spot prices,
SSM), the Pricing API's answer through botocore's Stubber, and its scheduler side on a stand-in.
The whole of it, a cluster ended at its cap, runs in the emulated deploy (test_emulated_cost_cap.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from dask_node import cost_cap

REGION, CLUSTER = "eu-west-1", "emu"
STATE, SPEND = "/dask-emu/cluster/state", "/dask-emu/cluster/spend"
VOLUME_GB = 30
SPOT = 0.00001  # moto's spot price for every type and zone
EXTRAS = VOLUME_GB * 0.08 / 730 + 0.005  # the root volume and one public address, per hour


@pytest.fixture
def aws():
    with mock_aws():
        ec2, ssm = boto3.client("ec2", region_name=REGION), boto3.client("ssm", region_name=REGION)
        yield SimpleNamespace(ec2=ec2, ssm=ssm)


def launch(aws, *, cluster: str = CLUSTER, spot: bool = True, kind: str = "c6i.xlarge") -> dict:
    extra = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    (instance,) = aws.ec2.run_instances(
        ImageId="ami-12c6146b", InstanceType=kind, MinCount=1, MaxCount=1, **extra,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "DaskCluster", "Value": cluster}]}],
    )["Instances"]  # fmt: skip
    return instance


def meter(aws, clock, cap: float = 20.0, pricing=None) -> cost_cap.CostMeter:
    return cost_cap.CostMeter(
        ec2=aws.ec2, ssm=aws.ssm, pricing_client=lambda: pricing, cluster=CLUSTER, region=REGION, cap_usd=cap,
        state_parameter=STATE, spend_parameter=SPEND, volume_gb=VOLUME_GB, clock=clock,
    )  # fmt: skip


def started(aws, at: float, value: str = "new") -> None:
    aws.ssm.put_parameter(Name=STATE, Value=f"{int(at)} 123.dkr.ecr/dask:abc", Type="SecureString", Overwrite=True)
    aws.ssm.put_parameter(Name=SPEND, Value=value, Type="SecureString", Overwrite=True)


def kept(aws) -> dict:
    return json.loads(aws.ssm.get_parameter(Name=SPEND, WithDecryption=True)["Parameter"]["Value"])


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_each_instance_of_the_cluster_costs_its_spot_price_volume_and_address_from_its_launch(aws):
    ours = [launch(aws), launch(aws)]
    launch(aws, cluster="other")  # another cluster's instance is not this cluster's spend
    gone = launch(aws)
    aws.ec2.terminate_instances(InstanceIds=[gone["InstanceId"]])
    launched = ours[0]["LaunchTime"].timestamp()
    started(aws, launched - 600)  # the cluster started 10 minutes before these nodes
    clock = Clock(launched + 3600)
    spend, warned = meter(aws, clock).meter()
    assert all(cost_cap.public_addresses(i) == 1 for i in ours)
    assert spend.spent_usd == pytest.approx(2 * (SPOT + EXTRAS), rel=1e-9)
    assert (warned, spend.ended, spend.metered_at) == (False, False, clock.now)
    assert kept(aws) == {"started": int(launched - 600), "spent_usd": spend.spent_usd, "metered_at": clock.now,
                         "cap_usd": 20.0, "warned": False, "ended": False}  # fmt: skip
    assert aws.ssm.get_parameter(Name=SPEND)["Parameter"]["Type"] == "SecureString"


def test_rounds_add_the_time_since_the_last_and_a_replacement_carries_the_spend_on(aws):
    launched = launch(aws)["LaunchTime"].timestamp()
    started(aws, launched)
    clock = Clock(launched + 1800)
    first = meter(aws, clock)
    first.meter()
    clock.now += 1800
    assert first.meter()[0].spent_usd == pytest.approx(SPOT + EXTRAS, rel=1e-9)
    # The scheduler is replaced: the next one reads what was kept and counts on from there.
    clock.now += 3600
    assert meter(aws, clock).meter()[0].spent_usd == pytest.approx(2 * (SPOT + EXTRAS), rel=1e-9)


def test_a_new_start_of_the_cluster_starts_its_spend_from_nothing(aws):
    launched = launch(aws)["LaunchTime"].timestamp()
    earlier = {"started": int(launched) - 90000, "spent_usd": 19.5, "metered_at": launched - 80000,
               "cap_usd": 20.0, "warned": True, "ended": True}  # fmt: skip
    started(aws, launched, value=json.dumps(earlier))
    spend, warned = meter(aws, Clock(launched + 3600)).meter()
    assert spend.spent_usd == pytest.approx(SPOT + EXTRAS, rel=1e-9) and not spend.ended and not warned


def test_a_round_that_fails_adds_nothing_and_the_next_counts_its_time(aws, monkeypatch):
    launched = launch(aws)["LaunchTime"].timestamp()
    started(aws, launched)
    clock = Clock(launched + 1200)
    m = meter(aws, clock)
    m.meter()
    clock.now += 1200
    with monkeypatch.context() as patch:
        patch.setattr(m, "_spot_prices", lambda types: (_ for _ in ()).throw(OSError("throttled")))
        with pytest.raises(OSError):
            m.meter()
    assert kept(aws)["metered_at"] == launched + 1200
    clock.now += 1200
    assert m.meter()[0].spent_usd == pytest.approx(SPOT + EXTRAS, rel=1e-9)


def test_a_spot_instance_without_a_price_fails_the_round_rather_than_counting_nothing(aws):
    instance = launch(aws)
    started(aws, instance["LaunchTime"].timestamp())
    m = meter(aws, Clock(instance["LaunchTime"].timestamp() + 60))
    m._spot_prices = lambda types: {}
    with pytest.raises(LookupError, match=r"no spot price for c6i\.xlarge in eu-west-1a"):
        m.meter()


def test_the_warning_comes_once_at_80_percent_and_the_cap_ends_it(aws):
    launched = launch(aws)["LaunchTime"].timestamp()
    started(aws, launched)
    cap = SPOT + EXTRAS  # an hour's worth
    clock = Clock(launched + 0.5 * 3600)
    m = meter(aws, clock, cap=cap)
    assert m.meter()[1:] == (False,) and not m.spend.ended
    clock.now = launched + 0.85 * 3600
    assert m.meter()[1] is True
    clock.now = launched + 0.9 * 3600
    assert m.meter()[1] is False and not m.spend.ended
    clock.now = launched + 1.01 * 3600
    spend, warned = meter(aws, clock, cap=cap).meter()  # a replacement does not warn again
    assert spend.ended and not warned and kept(aws)["ended"] is True
    # A redeploy that raises the cap replaces the scheduler: it warns at 80% of the new cap.
    clock.now += 60
    spend, warned = meter(aws, clock, cap=spend.spent_usd / 0.85).meter()
    assert warned and not spend.ended


def test_an_on_demand_instance_costs_its_price_from_the_pricing_api(aws):
    launched = launch(aws, spot=False, kind="m6i.large")["LaunchTime"].timestamp()
    started(aws, launched)
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    product = {"terms": {"OnDemand": {"T": {"priceDimensions": {"D": {"pricePerUnit": {"USD": "0.0960000000"}}}}}}}
    with Stubber(pricing) as stub:
        stub.add_response(
            "get_products",
            {"PriceList": [json.dumps(product)], "FormatVersion": "aws_v1"},
            {"ServiceCode": "AmazonEC2", "MaxResults": 1, "Filters": [
                {"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
                    ("instanceType", "m6i.large"), ("regionCode", REGION), ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]},
        )  # fmt: skip
        m = meter(aws, Clock(launched + 3600), pricing=pricing)
        assert m.meter()[0].spent_usd == pytest.approx(0.096 + EXTRAS, rel=1e-9)
        m.clock.now += 3600
        assert m.meter()[0].spent_usd == pytest.approx(2 * (0.096 + EXTRAS), rel=1e-9)  # asked once: the stub has one
        stub.assert_no_pending_responses()


def test_public_addresses_count_an_elastic_ip_on_a_second_interface():
    instance = {
        "PublicIpAddress": "198.51.100.1",
        "NetworkInterfaces": [
            {"Association": {"PublicIp": "198.51.100.1"}, "PrivateIpAddresses": [{"Association": {"PublicIp": "198.51.100.1"}}]},
            {"Association": {"PublicIp": "203.0.113.9"}, "PrivateIpAddresses": [{}]},
        ],
    }  # fmt: skip
    assert cost_cap.public_addresses(instance) == 2
    assert cost_cap.public_addresses({"NetworkInterfaces": [{"PrivateIpAddresses": [{}]}]}) == 0
    # Each place an address shows on its own: a secondary private address's, the instance's.
    secondary = {"NetworkInterfaces": [{"PrivateIpAddresses": [{}, {"Association": {"PublicIp": "192.0.2.4"}}]}]}
    assert cost_cap.public_addresses(secondary) == 1
    assert cost_cap.public_addresses({"PublicIpAddress": "192.0.2.5"}) == 1


class FakeScheduler:
    def __init__(self) -> None:
        self.events, self.closed = [], []
        self._ongoing_background_tasks = SimpleNamespace(call_soon=lambda f, **kw: self.closed.append((f, kw)))

    def log_event(self, topic, message) -> None:
        self.events.append((topic, message))

    async def close(self, **kw) -> None:  # pragma: no cover - only scheduled
        pass


class FakeMeter:
    def __init__(self, *rounds) -> None:
        self.rounds, self.calls = list(rounds), 0

    def meter(self):
        self.calls += 1
        result = self.rounds.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def spend(spent: float, *, ended: bool = False) -> cost_cap.Spend:
    return cost_cap.Spend(started=1, spent_usd=spent, metered_at=100.0, cap_usd=20.0, warned=spent >= 16, ended=ended)


def test_each_round_is_an_event_and_the_cap_closes_the_scheduler_with_the_line_its_node_reads(caplog):
    scheduler = FakeScheduler()
    cap = cost_cap.CostCap(
        scheduler, close_delay=0, meter=FakeMeter((spend(3.0), False), OSError("throttled"), (spend(16.5), True), (spend(20.01, ended=True), False))
    )  # fmt: skip
    with caplog.at_level("INFO", logger="distributed.scheduler.cost-cap"):
        for _ in range(4):
            asyncio.run(cap.check())
    assert scheduler.events == [
        (cost_cap.TOPIC, {"spent_usd": 3.0, "cap_usd": 20.0, "metered_at": 100.0, "warning": False, "ended": False}),
        (cost_cap.TOPIC, {"spent_usd": 16.5, "cap_usd": 20.0, "metered_at": 100.0, "warning": True, "ended": False}),
        ("warn", "max_cost_usd: the cluster has spent 82% of its cost cap ($16.50 of $20.00); it ends at the cap"),
        (cost_cap.TOPIC, {"spent_usd": 20.01, "cap_usd": 20.0, "metered_at": 100.0, "warning": False, "ended": True}),
        ("warn", "max_cost_usd: the cluster has reached its cost cap ($20.01 of $20.00) and ends now"),
    ]
    assert scheduler.closed == [(scheduler.close, {"reason": "cluster-cost-cap"})]
    assert "cost cap of $20.00 reached ($20.0100 spent): closing the scheduler" in caplog.text
    assert "could not meter the cluster's spend this round (throttled)" in caplog.text
    assert "the cluster has spent 82% of its cost cap ($16.50 of $20.00)" in caplog.text
    asyncio.run(cap.check())  # closing: no more rounds
    assert len(scheduler.events) == 5 and cap.meter.calls == 4


def test_the_stacks_options_are_the_ones_the_preload_takes():
    """Dask allows one preload with options: idle_shutdown takes the cap's too, all or none."""
    from click import UsageError

    from dask_node import idle_shutdown
    from stacks.config import parse_cluster
    from stacks.userdata import cost_cap_options, scheduler_command

    settings = parse_cluster("emu", {"allowed_cidrs": ["10.0.0.0/8"], "max_cost_usd": 7.5, "root_volume_gb": 40})
    command = scheduler_command(settings)
    assert [o for o in command if o.startswith("--preload")] == [
        "--preload=dask_node.trust", "--preload=dask_node.idle_shutdown"
    ], "a second preload with options stops `dask scheduler`"  # fmt: skip
    options = [o for o in command if o.startswith(("--cluster-", "--cost-"))]
    assert options[-len(cost_cap_options(settings)) :] == cost_cap_options(settings)
    assert idle_shutdown.dask_setup.make_context("dask_setup", list(options)).params == {
        "cluster_idle_seconds": 1800.0, "cluster_boot_grace_seconds": 900.0, "jupyter_port": None,
        "cost_cap_usd": 7.5, "cost_cluster": "emu", "cost_region": "us-east-1",
        "cost_state_parameter": "/dask-emu/cluster/state", "cost_spend_parameter": "/dask-emu/cluster/spend",
        "cost_volume_gb": 40, "cost_interval": 60.0,
    }  # fmt: skip
    started = []
    idle = idle_shutdown.dask_setup.make_context("dask_setup", options[:2])
    idle_shutdown.cost_cap.start, before = (lambda scheduler, **kw: started.append(kw)), idle_shutdown.cost_cap.start
    try:
        scheduler = SimpleNamespace(periodic_callbacks={})
        idle_shutdown.dask_setup.callback(scheduler, **idle.params)
        assert started == [] and list(scheduler.periodic_callbacks) == ["cluster-idle-shutdown"]
        full = idle_shutdown.dask_setup.make_context("dask_setup", list(options))
        idle_shutdown.dask_setup.callback(scheduler, **full.params)
        assert started == [{"cap_usd": 7.5, "cluster": "emu", "region": "us-east-1", "state_parameter":
                            "/dask-emu/cluster/state", "spend_parameter": "/dask-emu/cluster/spend",
                            "volume_gb": 40, "interval": 60.0}]  # fmt: skip
        partial = idle_shutdown.dask_setup.make_context("dask_setup", [*options[:2], "--cost-cap-usd=5"])
        with pytest.raises(UsageError, match="--cost-cap-usd needs --cost-cluster"):
            idle_shutdown.dask_setup.callback(scheduler, **partial.params)
    finally:
        idle_shutdown.cost_cap.start = before


def test_a_failing_round_is_logged_once_until_it_fails_otherwise_or_succeeds(caplog):
    scheduler = FakeScheduler()
    throttled = OSError("throttled")
    cap = cost_cap.CostCap(scheduler, close_delay=0, meter=FakeMeter(
        throttled, OSError("throttled"), OSError("no route"), (spend(1.0), False), OSError("throttled")))  # fmt: skip
    with caplog.at_level("WARNING", logger="distributed.scheduler.cost-cap"):
        for _ in range(5):
            asyncio.run(cap.check())
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "could not meter the cluster's spend this round (throttled); the next round counts it",
        "could not meter the cluster's spend this round (no route); the next round counts it",
        "could not meter the cluster's spend this round (throttled); the next round counts it",
    ]


def test_an_instance_launched_after_the_meters_clock_adds_nothing(aws):
    """Clocks differ a little: an instance EC2 says launched a moment from now costs nothing yet."""
    launched = launch(aws)["LaunchTime"].timestamp()
    started(aws, launched - 60)
    assert meter(aws, Clock(launched - 0.5)).meter()[0].spent_usd == 0.0


def test_a_state_that_is_not_a_start_and_a_type_without_a_price_fail_the_round_naming_them(aws):
    aws.ssm.put_parameter(Name=STATE, Value="ended", Type="SecureString", Overwrite=True)
    aws.ssm.put_parameter(Name=SPEND, Value="new", Type="SecureString", Overwrite=True)
    with pytest.raises(LookupError, match="the cluster's state is 'ended', not its start"):
        meter(aws, Clock(0)).meter()
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(pricing) as stub:
        stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"})
        with pytest.raises(LookupError, match=r"no on-demand price for m6i\.large in eu-west-1"):
            cost_cap.on_demand_price(pricing, REGION, "m6i.large")
