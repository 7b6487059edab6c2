"""The synthesized Terraform JSON: snapshots, and each security and spot property asserted."""

from __future__ import annotations

import json
import re

import pytest

from stacks.config import DASHBOARD_PORT, JUPYTER_PORT, SCHEDULER_PORT
from stacks.content import image_content_hash
from stacks.stack import AMI_PARAMETER

from .conftest import ROOT, terraform_outputs


def documented_outputs() -> tuple[set[str], set[str]]:
    """The outputs docs/deploying.md's table lists: those of every stack, and those of a stack
    with JupyterLab ("with `"jupyter": true`")."""
    section = (ROOT / "docs" / "deploying.md").read_text().split("## Outputs", 1)[1].split("\n## ", 1)[0]
    always, jupyter = set(), set()
    for row in re.findall(r"^\| (`.+?`) \| (.*) \|$", section, flags=re.M):
        names = set(re.findall(r"`(\w+)`", row[0]))
        (jupyter if row[1].startswith('with `"jupyter": true`') else always).update(names)
    return always, jupyter


SENSITIVE = {"tls_ca_pem", "tls_client_cert_pem", "tls_client_key_pem", "jupyter_token"}


def only(doc: dict, kind: str) -> dict:
    (resource,) = doc["resource"][kind].values()
    return resource


def of_role(doc: dict, kind: str, role: str) -> dict:
    """The launch template or Auto Scaling group of one node role."""
    (resource,) = [r for r in doc["resource"][kind].values() if r["name"].startswith("dask-") and role in r["name"]]
    return resource


def everything(doc: dict, kind: str) -> list[dict]:
    return list(doc["resource"].get(kind, {}).values())


def without_metadata(value):
    """Drop cdktf's per-resource metadata and the image content hash: snapshots must not
    churn whenever an experiment file changes (test_image_tag_is_the_content_hash covers it)."""
    text = json.dumps(value, sort_keys=True).replace(image_content_hash(), "<image-content-hash>")
    return json.loads(text)


@pytest.mark.parametrize("variant", ["default", "ondemand", "custom"])
def test_snapshot(variant, synthesized, snapshot):
    assert without_metadata(synthesized[variant]) == snapshot


def test_no_absolute_paths_or_timestamps(synthesized):
    text = json.dumps(synthesized)
    assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text
    assert not re.search(r"20\d\d-\d\d-\d\dT\d\d:", text), "a timestamp makes snapshots machine-dependent"


def test_outputs_follow_the_contract(synthesized, settings):
    for variant, doc in synthesized.items():
        outputs = doc["output"]
        always, jupyter = documented_outputs()
        assert "scheduler_address" in always and jupyter == {"jupyter_url", "jupyter_token"}, (
            "the control: the table is read"
        )
        expected = always | (jupyter if settings[variant].jupyter else set())
        assert set(outputs) == expected, f"{variant}: outputs differ from those docs/deploying.md lists under Outputs"
        for name in SENSITIVE & set(outputs):
            assert outputs[name].get("sensitive") is True, f"{variant}: {name} must be sensitive"
        for name in set(outputs) - SENSITIVE:
            assert not outputs[name].get("sensitive"), f"{variant}: {name} should be readable"
    outputs = synthesized["default"]["output"]
    # The scheduler's Elastic IP and interface: the same whichever instance runs the scheduler.
    assert re.fullmatch(r"tls://\$\{aws_eip\.[\w-]+\.public_ip\}:8786", outputs["scheduler_address"]["value"])
    assert re.fullmatch(
        r"tls://\$\{aws_network_interface\.[\w-]+\.private_ip\}:8786", outputs["scheduler_private_address"]["value"]
    )
    assert re.fullmatch(r"https://\$\{aws_eip\.[\w-]+\.public_ip\}:8787/status", outputs["dashboard_url"]["value"])
    assert outputs["workers"]["value"] == outputs["min_workers"]["value"] == "${local.min_worker_nodes}"
    assert outputs["max_workers"]["value"] == "${local.max_worker_nodes}"
    assert outputs["region"]["value"] == "us-east-1"


