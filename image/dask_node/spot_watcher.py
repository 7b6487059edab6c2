"""Spot interruption watcher, run on every node next to Dask.

EC2 announces a spot interruption two minutes ahead in the instance metadata
(`spot/instance-action`). On a worker node this retires the node's Dask workers at once:
the scheduler copies their results to other workers and reschedules their running tasks,
well inside the two minutes, and the Auto Scaling group's capacity rebalancing brings a
replacement. On the scheduler node it takes the instance out of the scheduler's group of one
without lowering its size: the group launches the next scheduler at once, which boots during
those two minutes and takes over the scheduler's address when this instance is gone.

    python -m dask_node.spot_watcher --role worker --scheduler tls://10.0.1.5:8786 --tls-dir /etc/dask/tls
    python -m dask_node.spot_watcher --role scheduler --group dask-dask-scheduler --region us-east-1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request

from dask_node import tls

METADATA_URL = "http://169.254.169.254"
POLL_SECONDS = 5.0
log = logging.getLogger("spot-watcher")


class Metadata:
    """Instance metadata over IMDSv2: a session token on every read."""

    def __init__(self, base_url: str = METADATA_URL, timeout: float = 2.0) -> None:
        if not base_url.startswith("http://"):
            raise ValueError(f"--metadata-url: must be an http:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _token(self) -> str:
        request = urllib.request.Request(  # noqa: S310 (http:// checked in __init__)
            f"{self.base_url}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            return response.read().decode()

    def get(self, path: str) -> str | None:
        """The value at meta-data/<path>, or None where there is none (HTTP 404)."""
        request = urllib.request.Request(  # noqa: S310 (http:// checked in __init__)
            f"{self.base_url}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._token()}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.read().decode()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise


def wait_for_notice(metadata: Metadata, interval: float = POLL_SECONDS) -> dict:
    """Poll until EC2 announces an interruption; returns the notice ({"action", "time"})."""
    while True:
        try:
            notice = metadata.get("spot/instance-action")
        except OSError as error:  # metadata briefly unavailable: keep watching
            log.warning("instance metadata not reachable (%s); retrying", error)
            notice = None
        if notice:
            return json.loads(notice)
        time.sleep(interval)


def retire_local_workers(scheduler: str, security, host: str, timeout: float = 60.0) -> list[str]:
    """Gracefully retire every Dask worker of this host; returns their addresses.

    Over the scheduler's RPC with the worker's certificate, which may list workers and retire
    those of its own host, and nothing more (dask_node.trust): not as a Dask client."""
    import asyncio

    from distributed.comm.addressing import get_address_host

    async def retire() -> list[str]:
        async with tls.scheduler_rpc(scheduler, security, timeout=timeout) as remote:
            identity = await remote.identity(n_workers=-1)
            workers = [w for w in identity["workers"] if get_address_host(w) == host]
            if workers:
                # Moves their in-memory results to peers; running tasks go back to the queue.
                await remote.retire_workers(workers=workers, close_workers=True)
            return workers

    return asyncio.run(asyncio.wait_for(retire(), timeout))


def hand_over(group: str, instance: str, region: str) -> None:
    """Leave the scheduler's group, its size unchanged: it launches a replacement now rather than
    once EC2 has taken this instance. This instance keeps running (and serving) until then."""
    import boto3

    boto3.client("autoscaling", region_name=region).detach_instances(
        AutoScalingGroupName=group, InstanceIds=[instance], ShouldDecrementDesiredCapacity=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["scheduler", "worker"], required=True)
    parser.add_argument("--scheduler", help="the scheduler's address (workers only)")
    parser.add_argument("--tls-dir", help="the node's TLS folder (workers only)")
    parser.add_argument("--group", help="the scheduler's Auto Scaling group (scheduler only)")
    parser.add_argument("--region", help="the group's region (scheduler only)")
    parser.add_argument("--metadata-url", default=METADATA_URL)
    parser.add_argument("--interval", type=float, default=POLL_SECONDS)
    args = parser.parse_args(argv)
    if args.role == "worker" and not (args.scheduler and args.tls_dir):
        parser.error("--scheduler and --tls-dir are required for workers")
    if args.role == "scheduler" and not (args.group and args.region):
        parser.error("--group and --region are required for the scheduler")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s spot-watcher: %(message)s", stream=sys.stdout)

    metadata = Metadata(args.metadata_url)
    log.info("watching for spot interruption notices every %g s", args.interval)
    notice = wait_for_notice(metadata, args.interval)
    log.warning("spot interruption notice: %s at %s", notice.get("action"), notice.get("time"))
    if args.role == "scheduler":
        instance = metadata.get("instance-id")
        hand_over(args.group, instance, args.region)
        log.warning(
            "this scheduler (%s) left group %s, which launches its replacement now; it takes over the "
            "scheduler's address once this instance is gone at %s, and searches reconnect to it",
            instance, args.group, notice.get("time"),
        )  # fmt: skip
        return 0
    host = metadata.get("local-ipv4")
    retired = retire_local_workers(args.scheduler, tls.security(args.tls_dir, "worker"), host)
    log.warning("retired %d Dask worker(s) of %s before the interruption: %s", len(retired), host, ", ".join(retired))
    return 0


if __name__ == "__main__":
    sys.exit(main())
