"""Stack outputs -> the user's AWS profile.

The CloudFormation stack of ``infra/cryosnake.yaml`` exports where everything lives
(region, bucket, job queue, job role, image repository, log group). This module reads
those outputs and turns them into the per-account values of a Snakemake profile. The
repository's ``profiles/aws/config.yaml`` holds no account data: it is the template of
the settings every account shares. :func:`write_profile` writes the account values
followed by that template into the user's own profile, by default in Snakemake's
configuration folder (:func:`user_profile_dir`), where ``snakemake --profile aws``
finds it from any checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cryosnake import __version__
from cryosnake.errors import ConfigError, CryosnakeError, FileFormatError
from cryosnake.io import atomic_path

__all__ = [
    "DEFAULT_PROJECT",
    "OUTPUT_NAMES",
    "PROFILE_KEYS",
    "PROFILE_TEMPLATE",
    "RAW_MOVIE_TAG",
    "default_image_tag",
    "profile_values",
    "stack_outputs",
    "user_profile_dir",
    "write_profile",
]

#: Outputs of infra/cryosnake.yaml that the tools read.
OUTPUT_NAMES: tuple[str, ...] = (
    "Region",
    "BucketName",
    "JobQueueArn",
    "JobRoleArn",
    "RepositoryUri",
    "LogGroupName",
)

#: The shared settings of the AWS profile, relative to the workflow's checkout.
PROFILE_TEMPLATE = Path("profiles") / "aws" / "config.yaml"

#: Top-level keys of the user's AWS profile that :func:`write_profile` fills.
PROFILE_KEYS: tuple[str, ...] = (
    "aws-batch-region",
    "aws-batch-job-queue",
    "aws-batch-job-role",
    "storage-s3-region",
    "default-storage-prefix",
    "container-image",
)

#: S3 object tag (key, value) of raw movies: the bucket's lifecycle rule ArchiveRawMovies
#: moves objects carrying it to Glacier Deep Archive. ``cryosnake upload`` sets it.
RAW_MOVIE_TAG: tuple[str, str] = ("cryosnake-class", "raw-movie")

#: Default project: the key prefix of a project's data in the bucket.
DEFAULT_PROJECT = "cryosnake"

# Stack states whose outputs describe deployed resources. ROLLBACK_COMPLETE is a create
# that failed and was rolled back: nothing is left.
_USABLE_STATES = frozenset(
    {
        "CREATE_COMPLETE",
        "UPDATE_COMPLETE",
        "UPDATE_ROLLBACK_COMPLETE",
        "IMPORT_COMPLETE",
        "IMPORT_ROLLBACK_COMPLETE",
    }
)
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def default_image_tag() -> str:
    """Tag of the GPU job image of this version of cryosnake, ``<version>-gpu``."""
    return f"{__version__}-gpu"


def stack_outputs(
    stack: str, *, region: str | None = None, client: Any | None = None
) -> dict[str, str]:
    """Outputs of a completed CloudFormation stack, checked for :data:`OUTPUT_NAMES`.

    Parameters
    ----------
    stack : name or ID of the stack
    region : AWS region of the stack; None uses boto3's default (``AWS_REGION``,
        ``AWS_DEFAULT_REGION`` or the AWS config file)
    client : a boto3 CloudFormation client to use instead of a new one

    Returns
    -------
    dict mapping every output name of the stack to its value

    Raises
    ------
    CryosnakeError
        If the stack cannot be read or does not exist, is not in a completed state, or
        lacks one of :data:`OUTPUT_NAMES`.
    """
    import boto3
    import botocore.exceptions

    try:
        if client is None:
            client = boto3.client("cloudformation", region_name=region)
        where = client.meta.region_name
        response = client.describe_stacks(StackName=stack)
    except botocore.exceptions.NoRegionError as err:
        raise CryosnakeError("no AWS region: pass --region or set AWS_REGION") from err
    except botocore.exceptions.ClientError as err:
        message = err.response.get("Error", {}).get("Message", str(err))
        if "does not exist" in message:
            raise CryosnakeError(f"stack {stack}: not found in region {where}") from err
        raise CryosnakeError(f"stack {stack}: {message}") from err
    except botocore.exceptions.BotoCoreError as err:
        raise CryosnakeError(f"stack {stack}: {err}") from err
    stacks = response.get("Stacks", [])
    if not stacks:
        raise CryosnakeError(f"stack {stack}: not found in region {where}")
    status = stacks[0].get("StackStatus", "UNKNOWN")
    if status not in _USABLE_STATES:
        raise CryosnakeError(
            f"stack {stack}: status {status}, not a completed create or update "
            f"(see aws cloudformation describe-stack-events --stack-name {stack})"
        )
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in OUTPUT_NAMES if not outputs.get(name)]
    if missing:
        raise CryosnakeError(
            f"stack {stack}: no output {', '.join(missing)} (deploy it from infra/cryosnake.yaml)"
        )
    return outputs


def profile_values(
    outputs: Mapping[str, str],
    *,
    project: str = DEFAULT_PROJECT,
    image_tag: str | None = None,
) -> dict[str, str]:
    """The values of :data:`PROFILE_KEYS` for a stack's outputs.

    Parameters
    ----------
    outputs : stack outputs, as :func:`stack_outputs` returns them
    project : key prefix of the project's data in the bucket (``a`` or ``a/b``)
    image_tag : tag of the job image in the stack's repository; None for
        :func:`default_image_tag`

    Returns
    -------
    dict mapping each key of :data:`PROFILE_KEYS` to its value, in that order
    """
    tag = default_image_tag() if image_tag is None else image_tag
    if not _PROJECT.fullmatch(project):
        raise ConfigError(
            f"--project {project!r}: use letters, digits, '.', '_', '-' and inner '/' only"
        )
    if not _IMAGE_TAG.fullmatch(tag):
        raise ConfigError(
            f"--image-tag {tag!r}: not a valid image tag "
            "(letters, digits, '_', '.', '-'; at most 128)"
        )
    missing = [name for name in OUTPUT_NAMES if not outputs.get(name)]
    if missing:
        raise CryosnakeError(f"stack outputs lack {', '.join(missing)}")
    region = outputs["Region"]
    return {
        "aws-batch-region": region,
        "aws-batch-job-queue": outputs["JobQueueArn"],
        "aws-batch-job-role": outputs["JobRoleArn"],
        "storage-s3-region": region,
        "default-storage-prefix": f"s3://{outputs['BucketName']}/{project}",
        "container-image": f"{outputs['RepositoryUri']}:{tag}",
    }


def user_profile_dir(name: str = "aws") -> Path:
    """Where ``snakemake --profile NAME`` looks after the working directory: the
    user's Snakemake configuration folder (``$XDG_CONFIG_HOME/snakemake/NAME`` or
    ``~/.config/snakemake/NAME`` on Linux, ``~/Library/Application Support/snakemake``
    on macOS), as Snakemake finds it with platformdirs."""
    import platformdirs

    return Path(platformdirs.user_config_dir("snakemake", "snakemake")) / name


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar that reads back as the same string."""
    try:
        if yaml.safe_load(f"k: {value}") == {"k": value}:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)  # a double-quoted YAML string


