"""Tools for the AWS side: ``cryosnake aws COMMAND ...``.

``cryosnake aws profile`` reads the outputs of the CloudFormation stack deployed from
``infra/cryosnake.yaml`` and writes the per-account values of the AWS profile into
``PROFILE_DIR/config.yaml``: ``aws-batch-region``, ``aws-batch-job-queue``,
``aws-batch-job-role``, ``storage-s3-region``, ``default-storage-prefix``
(``s3://BUCKET/PROJECT``) and ``container-image`` (``REPOSITORY_URI:TAG``). Only the
values of those top-level keys change; comments and every other line stay as they
are. It needs AWS credentials that may call ``cloudformation:DescribeStacks``.

``cryosnake aws check`` reads the EC2 vCPU quotas that the stack's compute
environments draw on (:mod:`cryosnake.aws.quotas`) and says, one line each, whether a
job fits and how to request more; it exits with status 1 when some kind of job cannot
start at all. ``cryosnake aws profile`` runs the same check after writing the profile.
It needs ``servicequotas:GetServiceQuota`` and ``servicequotas:GetAWSDefaultServiceQuota``.

Example::

    cryosnake aws check --stack cryosnake
    cryosnake aws profile --stack cryosnake --project apoferritin-2026 \\
        --profile-dir profiles/aws
    snakemake --profile profiles/aws
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryosnake.aws.quotas import check, stack_parameters
from cryosnake.aws.stack import (
    DEFAULT_PROJECT,
    default_image_tag,
    profile_values,
    stack_outputs,
    update_profile,
)
from cryosnake.errors import CryosnakeError
from cryosnake.stages._common import run_stage

__all__ = ["add_args", "main"]


def _quotas(stack: str, region: str | None) -> int:
    """Print the quota check of ``stack``; 1 when some kind of job cannot start."""
    import boto3
    import botocore.exceptions

    try:
        cloudformation = boto3.client("cloudformation", region_name=region)
    except botocore.exceptions.NoRegionError as err:
        raise CryosnakeError("no AWS region: pass --region or set AWS_REGION") from err
    where = str(cloudformation.meta.region_name)
    parameters = stack_parameters(stack, cloudformation)
    lines = check(parameters, boto3.client("service-quotas", region_name=where), where)
    for line in lines:
        print(line.text)
    if any(line.blocking for line in lines):
        print(
            "some jobs cannot start: their Batch jobs would wait RUNNABLE until the queue "
            "cancels them; request the quotas marked MISSING (README, Run on AWS, step 0)"
        )
        return 1
    print(f"quotas of stack {stack} in {where}: every kind of job can start")
    return 0


def _check(args: argparse.Namespace) -> int:
    return _quotas(args.stack, args.region)


def _profile(args: argparse.Namespace) -> int:
    outputs = stack_outputs(args.stack, region=args.region)
    values = profile_values(outputs, project=args.project, image_tag=args.image_tag)
    path = Path(args.profile_dir) / "config.yaml"
    if args.dry_run:
        print(f"{path} (not written):")
    else:
        update_profile(path, values)
        print(f"{path}:")
    for key, value in values.items():
        print(f"  {key}: {value}")
    print(f"job logs: CloudWatch log group {outputs['LogGroupName']} in {outputs['Region']}")
    if args.no_check:
        return 0
    try:
        status = _quotas(args.stack, outputs["Region"])
    except CryosnakeError as err:  # the profile is written; the check is advice
        print(f"quota check skipped: {err} (run cryosnake aws check --stack {args.stack})")
        return 0
    return status


def add_args(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    profile = commands.add_parser(
        "profile",
        help="write the stack's values into the AWS profile",
        description="Write the outputs of the cryosnake stack into PROFILE_DIR/config.yaml.",
    )
    profile.add_argument(
        "--stack", required=True, help="name of the stack deployed from infra/cryosnake.yaml"
    )
    profile.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"key prefix of this project's data in the bucket (default {DEFAULT_PROJECT})",
    )
    profile.add_argument(
        "--image-tag",
        default=default_image_tag(),
        help="tag of the job image in the stack's repository (default %(default)s)",
    )
    profile.add_argument(
        "--profile-dir",
        default="profiles/aws",
        help="folder of the profile's config.yaml (default %(default)s)",
    )
    profile.add_argument(
        "--region", default=None, help="region of the stack (default: AWS_REGION or config)"
    )
    profile.add_argument("--dry-run", action="store_true", help="print the values, write nothing")
    profile.add_argument(
        "--no-check", action="store_true", help="do not check the account's EC2 quotas"
    )
    profile.set_defaults(run=_profile)
    quotas = commands.add_parser(
        "check",
        help="check the account's EC2 vCPU quotas for the stack",
        description=(
            "Read the EC2 vCPU quotas (Service Quotas) that the stack's compute environments "
            "draw on and say, one line each, whether a job fits and how to request more. "
            "Exit status 1 when some kind of job cannot start at all."
        ),
    )
    quotas.add_argument(
        "--stack", required=True, help="name of the stack deployed from infra/cryosnake.yaml"
    )
    quotas.add_argument(
        "--region", default=None, help="region of the stack (default: AWS_REGION or config)"
    )
    quotas.set_defaults(run=_check)


def _run(args: argparse.Namespace) -> int:
    return int(args.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("aws", __doc__, add_args, _run, argv)
