"""EC2 vCPU quotas the stack's compute environments need: ``cryosnake aws check``.

EC2 limits, per account and region, the vCPUs of running instances in quota groups:
on-demand and spot apart, and the GPU families apart from the standard ones. A new
account has 0 vCPUs of G and VT spot (and often of on-demand): AWS Batch then cannot
start a single GPU instance, and the jobs wait RUNNABLE. :func:`check` reads the
stack's parameters (instance types, each compute environment's maximum vCPUs, whether
GPU spot is on), the account's applied quotas (Service Quotas; the AWS default where
none was applied) and says, one line per quota, whether one job fits and how many fit
at once, with the command that requests an increase. The quota codes are those of the
Service Quotas console (service ``ec2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryosnake.errors import ConfigError, CryosnakeError

__all__ = [
    "CPU_JOB_VCPUS",
    "GPU_JOB_VCPUS",
    "QUOTAS",
    "Environment",
    "QuotaLine",
    "check",
    "environments",
    "quota_group",
    "stack_parameters",
]

#: vCPUs of the largest job of each kind (profiles/aws: cores; the CPU rules' threads)
GPU_JOB_VCPUS = 8
CPU_JOB_VCPUS = 2

#: (market, group) -> (quota code, quota name)
QUOTAS: dict[tuple[str, str], tuple[str, str]] = {
    ("spot", "standard"): (
        "L-34B43A08",
        "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
    ),
    ("on-demand", "standard"): (
        "L-1216C47A",
        "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    ),
    ("spot", "g"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("on-demand", "g"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("spot", "p"): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("on-demand", "p"): ("L-417A185B", "Running On-Demand P instances"),
}


def quota_group(instance_type: str) -> str:
    """The quota group of an instance type or family: ``standard``, ``g`` or ``p``."""
    name = instance_type.strip().lower()
    if name.startswith(("g", "vt")):
        return "g"
    if name.startswith("p"):
        return "p"
    if name[:1] and name[0] in "acdhimrtz":
        return "standard"
    raise ConfigError(f"instance type {instance_type!r}: no known EC2 vCPU quota for it")


@dataclass(frozen=True)
class Environment:
    """A compute environment of the stack as the quotas see it."""

    name: str  # e.g. "GPU spot"
    market: str  # "spot" or "on-demand"
    groups: tuple[str, ...]  # quota groups of its instance types
    job_vcpus: int  # vCPUs of its largest job
    max_vcpus: int  # its MaxvCpus


@dataclass(frozen=True)
class QuotaLine:
    """One quota's verdict: ``blocking`` when not even one job fits."""

    blocking: bool
    text: str


def stack_parameters(stack: str, client: Any) -> dict[str, str]:
    """Parameter values of a deployed stack (``ParameterKey`` -> ``ParameterValue``)."""
    import botocore.exceptions

    try:
        response = client.describe_stacks(StackName=stack)
    except botocore.exceptions.ClientError as err:
        message = err.response.get("Error", {}).get("Message", str(err))
        raise CryosnakeError(f"stack {stack}: {message}") from err
    except botocore.exceptions.BotoCoreError as err:  # no credentials, no connection
        raise CryosnakeError(f"stack {stack}: {err}") from err
    stacks = response.get("Stacks", [])
    if not stacks:
        raise CryosnakeError(f"stack {stack}: not found")
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}


def environments(parameters: Mapping[str, str]) -> list[Environment]:
    """The compute environments of infra/cryosnake.yaml for the stack's parameters."""

    def groups(key: str) -> tuple[str, ...]:
        if not parameters.get(key):
            raise CryosnakeError(f"stack parameter {key} missing (deploy infra/cryosnake.yaml)")
        # "a,b" from CloudFormation; "['a', 'b']" (a list's text) from stand-ins
        names = [t.strip(" '\"[]") for t in parameters[key].split(",")]
        found = [quota_group(t) for t in names if t]
        return tuple(dict.fromkeys(found))

    def vcpus(key: str) -> int:
        try:
            return int(parameters[key])
        except (KeyError, ValueError) as err:
            raise CryosnakeError(f"stack parameter {key}: not a number of vCPUs") from err

    gpu = groups("GpuInstanceTypes")
    out = [Environment("CPU spot", "spot", groups("CpuInstanceTypes"), CPU_JOB_VCPUS,
                       vcpus("CpuSpotMaxvCpus"))]  # fmt: skip
    if parameters.get("GpuSpot", "true") == "true":
        out.append(Environment("GPU spot", "spot", gpu, GPU_JOB_VCPUS, vcpus("GpuSpotMaxvCpus")))
    out.append(
        Environment("GPU on-demand", "on-demand", gpu, GPU_JOB_VCPUS, vcpus("GpuOnDemandMaxvCpus"))
    )
    return out


def _applied(client: Any, code: str) -> float:
    """The account's value of quota ``code`` (the AWS default where none is applied)."""
    import botocore.exceptions

    def read(call: Any) -> float | None:
        try:
            return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except botocore.exceptions.ClientError as err:
            error = err.response.get("Error", {})
            if error.get("Code") == "NoSuchResourceException":
                return None
            raise CryosnakeError(f"quota {code}: {error.get('Message', err)}") from err
        except botocore.exceptions.BotoCoreError as err:
            raise CryosnakeError(f"quota {code}: {err}") from err

    value = read(client.get_service_quota)
    if value is None:
        value = read(client.get_aws_default_service_quota)
    if value is None:
        raise CryosnakeError(f"quota {code}: not known to Service Quotas")
    return value


def check(parameters: Mapping[str, str], client: Any, region: str) -> list[QuotaLine]:
    """One line per quota that a compute environment of the stack draws on.

    An environment none of whose quotas holds one job is blocking: its jobs would wait
    RUNNABLE (Batch places GPU jobs in the GPU spot environment first and does not move
    them to on-demand when spot instances cannot start). A quota that holds one job but
    not the environment's maximum limits how many run at once. The advice names the
    request command and, for GPU spot, the stack parameter ``GpuSpot=false``.
    """
    lines: list[QuotaLine] = []
    for env in environments(parameters):
        values = {group: _applied(client, QUOTAS[(env.market, group)][0]) for group in env.groups}
        usable = any(v >= env.job_vcpus for v in values.values())
        for group, value in values.items():
            code, name = QUOTAS[(env.market, group)]
            head = f"{env.name}: {name} ({code}) is {value:g} vCPUs"
            request = (
                f"aws service-quotas request-service-quota-increase --service-code ec2 "
                f"--quota-code {code} --desired-value {env.max_vcpus} --region {region}"
            )
            if value < env.job_vcpus:
                other = "GpuSpot=false" if env.name == "GPU spot" else ""
                extra = f", or redeploy the stack with {other}" if other else ""
                state = "MISSING " if not usable else "unused  "
                lines.append(
                    QuotaLine(
                        not usable,
                        f"{state} {head}; one job needs {env.job_vcpus}: request "
                        f"{env.max_vcpus} ({request}){extra}",
                    )
                )
            elif value < env.max_vcpus:
                jobs = int(value // env.job_vcpus)
                lines.append(
                    QuotaLine(
                        False,
                        f"limited  {head}: {jobs} job(s) at once of the "
                        f"{env.max_vcpus // env.job_vcpus} the environment allows ({request})",
                    )
                )
            else:
                lines.append(QuotaLine(False, f"ok       {head}"))
    return lines
