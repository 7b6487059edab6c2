"""What each node role may really do, evaluated, not read off statement names.

Every policy that reaches a role counts: inline policies, and any attached managed policy with
its published document (moto ships AWS's managed policies; an attachment it does not know
fails the test). moto's IAM evaluator (the one its server uses to enforce access) answers
allow or not for an action on a resource. Terraform references in the policies are replaced by
the values AWS would give them in account 123456789012.

Conditions are evaluated here, not by moto: its evaluator counts a missing key as a match and
an unmet condition of an Allow as a Deny. Only StringEquals and StringLike are used, and
evaluated as IAM does: every key present in the request (a resource's tags, s3:prefix, the
KMS encryption context) with one of the given values.
"""

from __future__ import annotations

import json
import re

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult
from moto.iam.aws_managed_policies import aws_managed_policies_data

from stacks.userdata import scheduler_group_name, worker_group_name

ACCOUNT = "123456789012"
INTERFACE = "eni-0123456789abcdef0"  # the scheduler's network interface, as AWS would name it
MANAGED = json.loads(aws_managed_policies_data)


def uploads_bucket(cluster: str) -> str:
    """The cluster's bucket for the laptop's uploads, named as Terraform names it after its prefix."""
    return f"dask-{cluster}-uploads-20261207000000000000000001"


def resolved(text: str, region: str, cluster: str) -> str:
    text = re.sub(r"\$\{data\.aws_partition\.[\w-]+\.partition\}", "aws", text)
    text = re.sub(r"\$\{data\.aws_caller_identity\.[\w-]+\.account_id\}", ACCOUNT, text)
    text = re.sub(
        r"\$\{aws_ecr_repository\.[\w-]+\.arn\}", f"arn:aws:ecr:{region}:{ACCOUNT}:repository/dask-{cluster}", text
    )
    text = re.sub(r"\$\{aws_network_interface\.[\w-]+\.id\}", INTERFACE, text)
    text = re.sub(r"\$\{aws_s3_bucket\.[\w-]+\.arn\}", f"arn:aws:s3:::{uploads_bucket(cluster)}", text)
    assert "${" not in text, f"unresolved reference in a policy: {text}"
    return text


def role_policies(doc: dict, region: str, cluster: str) -> dict[str, list[str]]:
    """Every policy document that applies to each role, by role name."""
    roles = doc["resource"]["aws_iam_role"]
    by_reference = {}
    for key, role in roles.items():
        for attribute in ("id", "name"):
            by_reference[f"${{aws_iam_role.{key}.{attribute}}}"] = role["name"]
    policies: dict[str, list[str]] = {role["name"]: [] for role in roles.values()}
    for role in roles.values():
        for inline in role.get("inline_policy", []):
            policies[role["name"]].append(resolved(inline["policy"], region, cluster))
        for arn in role.get("managed_policy_arns", []):
            policies[role["name"]].append(managed(arn))
    for inline in doc["resource"].get("aws_iam_role_policy", {}).values():
        policies[by_reference[inline["role"]]].append(resolved(inline["policy"], region, cluster))
    for attachment in doc["resource"].get("aws_iam_role_policy_attachment", {}).values():
        policies[by_reference[attachment["role"]]].append(managed(attachment["policy_arn"]))
    return policies


def managed(arn: str) -> str:
    name = arn.rsplit("/", 1)[1]
    assert name in MANAGED, f"managed policy {arn} has no published document to evaluate"
    return json.dumps(MANAGED[name]["Document"])


