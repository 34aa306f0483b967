"""The CloudFormation template of the AWS side, and reading a stack's outputs.

The template is linted with cfn-lint and its security-relevant structure (bucket, roles,
queue, compute environments, volumes, logs) is checked on the parsed YAML;
``create_stack`` makes it in moto's CloudFormation, with a few moto-only changes, for
the tests that need a stack (cost and monitoring: test_infra_monitoring.py; the user's
profile: test_user_profile.py; the workflow on Batch: test_batch_e2e.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cfnlint.decode import decode

from cryosnake import cli
from cryosnake.aws import stack as aws_stack
from cryosnake.errors import CryosnakeError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "cryosnake.yaml"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
GPU_FAMILIES = {"g5", "g6", "p3", "p4d"}
STACK = "cryosnake-test"
# moto's CloudFormation skips the bucket policy; the structure test checks it.
MOTO_SKIPS_BUCKET_POLICY = pytest.mark.filterwarnings(
    "ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning"
)
# Outputs for people (console links, the alert topic), beside those the code reads.
MONITORING_OUTPUTS = {"DashboardName", "DashboardUrl", "AlarmTopicArn"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    parsed, matches = decode(str(TEMPLATE))
    assert not matches, matches
    assert parsed is not None
    return dict(parsed)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def resolve_list(template: dict[str, Any], value: Any) -> list[str]:
    """A list property, or a Ref to a CommaDelimitedList parameter, as its default."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return str(template["Parameters"][value["Ref"]]["Default"]).split(",")
    return [str(v) for v in value]


def family(instance_type: str) -> str:
    return instance_type.split(".")[0]


# ------------------------------------------------------------------ lint and structure


