"""S3 for every module that talks to it: URLs, clients and one-line error messages.

:func:`parse_s3_url` checks and splits ``s3://bucket[/prefix]``; :func:`client` makes
the one kind of S3 client cryosnake uses (standard retries, a connection pool as large
as the requests in flight); :func:`s3_errors` turns botocore's and s3transfer's
exceptions into a :class:`~cryosnake.errors.CryosnakeError` of one line that names the
bucket or key (:func:`describe` gives the reason alone, :func:`error_code` S3's code).
:func:`head` and :func:`objects` are the two reads that the transfers, the workflow's
storage view and the checkpoint mirror share.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from s3transfer.exceptions import (
    RetriesExceededError,
    S3DownloadFailedError,
    S3UploadFailedError,
    S3ValidationError,
)

from cryosnake.errors import ConfigError, CryosnakeError

__all__ = [
    "ERRORS",
    "S3Client",
    "client",
    "describe",
    "error_code",
    "head",
    "is_not_found",
    "object_url",
    "objects",
    "parse_s3_url",
    "s3_error",
    "s3_errors",
]

S3Client = Any  # boto3 ships no type stubs
#: what a call to S3, or a transfer of boto3's transfer manager, raises when it fails
ERRORS = (
    ClientError,
    BotoCoreError,
    Boto3Error,
    RetriesExceededError,
    S3DownloadFailedError,
    S3UploadFailedError,
    S3ValidationError,
)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "Forbidden",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
_REASONS = {
    "NoSuchBucket": "bucket not found",
    "NoSuchUpload": "the multipart upload vanished; run again",
    "PreconditionFailed": "the object changed during the download; run again",
    "412": "the object changed during the download; run again",  # a HEAD's PreconditionFailed
    "BadDigest": "S3 received other bytes than their SHA-256 says "
    "(did the file change during the upload?); run again",
}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket[/prefix]`` into bucket and prefix (no leading/trailing '/').

    Raises
    ------
    ConfigError
        ``url`` is not of that form or the bucket name is not a valid S3 bucket name.
    """
    if not url.startswith("s3://"):
        raise ConfigError(f"{url}: not an S3 URL (expected s3://bucket[/prefix])")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"{url}: bad bucket name {bucket!r} (expected s3://bucket[/prefix])")
    return bucket, prefix.strip("/")


def object_url(bucket: str, key: str) -> str:
    """``s3://bucket/key``."""
    return f"s3://{bucket}/{key}"


def client(
    jobs: int = 1, *, endpoint_url: str | None = None, region: str | None = None
) -> S3Client:
    """An S3 client for ``jobs`` threads at once (clients are thread-safe).

    Endpoint, region and credentials come from the environment unless given.

    Raises
    ------
    CryosnakeError
        boto3 cannot make a client (e.g. the AWS profile named in the environment does
        not exist).
    """
    config = Config(
        max_pool_connections=max(10, jobs + 2),
        retries={"mode": "standard", "max_attempts": 5},
    )
    try:
        return boto3.client("s3", config=config, endpoint_url=endpoint_url, region_name=region)
    except BotoCoreError as err:
        raise CryosnakeError(f"S3: {err}") from err


def error_code(err: BaseException | None) -> str:
    """S3's error code of a ``ClientError`` (e.g. ``NoSuchKey``); '' for anything else."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(err: BaseException | None) -> bool:
    """Is ``err`` S3 saying that the key (or, for a HEAD, the bucket) is not there?"""
    return error_code(err) in _NOT_FOUND


def describe(err: BaseException) -> str:
    """Why a call to S3 failed, in a few words (the part of a message after 'where: ')."""
    if isinstance(err, ClientError):
        code = error_code(err)
        message = str(err.response.get("Error", {}).get("Message", "")) or str(err)
        if code in _DENIED:
            return f"access denied ({code}: {message})"
        if code in _NOT_FOUND:
            return "not found"
        return _REASONS.get(code) or f"{code or 'error'}: {message}"
    if isinstance(err, NoCredentialsError):
        return "no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
    if isinstance(err, RetriesExceededError):
        return f"{err} ({err.last_exception})"
    cause = err.__cause__ or err.__context__
    if isinstance(cause, ClientError):  # e.g. s3transfer's S3DownloadFailedError
        return describe(cause)
    return str(err)


def s3_error(err: BaseException, where: str, bucket: str | None = None) -> CryosnakeError:
    """One line ``where: reason`` for ``err``; a missing bucket is named as ``s3://bucket``."""
    if bucket is not None and error_code(err) == "NoSuchBucket":
        where = f"s3://{bucket}"
    return CryosnakeError(f"{where}: {describe(err)}")


@contextmanager
def s3_errors(where: str, bucket: str | None = None) -> Iterator[None]:
    """Turn the S3 errors raised inside (:data:`ERRORS`) into :func:`s3_error`'s."""
    try:
        yield
    except ERRORS as err:
        raise s3_error(err, where, bucket) from err


def head(s3: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """head_object of ``key`` (with its S3 checksum), or None when there is none.

    Raises
    ------
    CryosnakeError
        Any other failure (:func:`s3_errors`).
    """
    with s3_errors(object_url(bucket, key), bucket):
        try:
            return dict(s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except ClientError as err:
            if is_not_found(err):
                return None
            raise


def objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """The objects whose keys start with ``prefix`` (list_objects_v2, every page).

    S3's errors are raised as they come (wrap the loop in :func:`s3_errors` or catch
    :data:`ERRORS`).
    """
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])
