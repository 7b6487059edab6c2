"""Worker node-minutes of a fixed cluster and of an adaptive one, for the same two searches ten
minutes apart, on the emulated deploy (root, `ip netns`; about 25 minutes).

    .venv/bin/python -m tests.emulated.measure_adaptive [--gap SECONDS] [--nodes N]

Both clusters have N worker nodes at most: fixed keeps N from the start, adaptive runs from
0 to N with the autoscaler's real pace (a round every 5 s, nodes go after 60 s of less work).
Each run: boot, search (svc_digits.py on the laptop), wait --gap, search again, then 90 s
more (what the adaptive cluster needs to shrink). The node-minutes counted are those of that
whole span, from moto's group as the emulated group saw it. Emulated nodes boot in seconds,
real ones in minutes: on AWS each adaptive scale-up adds that boot time to both the search and
the bill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def measure(raw: dict, gap: float, folder: Path) -> dict:
    from cdktf import Testing

    from stacks.config import parse_cluster
    from stacks.stack import DaskClusterStack
    from tests.emulated.harness import EmulatedDeploy

    settings = parse_cluster("emu", raw)
    document = json.loads(Testing.synth(DaskClusterStack(Testing.app(), "emu", settings=settings)))
    with EmulatedDeploy(settings, document, folder) as deploy:
        scheduler = deploy.boot("scheduler")
        scheduler.wait_until(lambda: "scheduler up" in scheduler.log(), 120, "scheduler up")
        deploy.start_group()
        outputs = deploy.write_outputs(folder / "outputs.json", "emu")
        start = time.monotonic()
        searches = []
        for n in range(2):
            began = time.monotonic()
            search = deploy.on_laptop(
                sys.executable, str(ROOT / "experiments" / "svc_digits.py"), "--stack", "emu", "--outputs",
                str(outputs), "--results", str(folder / f"results-{n}"), cwd=folder,
            )  # fmt: skip
            output, _ = search.communicate(timeout=900)
            assert search.returncode == 0, output
            searches.append(round(time.monotonic() - began, 1))
            time.sleep(gap if n == 0 else 90)
        end = time.monotonic()
        deploy.check_group()
        return {
            "worker_node_minutes": round(deploy.worker_node_seconds(start, end) / 60, 1),
            "span_minutes": round((end - start) / 60, 1),
            "search_seconds": searches,
            "peak_nodes": max(count for _, count, _ in deploy.group_history),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gap", type=float, default=600.0, help="seconds between the searches (default: 600)")
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes at most (default: 3)")
    args = parser.parse_args()
    base = {
        "allowed_cidrs": ["198.51.100.0/24"],
        "worker_processes": 1,
        "worker_threads": 2,
        "idle_timeout_minutes": 30,
    }
    results = {}
    for mode, bounds in (
        ("fixed", {"workers": args.nodes}),
        ("adaptive", {"min_workers": 0, "max_workers": args.nodes}),
    ):
        with tempfile.TemporaryDirectory(prefix=f"measure-{mode}-") as folder:
            results[mode] = measure({**base, **bounds}, args.gap, Path(folder))
        print(mode, json.dumps(results[mode]), flush=True)
    saved = 1 - results["adaptive"]["worker_node_minutes"] / results["fixed"]["worker_node_minutes"]
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "gap_seconds": args.gap,
                      **results, "adaptive_saves": f"{saved:.0%}"}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