def test_cfn_lint_clean() -> None:
    proc = subprocess.run(
        [str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_outputs_match_the_code(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) == set(aws_stack.OUTPUT_NAMES) | MONITORING_OUTPUTS


def test_bucket_is_encrypted_versioned_private_and_tls_only(template: dict[str, Any]) -> None:
    (bucket_id, bucket), *others = resources(template, "AWS::S3::Bucket").items()
    assert not others
    props = bucket["Properties"]
    rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (policy,) = resources(template, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    denies = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s["Condition"]["Bool"]["aws:SecureTransport"] in ("false", False)
    ]
    assert denies and denies[0]["Action"] in ("s3:*", ["s3:*"])
    assert {"Fn::GetAtt": [bucket_id, "Arn"]} in denies[0]["Resource"]
    assert {"Fn::Sub": f"${{{bucket_id}.Arn}}/*"} in denies[0]["Resource"]


def test_bucket_lifecycle(template: dict[str, Any]) -> None:
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    archive = [
        r
        for r in rules.values()
        if any(t["StorageClass"] == "DEEP_ARCHIVE" for t in r.get("Transitions", []))
    ]
    assert len(archive) == 1
    # The rule matches what `cryosnake upload` tags raw movies with, whatever the project.
    key, value = aws_stack.RAW_MOVIE_TAG
    assert archive[0]["TagFilters"] == [{"Key": key, "Value": value}]
    days = archive[0]["Transitions"][0]["TransitionInDays"]
    assert days == {"Ref": "RawMoviesArchiveDays"}
    assert template["Parameters"]["RawMoviesArchiveDays"]["Default"] == 30
    scratch = [r for r in rules.values() if "ExpirationInDays" in r]
    assert len(scratch) == 1 and scratch[0]["Prefix"] == {"Ref": "ScratchPrefix"}
    assert template["Parameters"]["ScratchPrefix"]["Default"] == "scratch/"
    # An empty scratch prefix would expire the whole bucket: the parameter forbids it.
    pattern = template["Parameters"]["ScratchPrefix"]["AllowedPattern"]
    assert not re.fullmatch(pattern, "")
    assert any("NoncurrentVersionExpiration" in r for r in rules.values())
    aborts = [
        r["AbortIncompleteMultipartUpload"]
        for r in rules.values()
        if "AbortIncompleteMultipartUpload" in r
    ]
    assert aborts == [{"DaysAfterInitiation": 7}]


def test_job_role_reaches_only_the_bucket(template: dict[str, Any]) -> None:
    (bucket_id,) = resources(template, "AWS::S3::Bucket")
    role = template["Resources"]["JobRole"]["Properties"]
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "ecs-tasks.amazonaws.com"}
    assert "ManagedPolicyArns" not in role
    allowed = [
        {"Fn::GetAtt": [bucket_id, "Arn"]},
        {"Fn::Sub": f"${{{bucket_id}.Arn}}/*"},
    ]
    actions: set[str] = set()
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            found = statement["Resource"]
            for resource in found if isinstance(found, list) else [found]:
                assert resource in allowed, resource
            acts = statement["Action"]
            actions |= set(acts if isinstance(acts, list) else [acts])
    assert actions == {
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    }


def test_one_queue_cpu_spot_then_gpu_spot_then_gpu_on_demand(template: dict[str, Any]) -> None:
    (queue,) = resources(template, "AWS::Batch::JobQueue").values()
    order = sorted(queue["Properties"]["ComputeEnvironmentOrder"], key=lambda o: o["Order"])
    envs = template["Resources"]
    cpu, gpu_spot, gpu_od = (envs[o["ComputeEnvironment"]["Ref"]] for o in order)
    assert len(resources(template, "AWS::Batch::ComputeEnvironment")) == 3

    def compute(env: dict[str, Any]) -> dict[str, Any]:
        assert env["Properties"]["Type"] == "MANAGED"
        res = dict(env["Properties"]["ComputeResources"])
        assert res["MinvCpus"] == 0
        assert isinstance(res["MaxvCpus"], dict) and "Ref" in res["MaxvCpus"]
        assert res["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "InstanceLaunchTemplate"}
        return res

    cpu_res, spot_res, od_res = compute(cpu), compute(gpu_spot), compute(gpu_od)
    assert cpu_res["Type"] == "SPOT"
    cpu_families = {family(t) for t in resolve_list(template, cpu_res["InstanceTypes"])}
    assert cpu_families and not any(f[0] in "gp" for f in cpu_families), cpu_families
    for res in (spot_res, od_res):
        types = resolve_list(template, res["InstanceTypes"])
        assert types and {family(t) for t in types} <= GPU_FAMILIES, types
        assert res["Ec2Configuration"][0]["ImageType"] in {"ECS_AL2_NVIDIA", "ECS_AL2023_NVIDIA"}
    assert spot_res["Type"] == "SPOT"
    assert spot_res["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert od_res["Type"] == "EC2"
    assert od_res["AllocationStrategy"] == "BEST_FIT_PROGRESSIVE"
    # GpuSpot=false disables the spot environment: the queue then skips it
    assert gpu_spot["Properties"]["State"] == {"Fn::If": ["UseGpuSpot", "ENABLED", "DISABLED"]}


# GPUs of the multi-GPU sizes of the families a user might list (the rest have one)
MULTI_GPU = {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8, "metal": 8}


def test_default_gpu_instances_have_one_gpu_and_fit_a_gpu_job(template: dict[str, Any]) -> None:
    """Explicit single-GPU sizes of g5 / g6 with at least the 8 vCPUs of a GPU job."""
    types = str(template["Parameters"]["GpuInstanceTypes"]["Default"]).split(",")
    vcpus = {"2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "16xlarge": 64}
    for t in types:
        fam, _, size = t.partition(".")
        assert fam in {"g5", "g6"} and size, t  # a size, not a whole family (p4d: 8 GPUs)
        assert size not in MULTI_GPU and vcpus.get(size, 0) >= 8, t


def test_runnable_jobs_are_cancelled_with_their_reason(template: dict[str, Any]) -> None:
    (queue,) = resources(template, "AWS::Batch::JobQueue").values()
    actions = queue["Properties"]["JobStateTimeLimitActions"]
    assert {a["Reason"] for a in actions} == {
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
        "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
    }
    for action in actions:
        assert action["Action"] == "CANCEL" and action["State"] == "RUNNABLE"
        assert action["MaxTimeSeconds"] == {"Ref": "RunnableTimeoutSeconds"}
    parameter = template["Parameters"]["RunnableTimeoutSeconds"]
    assert 600 <= parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"] <= 86400


def test_root_volume_and_log_group(template: dict[str, Any]) -> None:
    (launch,) = resources(template, "AWS::EC2::LaunchTemplate").values()
    (device,) = launch["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"]
    assert device["Ebs"]["VolumeType"] == "gp3"
    assert device["Ebs"]["VolumeSize"] == {"Ref": "RootVolumeSize"}
    assert template["Parameters"]["RootVolumeSize"]["Default"] == 200
    # the group of the job logs; the other one holds the job state events (monitoring)
    groups = resources(template, "AWS::Logs::LogGroup")
    assert set(groups) == {"JobLogGroup", "JobEventsLogGroup"}
    group = groups["JobLogGroup"]
    assert group["Properties"]["LogGroupName"] == "/aws/batch/job"
    assert group["Condition"] == "CreateLogGroupCondition"
    assert template["Conditions"]["CreateLogGroupCondition"] == {
        "Fn::Equals": [{"Ref": "CreateLogGroup"}, "true"]
    }


# ------------------------------------------------------------------ the command on moto


# Resource types moto's CloudFormation cannot create: it skips them with a warning,
# and a Ref or GetAtt to one fails. All of them are monitoring and cost extras that
# the profile and the jobs do not use; the structure tests above check them.
MOTO_UNSUPPORTED = frozenset(
    {
        "AWS::Logs::MetricFilter",  # the job-state metrics
        "AWS::CloudWatch::Alarm",  # the blocked-queue alarm
        "AWS::SNS::Subscription",  # AlertEmail's subscription (only with AlertEmail)
        "AWS::Budgets::Budget",  # the cost budget (only with AlertEmail)
    }
)


def references(node: Any) -> set[str]:
    """Logical IDs (and parameters) that Ref, Fn::GetAtt or Fn::Sub in ``node`` name."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            if key != "Ref":
                found |= references(value)
    return found


def create_stack(template: dict[str, Any], name: str = STACK) -> dict[str, str]:
    """Create the real template in moto and return its outputs.

    Three changes for moto only: moto's model of AWS::Batch::ComputeEnvironment
    requires a ServiceRole (real Batch uses its service-linked role when none is
    given); moto does not split the default of a CommaDelimitedList parameter, so
    those parameters are passed explicitly with their defaults; and the resources of
    the types in MOTO_UNSUPPORTED, which moto's CloudFormation cannot create, are left
    out, with every output that refers to one (none does: the tests compare the
    outputs with the template's).
    """
    body = json.loads(json.dumps(template))
    dropped = {k for k, r in body["Resources"].items() if r["Type"] in MOTO_UNSUPPORTED}
    body["Resources"] = {k: r for k, r in body["Resources"].items() if k not in dropped}
    for key, resource in body["Resources"].items():
        depends = resource.get("DependsOn", [])
        depends = [depends] if isinstance(depends, str) else depends
        assert not (references(resource) | set(depends)) & dropped, key
    body["Outputs"] = {k: o for k, o in body["Outputs"].items() if not references(o) & dropped}
    iam = boto3.client("iam")
    role = iam.create_role(
        RoleName="moto-batch-service-role",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    for resource in body["Resources"].values():
        if resource["Type"] == "AWS::Batch::ComputeEnvironment":
            assert "ServiceRole" not in resource["Properties"]
            resource["Properties"]["ServiceRole"] = role
    params = [
        {"ParameterKey": key, "ParameterValue": str(p["Default"])}
        for key, p in body["Parameters"].items()
        if p["Type"] == "CommaDelimitedList"
    ]
    cfn = boto3.client("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Parameters=params,
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    (described,) = cfn.describe_stacks(StackName=name)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


def test_moto_leaves_out_only_extras(template: dict[str, Any]) -> None:
    """What create_stack leaves out exists in the template, and no output needs it."""
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert kinds >= MOTO_UNSUPPORTED
    left_out = {k for k, r in template["Resources"].items() if r["Type"] in MOTO_UNSUPPORTED}
    refs = references(template["Outputs"])
    assert not left_out & refs
    assert {"JobQueue", "DataBucket", "Dashboard", "AlarmTopic"} <= refs


def describe(status: str, outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackName": STACK,
                "CreationTime": "2026-01-01T00:00:00Z",
                "StackStatus": status,
                "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
            }
        ]
    }


FULL = {name: f"value-of-{name}" for name in aws_stack.OUTPUT_NAMES}


@pytest.mark.parametrize(
    ("status", "outputs", "message"),
    [
        ("CREATE_IN_PROGRESS", FULL, "status CREATE_IN_PROGRESS"),
        ("ROLLBACK_COMPLETE", FULL, "status ROLLBACK_COMPLETE"),
        ("UPDATE_ROLLBACK_FAILED", FULL, "status UPDATE_ROLLBACK_FAILED"),
        (
            "CREATE_COMPLETE",
            {k: v for k, v in FULL.items() if k != "JobRoleArn"},
            "no output JobRoleArn",
        ),
    ],
)
def test_unusable_stacks(status: str, outputs: dict[str, str], message: str) -> None:
    client = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stub:
        stub.add_response("describe_stacks", describe(status, outputs), {"StackName": STACK})
        with pytest.raises(CryosnakeError, match=message) as info:
            aws_stack.stack_outputs(STACK, client=client)
    assert "\n" not in str(info.value)


def test_usable_after_update_rollback() -> None:
    client = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stub:
        stub.add_response("describe_stacks", describe("UPDATE_ROLLBACK_COMPLETE", FULL))
        assert aws_stack.stack_outputs(STACK, client=client) == FULL


@pytest.mark.parametrize(
    ("option", "value"), [("project", "/abs"), ("project", "a b"), ("image_tag", "0.1+x")]
)
def test_bad_project_or_tag(option: str, value: str) -> None:
    with pytest.raises(CryosnakeError, match=r"--project|--image-tag"):
        aws_stack.profile_values(FULL, **{option: value})


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["aws", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "cryosnake aws" in out and "Example::" in out
