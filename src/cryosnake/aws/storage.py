"""The workflow's own view of S3, for runs whose default storage is S3 (profile aws).

With ``default-storage-provider: s3`` every relative path of the workflow lives under
the default storage prefix (``s3://BUCKET/PROJECT``), ``input.movies`` included. A
local glob cannot see those files, so the workflow lists the bucket instead
(:func:`glob_s3`), reads and writes there the chunk table it plans with
(:func:`read_s3_text`, :func:`write_s3_text`), and after a failure reads the stage
errors from the jobs' logs (:func:`stage_errors`). :mod:`cryosnake.aws.inventory` gives
Snakemake the files in S3 from one listing.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Any

from cryosnake.aws import s3
from cryosnake.aws.s3 import parse_s3_url
from cryosnake.errors import ConfigError, CryosnakeError

__all__ = ["glob_s3", "read_s3_text", "stage_errors", "write_s3_text"]

_WILDCARD = re.compile(r"[*?\[]")


def glob_s3(
    storage_prefix: str,
    pattern: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
) -> list[str]:
    """Paths (relative to ``storage_prefix``) of the objects matching ``pattern``.

    ``pattern`` is a shell pattern relative to the storage prefix, as
    ``input.movies`` is in a run on S3 (e.g. ``movies/*.tiff``); ``*`` does not match
    ``/``. Objects are listed from the longest constant part of the pattern only.

    Raises
    ------
    ConfigError
        The bucket does not exist or cannot be listed (the message names it).
    """
    bucket, base = parse_s3_url(storage_prefix)
    pattern = pattern.lstrip("/")
    constant = _WILDCARD.split(pattern, 1)[0]
    list_prefix = posixpath.join(base, constant) if base else constant
    client = client or s3.client(endpoint_url=endpoint_url, region=region)
    regex = re.compile(fnmatch.translate(pattern).replace(".*", "[^/]*"))
    found = []
    try:
        for item in s3.objects(client, bucket, list_prefix):
            key = item["Key"]
            relative = key[len(base) + 1 :] if base else key
            if not key.endswith("/") and regex.fullmatch(relative):
                found.append(relative)
    except s3.ERRORS as err:
        where = s3.object_url(bucket, list_prefix)
        raise ConfigError(f"input.movies: cannot list {where} ({_reason(err)})") from err
    return sorted(found)


def _reason(err: BaseException) -> str:
    """S3's error code, or the description of an error without one."""
    return s3.error_code(err) or s3.describe(err)


def _workflow_key(storage_prefix: str, path: str) -> tuple[str, str]:
    """(bucket, key) of the workflow file ``path`` relative to ``storage_prefix``."""
    bucket, base = parse_s3_url(storage_prefix)
    return bucket, posixpath.join(base, path.lstrip("/")) if base else path.lstrip("/")


def read_s3_text(
    storage_prefix: str,
    path: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
    missing_ok: bool = False,
) -> str | None:
    """The text of the workflow file ``path`` (relative to ``storage_prefix``) in S3.

    For the few files the workflow itself reads while it plans the jobs (the chunk of
    every movie), which the main process has no local copy of. With ``missing_ok``,
    None when there is no such object.

    Raises
    ------
    CryosnakeError
        The object cannot be read (the message names its URL).
    """
    bucket, key = _workflow_key(storage_prefix, path)
    client = client or s3.client(endpoint_url=endpoint_url, region=region)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.ERRORS as err:
        if missing_ok and s3.is_not_found(err):
            return None
        raise CryosnakeError(f"{s3.object_url(bucket, key)}: cannot read ({_reason(err)})") from err
    return bytes(body).decode("utf-8")


def write_s3_text(
    storage_prefix: str,
    path: str,
    text: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
) -> None:
    """Write the workflow file ``path`` (relative to ``storage_prefix``) in S3: the state
    the workflow keeps while it plans the jobs (the chunk of every movie).

    Raises
    ------
    CryosnakeError
        The object cannot be written (the message names its URL).
    """
    bucket, key = _workflow_key(storage_prefix, path)
    client = client or s3.client(endpoint_url=endpoint_url, region=region)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
    except s3.ERRORS as err:
        raise CryosnakeError(
            f"{s3.object_url(bucket, key)}: cannot write ({_reason(err)})"
        ) from err


_STAGE_ERROR = re.compile(r"^cryosnake [\w-]+: error: .*$", re.MULTILINE)


def stage_errors(
    storage_prefix: str,
    logs: str,
    since: float,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
) -> list[tuple[str, str]]:
    """The one-line stage errors in the log files written to S3 since ``since``.

    A job that fails on AWS Batch uploads its log files, but Snakemake's main process
    looks for them on its own disk and reports them as not found. This reads the logs
    under ``logs`` (relative to the storage prefix) that were written at or after
    ``since`` (seconds since the epoch) and returns ``(s3 url, error line)`` for each
    ``cryosnake <stage>: error: ...`` line in them, oldest first.
    """
    bucket, base = parse_s3_url(storage_prefix)
    prefix = posixpath.join(base, logs.strip("/")) + "/" if base else logs.strip("/") + "/"
    client = client or s3.client(endpoint_url=endpoint_url, region=region)
    found = []
    try:
        for item in s3.objects(client, bucket, prefix):
            if item["LastModified"].timestamp() >= since - 1:
                found.append((item["LastModified"], item["Key"]))
        errors = []
        for _, key in sorted(found):
            text = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for line in _STAGE_ERROR.findall(text.decode("utf-8", "replace")):
                errors.append((f"s3://{bucket}/{key}", line))
    except s3.ERRORS:
        return []  # reporting only: the failure itself is already reported
    return errors