def _like(pattern: str, value: str) -> bool:
    """IAM's StringLike: * any characters (slashes too), ? one, everything else literal."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value, re.DOTALL) is not None


def _applies(condition: dict, context: dict[str, str]) -> bool:
    """Whether a statement's condition holds for a request with these context keys: every key
    it names present and matching one of its values (a key the request lacks fails it, as in IAM)."""
    for operator, wanted in condition.items():
        assert operator in ("StringEquals", "StringLike"), f"condition {operator} is not evaluated here"
        for key, values in wanted.items():
            values = values if isinstance(values, list) else [values]
            if key not in context:
                return False
            if operator == "StringEquals" and context[key] not in values:
                return False
            if operator == "StringLike" and not any(_like(value, context[key]) for value in values):
                return False
    return True


ELEMENTS = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def well_formed(statement: dict) -> None:
    """What IAM refuses as a malformed policy (at apply), which moto's evaluator lets by: an
    element it does not know (names are case-sensitive), an Effect other than Allow or Deny, no
    Action or no Resource, a Sid that is not letters and digits."""
    assert set(statement) <= ELEMENTS, f"unknown policy elements {set(statement) - ELEMENTS}: {statement}"
    assert statement.get("Effect") in ("Allow", "Deny"), statement
    assert {"Action", "NotAction"} & set(statement) and {"Resource", "NotResource"} & set(statement), statement
    assert re.fullmatch(r"[A-Za-z0-9]*", statement.get("Sid", "")), statement


def allowed(
    documents: list[str], action: str, resource: str, tags: dict[str, str] | None = None, context: dict | None = None
) -> bool:
    """Whether the documents allow `action` on `resource`, whose tags are `tags`, for a request
    with these condition keys (`context`: s3:prefix, kms:ViaService, ...)."""
    request = {**{f"aws:ResourceTag/{k}": v for k, v in (tags or {}).items()}, **(context or {})}
    results = []
    for document in documents:
        for statement in json.loads(document)["Statement"]:
            well_formed(statement)
            if "Condition" in statement:
                if not _applies(statement["Condition"], request):
                    continue  # not applicable to this request
                statement = {k: v for k, v in statement.items() if k != "Condition"}
            policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            results.append(IAMPolicy(policy).is_action_permitted(action, resource))
    return PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results


@pytest.fixture(scope="module", params=["default", "custom", "ondemand"])
def cluster(request, synthesized, settings):
    s = settings[request.param]
    return s, role_policies(synthesized[request.param], s.region, s.name)


def arns(s, role_name: str) -> dict[str, str]:
    """Resources of this cluster, of another cluster, and of the rest of the account."""
    prefix = f"arn:aws:ssm:{s.region}:{ACCOUNT}:parameter"
    group = f"arn:aws:autoscaling:{s.region}:{ACCOUNT}:autoScalingGroup:0a1b2c3d-0000-4000-8000-000000000000"
    return {
        "own key": f"{prefix}/dask-{s.name}/{role_name}/{role_name}.key",
        "scheduler key": f"{prefix}/dask-{s.name}/scheduler/scheduler.key",
        "jupyter token": f"{prefix}/dask-{s.name}/scheduler/jupyter.token",
        "other cluster's key": f"{prefix}/dask-other/{role_name}/{role_name}.key",
        "another team's secret": f"{prefix}/prod/database/password",
        "own image": f"arn:aws:ecr:{s.region}:{ACCOUNT}:repository/dask-{s.name}",
        "other image": f"arn:aws:ecr:{s.region}:{ACCOUNT}:repository/dask-other",
        "own group": f"{group}:autoScalingGroupName/dask-{s.name}-workers",
        "other group": f"{group}:autoScalingGroupName/dask-other-workers",
        "scheduler group": f"{group}:autoScalingGroupName/dask-{s.name}-scheduler",
        "other scheduler group": f"{group}:autoScalingGroupName/dask-other-scheduler",
        "state": f"{prefix}/dask-{s.name}/cluster/state",
        "other state": f"{prefix}/dask-other/cluster/state",
        "spend": f"{prefix}/dask-{s.name}/cluster/spend",
        "other spend": f"{prefix}/dask-other/cluster/spend",
    }


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_each_role_does_its_job(cluster, role):
    s, policies = cluster
    documents, r = policies[f"dask-{s.name}-{role}"], arns(s, role)
    assert allowed(documents, "ssm:GetParameter", r["own key"])
    assert allowed(documents, "ecr:GetAuthorizationToken", "*")
    assert allowed(documents, "ecr:BatchGetImage", r["own image"])
    assert allowed(documents, "ecr:GetDownloadUrlForLayer", r["own image"])
    assert allowed(documents, "autoscaling:SetDesiredCapacity", r["own group"])
    assert allowed(documents, "ssmmessages:OpenDataChannel", "*")
    assert allowed(documents, "ssm:UpdateInstanceInformation", f"arn:aws:ec2:{s.region}:{ACCOUNT}:instance/i-0abc")
    assert allowed(documents, "ssm:GetParameter", r["state"]), "both roles read the cluster's state"


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_no_role_reaches_outside_its_cluster(cluster, role):
    s, policies = cluster
    documents, r = policies[f"dask-{s.name}-{role}"], arns(s, role)
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"):
        for target in ("other cluster's key", "another team's secret"):
            assert not allowed(documents, action, r[target]), f"{role} may {action} {target}"
    assert not allowed(documents, "ssm:DescribeParameters", "*")
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:PutImage"):
        assert not allowed(documents, action, r["other image"]), f"{role} may {action} another repository"
    assert not allowed(documents, "ecr:PutImage", r["own image"]), "nodes never push"
    for action in ("autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup",
                   "autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetInstanceProtection"):  # fmt: skip
        assert not allowed(documents, action, r["other group"]), f"{role} may {action} another group"
    assert not allowed(documents, "autoscaling:UpdateAutoScalingGroup", r["own group"])
    for action in ("kms:Decrypt", "iam:PassRole", "ec2:RunInstances", "s3:GetObject", "sts:AssumeRole"):
        assert not allowed(documents, action, "*"), f"{role} may {action}"


def test_only_the_scheduler_removes_worker_nodes_and_only_from_its_own_group(cluster):
    """The worker autoscaler (image/dask_node/worker_autoscaler.py) reads groups, protects instances and
    terminates them in its own group; tasks on worker nodes can do neither."""
    s, policies = cluster
    scheduler, worker = policies[f"dask-{s.name}-scheduler"], policies[f"dask-{s.name}-worker"]
    own, other = arns(s, "scheduler")["own group"], arns(s, "scheduler")["other group"]
    for action in ("autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"):
        assert allowed(scheduler, action, "*"), action
        assert not allowed(worker, action, "*"), f"a worker node may {action}"
    for action in ("autoscaling:SetInstanceProtection", "autoscaling:TerminateInstanceInAutoScalingGroup"):
        assert allowed(scheduler, action, own), action
        assert not allowed(scheduler, action, other), action
        assert not allowed(worker, action, own), f"a worker node may {action}"
    for action in ("ec2:TerminateInstances", "autoscaling:DetachInstances", "autoscaling:DeleteAutoScalingGroup"):
        assert not allowed(scheduler, action, own if action.startswith("autoscaling") else "*"), action


def test_only_a_scheduler_takes_the_schedulers_address_and_only_this_clusters(cluster):
    """A scheduler instance attaches this cluster's scheduler interface to itself; nothing else.
    EC2 authorizes both resources of the call: the interface and the instance."""
    s, policies = cluster
    scheduler, worker = policies[f"dask-{s.name}-scheduler"], policies[f"dask-{s.name}-worker"]
    ec2 = f"arn:aws:ec2:{s.region}:{ACCOUNT}"
    interface, other_interface = (
        f"{ec2}:network-interface/{INTERFACE}",
        f"{ec2}:network-interface/eni-0fedcba987654321f",
    )
    instance = f"{ec2}:instance/i-0aaaabbbbccccdddd"
    group = scheduler_group_name(s)
    own_scheduler = {"DaskCluster": s.name, "DaskRole": "scheduler", "aws:autoscaling:groupName": group}
    attach = "ec2:AttachNetworkInterface"
    assert allowed(scheduler, attach, interface, own_scheduler)
    assert allowed(scheduler, attach, instance, own_scheduler)
    assert not allowed(scheduler, attach, other_interface, own_scheduler), "another interface"
    # Tags anyone allowed ec2:CreateTags can set are not enough; only Auto Scaling's own
    # (an `aws:` tag, which no principal can set) of this cluster's scheduler group.
    forged = {"DaskCluster": s.name, "DaskRole": "scheduler", "Name": f"dask-{s.name}-scheduler"}
    for tags in (forged, {**own_scheduler, "aws:autoscaling:groupName": worker_group_name(s)},
                 {**own_scheduler, "aws:autoscaling:groupName": "dask-other-scheduler"}, {}):  # fmt: skip
        assert not allowed(scheduler, attach, instance, tags), f"onto an instance tagged {tags}"
    for action in ("ec2:DetachNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:ModifyNetworkInterfaceAttribute",
                   "ec2:AssociateAddress", "ec2:DisassociateAddress", "ec2:CreateNetworkInterface"):  # fmt: skip
        assert not allowed(scheduler, action, interface, own_scheduler), action
    assert not allowed(worker, attach, interface, own_scheduler) and not allowed(
        worker, attach, instance, own_scheduler
    )


def test_only_a_scheduler_keeps_the_clusters_state_and_its_own_group(cluster):
    s, policies = cluster
    scheduler, worker = policies[f"dask-{s.name}-scheduler"], policies[f"dask-{s.name}-worker"]
    r = arns(s, "scheduler")
    assert allowed(scheduler, "ssm:PutParameter", r["state"])
    assert not allowed(worker, "ssm:PutParameter", r["state"]), "a task on a worker node could end the cluster"
    for documents in (scheduler, worker):
        assert not allowed(documents, "ssm:GetParameter", r["other state"])
        for target in ("other state", "own key", "scheduler key", "another team's secret"):
            assert not allowed(documents, "ssm:PutParameter", r[target]), target
        assert not allowed(documents, "ssm:DeleteParameter", r["state"])
    for action in ("autoscaling:SetDesiredCapacity", "autoscaling:DetachInstances"):
        assert allowed(scheduler, action, r["scheduler group"]), action
        assert not allowed(scheduler, action, r["other scheduler group"]), action
        assert not allowed(worker, action, r["scheduler group"]), f"a worker node may {action} the scheduler's group"
    for action in ("autoscaling:UpdateAutoScalingGroup", "autoscaling:TerminateInstanceInAutoScalingGroup",
                   "autoscaling:SetInstanceProtection"):  # fmt: skip
        assert not allowed(scheduler, action, r["scheduler group"]), action


def test_only_a_scheduler_meters_the_clusters_spend(cluster):
    """The cost cap (image/dask_node/cost_cap.py) reads prices and keeps the spend; a task on a
    worker node could otherwise reset it, or end the cluster by raising it."""
    s, policies = cluster
    scheduler, worker = policies[f"dask-{s.name}-scheduler"], policies[f"dask-{s.name}-worker"]
    r = arns(s, "scheduler")
    for action in ("ssm:GetParameter", "ssm:PutParameter"):
        assert allowed(scheduler, action, r["spend"]), action
        assert not allowed(scheduler, action, r["other spend"]), action
        assert not allowed(worker, action, r["spend"]), f"a worker node may {action} the spend"
    assert not allowed(scheduler, "ssm:DeleteParameter", r["spend"])
    assert allowed(scheduler, "ec2:DescribeSpotPriceHistory", "*")
    assert not allowed(worker, "ec2:DescribeSpotPriceHistory", "*")
    # The Pricing API only for a cluster whose scheduler runs on demand (its workers never do).
    assert allowed(scheduler, "pricing:GetProducts", "*") == (s.scheduler_market == "on-demand")
    assert not allowed(worker, "pricing:GetProducts", "*")


def test_a_worker_cannot_read_the_schedulers_secrets(cluster):
    s, policies = cluster
    documents, r = policies[f"dask-{s.name}-worker"], arns(s, "worker")
    assert not allowed(documents, "ssm:GetParameter", r["scheduler key"])
    assert not allowed(documents, "ssm:GetParameter", r["jupyter token"])


def test_unscoped_statements_are_only_those_iam_cannot_scope(cluster):
    """Resource "*" only where the action has no resource type at all."""
    _, policies = cluster
    for documents in policies.values():
        for document in documents:
            for statement in json.loads(document)["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not any("*" in action for action in actions), statement
                if statement["Resource"] == "*":
                    assert set(actions) <= {
                        "ecr:GetAuthorizationToken",
                        "autoscaling:DescribeAutoScalingGroups",
                        "ec2:DescribeInstances",
                        "ec2:DescribeSpotPriceHistory",
                        "pricing:GetProducts",
                        "ssmmessages:CreateControlChannel",
                        "ssmmessages:CreateDataChannel",
                        "ssmmessages:OpenControlChannel",
                        "ssmmessages:OpenDataChannel",
                    }, statement


def test_the_evaluation_counts_managed_policies(synthesized, settings):
    """The check that would have caught the old role: with AmazonSSMManagedInstanceCore attached,
    a node reads every parameter in the account."""
    import copy

    s = settings["default"]
    doc = copy.deepcopy(synthesized["default"])
    (worker_key,) = [k for k, role in doc["resource"]["aws_iam_role"].items() if role["name"].endswith("-worker")]
    doc["resource"]["aws_iam_role_policy_attachment"] = {
        "ssm-core": {
            "role": f"${{aws_iam_role.{worker_key}.name}}",
            "policy_arn": "arn:${data.aws_partition.p.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
        }
    }
    documents = role_policies(doc, s.region, s.name)[f"dask-{s.name}-worker"]
    assert allowed(documents, "ssm:GetParameter", arns(s, "worker")["another team's secret"])


def test_workers_read_exactly_the_data_sources_and_nothing_else(settings, synthesized):
    """data_sources (stacks/data_sources.py): object reads under each prefix and of each object
    named, listing under them only, decryption only through S3 for those objects; no writes, no
    other bucket, prefix or object, and nothing at all for the scheduler, which runs no fit."""
    s = settings["custom"]
    policies = role_policies(synthesized["custom"], s.region, s.name)
    worker, scheduler = policies[f"dask-{s.name}-worker"], policies[f"dask-{s.name}-scheduler"]
    s3 = "arn:aws:s3:::"
    readable = [f"{s3}ml-team-data/emails/train.parquet", f"{s3}ml-team-data/emails/2026/11/part-0.csv",
                f"{s3}shared.datasets/2026/digits.parquet"]  # fmt: skip
    unreadable = [f"{s3}ml-team-data/emails-private/x.csv", f"{s3}ml-team-data/other/x.csv",
                  f"{s3}ml-team-data/emails", f"{s3}shared.datasets/2026/digits.parquet.bak",
                  f"{s3}shared.datasets/2026/other.parquet", f"{s3}another-bucket/emails/x.csv"]  # fmt: skip
    for arn in readable:
        assert allowed(worker, "s3:GetObject", arn) and allowed(worker, "s3:GetObjectVersion", arn), arn
        assert not allowed(scheduler, "s3:GetObject", arn), f"the scheduler may read {arn}"
        for action in ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectAcl", "s3:DeleteObjectVersion"):
            assert not allowed(worker, action, arn), f"a worker may {action} {arn}"
    for arn in unreadable:
        assert not allowed(worker, "s3:GetObject", arn), f"a worker may read {arn}"
    listing = {"ml-team-data": ["emails/", "emails/2026/"], "shared.datasets": ["2026/digits.parquet"]}
    for bucket, prefixes in listing.items():
        for prefix in prefixes:
            assert allowed(worker, "s3:ListBucket", f"{s3}{bucket}", context={"s3:prefix": prefix}), prefix
        for prefix in ("", "other/", "emails-private/", "2026/"):
            assert not allowed(worker, "s3:ListBucket", f"{s3}{bucket}", context={"s3:prefix": prefix}), prefix
        assert not allowed(worker, "s3:ListBucket", f"{s3}{bucket}"), "a listing of the whole bucket"
        assert not allowed(scheduler, "s3:ListBucket", f"{s3}{bucket}", context={"s3:prefix": prefixes[0]})
    key = f"arn:aws:kms:{s.region}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    through_s3 = {"kms:ViaService": f"s3.{s.region}.amazonaws.com"}
    for arn in (*readable, f"{s3}ml-team-data"):  # an object, or its bucket with an S3 Bucket Key
        assert allowed(worker, "kms:Decrypt", key, context={**through_s3, "kms:EncryptionContext:aws:s3:arn": arn})
    assert not allowed(worker, "kms:Decrypt", key, context={"kms:EncryptionContext:aws:s3:arn": readable[0]}), (
        "decryption outside S3"
    )
    for arn in unreadable:
        context = {**through_s3, "kms:EncryptionContext:aws:s3:arn": arn}
        assert not allowed(worker, "kms:Decrypt", key, context=context), f"decryption of {arn}"
    assert not allowed(
        worker, "kms:Decrypt", key, context={**through_s3, "kms:EncryptionContext:aws:s3:arn": f"{s3}another-bucket"}
    )
    assert not allowed(
        scheduler, "kms:Decrypt", key, context={**through_s3, "kms:EncryptionContext:aws:s3:arn": readable[0]}
    )


def test_only_workers_read_the_laptops_uploads_and_nobody_writes_them(cluster):
    """stacks/uploads.py: the workers read what the laptop uploaded, under uploads/ only; the
    cluster writes nothing there (the laptop uploads with the user's own credentials)."""
    s, policies = cluster
    worker, scheduler = policies[f"dask-{s.name}-worker"], policies[f"dask-{s.name}-scheduler"]
    bucket = f"arn:aws:s3:::{uploads_bucket(s.name)}"
    upload = f"{bucket}/uploads/{'0' * 64}.npz"
    assert allowed(worker, "s3:GetObject", upload)
    assert allowed(worker, "s3:ListBucket", bucket, context={"s3:prefix": "uploads/"})
    assert not allowed(worker, "s3:ListBucket", bucket, context={"s3:prefix": ""})
    assert not allowed(worker, "s3:GetObject", f"{bucket}/elsewhere/x.npz")
    assert not allowed(worker, "s3:GetObject", "arn:aws:s3:::dask-other-uploads-20261207000000000000000001/uploads/x")
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:PutBucketPolicy"):
        assert not allowed(worker, action, upload if "Object" in action else bucket), action
    for action in ("s3:GetObject", "s3:PutObject"):
        assert not allowed(scheduler, action, upload), f"the scheduler may {action} an upload"


def test_the_uploads_bucket_is_private_encrypted_tls_only_and_expires(synthesized):
    from stacks.uploads import UPLOAD_DAYS

    resources = synthesized["default"]["resource"]
    (bucket,) = resources["aws_s3_bucket"].values()
    assert bucket["bucket_prefix"] == "dask-default-uploads-" and bucket["force_destroy"] is True
    (block,) = resources["aws_s3_bucket_public_access_block"].values()
    assert all(block[name] is True for name in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                                "restrict_public_buckets"))  # fmt: skip
    (owner,) = resources["aws_s3_bucket_ownership_controls"].values()
    assert owner["rule"]["object_ownership"] == "BucketOwnerEnforced"
    (encryption,) = resources["aws_s3_bucket_server_side_encryption_configuration"].values()
    assert encryption["rule"][0]["apply_server_side_encryption_by_default"]["sse_algorithm"] == "AES256"
    (lifecycle,) = resources["aws_s3_bucket_lifecycle_configuration"].values()
    (rule,) = lifecycle["rule"]
    assert rule["status"] == "Enabled" and rule["filter"] == [{"prefix": ""}]
    assert rule["expiration"] == [{"days": UPLOAD_DAYS}]
    assert rule["abort_incomplete_multipart_upload"] == [{"days_after_initiation": UPLOAD_DAYS}]
    (policy,) = resources["aws_s3_bucket_policy"].values()
    (statement,) = json.loads(policy["policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(statement["Resource"]) == 2 and statement["Resource"][1].endswith("/*")


def test_only_the_workers_of_a_cluster_with_data_sources_read_s3(cluster):
    s, policies = cluster
    for documents in policies.values():
        for action in ("s3:GetObject", "s3:ListBucket", "kms:Decrypt"):
            assert allowed(documents, action, "arn:aws:s3:::ml-team-data/emails/x.csv") == (
                action == "s3:GetObject" and bool(s.data_sources) and documents is policies[f"dask-{s.name}-worker"]
            )


def test_the_worker_policy_leaves_data_sources_the_room_their_check_counts_on(settings, synthesized):
    """stacks/data_sources.py refuses entries whose statements would take the worker's inline
    policy past IAM's limit, counting on the rest of the policy taking at most
    WORKER_POLICY_OTHER_CHARS; here is that rest, as IAM counts it (no whitespace), with the
    longest region name and partition and account AWS could give it."""
    from stacks.data_sources import WORKER_POLICY_OTHER_CHARS

    for variant in ("default", "ondemand"):
        s = settings[variant]
        (document,) = role_policies(synthesized[variant], "ap-southeast-5", s.name)[f"dask-{s.name}-worker"]
        compact = json.dumps(json.loads(document.replace(":aws:", ":aws-us-gov:")), separators=(",", ":"))
        assert len(compact) <= WORKER_POLICY_OTHER_CHARS - 200, len(compact)
