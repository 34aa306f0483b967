"""Stack outputs -> values of the AWS profile.

The CloudFormation stack of ``infra/cryosnake.yaml`` exports where everything lives
(region, bucket, job queue, job role, image repository, log group). This module reads
those outputs, turns them into the per-account values of ``profiles/aws/config.yaml``
and writes them into that file, replacing the values of exactly those top-level keys:
every comment and every other line stays as it was.
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
    "RAW_MOVIE_TAG",
    "default_image_tag",
    "profile_values",
    "stack_outputs",
    "update_profile",
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

#: Top-level keys of profiles/aws/config.yaml that :func:`update_profile` fills.
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
_TOP_LEVEL_KEY = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)[ \t]*:(?=[ \t]|$)(?P<rest>.*)")


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


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar that reads back as the same string."""
    try:
        if yaml.safe_load(f"k: {value}") == {"k": value}:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)  # a double-quoted YAML string


def _comment_start(text: str) -> int:
    """Index of the ``#`` that starts a trailing comment of ``text``, or -1."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return i
    return -1


def _has_block_value(lines: list[str], number: int) -> bool:
    """Whether the key on line ``number`` (with nothing after its colon) owns a block."""
    for line in lines[number + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return line[0] in " \t" or stripped == "-" or stripped.startswith("- ")
    return False


def update_profile(path: str | os.PathLike[str], values: Mapping[str, str]) -> Path:
    """Set top-level keys of a profile's config.yaml, keeping every other line.

    Each key of ``values`` must be a top-level key of the file with a one-line value;
    that value is replaced (a trailing comment on the line is kept) and nothing else
    changes. The file is rewritten atomically: on any error it is left untouched.

    Parameters
    ----------
    path : the profile's config.yaml
    values : key -> new value (strings)

    Returns
    -------
    the path of the file written
    """
    target = Path(path)
    if not target.is_file():
        raise FileFormatError(f"{target}: no such file")
    text = target.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    found: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = _TOP_LEVEL_KEY.match(line.rstrip("\r\n"))
        if match is None or match["key"] not in values:
            continue
        key = match["key"]
        if key in found:
            raise FileFormatError(
                f"{target}: key {key} appears twice (lines {found[key] + 1} and {number + 1})"
            )
        rest = match["rest"]
        cut = _comment_start(rest)
        value_text = (rest if cut < 0 else rest[:cut]).strip()
        comment = "" if cut < 0 else "  " + rest[cut:].rstrip()
        if not value_text and _has_block_value(lines, number):
            raise FileFormatError(
                f"{target}:{number + 1}: {key} holds a block, not a one-line value"
            )
        ending = line[len(line.rstrip("\r\n")) :]
        lines[number] = f"{key}: {_scalar(values[key])}{comment}{ending}"
        found[key] = number
    missing = [key for key in values if key not in found]
    if missing:
        raise FileFormatError(f"{target}: no top-level key {', '.join(missing)}")
    new_text = "".join(lines)
    try:
        written = yaml.safe_load(new_text)
    except yaml.YAMLError as err:
        raise FileFormatError(f"{target}: not valid YAML after the update ({err})") from err
    if not isinstance(written, dict) or any(written.get(k) != v for k, v in values.items()):
        raise FileFormatError(f"{target}: the keys did not read back as written")
    with atomic_path(target) as tmp:
        tmp.write_text(new_text, encoding="utf-8")
        shutil.copymode(target, tmp)
    return target
