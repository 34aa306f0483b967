"""Tools for the AWS side: ``cryosnake aws COMMAND ...``.

``cryosnake aws profile`` reads the outputs of the CloudFormation stack deployed from
``infra/cryosnake.yaml`` and writes the user's AWS profile, ``PROFILE_DIR/config.yaml``
(default: ``aws`` in Snakemake's configuration folder, e.g.
``~/.config/snakemake/aws``, where ``snakemake --profile aws`` finds it from the
checkout): the per-account values ``aws-batch-region``, ``aws-batch-job-queue``,
``aws-batch-job-role``, ``storage-s3-region``, ``default-storage-prefix``
(``s3://BUCKET/PROJECT``) and ``container-image`` (``REPOSITORY_URI:TAG``), then the
settings every account shares from the checkout's ``profiles/aws/config.yaml``
(``--template``), which holds no account data. It needs AWS credentials that may call
``cloudformation:DescribeStacks``.

``cryosnake aws check`` reads the EC2 vCPU quotas that the stack's compute
environments draw on (:mod:`cryosnake.aws.quotas`) and says, one line each, whether a
job fits and how to request more; it exits with status 1 when some kind of job cannot
start at all. ``cryosnake aws profile`` runs the same check after writing the profile.
It needs ``servicequotas:GetServiceQuota`` and ``servicequotas:GetAWSDefaultServiceQuota``.

``cryosnake aws status`` prints the Batch jobs of the stack's job queue created in the
last ``--hours`` (default 24) or ``--since`` a time (:mod:`cryosnake.aws.jobs`): a table
of jobs per stage (the rule, or the group job, of ``snakejob-NAME-UUID``) and state
with a total line, then one line per job waiting RUNNABLE for more than 10 minutes
(capacity or quota: run ``cryosnake aws check``) and the reasons of at most 20 failed
jobs. It needs ``batch:ListJobs``.

``cryosnake aws cost`` estimates the $ of the jobs that ran in that window, per stage
and in total, per 1,000 movies of ``--project`` (its inspect reports), and
the S3 storage of ``s3://BUCKET/PROJECT/`` and the scratch prefix per month
(:mod:`cryosnake.aws.cost`). A job costs its run time at the ``--pricing`` (spot or
on-demand) hourly price of the cheapest instance type of the stack that fits it, from
the dated price table shipped with cryosnake (``--prices`` for another): several jobs
packed on one instance make the true cost lower, idle instance time makes it higher.
It needs ``batch:ListJobs``, ``batch:DescribeJobs`` and ``s3:ListBucket``.

Example::

    cryosnake aws status --stack cryosnake --hours 6
    cryosnake aws cost --stack cryosnake --project apoferritin-2026 --since 2026-03-01
    cryosnake aws check --stack cryosnake
    cryosnake aws profile --stack cryosnake --project apoferritin-2026
    snakemake --profile aws
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryosnake.aws.jobs import add_window_args
from cryosnake.aws.quotas import check, stack_parameters
from cryosnake.aws.stack import (
    DEFAULT_PROJECT,
    PROFILE_TEMPLATE,
    default_image_tag,
    profile_values,
    stack_outputs,
    user_profile_dir,
    write_profile,
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
            "cancels them; request the quotas marked MISSING (docs/aws.md, step 0)"
        )
        return 1
    print(f"quotas of stack {stack} in {where}: every kind of job can start")
    return 0


def _check(args: argparse.Namespace) -> int:
    return _quotas(args.stack, args.region)


def _profile(args: argparse.Namespace) -> int:
    outputs = stack_outputs(args.stack, region=args.region)
    values = profile_values(outputs, project=args.project, image_tag=args.image_tag)
    folder = Path(args.profile_dir) if args.profile_dir else user_profile_dir()
    path = folder / "config.yaml"
    if args.dry_run:
        print(f"{path} (not written):")
    else:
        write_profile(args.template, folder, values, args.stack)
        print(f"{path}:")
    for key, value in values.items():
        print(f"  {key}: {value}")
    print(f"job logs: CloudWatch log group {outputs['LogGroupName']} in {outputs['Region']}")
    profile = folder if args.profile_dir else "aws"
    print(f"run the workflow from its checkout with: snakemake --profile {profile}")
    if args.no_check:
        return 0
    try:
        status = _quotas(args.stack, outputs["Region"])
    except CryosnakeError as err:  # the profile is written; the check is advice
        print(f"quota check skipped: {err} (run cryosnake aws check --stack {args.stack})")
        return 0
    return status


def _status(args: argparse.Namespace) -> int:
    """Print the jobs of the stack's queue per stage and state."""
    import boto3

    from cryosnake.aws.jobs import since_time, status_lines

    outputs = stack_outputs(args.stack, region=args.region)
    since = since_time(args.since, args.hours)
    batch = boto3.client("batch", region_name=outputs["Region"])
    for line in status_lines(batch, outputs["JobQueueArn"], args.stack, since):
        print(line)
    return 0