def test_provider_default_tags_reach_instances_and_volumes(synthesized):
    doc = synthesized["custom"]
    (provider,) = doc["provider"]["aws"]
    tags = provider["default_tags"][0]["tags"]
    assert tags["Department"] == "Data science" and tags["contact"] == "ml-team"
    assert provider["region"] == "eu-west-1"
    for role in ("scheduler", "worker"):
        template = of_role(doc, "aws_launch_template", role)
        kinds = {spec["resource_type"]: spec["tags"] for spec in template["tag_specifications"]}
        for kind in ("instance", "volume", "network-interface"):
            assert kind in kinds, f"{role} launch template does not tag {kind}s: default tags stop at the template"
            assert tags.items() <= kinds[kind].items(), f"{kind}s launched by the {role} group miss default tags"
            assert kinds[kind]["DaskRole"] == role
        group_tags = {t["key"]: t for t in of_role(doc, "aws_autoscaling_group", role)["tag"]}
        for key in tags:
            assert group_tags[key]["propagate_at_launch"] is True, f"{role} group tag {key} does not propagate"


def test_ami_is_looked_up_at_deploy_time(synthesized):
    doc = synthesized["default"]
    (parameter,) = doc["data"]["aws_ssm_parameter"].values()
    assert parameter["name"] == AMI_PARAMETER
    for template in everything(doc, "aws_launch_template"):
        assert template["image_id"].startswith("${data.aws_ssm_parameter.")
    assert not re.search(r'"ami-[0-9a-f]+"', json.dumps(doc)), "hard-coded AMI id"


def test_the_metadata_service_answers_the_hosts_network_only(synthesized):
    """IMDSv2 only, with a hop limit of 1: a container on Docker's bridge (JupyterLab) never gets
    a token back, so it cannot borrow the node's role (userdata/scheduler.sh.tftpl)."""
    for doc in synthesized.values():
        for template in everything(doc, "aws_launch_template"):
            assert template["metadata_options"] == {
                "http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1
            }  # fmt: skip


def ingress(doc: dict) -> list[dict]:
    return everything(doc, "aws_vpc_security_group_ingress_rule")


def test_dask_ports_only_from_allowed_networks_and_no_ssh(synthesized, settings):
    for variant, doc in synthesized.items():
        allowed = set(settings[variant].allowed_cidrs)
        ports = [SCHEDULER_PORT, DASHBOARD_PORT] + ([JUPYTER_PORT] if settings[variant].jupyter else [])
        for port in ports:
            sources = {r.get("cidr_ipv4") or r.get("cidr_ipv6") for r in ingress(doc) if r.get("from_port") == port}
            assert sources == allowed, f"{variant}: port {port} open to {sources}, expected {allowed}"
        for rule in ingress(doc):
            assert (
                rule.get("from_port") != 22 and rule["ip_protocol"] != "-1"
            ) or "referenced_security_group_id" in rule, (
                f"{variant}: rule {rule} opens more than the Dask ports to outside networks"
            )
            if "cidr_ipv4" in rule or "cidr_ipv6" in rule:
                assert rule["from_port"] == rule["to_port"] and rule["from_port"] in ports, f"{variant}: {rule}"
                assert rule.get("cidr_ipv4") != "0.0.0.0/0", f"{variant}: world-open rule {rule}"


def test_cluster_members_reach_each_other_on_any_port(synthesized):
    doc = synthesized["default"]
    group = "${aws_security_group." + next(iter(doc["resource"]["aws_security_group"])) + ".id}"
    internal = [r for r in ingress(doc) if r.get("referenced_security_group_id") == group]
    assert internal and internal[0]["ip_protocol"] == "-1", "workers cannot talk to each other"
    egress = everything(doc, "aws_vpc_security_group_egress_rule")
    assert any(r.get("referenced_security_group_id") == group and r["ip_protocol"] == "-1" for r in egress)
    outside = [r for r in egress if "cidr_ipv4" in r]
    assert all(r["from_port"] == r["to_port"] == 443 for r in outside), f"egress beyond HTTPS: {outside}"