def write_profile(
    template: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    values: Mapping[str, str],
    stack: str,
) -> Path:
    """Write ``folder/config.yaml``: the account ``values``, then the ``template``.

    The template holds the settings every account shares and none of the keys of
    ``values``. An existing profile that differs is kept as ``config.yaml.bak``. The
    file is written atomically and read back before it replaces the old one.

    Returns
    -------
    the path of the profile written
    """
    source = Path(template)
    if not source.is_file():
        raise FileFormatError(
            f"{source}: no such file (run in the workflow's checkout, or pass --template)"
        )
    body = source.read_text(encoding="utf-8")
    try:
        shared = yaml.safe_load(body) or {}
    except yaml.YAMLError as err:
        raise FileFormatError(f"{source}: not valid YAML ({err})") from err
    if not isinstance(shared, dict):
        raise FileFormatError(f"{source}: not a profile (a mapping of settings)")
    account = [key for key in values if key in shared]
    if account:
        raise FileFormatError(
            f"{source}: holds the account value {account[0]}; the template must hold "
            "only the settings every account shares"
        )
    head = [
        f"# AWS profile of the cryosnake stack {stack}, written by `cryosnake aws profile`",
        f"# (cryosnake {__version__}) from {source}. Run that command again after an update;",
        "# it replaces this file (the previous one is kept as config.yaml.bak).",
        *(f"{key}: {_scalar(value)}" for key, value in values.items()),
        "",
    ]
    text = "\n".join(head) + "\n" + body
    written = yaml.safe_load(text)
    if not isinstance(written, dict) or any(written.get(k) != v for k, v in values.items()):
        raise FileFormatError(f"{source}: the account values did not read back as written")
    target = Path(folder) / "config.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and target.read_text(encoding="utf-8") != text:
        shutil.copy2(target, target.with_name("config.yaml.bak"))
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