def _cost(args: argparse.Namespace) -> int:
    """Print the estimated cost of the stack's jobs and of the project's storage."""
    import boto3

    from cryosnake.aws.cost import cost_lines, load_prices
    from cryosnake.aws.jobs import since_time

    outputs = stack_outputs(args.stack, region=args.region)
    region = outputs["Region"]
    since = since_time(args.since, args.hours)
    table = load_prices(region, args.prices)
    parameters = stack_parameters(args.stack, boto3.client("cloudformation", region_name=region))
    lines = cost_lines(
        boto3.client("batch", region_name=region),
        boto3.client("s3", region_name=region),
        outputs=outputs,
        parameters=parameters,
        table=table,
        stack=args.stack,
        project=args.project,
        since=since,
        pricing=args.pricing,
    )
    for line in lines:
        print(line)
    return 0


def add_args(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    profile = commands.add_parser(
        "profile",
        help="write the stack's values into the AWS profile",
        description=(
            "Write the user's AWS profile: the outputs of the cryosnake stack, then the "
            "shared settings of --template, into PROFILE_DIR/config.yaml."
        ),
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
        default=None,
        help="folder of the profile's config.yaml (default: aws in Snakemake's "
        f"configuration folder, here {user_profile_dir()}, found by snakemake --profile aws)",
    )
    profile.add_argument(
        "--template",
        default=str(PROFILE_TEMPLATE),
        help="the shared settings of the profile (default %(default)s, in the checkout)",
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
    status = commands.add_parser(
        "status",
        help="the stack's Batch jobs per stage and state",
        description=(
            "Print the Batch jobs of the stack's job queue created in the window: a table per "
            "stage (rule or group job) and state, the jobs waiting RUNNABLE for more than 10 "
            "minutes (capacity or quota) and the reasons of failed jobs."
        ),
    )
    cost = commands.add_parser(
        "cost",
        help="estimated $ of the stack's jobs, per 1,000 movies, and of S3 storage",
        description=(
            "Estimate the $ of the Batch jobs that ran in the window, per stage and in "
            "total, and per 1,000 movies of the project, and the S3 storage of the project "
            "per month. Each job is priced at the cheapest instance type of the stack that "
            "fits it, from a dated price table: several jobs packed on one instance make "
            "the true cost lower, idle instance time makes it higher."
        ),
    )
    for sub in (status, cost):
        sub.add_argument(
            "--stack", required=True, help="name of the stack deployed from infra/cryosnake.yaml"
        )
        sub.add_argument(
            "--region", default=None, help="region of the stack (default: AWS_REGION or config)"
        )
        add_window_args(sub)
    cost.add_argument(
        "--project",
        default=DEFAULT_PROJECT,
        help=f"key prefix of this project's data in the bucket (default {DEFAULT_PROJECT})",
    )
    cost.add_argument(
        "--pricing",
        choices=("spot", "on-demand"),
        default="spot",
        help="price column of the table (default %(default)s; spot figures are typical, "
        "not observed)",
    )
    cost.add_argument(
        "--prices",
        default=None,
        help="a price table of the same layout as the one shipped (cryosnake/aws/prices.yaml)",
    )
    status.set_defaults(run=_status)
    cost.set_defaults(run=_cost)


def _run(args: argparse.Namespace) -> int:
    return int(args.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("aws", __doc__, add_args, _run, argv)
