"""Cost figures of a run: spot prices from EC2 (moto plays it), node-hours, the estimate."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from spotsearch import cost


def test_lowest_spot_prices_come_from_describe_spot_price_history():
    """Each type's lowest price over its zones and over the pages of EC2's answer; moto answers
    with one fixed price per zone, so EC2's answers are given here, as EC2 words them."""
    import datetime

    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    now = datetime.datetime.now(datetime.UTC)

    def entry(kind: str, zone: str, price: str) -> dict:
        return {"InstanceType": kind, "AvailabilityZone": zone, "SpotPrice": price,
                "ProductDescription": "Linux/UNIX", "Timestamp": now}  # fmt: skip

    pages = [
        [entry("c6i.xlarge", "eu-west-1a", "0.0910"), entry("c5.xlarge", "eu-west-1a", "0.0650"),
         entry("c6i.xlarge", "eu-west-1b", "0.0702")],
        [entry("c6i.xlarge", "eu-west-1c", "0.0850"), entry("m6i.large", "eu-west-1b", "0.0400"),
         entry("c5.xlarge", "eu-west-1c", "0.0610")],
    ]  # fmt: skip
    with Stubber(ec2) as stub:
        stub.add_response("describe_spot_price_history", {"SpotPriceHistory": pages[0], "NextToken": "page-2"})
        stub.add_response("describe_spot_price_history", {"SpotPriceHistory": pages[1], "NextToken": ""})
        prices = cost.lowest_spot_prices(ec2, ["c6i.xlarge", "c5.xlarge", "m6i.large", "c6i.xlarge"])
        stub.assert_no_pending_responses()
    assert prices == {"c6i.xlarge": 0.0702, "c5.xlarge": 0.0610, "m6i.large": 0.0400}


