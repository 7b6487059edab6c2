"""Settings from cdktf.json: defaults, and one clear line for every value we refuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stacks.config import DEFAULT_WORKER_TYPES, SettingsError, load_clusters, parse_cluster, parse_clusters

from .conftest import ALLOWED, ROOT


def test_only_the_allowed_networks_are_required():
    settings = parse_cluster("dask", {"allowed_cidrs": ALLOWED})
    assert settings.allowed_cidrs == tuple(ALLOWED)
    assert settings.scheduler_market == "spot"
    assert settings.worker_instance_types == DEFAULT_WORKER_TYPES
    assert len(settings.worker_instance_types) > 1, "several interchangeable types by default"
    assert len(settings.scheduler_instance_types) > 1, "a replacement scheduler needs spot pools to choose from"
    assert (settings.min_workers, settings.max_workers) == (0, 2), "adaptive from none to two nodes"
    assert settings.adaptive and settings.spot_max_price is None
    assert settings.resource_prefix == "dask-dask"


def test_settings_are_frozen():
    settings = parse_cluster("dask", {"allowed_cidrs": ALLOWED})
    with pytest.raises(AttributeError):
        settings.max_workers = 5  # type: ignore[misc]


BAD = [
    ({"workers": 0}, "clusters.dask.workers: must be a positive whole number, got 0"),
    ({"workers": -3}, "clusters.dask.workers: must be a positive whole number, got -3"),
    ({"workers": 2.5}, "clusters.dask.workers: must be a positive whole number, got 2.5"),
    ({"workers": "4"}, 'clusters.dask.workers: must be a positive whole number, got "4"'),
    ({"workers": 501}, "clusters.dask.workers: must be at most 500, got 501"),
    ({"workers": 3, "max_workers": 5}, "clusters.dask.max_workers: cannot be combined with workers (a fixed size); set min_workers and max_workers alone, got 5"),
    ({"workers": 3, "min_workers": 1}, "clusters.dask.min_workers: cannot be combined with workers (a fixed size); set min_workers and max_workers alone, got 1"),
    ({"min_workers": -1}, "clusters.dask.min_workers: must be a whole number from 0 to 500, got -1"),
    ({"min_workers": 1.5}, "clusters.dask.min_workers: must be a whole number from 0 to 500, got 1.5"),
    ({"min_workers": True}, "clusters.dask.min_workers: must be a whole number from 0 to 500, got true"),
    ({"max_workers": 0}, "clusters.dask.max_workers: must be a positive whole number, got 0"),
    ({"max_workers": 501}, "clusters.dask.max_workers: must be at most 500, got 501"),
    ({"min_workers": 3}, "clusters.dask.min_workers: must be at most max_workers (2), got 3"),
    ({"min_workers": 5, "max_workers": 4}, "clusters.dask.min_workers: must be at most max_workers (4), got 5"),
    ({"scheduler_market": "reserved"}, 'clusters.dask.scheduler_market: must be "spot" or "on-demand", got "reserved"'),
    ({"allowed_cidrs": ["10.0.0.300/32"]}, 'clusters.dask.allowed_cidrs: each entry must be a network such as 203.0.113.7/32, got "10.0.0.300/32"'),
    ({"allowed_cidrs": ["198.51.100.7/24"]}, 'clusters.dask.allowed_cidrs: has host bits set; the network is 198.51.100.0/24, or write the address as /32, got "198.51.100.7/24"'),
    ({"allowed_cidrs": ["203.0.113.7"]}, 'clusters.dask.allowed_cidrs: a single address needs its prefix length, write 203.0.113.7/32, got "203.0.113.7"'),
    ({"allowed_cidrs": ["2001:db8::7"]}, 'clusters.dask.allowed_cidrs: a single address needs its prefix length, write 2001:db8::7/128, got "2001:db8::7"'),
    ({"allowed_cidrs": ["0.0.0.0/0"]}, 'clusters.dask.allowed_cidrs: opens the cluster to 4.29e+09 IPv4 addresses, more than an IPv4 /8; set allow_public_access: true to insist, got "0.0.0.0/0"'),
    ({"allowed_cidrs": ["::/0"]}, 'clusters.dask.allowed_cidrs: opens the cluster to 3.4e+38 IPv6 addresses, more than an IPv6 /32; set allow_public_access: true to insist, got "::/0"'),
    ({"allowed_cidrs": ["0.0.0.0/1", "128.0.0.0/1"]}, 'clusters.dask.allowed_cidrs: opens the cluster to 4.29e+09 IPv4 addresses, more than an IPv4 /8; set allow_public_access: true to insist, got "0.0.0.0/1, 128.0.0.0/1"'),
    ({"allowed_cidrs": ["10.0.0.0/7"]}, "clusters.dask.allowed_cidrs: opens the cluster to 3.36e+07 IPv4 addresses, more than an IPv4 /8"),
    ({"allowed_cidrs": ["10.0.0.0/9", "11.0.0.0/9", "12.0.0.0/9"]}, "clusters.dask.allowed_cidrs: opens the cluster to 2.52e+07 IPv4 addresses"),
    ({"allowed_cidrs": ["2000::/3"]}, 'clusters.dask.allowed_cidrs: opens the cluster to 4.25e+37 IPv6 addresses, more than an IPv6 /32; set allow_public_access: true to insist, got "2000::/3"'),
    ({"allowed_cidrs": ["198.51.100.0/24", "198.51.100.0/24"]}, 'clusters.dask.allowed_cidrs: overlaps 198.51.100.0/24; AWS refuses duplicate rules, list each network once, got "198.51.100.0/24"'),
    ({"allowed_cidrs": ["198.51.100.0/24", "198.51.100.7/32"]}, 'clusters.dask.allowed_cidrs: overlaps 198.51.100.0/24; AWS refuses duplicate rules, list each network once, got "198.51.100.7/32"'),
    ({"allowed_cidrs": [f"198.51.100.{i}/32" for i in range(16)]}, "clusters.dask.allowed_cidrs: at most 15 networks fit the security group's rules, got 16"),
    ({"allowed_cidrs": []}, "clusters.dask.allowed_cidrs: add the networks allowed to reach the cluster, such as your public IP as 203.0.113.7/32, got []"),
    ({"allowed_cidrs": "198.51.100.0/24"}, 'clusters.dask.allowed_cidrs: must be a list of strings, got "198.51.100.0/24"'),
    ({"spot_max_price": "cheap"}, 'clusters.dask.spot_max_price: must be a positive price in USD per hour such as "0.25", got "cheap"'),
    ({"spot_max_price": "-0.1"}, 'clusters.dask.spot_max_price: must be a positive price in USD per hour such as "0.25", got "-0.1"'),
    ({"spot_max_price": "0"}, 'clusters.dask.spot_max_price: must be a positive price in USD per hour such as "0.25", got "0"'),
    ({"spot_max_price": True}, 'clusters.dask.spot_max_price: must be a price in USD per hour such as "0.25", got true'),
    ({"worker_instance_types": []}, "clusters.dask.worker_instance_types: must not be empty, got []"),
    ({"worker_instance_types": ["c6i.xlarge", "large"]}, 'clusters.dask.worker_instance_types: must be an EC2 instance type such as c6i.xlarge, got "large"'),
    ({"worker_instance_types": ["c7g.xlarge"]}, 'clusters.dask.worker_instance_types: is an Arm (Graviton) type; the image is built for linux/amd64, got "c7g.xlarge"'),
    ({"worker_instance_types": ["c6i.huge"]}, 'clusters.dask.worker_instance_types: is not an EC2 instance type (see `aws ec2 describe-instance-types`), got "c6i.huge"'),
    ({"worker_instance_types": ["c6i.xlarge", "c6i.xlarge"]}, 'clusters.dask.worker_instance_types: lists the same entry twice, got "c6i.xlarge"'),
    ({"worker_instance_types": ["mac2.metal"]}, 'clusters.dask.worker_instance_types: cannot run a node (dedicated hosts only, or a Xen-era type Amazon Linux 2023 cannot boot), got "mac2.metal"'),
    ({"worker_instance_types": ["u-6tb1.metal"]}, "clusters.dask.worker_instance_types: cannot run a node"),
    ({"scheduler_instance_types": ["t2.micro"]}, 'clusters.dask.scheduler_instance_types: cannot run a node (dedicated hosts only, or a Xen-era type Amazon Linux 2023 cannot boot), got "t2.micro"'),
    ({"scheduler_instance_types": ["m6i.large", "m6i.enormous"]}, 'clusters.dask.scheduler_instance_types: is not an EC2 instance type'),
    ({"scheduler_instance_types": ["t4g.small"]}, 'clusters.dask.scheduler_instance_types: is an Arm (Graviton) type; the image is built for linux/amd64, got "t4g.small"'),
    ({"scheduler_instance_types": "m6i.large"}, 'clusters.dask.scheduler_instance_types: must be a list of strings, got "m6i.large"'),
    ({"scheduler_instance_types": []}, "clusters.dask.scheduler_instance_types: must not be empty, got []"),
    ({"scheduler_instance_types": ["m5.large", "m5.large"]}, 'clusters.dask.scheduler_instance_types: lists the same entry twice, got "m5.large"'),
    # The setting of earlier versions: named, with what to write instead.
    ({"scheduler_instance_type": "m6i.large"}, 'clusters.dask.scheduler_instance_type: was renamed; write scheduler_instance_types, a list such as ["m6i.large", "m6a.large"], got "m6i.large"'),
    ({"region": "Europe"}, 'clusters.dask.region: must be an AWS region such as eu-west-1, got "Europe"'),
    ({"region": "eu-west"}, 'clusters.dask.region: must be an AWS region such as eu-west-1, got "eu-west"'),
    ({"region": "us-east-9"}, 'clusters.dask.region: must be an AWS region such as eu-west-1, got "us-east-9"'),
    ({"region": "eu-westt-1"}, 'clusters.dask.region: must be an AWS region such as eu-west-1, got "eu-westt-1"'),
    ({"idle_timeout_minutes": 0}, "clusters.dask.idle_timeout_minutes: must be a positive whole number, got 0"),
    ({"max_lifetime_hours": 1000}, "clusters.dask.max_lifetime_hours: must be at most 336, got 1000"),
    ({"max_cost_usd": 0}, "clusters.dask.max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got 0"),
    ({"max_cost_usd": "20"}, 'clusters.dask.max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got "20"'),
    ({"max_cost_usd": True}, "clusters.dask.max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got true"),
    ({"max_cost_usd": -1.5}, "clusters.dask.max_cost_usd: must be an amount of USD above 0 and at most 100000, such as 20, got -1.5"),
    ({"worker_processes": "many"}, 'clusters.dask.worker_processes: must be a positive whole number, got "many"'),
    ({"worker_threads": 0}, "clusters.dask.worker_threads: must be a positive whole number, got 0"),
    ({"root_volume_gb": -1}, "clusters.dask.root_volume_gb: must be a positive whole number, got -1"),
    ({"root_volume_gb": 4}, "clusters.dask.root_volume_gb: must be at least 8 (the size of Amazon Linux 2023's root snapshot), got 4"),
    ({"root_volume_gb": 20000}, "clusters.dask.root_volume_gb: must be at most 16384, got 20000"),
    ({"subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef0"]}, 'clusters.dask.subnet_ids: lists the same entry twice, got "subnet-0123456789abcdef0"'),
    ({"subnet_ids": ["vpc-123"]}, 'clusters.dask.subnet_ids: each entry must be a subnet id such as subnet-0abc12345def67890, got "vpc-123"'),
    ({"tags": {"aws:owner": "me"}}, 'clusters.dask.tags: tag names must be 1-128 letters, digits, spaces or _.:/=+-@ and not start with aws:, got "aws:owner"'),
    ({"tags": {"cost#center": "ml"}}, 'clusters.dask.tags: tag names must be 1-128 letters, digits, spaces or _.:/=+-@ and not start with aws:, got "cost#center"'),
    ({"tags": {"x" * 129: "ml"}}, "clusters.dask.tags: tag names must be 1-128 letters"),
    ({"tags": {"contact": 7}}, "clusters.dask.tags.contact: must be a string of at most 256 letters, digits, spaces or _.:/=+-@, got 7"),
    ({"tags": {"contact": "<me>"}}, 'clusters.dask.tags.contact: must be a string of at most 256 letters, digits, spaces or _.:/=+-@, got "<me>"'),
    ({"tags": {"Name": "mine"}}, 'clusters.dask.tags: Name is set by the stack itself; choose another tag name, got "Name"'),
    ({"tags": {"project": "x"}}, 'clusters.dask.tags: Project is set by the stack itself; choose another tag name, got "project"'),
    ({"tags": {f"t{i}": "v" for i in range(45)}}, "clusters.dask.tags: at most 44 tags (AWS allows 50 per resource; the stack sets 6), got 45"),
    ({"tags": {"daskminworkers": "9"}}, 'clusters.dask.tags: DaskMinWorkers is set by the stack itself; choose another tag name, got "daskminworkers"'),
    ({"jupyter": "yes"}, 'clusters.dask.jupyter: must be true or false, got "yes"'),
    ({"data_sources": "s3://my-data/train/"}, 'clusters.dask.data_sources: must be a list of strings, got "s3://my-data/train/"'),
    ({"data_sources": ["my-data/train/"]}, 'clusters.dask.data_sources: each entry must be an S3 location such as "s3://my-bucket/training-data/", got "my-data/train/"'),
    ({"data_sources": ["s3://my-data"]}, 'clusters.dask.data_sources: name a prefix (ending in /) or an object; the whole bucket is "s3://my-data/", got "s3://my-data"'),
    ({"data_sources": ["s3://My_Data/train/"]}, "clusters.dask.data_sources: the bucket name must be 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end, got"),
    ({"data_sources": ["s3://ab/train/"]}, "clusters.dask.data_sources: the bucket name must be 3-63"),
    ({"data_sources": ["s3://my..data/x/"]}, "clusters.dask.data_sources: the bucket name must be 3-63"),
    ({"data_sources": ["s3://10.0.0.1/x/"]}, 'clusters.dask.data_sources: a bucket name cannot be an IP address, got "s3://10.0.0.1/x/"'),
    ({"data_sources": ["s3://data--ol-s3/x/"]}, "clusters.dask.data_sources: the bucket name has a prefix or suffix S3 reserves"),
    ({"data_sources": ["s3://my-data/train*/"]}, "clusters.dask.data_sources: must not hold * ? or $: IAM would read them as wildcards or variables and widen the access, got"),
    ({"data_sources": ["s3://my-data/${aws:username}/"]}, "clusters.dask.data_sources: must not hold * ? or $"),
    ({"data_sources": ["s3://my-data/x?/"]}, "clusters.dask.data_sources: must not hold * ? or $"),
    ({"data_sources": ["s3://my-data//train/"]}, 'clusters.dask.data_sources: has an empty path segment (//), got "s3://my-data//train/"'),
    ({"data_sources": ["s3://my-data/" + "k" * 1025]}, "clusters.dask.data_sources: the key or prefix is longer than S3's 1024 bytes"),
    ({"data_sources": ["s3://my-data/a\tb/"]}, "clusters.dask.data_sources: holds a control character"),
    ({"data_sources": ["s3://my-data/a/", "s3://my-data/a/"]}, 'clusters.dask.data_sources: lists the same entry twice, got "s3://my-data/a/"'),
    ({"data_sources": ["s3://my-data/a/", "s3://my-data/a/b.csv"]}, 'clusters.dask.data_sources: is already inside s3://my-data/a/; keep one, got "s3://my-data/a/b.csv"'),
    ({"data_sources": [f"s3://my-data/{i}/" for i in range(21)]}, "clusters.dask.data_sources: at most 20 entries (name a common prefix instead), got 21"),
    ({"data_sources": [f"s3://my-data-{i}/" + "p" * 300 + "/" for i in range(20)]}, "clusters.dask.data_sources: too long for IAM's 10240-character role policy"),
    ({"wrokers": 3}, "clusters.dask: unknown setting"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"), BAD, ids=[next(iter(c)) + "=" + json.dumps(c[next(iter(c))]) for c, _ in BAD]
)
def test_bad_values_get_one_line_naming_setting_and_value(change, message):
    raw = {"allowed_cidrs": ALLOWED, **change}
    with pytest.raises(SettingsError) as caught:
        parse_cluster("dask", raw)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(message), f"expected {message!r}, got {text!r}"


def test_public_access_needs_an_explicit_opt_in():
    settings = parse_cluster("dask", {"allowed_cidrs": ["0.0.0.0/0"], "allow_public_access": True})
    assert settings.allowed_cidrs == ("0.0.0.0/0",)
    halves = parse_cluster("dask", {"allowed_cidrs": ["0.0.0.0/1", "128.0.0.0/1"], "allow_public_access": True})
    assert halves.allowed_cidrs == ("0.0.0.0/1", "128.0.0.0/1")


def test_networks_up_to_the_bound_need_no_opt_in():
    """A company's /8, a provider's IPv6 /32, and both families at once are not "the internet"."""
    for cidrs in (["10.0.0.0/8"], ["2001:db8::/32"], ["10.0.0.0/9", "11.0.0.0/9", "2001:db8::/33"]):
        assert parse_cluster("dask", {"allowed_cidrs": cidrs}).allowed_cidrs == tuple(cidrs)


def test_a_cluster_defined_twice_is_an_error(tmp_path):
    config = tmp_path / "cdktf.json"
    config.write_text(
        '{"context": {"clusters": {"dask": {"allowed_cidrs": ["198.51.100.0/24"]},'
        ' "dask": {"allowed_cidrs": ["198.51.100.0/24"], "workers": 9}}}}'
    )
    with pytest.raises(SettingsError, match=r'^cdktf.json: the key "dask" appears twice in one object; keep one$'):
        load_clusters(config)


def test_missing_cidrs_and_bad_cluster_names_are_named():
    with pytest.raises(SettingsError, match=r"^clusters\.dask\.allowed_cidrs: required"):
        parse_cluster("dask", {})
    for name in ("Big_One", "dask-", "a--b", "-a", "9lives", "a" * 21):
        with pytest.raises(SettingsError, match=rf'^clusters: cluster names must be .*, got "{name}"$'):
            parse_cluster(name, {"allowed_cidrs": ALLOWED})
    assert parse_cluster("team-a-2", {"allowed_cidrs": ALLOWED}).resource_prefix == "dask-team-a-2"
    with pytest.raises(SettingsError, match=r"^clusters: add at least one cluster"):
        parse_clusters({"clusters": {}})


def test_several_clusters_keep_file_order(tmp_path):
    config = tmp_path / "cdktf.json"
    clusters = {"big": {"allowed_cidrs": ALLOWED, "workers": 20}, "small": {"allowed_cidrs": ALLOWED}}
    config.write_text(json.dumps({"app": "python main.py", "context": {"clusters": clusters}}))
    assert [c.name for c in load_clusters(config)] == ["big", "small"]
    big, small = load_clusters(config)
    assert (big.min_workers, big.max_workers, big.adaptive) == (20, 20, False), "workers: a fixed size"
    assert (small.min_workers, small.max_workers) == (0, 2)


def test_worker_bounds_alone_make_an_adaptive_cluster():
    settings = parse_cluster("dask", {"allowed_cidrs": ALLOWED, "min_workers": 1, "max_workers": 8})
    assert (settings.min_workers, settings.max_workers, settings.adaptive) == (1, 8, True)
    fixed = parse_cluster("dask", {"allowed_cidrs": ALLOWED, "min_workers": 3, "max_workers": 3})
    assert not fixed.adaptive


def test_the_committed_config_asks_for_the_allowed_networks():
    """Out of the box nothing deploys until the user names the networks allowed in."""
    with pytest.raises(SettingsError, match=r"^clusters\.dask\.allowed_cidrs: add the networks"):
        load_clusters(ROOT / "cdktf.json")


def test_main_prints_one_line_and_exits_non_zero_on_bad_settings(tmp_path):
    """The app never reaches jsii with a bad value, so nothing is half-synthesized."""
    (tmp_path / "cdktf.json").write_text(
        json.dumps({"context": {"clusters": {"dask": {"allowed_cidrs": ALLOWED, "workers": 0}}}})
    )
    run = subprocess.run(
        [sys.executable, str(ROOT / "main.py")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stderr == "error: clusters.dask.workers: must be a positive whole number, got 0\n"
    assert not (tmp_path / "cdktf.out").exists()


def test_secrets_on_disk_stay_out_of_git():
    """outputs.json and the Terraform state hold the cluster's TLS keys."""
    paths = [
        "outputs.json",
        "terraform.dask.tfstate",
        "terraform.dask.tfstate.backup",
        "cdktf.out/stacks/dask/cdk.tf.json",
    ]
    run = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert run.stdout.split() == paths, f"not ignored: {set(paths) - set(run.stdout.split())}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", "cdktf.json: not UTF-8 text (byte 0xff at offset 0)"),
        (b"[1, 2]", 'cdktf.json: must hold a JSON object (with "context"), got [1, 2]'),
        (b'"clusters"', 'cdktf.json: must hold a JSON object (with "context"), got "clusters"'),
        (b'{"context": [1]}', "cdktf.json: context: must be an object, got [1]"),
        (b'{"context": {"clusters": {"' + b"a" * 1000 + b'": {}}}}', '"aaaaaaaaaaaa'),
        (b'{"context": {"clusters": {"dask": {"allowed_cidrs": ["' + b"9" * 1000 + b'"]}}}}', "(1002 chars)"),
    ],
    ids=["not UTF-8", "a list", "a string", "context a list", "a long name", "a long value"],
)
def test_the_file_is_read_as_bytes_and_every_shape_gets_one_short_line(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cdktf.json").write_bytes(content)
    with pytest.raises(SettingsError) as caught:
        load_clusters("cdktf.json")
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 300, text


def test_every_setting_given_is_the_setting_kept():
    """A full configuration, parsed: each value as written (lists as tuples), none swapped or lost."""
    raw = {
        "allowed_cidrs": ["0.0.0.0/0"], "allow_public_access": True, "region": "eu-west-1",
        "scheduler_market": "on-demand", "worker_instance_types": ["c6i.2xlarge", "c5.2xlarge"],
        "scheduler_instance_types": ["m6i.large"], "subnet_ids": ["subnet-0123456789abcdef0"],
        "min_workers": 1, "max_workers": 7, "spot_max_price": "0.35", "idle_timeout_minutes": 15,
        "max_lifetime_hours": 6, "worker_processes": 4, "worker_threads": "auto", "root_volume_gb": 8,
        "tags": {"team": "ml"}, "jupyter": True, "max_cost_usd": 12.5,
        "data_sources": ["s3://my-data/train/", "s3://other.data/2026/emails.parquet"],
    }  # fmt: skip
    settings = parse_cluster("lab", raw)
    kept = {name: getattr(settings, name) for name in raw}
    assert kept == {name: tuple(value) if isinstance(value, list) else value for name, value in raw.items()}
    assert settings.name == "lab"


AT_AND_PAST_THE_LIMIT = [
    # (setting, the largest or smallest value AWS (or the node) takes, one past it, the line for that)
    ("workers", 500, 501, "must be at most 500"),
    ("min_workers", 500, 501, "must be a whole number from 0 to 500"),
    ("idle_timeout_minutes", 1, 0, "must be a positive whole number"),
    ("max_lifetime_hours", 336, 337, "must be at most 336"),
    ("worker_threads", 256, 257, "must be at most 256"),
    ("root_volume_gb", 8, 7, "must be at least 8 (the size of Amazon Linux 2023's root snapshot)"),
    ("root_volume_gb", 16384, 16385, "must be at most 16384"),
    ("max_cost_usd", 100000, 100000.01, "must be an amount of USD above 0 and at most 100000, such as 20"),
]


@pytest.mark.parametrize(("setting", "limit", "past", "message"), AT_AND_PAST_THE_LIMIT)
def test_each_limit_is_taken_and_one_past_it_refused(setting, limit, past, message):
    extra = {"max_workers": 500} if setting == "min_workers" else {}
    settings = parse_cluster("dask", {"allowed_cidrs": ALLOWED, setting: limit, **extra})
    assert getattr(settings, setting if setting != "workers" else "max_workers") == limit
    with pytest.raises(SettingsError) as refused:
        parse_cluster("dask", {"allowed_cidrs": ALLOWED, setting: past, **extra})
    assert str(refused.value) == f"clusters.dask.{setting}: {message}, got {past}"


def test_counted_limits_are_taken_at_the_limit_and_refused_one_past_it():
    """AWS's counts: 15 networks (the security group's rules), 40 instance types (a mixed
    instances policy), 44 tags of the user's (50 per resource, 6 the stack's), tag keys of 128
    and values of 256 characters, cluster names of 20."""
    networks = [f"198.51.{i}.0/24" for i in range(16)]
    types = sorted(
        t for t in __import__("stacks.checks").checks.node_instance_types() if t.startswith(("c", "m", "r"))
    )[:41]
    tags = {f"t{i}": "v" for i in range(45)}
    cases = [
        ("allowed_cidrs", networks, "at most 15 networks fit the security group's rules, got 16"),
        ("worker_instance_types", types, "at most 40 types in an Auto Scaling group, got 41"),
        ("tags", tags, "at most 44 tags (AWS allows 50 per resource; the stack sets 6), got 45"),
    ]
    for setting, values, message in cases:
        within = values[:-1] if isinstance(values, list) else dict(list(values.items())[:-1])
        parse_cluster("dask", {"allowed_cidrs": ALLOWED, setting: within})
        with pytest.raises(SettingsError) as refused:
            parse_cluster("dask", {"allowed_cidrs": ALLOWED, setting: values})
        assert str(refused.value) == f"clusters.dask.{setting}: {message}"
    assert parse_cluster("dask", {"allowed_cidrs": ALLOWED, "tags": {"k" * 128: "v" * 256}}).tags == {
        "k" * 128: "v" * 256
    }
    with pytest.raises(SettingsError, match=r"^clusters\.dask\.tags: tag names must be 1-128 "):
        parse_cluster("dask", {"allowed_cidrs": ALLOWED, "tags": {"k" * 129: "v"}})
    with pytest.raises(SettingsError, match=r"^clusters\.dask\.tags\.k: must be a string of at most 256 "):
        parse_cluster("dask", {"allowed_cidrs": ALLOWED, "tags": {"k": "v" * 257}})
    assert parse_cluster("a" * 20, {"allowed_cidrs": ALLOWED}).name == "a" * 20
    with pytest.raises(SettingsError, match=r"at most 20, got \"a{21}\"$"):
        parse_cluster("a" * 21, {"allowed_cidrs": ALLOWED})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "clusters.dask: must be an object of settings, got [1]"),
        ({"allowed_cidrs": ALLOWED, "tags": ["a"]}, 'clusters.dask.tags: must be an object of tag names to values, got ["a"]'),
        ({"allowed_cidrs": ALLOWED, "spot_max_price": "1"}, None),
        ({"allowed_cidrs": ALLOWED, "spot_max_price": 0.5}, None),
    ],
)  # fmt: skip
def test_shapes_and_prices(raw, message):
    if message is None:
        assert parse_cluster("dask", raw).spot_max_price == str(raw["spot_max_price"])
        return
    with pytest.raises(SettingsError) as refused:
        parse_cluster("dask", raw)
    assert str(refused.value) == message
