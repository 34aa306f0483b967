"""Tools for the AWS side: ``cryosnake aws COMMAND ...``.

``cryosnake aws profile`` reads the outputs of the CloudFormation stack deployed from
``infra/cryosnake.yaml`` and writes the per-account values of the AWS profile into
``PROFILE_DIR/config.yaml``: ``aws-batch-region``, ``aws-batch-job-queue``,
``aws-batch-job-role``, ``storage-s3-region``, ``default-storage-prefix``
(``s3://BUCKET/PROJECT``) and ``container-image`` (``REPOSITORY_URI:TAG``). Only the
values of those top-level keys change; comments and every other line stay as they
are. It needs AWS credentials that may call ``cloudformation:DescribeStacks``.

Example::

    cryosnake aws profile --stack cryosnake --project apoferritin-2026 \\
        --profile-dir profiles/aws
    snakemake --profile profiles/aws
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryosnake.aws.stack import (
    DEFAULT_PROJECT,
    default_image_tag,
    profile_values,
    stack_outputs,
    update_profile,
)
from cryosnake.stages._common import run_stage

__all__ = ["add_args", "main"]


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
    return 0


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
    profile.set_defaults(run=_profile)


def _run(args: argparse.Namespace) -> int:
    return int(args.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("aws", __doc__, add_args, _run, argv)