def policy(resource: dict) -> dict:
    return json.loads(resource["policy"])


def test_one_role_per_node_kind_and_no_managed_policy(synthesized):
    """What each role may do is checked by evaluating it (tests/test_iam.py); here, the shape."""
    doc = synthesized["default"]
    roles = doc["resource"]["aws_iam_role"]
    assert sorted(r["name"] for r in roles.values()) == ["dask-default-scheduler", "dask-default-worker"]
    for role in roles.values():
        trust = json.loads(role["assume_role_policy"])
        assert trust["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]
    assert "aws_iam_role_policy_attachment" not in doc["resource"], "managed policies grant more than their names say"
    profiles = {p["name"]: key for key, p in doc["resource"]["aws_iam_instance_profile"].items()}
    assert set(profiles) == {"dask-default-scheduler", "dask-default-worker"}
    for role in ("scheduler", "worker"):
        assert of_role(doc, "aws_launch_template", role)["iam_instance_profile"] == {
            "arn": f"${{aws_iam_instance_profile.{profiles[f'dask-default-{role}']}.arn}}"
        }


def test_no_aws_access_keys_anywhere(synthesized):
    text = json.dumps(synthesized)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for forbidden in ("aws_access_key", "aws_secret", "access_key", "secret_key", "AWS_SECRET_ACCESS_KEY"):
        assert forbidden not in text, f"{forbidden} appears in the configuration"
    for doc in synthesized.values():
        assert "aws_iam_access_key" not in doc["resource"]
        for variable in doc["variable"]:
            assert "key" not in variable and "secret" not in variable


def test_ecr_repository_scans_is_immutable_and_is_destroyed_with_the_stack(synthesized):
    doc = synthesized["default"]
    repo = only(doc, "aws_ecr_repository")
    assert repo["image_scanning_configuration"]["scan_on_push"] is True
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert repo["force_delete"] is True
    rule = json.loads(only(doc, "aws_ecr_lifecycle_policy")["policy"])["rules"][0]
    assert rule["selection"]["countType"] == "imageCountMoreThan" and rule["action"]["type"] == "expire"


def test_image_is_built_for_amd64_and_pushed_by_deploy(synthesized):
    doc = synthesized["default"]
    build = only(doc, "docker_image")
    assert build["build"]["platform"] == "linux/amd64"
    assert build["build"]["dockerfile"] == "image/Dockerfile"
    push = only(doc, "docker_registry_image")
    assert push["name"].startswith("${docker_image.")
    (docker,) = doc["provider"]["docker"]
    auth = docker["registry_auth"][0]
    assert auth["password"].startswith("${data.aws_ecr_authorization_token."), (
        "ECR credentials must come from the token"
    )


def test_image_tag_is_the_content_hash(synthesized):
    doc = synthesized["default"]
    tag = image_content_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", tag)
    assert only(doc, "docker_image")["name"].endswith(f'"{tag}"])}}')
    assert only(doc, "docker_image")["triggers"] == {"content": tag}
    assert doc["output"]["image_uri"]["value"] == only(doc, "docker_image")["name"]
    for role in ("scheduler", "worker"):
        assert tag in of_role(doc, "aws_launch_template", role)["user_data"], f"the {role} must run exactly this image"


def test_node_keys_travel_through_secure_ssm_parameters_under_their_role(synthesized):
    doc = synthesized["default"]
    parameters = {p["name"]: p for p in everything(doc, "aws_ssm_parameter")}
    assert sorted(parameters) == sorted(
        ["/dask-default/cluster/state", "/dask-default/cluster/spend"]
        + [f"/dask-default/{role}/{name}" for role in ("scheduler", "worker") for name in ("ca.pem", f"{role}.key", f"{role}.pem")]
    )  # fmt: skip
    for role in ("scheduler", "worker"):
        key = parameters[f"/dask-default/{role}/{role}.key"]
        assert key["type"] == "SecureString"
        assert key["value"].startswith("${tls_private_key.") and f"{role}-key" in key["value"]
        assert parameters[f"/dask-default/{role}/{role}.pem"]["value"].startswith("${tls_locally_signed_cert.")
    assert "client.key" not in json.dumps(parameters), "the client key stays with the client"
    user_data = "".join(t["user_data"] for t in everything(doc, "aws_launch_template"))
    assert "tls_private_key" not in user_data and "private_key_pem" not in user_data


def test_tls_certificates_are_signed_by_the_cluster_ca_for_their_role_only(synthesized):
    doc = synthesized["default"]
    ca = only(doc, "tls_self_signed_cert")
    assert ca["is_ca_certificate"] is True and "cert_signing" in ca["allowed_uses"]
    certs = doc["resource"]["tls_locally_signed_cert"]
    assert len(certs) == 3
    uses = {}
    for cert in certs.values():
        assert cert["ca_cert_pem"].startswith("${tls_self_signed_cert.")
        (role,) = re.findall(r"tls_cert_request\.tls-material_(\w+)-csr", cert["cert_request_pem"])
        uses[role] = set(cert["allowed_uses"])
    assert uses == {
        "scheduler": {"digital_signature", "server_auth", "client_auth"},
        "worker": {"digital_signature", "server_auth", "client_auth"},
        "client": {"digital_signature", "client_auth"},
    }


def test_scheduler_is_a_spot_group_of_one_at_a_fixed_address(synthesized):
    doc = synthesized["default"]
    group = of_role(doc, "aws_autoscaling_group", "scheduler")
    assert (group["min_size"], group["max_size"], group["desired_capacity"]) == (0, 1, 1), (
        "one scheduler; the cluster's end sets it to 0"
    )
    distribution = group["mixed_instances_policy"]["instances_distribution"]
    assert (
        distribution["on_demand_base_capacity"] == 0 and distribution["on_demand_percentage_above_base_capacity"] == 0
    )
    assert distribution["spot_allocation_strategy"] == "price-capacity-optimized"
    override = group["mixed_instances_policy"]["launch_template"]["dynamic"]["override"]
    assert len(override["for_each"]) >= 3, "several types: a replacement finds spot capacity in some pool"
    assert "capacity_rebalance" not in group, "a rebalance recommendation must not move a busy scheduler"
    refresh = group["instance_refresh"]
    assert refresh["strategy"] == "Rolling" and refresh["preferences"]["min_healthy_percentage"] == 0, (
        "a new template replaces the scheduler, the old one first (the new one needs its address)"
    )
    assert "aws_instance" not in doc["resource"] and "aws_spot_instance_request" not in doc["resource"]
    # The interface and its Elastic IP outlive the instances; the group launches in its subnet.
    interface = only(doc, "aws_network_interface")
    (interface_key,) = doc["resource"]["aws_network_interface"]
    assert group["vpc_zone_identifier"] == [interface["subnet_id"]], "an interface lives in one zone"
    assert interface["lifecycle"]["ignore_changes"] == ["attachment"], "a redeploy must not detach the scheduler"
    assert (
        interface["security_groups"]
        == of_role(doc, "aws_launch_template", "scheduler")["network_interfaces"][0]["security_groups"]
    )
    eip = only(doc, "aws_eip")
    assert eip["network_interface"] == f"${{aws_network_interface.{interface_key}.id}}" and eip["domain"] == "vpc"
    user_data = of_role(doc, "aws_launch_template", "scheduler")["user_data"]
    assert f"aws_network_interface.{interface_key}.id" in user_data, "each scheduler attaches this interface"
    assert f"aws_network_interface.{interface_key}.private_ip" in user_data
    state = {p["name"]: p for p in everything(doc, "aws_ssm_parameter")}["/dask-default/cluster/state"]
    assert state["type"] == "SecureString" and state["value"] == "new"
    assert state["lifecycle"]["ignore_changes"] == ["value"], "the schedulers keep it; a redeploy must not reset it"
    spend = {p["name"]: p for p in everything(doc, "aws_ssm_parameter")}["/dask-default/cluster/spend"]
    assert spend["type"] == "SecureString" and spend["value"] == "new"
    assert spend["lifecycle"]["ignore_changes"] == ["value"], "the schedulers meter it; a redeploy must not reset it"


def test_scheduler_and_workers_launch_hardened(synthesized):
    for role in ("scheduler", "worker"):
        template = of_role(synthesized["default"], "aws_launch_template", role)
        assert template["metadata_options"]["http_tokens"] == "required", "IMDSv2 must be required"
        (device,) = template["block_device_mappings"]
        assert device["ebs"]["encrypted"] == "true" and device["ebs"]["volume_type"] == "gp3"
        assert template["instance_initiated_shutdown_behavior"] == "terminate"
        assert "key_name" not in template, "no SSH key: shell access is through SSM"
        assert template["user_data"].startswith("${base64gzip(join(") and "templatefile(" in template["user_data"]


def test_on_demand_scheduler_is_an_on_demand_group_of_one(synthesized):
    group = of_role(synthesized["ondemand"], "aws_autoscaling_group", "scheduler")
    assert group["mixed_instances_policy"]["instances_distribution"]["on_demand_base_capacity"] == 1


def test_spot_price_cap_reaches_scheduler_and_workers(synthesized):
    doc = synthesized["custom"]
    assert doc["variable"]["spot_max_price"]["default"] == "0.35"
    cap = '${var.spot_max_price == "" ? null : var.spot_max_price}'
    for role in ("scheduler", "worker"):
        distribution = of_role(doc, "aws_autoscaling_group", role)["mixed_instances_policy"]["instances_distribution"]
        assert distribution["spot_max_price"] == cap, role


def test_workers_are_a_100_percent_spot_mixed_group(synthesized):
    doc = synthesized["custom"]
    group = of_role(doc, "aws_autoscaling_group", "worker")
    policy_ = group["mixed_instances_policy"]
    distribution = policy_["instances_distribution"]
    assert distribution["on_demand_base_capacity"] == 0
    assert distribution["on_demand_percentage_above_base_capacity"] == 0
    assert distribution["spot_allocation_strategy"] == "price-capacity-optimized"
    assert group["capacity_rebalance"] is True
    override = policy_["launch_template"]["dynamic"]["override"]
    assert override["for_each"] == "${toset(var.worker_instance_types)}"
    assert doc["variable"]["worker_instance_types"]["default"] == ["c6i.2xlarge", "c5.2xlarge"]
    assert group["min_size"] == 0, "the cluster's end sets the group to 0, whatever min_workers says"
    assert group["max_size"] == "${local.max_worker_nodes}"
    assert group["desired_capacity"] == "${local.min_worker_nodes}"
    assert group["lifecycle"]["ignore_changes"] == ["desired_capacity"], "a redeploy must not resize a busy cluster"
    assert group["protect_from_scale_in"] is True, "only the autoscaler chooses which nodes go"
    (bound,) = [t for t in group["tag"] if t["key"] == "DaskMinWorkers"]
    assert bound == {"key": "DaskMinWorkers", "value": "${local.min_worker_nodes}", "propagate_at_launch": False}
    assert group["vpc_zone_identifier"] == ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
    default_group = of_role(synthesized["default"], "aws_autoscaling_group", "worker")
    assert default_group["vpc_zone_identifier"].startswith("${data.aws_subnets."), "default VPC subnets"


def test_workers_get_the_schedulers_fixed_address_from_terraform(synthesized):
    template = of_role(synthesized["default"], "aws_launch_template", "worker")
    (interface,) = synthesized["default"]["resource"]["aws_network_interface"]
    assert f"aws_network_interface.{interface}.private_ip" in template["user_data"], (
        "workers must get the scheduler interface's private address from Terraform"
    )


def test_several_clusters_do_not_collide(synthesized):
    names = {}
    for variant, doc in synthesized.items():
        for kind in ("aws_ecr_repository", "aws_iam_role", "aws_iam_instance_profile", "aws_launch_template",
                     "aws_security_group", "aws_ssm_parameter", "aws_autoscaling_group"):  # fmt: skip
            for resource in everything(doc, kind):
                name = (kind, resource["name"])
                assert name not in names, f"{variant} and {names.get(name)} both name a {kind} {name[1]}"
                names[name] = variant


@pytest.mark.parametrize(("variant", "expected"), [("default", "0.350"), ("ondemand", "0.480")])
def test_hourly_cost_estimate_evaluates_in_terraform(variant, expected, synthesized, tmp_path):
    """The output's expression, run by real Terraform with today's spot prices as literals:
    workers at the dearest allowed type, plus the scheduler when it is spot."""
    doc = synthesized[variant]
    expression = doc["output"]["estimated_hourly_cost_usd"]["value"]
    worker_prices = {t: {"spot_price": "0.09"} for t in doc["variable"]["worker_instance_types"]["default"]}
    worker_prices["c6i.xlarge"] = {"spot_price": "0.12"}
    expression = re.sub(
        r"data\.aws_ec2_spot_price\.worker-spot-prices\b", json.dumps(worker_prices).replace(":", " ="), expression
    )
    scheduler_prices = {
        t: {"spot_price": "0.08"} for t in ("m6i.large", "m6a.large", "m5.large", "m5a.large", "m7i.large")
    }
    scheduler_prices["m5.large"] = {"spot_price": "0.11"}
    expression = re.sub(
        r"data\.aws_ec2_spot_price\.scheduler-spot-prices\b",
        json.dumps(scheduler_prices).replace(":", " ="),
        expression,
    )
    variables = {name: doc["variable"][name] for name in ("workers", "min_workers", "max_workers")}
    config = {"variable": variables, "locals": doc["locals"], "output": {"cost": {"value": expression}}}
    outputs = terraform_outputs(tmp_path, config)
    assert outputs["cost"] == expected  # default: 2 x 0.12 + 0.11; ondemand: 4 x 0.12, scheduler not priced


def test_jupyter_only_where_asked_with_a_token_from_ssm(synthesized):
    custom, default = synthesized["custom"], synthesized["default"]
    assert "random_password" not in default["resource"] and "jupyter_url" not in default["output"]
    assert only(default, "docker_image")["build"]["build_args"] == {"JUPYTER": "0"}

    token = only(custom, "random_password")
    assert token["length"] >= 32 and token["special"] is False
    parameters = {p["name"]: p for p in everything(custom, "aws_ssm_parameter")}
    parameter = parameters["/dask-custom/scheduler/jupyter.token"]
    assert parameter["type"] == "SecureString" and parameter["value"].startswith("${random_password.")
    assert custom["output"]["jupyter_token"]["value"].startswith("${random_password.")
    assert re.fullmatch(r"https://\$\{aws_eip\.[\w-]+\.public_ip\}:8888/lab", custom["output"]["jupyter_url"]["value"])
    build = only(custom, "docker_image")
    assert build["build"]["build_args"] == {"JUPYTER": "1"}
    assert build["name"].endswith('-lab"])}'), "a JupyterLab image is tagged apart from the plain one"
    scheduler = of_role(custom, "aws_launch_template", "scheduler")
    group = of_role(custom, "aws_autoscaling_group", "scheduler")
    assert "random_password" not in scheduler["user_data"], "the token must not travel in user-data"
    assert any(d.startswith("aws_ssm_parameter.jupyter_token-param") for d in group["depends_on"])
