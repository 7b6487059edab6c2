"""The client's packages against the cluster's, and stale node code (experiments/spotsearch/cluster/versions.py)."""

from __future__ import annotations

import json

import pytest

from spotsearch.cluster.messages import ClusterError
from spotsearch.cluster.versions import check_versions, version_mismatches

from .experiment_runs import (
    run_experiment,
)


def versions_of(**changes) -> dict:
    """One party's part of Client.get_versions(), with some versions changed."""
    base = {
        "python": "3.11.7.final.0",
        "dask": "2026.8.0",
        "distributed": "2026.8.0",
        "sklearn": "1.9.1",
        "numpy": "2.4.6",
        "cloudpickle": "3.1.3",
    }
    return {"packages": base | changes}


def test_version_mismatches_are_named():
    versions = {
        "client": versions_of(),
        "scheduler": versions_of(python="3.11.14.final.0"),  # a patch release pickles alike
        "workers": {
            "tls://10.0.0.5:40000": versions_of(numpy="2.3.0", sklearn="1.8.0"),
            "tls://10.0.0.6:40000": versions_of(numpy="2.3.0"),
        },
    }
    assert version_mismatches(versions) == [
        "scikit-learn: client 1.9.1, tls://10.0.0.5:40000 1.8.0",
        "numpy: client 2.4.6, tls://10.0.0.5:40000 2.3.0 (and 1 more)",
    ]
    versions["scheduler"] = versions_of(python="3.12.1.final.0")
    assert version_mismatches(versions)[0] == "python: client 3.11, scheduler 3.12"


def test_matching_versions_pass_on_a_real_cluster(loopback):
    with loopback.client(wait_for_nodes=2) as client:
        check_versions(client)  # raises ClusterError on any difference


def test_differing_versions_refuse_to_run_naming_them():
    class Cluster:  # stands in for a Client; only get_versions is asked for
        def get_versions(self, packages):
            assert packages == ["sklearn"]
            worker = {"tls://10.0.0.5:4000": versions_of(dask="2025.1.0")}
            return {"client": versions_of(), "scheduler": versions_of(), "workers": worker}

    with pytest.raises(ClusterError) as caught:
        check_versions(Cluster())
    assert str(caught.value) == (
        "client and cluster differ: dask: client 2026.8.0, tls://10.0.0.5:4000 2025.1.0 - install requirements.txt and redeploy"
    )


def test_stale_image_is_reported(loopback, tmp_path):
    outputs = loopback.outputs_file(tmp_path / "outputs.json")
    document = json.loads(outputs.read_text())
    document["loopback"]["image_uri"] = document["loopback"]["image_uri"].rpartition(":")[0] + ":0000000000000000"
    outputs.write_text(json.dumps(document))
    run = run_experiment(
        "--stack", "loopback", "--outputs", str(outputs), "--workers", "5", "--timeout", "1", cwd=tmp_path
    )
    assert (
        "warning: the nodes run image 0000000000000000, built from other node code (image/) than this checkout's"
        in run.stderr
    )
    assert "run `cdktf deploy` to ship your changes" in run.stderr
