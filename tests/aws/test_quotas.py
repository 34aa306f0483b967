"""``cryosnake aws check``: the EC2 vCPU quotas the stack needs.

moto's Service Quotas knows no EC2 quotas, so the quota client is a real boto3 client
with botocore's Stubber (no request leaves the process); the stack's parameters come
from a stubbed CloudFormation client the same way.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from cryosnake import cli
from cryosnake.aws import quotas
from cryosnake.errors import CryosnakeError

REGION = "eu-west-1"
STACK = "cryosnake-quotas"
PARAMETERS = {
    "GpuInstanceTypes": "g5.2xlarge,g5.4xlarge,g6.2xlarge",
    "CpuInstanceTypes": "c6i,m6i,r6i",
    "CpuSpotMaxvCpus": "256",
    "GpuSpotMaxvCpus": "256",
    "GpuOnDemandMaxvCpus": "64",
    "GpuSpot": "true",
}
STANDARD_SPOT, G_SPOT, G_ON_DEMAND = "L-34B43A08", "L-3819A6DF", "L-DB2E81BA"


def client(service: str) -> Any:
    return boto3.client(
        service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
    )


def quota_client(values: list[tuple[str, float | None, float]]) -> tuple[Any, Stubber]:
    """A Service Quotas client answering, in order, (code, applied or None, default)."""
    sq = client("service-quotas")
    stub = Stubber(sq)
    for code, applied, default in values:
        params = {"ServiceCode": "ec2", "QuotaCode": code}
        if applied is None:
            stub.add_client_error(
                "get_service_quota", "NoSuchResourceException", expected_params=params
            )
            stub.add_response(
                "get_aws_default_service_quota",
                {"Quota": {"ServiceCode": "ec2", "QuotaCode": code, "Value": default}},
                params,
            )
        else:
            stub.add_response(
                "get_service_quota",
                {"Quota": {"ServiceCode": "ec2", "QuotaCode": code, "Value": applied}},
                params,
            )
    stub.activate()
    return sq, stub


def stack_client(parameters: dict[str, str]) -> Any:
    cf = client("cloudformation")
    stub = Stubber(cf)
    stack = {
        "StackName": STACK,
        "CreationTime": "2026-01-01T00:00:00Z",
        "StackStatus": "CREATE_COMPLETE",
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    }
    stub.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": STACK})
    stub.activate()
    return cf


def run_check(monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str], sq: Any) -> int:
    clients = {"cloudformation": stack_client(parameters), "service-quotas": sq}
    monkeypatch.setattr(boto3, "client", lambda service, **kw: clients[service])
    return cli.main(["aws", "check", "--stack", STACK])


def test_quota_groups() -> None:
    assert [quotas.quota_group(t) for t in ("g5.2xlarge", "g6", "vt1.3xlarge")] == ["g"] * 3
    assert quotas.quota_group("p4d.24xlarge") == "p"
    assert [quotas.quota_group(t) for t in ("c6i", "m6i.large", "r6i")] == ["standard"] * 3
    with pytest.raises(CryosnakeError, match=r"instance type 'f1\.2xlarge': no known"):
        quotas.quota_group("f1.2xlarge")


def test_new_account_cannot_start_gpu_jobs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """AWS defaults of a new account: 5 vCPUs of standard spot, 0 of G and VT."""
    sq, stub = quota_client([(STANDARD_SPOT, None, 5.0), (G_SPOT, None, 0.0),
                             (G_ON_DEMAND, 0.0, 0.0)])  # fmt: skip
    assert run_check(monkeypatch, PARAMETERS, sq) == 1
    stub.assert_no_pending_responses()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("limited  CPU spot:") and "is 5 vCPUs: 2 job(s) at once" in out[0]
    assert out[1].startswith(f"MISSING  GPU spot: All G and VT Spot Instance Requests ({G_SPOT})")
    assert f"--quota-code {G_SPOT} --desired-value 256 --region {REGION}" in out[1]
    assert out[1].endswith("or redeploy the stack with GpuSpot=false")
    assert out[2].startswith("MISSING  GPU on-demand: Running On-Demand G and VT instances")
    assert "some jobs cannot start" in out[3]


def test_granted_quotas_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sq, stub = quota_client([(STANDARD_SPOT, 512.0, 5.0), (G_SPOT, 64.0, 0.0),
                             (G_ON_DEMAND, 64.0, 0.0)])  # fmt: skip
    assert run_check(monkeypatch, PARAMETERS, sq) == 0
    stub.assert_no_pending_responses()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok       CPU spot")
    assert out[1].startswith("limited  GPU spot") and "8 job(s) at once of the 32" in out[1]
    assert out[2].startswith("ok       GPU on-demand")
    assert out[3] == f"quotas of stack {STACK} in {REGION}: every kind of job can start"


def test_on_demand_only_stack_skips_gpu_spot(monkeypatch: pytest.MonkeyPatch) -> None:
    """GpuSpot=false: GPU jobs go to on-demand; its spot quota does not matter."""
    sq, stub = quota_client([(STANDARD_SPOT, 64.0, 5.0), (G_ON_DEMAND, 8.0, 0.0)])
    assert run_check(monkeypatch, {**PARAMETERS, "GpuSpot": "false"}, sq) == 0
    stub.assert_no_pending_responses()


def test_one_usable_family_is_enough() -> None:
    """A P quota of 0 beside a G quota that fits leaves the GPU spot environment usable."""
    parameters = {**PARAMETERS, "GpuInstanceTypes": "g5.2xlarge,p4d.24xlarge"}
    sq, _ = quota_client([(STANDARD_SPOT, 64.0, 5.0), (G_SPOT, 16.0, 0.0),
                          ("L-7212CCBC", 0.0, 0.0), (G_ON_DEMAND, 8.0, 0.0),
                          ("L-417A185B", 0.0, 0.0)])  # fmt: skip
    lines = quotas.check(parameters, sq, REGION)
    assert not any(line.blocking for line in lines)
    assert any(line.text.startswith("unused   GPU spot: All P Spot") for line in lines)


def test_quota_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sq = client("service-quotas")
    stub = Stubber(sq)
    stub.add_client_error("get_service_quota", "AccessDeniedException", "not allowed")
    stub.activate()
    assert run_check(monkeypatch, PARAMETERS, sq) == 1
    err = capsys.readouterr().err
    assert err == f"cryosnake aws: error: quota {STANDARD_SPOT}: not allowed\n"


def test_no_region_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    assert cli.main(["aws", "check", "--stack", STACK]) == 1
    err = capsys.readouterr().err
    assert err == "cryosnake aws: error: no AWS region: pass --region or set AWS_REGION\n"