@mock_aws
def test_spot_prices_are_asked_for_linux_now_once_per_type(monkeypatch):
    """What is asked of EC2 (moto checks the request's shape): each type once, Linux, from now."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    asked = []
    ec2.meta.events.register(
        "provide-client-params.ec2.DescribeSpotPriceHistory", lambda params, **_: asked.append(params)
    )
    prices = cost.lowest_spot_prices(ec2, ["c6i.xlarge", "c5.xlarge", "m6i.large", "c6i.xlarge"])
    assert set(prices) == {"c6i.xlarge", "c5.xlarge", "m6i.large"} and all(price > 0 for price in prices.values())
    (params,) = asked
    assert params["InstanceTypes"] == ["c5.xlarge", "c6i.xlarge", "m6i.large"]
    assert params["ProductDescriptions"] == ["Linux/UNIX"] and "StartTime" in params


def test_estimate_prices_workers_and_a_spot_scheduler_at_the_average_of_their_types():
    prices = {"c6i.xlarge": 0.08, "c5.xlarge": 0.06, "m6i.large": 0.04, "m5.large": 0.05}
    estimate = cost.estimate(
        prices=prices, worker_types=["c6i.xlarge", "c5.xlarge"], scheduler_types=["m6i.large", "m5.large"],
        scheduler_market="spot", worker_node_seconds=4 * 1800, seconds=1800,
    )  # fmt: skip
    assert estimate["node_hours"] == 2.5  # (4 workers + the scheduler) x half an hour
    assert estimate["worker_node_hours"] == 2.0
    assert estimate["estimated_cost_usd"] == pytest.approx(0.07 * 2.0 + 0.045 * 0.5)
    assert estimate["notes"] == []


def test_worker_nodes_that_came_and_went_are_priced_for_their_own_time():
    """An adaptive cluster: 1 node for the whole half hour, 3 more for 10 minutes of it."""
    estimate = cost.estimate(
        prices={"c6i.xlarge": 0.06, "m6i.large": 0.04}, worker_types=["c6i.xlarge"], scheduler_types=["m6i.large", "m5.large"],
        scheduler_market="spot", worker_node_seconds=1800 + 3 * 600, seconds=1800,
    )  # fmt: skip
    assert estimate["worker_node_hours"] == 1.0 and estimate["node_hours"] == 1.5
    assert estimate["estimated_cost_usd"] == pytest.approx(0.06 * 1.0 + 0.04 * 0.5)


def test_estimate_says_what_it_leaves_out():
    estimate = cost.estimate(
        prices={}, worker_types=["c6i.xlarge"], scheduler_types=["m6i.large", "m5.large"],
        scheduler_market="on-demand", worker_node_seconds=2 * 3600, seconds=3600,
    )  # fmt: skip
    assert estimate["estimated_cost_usd"] == 0
    assert estimate["notes"] == ["no spot price found for the worker types", "the on-demand scheduler is not included"]
    assert "(no spot price found for the worker types; the on-demand scheduler is not included)" in cost.summary_line(
        estimate
    )


def test_missing_credentials_do_not_fail_the_run(monkeypatch, tmp_path):
    from spotsearch.cluster.connect import Where

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    basis = {
        "region": "eu-west-1",
        "worker_instance_types": ["c6i.xlarge"],
        "scheduler_instance_types": ["m6i.large", "m5.large"],
        "scheduler_market": "spot",
    }
    where = Where("remote", "tls://127.0.0.1:8786", None, 2, 8, "dask", basis)
    estimate = cost.for_where(where, 120, 60)
    assert estimate == {"error": "not estimated: Unable to locate credentials"}
    assert cost.summary_line(estimate) == "Cost: not estimated: Unable to locate credentials"
    assert cost.for_where(Where("local", "inproc://", None, 1, 2), 60, 60) is None


@mock_aws
def test_a_deployed_runs_estimate_prices_its_own_node_time_at_its_regions_spot_prices(monkeypatch):
    """for_where, end to end on moto's EC2: the outputs' types and market, the run's node time,
    rounded to 4 digits as the summary keeps it."""
    from spotsearch.cluster.connect import Where

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    basis = {
        "region": "eu-west-1",
        "worker_instance_types": ["c6i.xlarge", "c5.xlarge"],
        "scheduler_instance_types": ["m6i.large"],
        "scheduler_market": "spot",
    }
    prices = cost.lowest_spot_prices(
        boto3.client("ec2", region_name="eu-west-1"), ["c6i.xlarge", "c5.xlarge", "m6i.large"]
    )
    estimate = cost.for_where(Where("remote", "tls://127.0.0.1:8786", None, 2, 8, "dask", basis), 100, 50)
    worker_price = (prices["c6i.xlarge"] + prices["c5.xlarge"]) / 2
    assert estimate == {
        "node_hours": round((100 + 50) / 3600, 4),
        "worker_node_hours": round(100 / 3600, 4),
        "estimated_cost_usd": round(worker_price * 100 / 3600 + prices["m6i.large"] * 50 / 3600, 4),
        "worker_price_usd_per_hour": pytest.approx(worker_price),
        "scheduler_price_usd_per_hour": pytest.approx(prices["m6i.large"]),
        "notes": [],
    }
    line = cost.summary_line(estimate)
    assert (
        line
        == f"Cost: {estimate['node_hours']:.3f} node-hours, about USD {estimate['estimated_cost_usd']:.4f} at current spot prices"
    )
    assert cost.for_where(Where("remote", "tls://127.0.0.1:8786", None, 2, 8, "dask", None), 100, 50) is None, (
        "a scheduler given by address: no outputs to price it with"
    )


def test_an_on_demand_scheduler_is_left_out_even_when_its_types_have_spot_prices():
    estimate = cost.estimate(
        prices={"c6i.xlarge": 0.06, "m6i.large": 0.04}, worker_types=["c6i.xlarge"], scheduler_types=["m6i.large"],
        scheduler_market="on-demand", worker_node_seconds=3600, seconds=3600,
    )  # fmt: skip
    assert estimate["scheduler_price_usd_per_hour"] is None and estimate["estimated_cost_usd"] == pytest.approx(0.06)
    assert estimate["notes"] == ["the on-demand scheduler is not included"]
