"""Parallel, resumable, verified transfers between local files and S3.

:func:`upload` sends a file or a folder (recursively) to ``s3://bucket/prefix``;
:func:`download` fetches every object under ``s3://bucket/prefix`` into a folder. Both
split large files into parts sent or fetched by a pool of threads and show a progress bar
on stderr.

Integrity
    Each object carries the SHA-256 of its whole content as user metadata ``sha256``
    (``x-amz-meta-sha256``, hex digest). Every request body is sent with its own SHA-256
    (``ChecksumSHA256``) that S3 checks before it stores the bytes. After an upload,
    ``head_object`` must report the expected size, metadata and S3 checksum (the
    SHA-256 of a single put, or the composite SHA-256 of the parts). A download is
    hashed and compared with the ``sha256`` metadata before it is renamed into place;
    objects without that metadata are checked by size only.

Skip
    An object whose size and ``sha256`` metadata equal the local file's is not sent
    again; with ``verify=True`` it is downloaded and hashed first, and re-sent if its
    bytes do not match (a corrupt object). A local file whose size and SHA-256 equal the
    object's is not downloaded again.

Resume
    S3 does not tell the metadata of a multipart upload in progress, so each upload
    identifies itself with a small *marker part*, part number 10000, whose content names
    the file's SHA-256, size and part size. Completion lists only the data parts, so S3
    discards the marker. The next run resumes a pending upload of the same key only if its
    marker matches the local file (same content, same part layout), keeps the parts
    whose size and checksum (SHA-256, or the MD5 ETag) match the local bytes and sends the
    others. Pending uploads of the key that do not match are aborted.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from tqdm import tqdm

from cryosnake.errors import ConfigError, CryosnakeError

__all__ = [
    "DEFAULT_JOBS",
    "DEFAULT_PART_SIZE",
    "MIB",
    "MIN_PART_SIZE",
    "SHA256_METADATA",
    "DownloadStats",
    "UploadStats",
    "download",
    "file_sha256",
    "parse_s3_url",
    "upload",
]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 64 * MIB
DEFAULT_JOBS = 8
SHA256_METADATA = "sha256"  # user metadata key (x-amz-meta-sha256): hex SHA-256 of the object
MARKER_PART = 10_000  # part number of the marker that identifies an upload (never completed)
MAX_DATA_PARTS = MARKER_PART - 1
_BLOCK = 8 * MIB  # read size for hashing and streaming
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
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

S3Client = Any  # boto3 ships no type stubs
T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------------------------
# statistics


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


@dataclass
class UploadStats:
    """What :func:`upload` did; lists hold S3 keys."""

    destination: str = ""
    files: int = 0
    uploaded: list[str] = field(default_factory=list)  # every key sent, whatever the reason
    skipped: list[str] = field(default_factory=list)  # up to date, nothing sent
    resumed: list[str] = field(default_factory=list)  # finished a pending multipart upload
    replaced: list[str] = field(default_factory=list)  # existed with another size or SHA-256
    corrupt: list[str] = field(default_factory=list)  # metadata matched, bytes did not
    bytes_sent: int = 0
    parts_sent: int = 0  # data parts of multipart uploads sent by this run
    parts_reused: int = 0  # data parts of resumed uploads already in S3
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: counts, bytes and time."""
        return (
            f"upload: {self.files} files -> {self.destination}: {len(self.uploaded)} uploaded "
            f"({len(self.resumed)} resumed, {len(self.replaced)} replaced, "
            f"{len(self.corrupt)} corrupt), {len(self.skipped)} skipped; "
            f"{_human(self.bytes_sent)} sent in {self.seconds:.1f} s"
        )


@dataclass
class DownloadStats:
    """What :func:`download` did; lists hold S3 keys."""

    source: str = ""
    destination: str = ""
    files: int = 0
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # local copy already identical
    replaced: list[str] = field(default_factory=list)  # local copy differed, overwritten
    unverified: list[str] = field(default_factory=list)  # no sha256 metadata: size checked only
    bytes_received: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: counts, bytes and time."""
        return (
            f"download: {self.files} files {self.source} -> {self.destination}: "
            f"{len(self.downloaded)} downloaded ({len(self.replaced)} replaced, "
            f"{len(self.unverified)} without sha256), {len(self.skipped)} skipped; "
            f"{_human(self.bytes_received)} received in {self.seconds:.1f} s"
        )


# ---------------------------------------------------------------------------------------
# helpers


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


def _url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def file_sha256(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file's content.

    Parameters
    ----------
    path
        The file.
    progress
        Called with the number of bytes read after each block.

    Raises
    ------
    CryosnakeError
        The file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
                if progress is not None:
                    progress(len(block))
    except OSError as err:
        raise CryosnakeError(f"{path}: cannot read ({err.strerror})") from err
    return digest.hexdigest()


def _read_range(path: Path, offset: int, length: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as err:
        raise CryosnakeError(f"{path}: cannot read ({err.strerror})") from err
    if len(data) != length:
        raise CryosnakeError(f"{path}: file shrank during the upload; run again")
    return data


def _error(err: Exception, where: str, bucket: str) -> CryosnakeError:
    """A one-line CryosnakeError for a botocore exception raised while working on ``where``."""
    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        code = str(info.get("Code", ""))
        message = str(info.get("Message", "")) or str(err)
        if code == "NoSuchBucket":
            return CryosnakeError(f"s3://{bucket}: bucket not found")
        if code in _DENIED:
            return CryosnakeError(f"{where}: access denied ({code}: {message})")
        if code in _NOT_FOUND:
            return CryosnakeError(f"{where}: not found")
        if code == "NoSuchUpload":
            return CryosnakeError(f"{where}: the multipart upload vanished; run again")
        if code == "PreconditionFailed":
            return CryosnakeError(f"{where}: the object changed during the download; run again")
        return CryosnakeError(f"{where}: {code or 'error'}: {message}")
    if isinstance(err, NoCredentialsError):
        return CryosnakeError(f"{where}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)")
    return CryosnakeError(f"{where}: {err}")


@contextmanager
def _s3(where: str, bucket: str) -> Iterator[None]:
    """Turn botocore exceptions raised inside into one-line CryosnakeErrors."""
    try:
        yield
    except (ClientError, BotoCoreError) as err:
        raise _error(err, where, bucket) from err


def _client(jobs: int) -> S3Client:
    """An S3 client shared by the worker threads (clients are thread-safe)."""
    config = Config(
        max_pool_connections=max(10, jobs + 2),
        retries={"mode": "standard", "max_attempts": 5},
    )
    try:
        return boto3.client("s3", config=config)
    except BotoCoreError as err:
        raise CryosnakeError(f"S3: {err}") from err


def _head(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """head_object of ``key`` (with its S3 checksum), or None when there is none."""
    with _s3(_url(bucket, key), bucket):
        try:
            return dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                return None
            raise


class _Progress:
    """A thread-safe byte progress bar on stderr (silent when ``quiet``)."""

    def __init__(self, desc: str, total: int, quiet: bool) -> None:
        self._lock = threading.Lock()
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=quiet or total == 0,
            dynamic_ncols=True,
        )

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def add_total(self, n: int) -> None:
        with self._lock:
            self._bar.total = (self._bar.total or 0) + n
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _notice(command: str, message: str) -> None:
    """One line on stderr that does not garble a progress bar."""
    tqdm.write(f"cryosnake {command}: {message}", file=sys.stderr)


def _run_pool(jobs: int, items: Iterable[T], work: Callable[[T], R]) -> list[R]:
    """``work(item)`` for each item on ``jobs`` threads; the first error cancels the rest.

    Work already running finishes before the error propagates, so that no thread is
    left writing once this returns.
    """
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cryosnake-s3") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]


def _check_jobs_part_size(jobs: int, part_size: int) -> None:
    if jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {jobs}")
    if part_size < MIN_PART_SIZE:
        raise ConfigError(f"part size: must be >= {MIN_PART_SIZE // MIB} MiB, got {part_size} B")


# ---------------------------------------------------------------------------------------
# upload


@dataclass
class _Upload:
    """One local file and what to do with it."""

    path: Path
    key: str
    size: int
    mtime_ns: int
    sha256: str = ""
    action: str = "skip"  # skip | put | multipart
    reason: str = "new"  # new | changed | corrupt (why it is sent)
    part_size: int = 0
    upload_id: str = ""
    resumed: bool = False
    reused: int = 0  # parts of a resumed upload already in S3
    parts: dict[int, tuple[str, str]] = field(default_factory=dict)  # number -> (ETag, SHA b64)
    todo: list[int] = field(default_factory=list)
    remaining: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_parts(self) -> int:
        return math.ceil(self.size / self.part_size)

    def part_length(self, number: int) -> int:
        return min(self.part_size, self.size - (number - 1) * self.part_size)


def _part_size_for(size: int, part_size: int) -> int:
    """``part_size``, raised (in whole MiB) when the file would need too many parts."""
    if math.ceil(size / part_size) <= MAX_DATA_PARTS:
        return part_size
    return math.ceil(size / MAX_DATA_PARTS / MIB) * MIB


def _marker(sha256: str, size: int, part_size: int) -> bytes:
    """Content of the marker part that identifies a multipart upload of one file version."""
    return f"cryosnake upload v1\nsha256={sha256}\nsize={size}\npart-size={part_size}\n".encode()


def _part_matches(part: dict[str, Any], md5_hex: str, sha256_b64: str) -> bool:
    """Does a listed part hold the bytes with these digests? SHA-256 if listed, else ETag."""
    if part.get("ChecksumSHA256"):
        return str(part["ChecksumSHA256"]).split("-")[0] == sha256_b64
    return str(part.get("ETag", "")).strip('"') == md5_hex


def _digests(data: bytes) -> tuple[str, str]:
    return (
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        _b64(hashlib.sha256(data).digest()),
    )


def _upload_part(
    client: S3Client, bucket: str, key: str, upload_id: str, number: int, data: bytes
) -> tuple[str, str]:
    """Send one data part with its SHA-256 (which S3 checks); return (ETag, SHA-256 b64)."""
    sha = _b64(hashlib.sha256(data).digest())
    with _s3(f"{_url(bucket, key)} part {number}", bucket):
        response = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sha,
        )
    return str(response["ETag"]), sha


class _Uploader:
    """State shared by the worker threads of one :func:`upload` call."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        part_size: int,
        verify: bool,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.verify = verify
        self.tagging = urlencode(tags) if tags else None
        self.stats = UploadStats()
        self.lock = threading.Lock()
        self.pending: dict[str, list[str]] = {}  # key -> upload ids in progress
        self.check = _Progress("check", 0, quiet=True)
        self.send = _Progress("upload", 0, quiet=True)

    # -- planning -----------------------------------------------------------------------

    def list_pending(self, prefix: str) -> None:
        """Find the multipart uploads in progress under ``prefix`` (also checks the bucket)."""
        with _s3(f"s3://{self.bucket}/{prefix}", self.bucket):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.pending.setdefault(upload["Key"], []).append(upload["UploadId"])

    def abort(self, key: str, upload_id: str) -> None:
        with _s3(_url(self.bucket, key), self.bucket):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise

    def remote_sha256(self, key: str, etag: str) -> str:
        """Hex SHA-256 of the object's bytes, streamed from S3."""
        digest = hashlib.sha256()
        with _s3(_url(self.bucket, key), self.bucket):
            body = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=etag)["Body"]
            for block in body.iter_chunks(_BLOCK):
                digest.update(block)
                self.check.update(len(block))
        return digest.hexdigest()

    def plan(self, item: _Upload) -> None:
        """Hash the file, compare with the object, prepare (or resume) its upload."""
        item.sha256 = file_sha256(item.path, self.check.update)
        head = _head(self.client, self.bucket, item.key)
        if head is not None:
            remote_sha = head.get("Metadata", {}).get(SHA256_METADATA)
            same = int(head["ContentLength"]) == item.size and remote_sha == item.sha256
            if same and self.verify:
                self.check.add_total(item.size)
                if self.remote_sha256(item.key, str(head["ETag"])) != item.sha256:
                    same = False
                    item.reason = "corrupt"
                    _notice(
                        "upload",
                        f"{_url(self.bucket, item.key)}: bytes do not match its sha256 "
                        f"metadata (corrupt object); uploading {item.path} again",
                    )
            elif not same:
                item.reason = "changed"
                _notice(
                    "upload",
                    f"{_url(self.bucket, item.key)}: differs from {item.path} "
                    f"(size {head['ContentLength']} vs {item.size} or SHA-256); replacing it",
                )
            if same:
                item.action = "skip"
                for upload_id in self.pending.get(item.key, []):
                    self.abort(item.key, upload_id)
                return
        if item.size <= self.part_size:
            item.action = "put"
            for upload_id in self.pending.get(item.key, []):
                self.abort(item.key, upload_id)
            return
        item.action = "multipart"
        item.part_size = _part_size_for(item.size, self.part_size)
        marker = _marker(item.sha256, item.size, item.part_size)
        for upload_id in self.pending.get(item.key, []):
            kept = None if item.upload_id else self.kept_parts(item, upload_id, marker)
            if kept is None:
                self.abort(item.key, upload_id)
            else:
                item.upload_id, item.parts, item.resumed = upload_id, kept, True
                item.reused = len(kept)
        if not item.upload_id:
            self.create(item, marker)
        item.todo = [n for n in range(1, item.n_parts + 1) if n not in item.parts]
        item.remaining = len(item.todo)
        if item.resumed:
            _notice(
                "upload",
                f"{_url(self.bucket, item.key)}: resuming an interrupted upload, "
                f"{item.reused} of {item.n_parts} parts already there",
            )

    def kept_parts(
        self, item: _Upload, upload_id: str, marker: bytes
    ) -> dict[int, tuple[str, str]] | None:
        """Parts of a pending upload that hold the local bytes; None if it is not ours."""
        where = f"{_url(self.bucket, item.key)} (upload {upload_id})"
        with _s3(where, self.bucket):
            try:
                listed: dict[int, dict[str, Any]] = {}
                pages = self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=item.key, UploadId=upload_id
                )
                for page in pages:
                    for part in page.get("Parts", []):
                        listed[int(part["PartNumber"])] = part
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return None
                raise
        flag = listed.get(MARKER_PART)
        if flag is None or not _part_matches(flag, *_digests(marker)):
            return None  # another file version, another part size, or not ours
        kept: dict[int, tuple[str, str]] = {}
        for number, part in sorted(listed.items()):
            if number > item.n_parts:
                continue
            offset = (number - 1) * item.part_size
            length = item.part_length(number)
            if int(part.get("Size", -1)) != length:
                continue
            self.check.add_total(length)
            md5, sha = _digests(_read_range(item.path, offset, length))
            self.check.update(length)
            if _part_matches(part, md5, sha):
                kept[number] = (str(part["ETag"]), sha)
        return kept

    def create(self, item: _Upload, marker: bytes) -> None:
        """Start a multipart upload and send its marker part."""
        with _s3(_url(self.bucket, item.key), self.bucket):
            response = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=item.key,
                Metadata={SHA256_METADATA: item.sha256},
                ChecksumAlgorithm="SHA256",
                **self.tag_args(),
            )
            item.upload_id = str(response["UploadId"])
            self.client.upload_part(
                Bucket=self.bucket,
                Key=item.key,
                UploadId=item.upload_id,
                PartNumber=MARKER_PART,
                Body=marker,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64(hashlib.sha256(marker).digest()),
            )

    def tag_args(self) -> dict[str, str]:
        return {"Tagging": self.tagging} if self.tagging else {}

    def tag_existing(self, key: str) -> None:
        """Give an object that is already there (and skipped) the requested tags."""
        if not self.tagging:
            return
        tags = [{"Key": k, "Value": v} for k, v in parse_qsl(self.tagging)]
        with _s3(_url(self.bucket, key), self.bucket):
            self.client.put_object_tagging(Bucket=self.bucket, Key=key, Tagging={"TagSet": tags})

    # -- sending ------------------------------------------------------------------------

    def work(self, task: tuple[_Upload, int | None]) -> None:
        """Send one part (or a whole small file); the last part completes the upload."""
        item, number = task
        if item.action == "put":
            self.put(item)
            return
        if number is not None:
            data = _read_range(item.path, (number - 1) * item.part_size, item.part_length(number))
            etag, sha = _upload_part(
                self.client, self.bucket, item.key, item.upload_id, number, data
            )
            self.send.update(len(data))
            with self.lock:
                self.stats.bytes_sent += len(data)
                self.stats.parts_sent += 1
            with item.lock:
                item.parts[number] = (etag, sha)
                item.remaining -= 1
                if item.remaining > 0:
                    return
        self.complete(item)

    def put(self, item: _Upload) -> None:
        data = _read_range(item.path, 0, item.size)
        digest = hashlib.sha256(data)
        if digest.hexdigest() != item.sha256:
            raise CryosnakeError(f"{item.path}: changed during the upload; run again")
        with _s3(_url(self.bucket, item.key), self.bucket):
            self.client.put_object(
                Bucket=self.bucket,
                Key=item.key,
                Body=data,
                Metadata={SHA256_METADATA: item.sha256},
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64(digest.digest()),
                **self.tag_args(),
            )
        self.send.update(len(data))
        with self.lock:
            self.stats.bytes_sent += len(data)
        self.check_object(item, _b64(digest.digest()))

    def complete(self, item: _Upload) -> None:
        try:
            st = item.path.stat()
        except OSError as err:
            raise CryosnakeError(f"{item.path}: cannot read ({err.strerror})") from err
        if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
            raise CryosnakeError(f"{item.path}: changed during the upload; run again")
        numbers = range(1, item.n_parts + 1)
        parts = [
            {"PartNumber": n, "ETag": item.parts[n][0], "ChecksumSHA256": item.parts[n][1]}
            for n in numbers
        ]
        with _s3(_url(self.bucket, item.key), self.bucket):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=item.key,
                UploadId=item.upload_id,
                MultipartUpload={"Parts": parts},
            )
        composite = hashlib.sha256(b"".join(base64.b64decode(item.parts[n][1]) for n in numbers))
        self.check_object(item, _b64(composite.digest()))

    def check_object(self, item: _Upload, checksum: str) -> None:
        """After sending: S3 must report the expected size, metadata and checksum."""
        where = _url(self.bucket, item.key)
        head = _head(self.client, self.bucket, item.key)
        if head is None:
            raise CryosnakeError(f"{where}: missing right after its upload")
        size = int(head["ContentLength"])
        remote_sha = head.get("Metadata", {}).get(SHA256_METADATA)
        if size != item.size or remote_sha != item.sha256:
            raise CryosnakeError(
                f"{where}: S3 reports {size} B with sha256 {remote_sha} after the upload, "
                f"expected {item.size} B with sha256 {item.sha256}; run again"
            )
        remote_checksum = head.get("ChecksumSHA256")
        if remote_checksum and str(remote_checksum).split("-")[0] != checksum:
            raise CryosnakeError(
                f"{where}: S3 checksum {remote_checksum} after the upload, expected {checksum}"
            )
        with self.lock:
            self.stats.uploaded.append(item.key)
            if item.resumed:
                self.stats.resumed.append(item.key)
                self.stats.parts_reused += item.reused
            if item.reason == "changed":
                self.stats.replaced.append(item.key)
            elif item.reason == "corrupt":
                self.stats.corrupt.append(item.key)


def _local_files(src: Path, prefix: str) -> list[_Upload]:
    """The files to upload and their keys: prefix + path relative to ``src`` ('/'-separated)."""
    if src.is_file():
        pairs = [(src, src.name)]
    elif src.is_dir():
        pairs = []
        for root, dirs, names in os.walk(src):
            dirs.sort()
            for name in sorted(names):
                path = Path(root) / name
                if path.is_file():
                    pairs.append((path, path.relative_to(src).as_posix()))
    else:
        raise CryosnakeError(f"{src}: no such file or folder")
    items = []
    for path, rel in pairs:
        try:
            st = path.stat()
        except OSError as err:
            raise CryosnakeError(f"{path}: cannot read ({err.strerror})") from err
        key = f"{prefix}/{rel}" if prefix else rel
        items.append(_Upload(path=path, key=key, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return items


def upload(
    src: str | os.PathLike[str],
    url: str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    jobs: int = DEFAULT_JOBS,
    verify: bool = False,
    quiet: bool = False,
    client: S3Client | None = None,
    tags: dict[str, str] | None = None,
) -> UploadStats:
    """Upload a file or a folder to S3, skipping what is there and resuming what was cut.

    Parameters
    ----------
    src
        A file (key: prefix/name) or a folder (keys: prefix/path relative to the folder,
        recursively).
    url
        ``s3://bucket[/prefix]``.
    part_size
        Bytes per multipart part (>= 5 MiB); files no larger are sent in one request.
        Raised as needed to keep a file within S3's part count limit.
    jobs
        Worker threads (requests in flight).
    verify
        Download and hash objects whose size and metadata match, and send again any whose
        bytes differ.
    quiet
        No progress bars.
    client
        A boto3 S3 client; by default one from the environment.
    tags
        S3 object tags of every uploaded object (also set on objects skipped because
        they are already there), e.g. the raw-movie tag of the stack's lifecycle rule.

    Returns
    -------
    UploadStats
        Keys uploaded, skipped, resumed, replaced, corrupt; bytes and seconds.

    Raises
    ------
    CryosnakeError
        Missing ``src``, bad URL, bucket not found, access denied, a transfer that fails
        its integrity checks; the message names the file or key.
    """
    start = time.monotonic()
    bucket, prefix = parse_s3_url(url)
    _check_jobs_part_size(jobs, part_size)
    items = _local_files(Path(src), prefix)
    up = _Uploader(client or _client(jobs), bucket, part_size, verify, tags)
    up.stats.destination = f"s3://{bucket}/{prefix}"
    up.stats.files = len(items)
    up.list_pending(prefix)

    up.check = _Progress("check", sum(i.size for i in items), quiet)
    try:
        _run_pool(jobs, items, up.plan)
    finally:
        up.check.close()
    up.stats.skipped = [i.key for i in items if i.action == "skip"]
    _run_pool(jobs, up.stats.skipped, up.tag_existing)

    tasks: list[tuple[_Upload, int | None]] = []
    for item in items:
        if item.action == "put":
            tasks.append((item, None))
        elif item.action == "multipart":
            tasks.extend((item, n) for n in item.todo)
            if not item.todo:  # every part already there: only the completion is missing
                tasks.append((item, None))
    total = sum(
        i.size if i.action == "put" else sum(i.part_length(n) for n in i.todo)
        for i in items
        if i.action != "skip"
    )
    up.send = _Progress("upload", total, quiet)
    try:
        _run_pool(jobs, tasks, up.work)
    finally:
        up.send.close()
    up.stats.seconds = time.monotonic() - start
    return up.stats


# ---------------------------------------------------------------------------------------
# download


@dataclass
class _Download:
    """One object and its local file."""

    key: str
    target: Path
    size: int = 0
    etag: str = ""
    sha256: str | None = None
    action: str = "get"  # get | skip
    replaced: bool = False
    tmp: Path | None = None
    fd: int = -1
    remaining: int = 0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _tmp_path(target: Path) -> Path:
    """A hidden sibling of ``target``, as :func:`cryosnake.io.atomic_path` names them."""
    return target.with_name(f".{target.name}.tmp{os.getpid()}{target.suffix}")


def _safe_relative(key: str, rel: str, bucket: str) -> Path:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CryosnakeError(f"{_url(bucket, key)}: key cannot be mapped to a local path")
    return Path(*parts)


def _writable_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CryosnakeError(f"{path}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CryosnakeError(f"{path}: not writable ({err.strerror or err})") from err
    if not path.is_dir():
        raise CryosnakeError(f"{path}: not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CryosnakeError(f"{path}: not writable (permission denied)")


def _get_range(
    client: S3Client, bucket: str, item: _Download, offset: int, length: int
) -> Iterator[bytes]:
    """The bytes of one range of an object, in blocks (the whole object when it is one part)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": item.key, "IfMatch": item.etag}
    if length != item.size:
        kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
    with _s3(_url(bucket, item.key), bucket):
        body = client.get_object(**kwargs)["Body"]
        yield from body.iter_chunks(MIB)


class _Downloader:
    """State shared by the worker threads of one :func:`download` call."""

    def __init__(self, client: S3Client, bucket: str, part_size: int, quiet: bool) -> None:
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.stats = DownloadStats()
        self.lock = threading.Lock()
        self.check = _Progress("check", 0, quiet=True)
        self.receive = _Progress("download", 0, quiet=True)

    def plan(self, item: _Download) -> None:
        """Read the object's metadata; skip it when the local file is already identical."""
        head = _head(self.client, self.bucket, item.key)
        if head is None:
            raise CryosnakeError(f"{_url(self.bucket, item.key)}: vanished during the download")
        item.size = int(head["ContentLength"])
        item.etag = str(head["ETag"])
        item.sha256 = head.get("Metadata", {}).get(SHA256_METADATA)
        if item.target.is_dir():
            raise CryosnakeError(f"{item.target}: is a folder, cannot write {item.key} there")
        if item.target.is_file():
            local_size = item.target.stat().st_size
            same = local_size == item.size
            if same and item.sha256 is not None:
                same = file_sha256(item.target, self.check.update) == item.sha256
            else:
                self.check.add_total(-local_size)  # not hashed
            if same:
                item.action = "skip"
                return
            item.replaced = True

    def open(self, item: _Download) -> None:
        _writable_folder(item.target.parent)
        item.tmp = _tmp_path(item.target)
        try:
            item.fd = os.open(item.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(item.fd, item.size)
        except OSError as err:
            raise CryosnakeError(f"{item.tmp}: not writable ({err.strerror})") from err

    def work(self, task: tuple[_Download, int]) -> None:
        """Fetch one part into the temporary file; the last part finishes the file."""
        item, offset = task
        length = min(self.part_size, item.size - offset)
        got = 0
        for block in _get_range(self.client, self.bucket, item, offset, length):
            try:
                os.pwrite(item.fd, block, offset + got)
            except OSError as err:
                raise CryosnakeError(f"{item.target}: cannot write ({err.strerror})") from err
            got += len(block)
            self.receive.update(len(block))
        if got != length:
            raise CryosnakeError(
                f"{_url(self.bucket, item.key)}: got {got} B of bytes {offset}+{length}; run again"
            )
        with self.lock:
            self.stats.bytes_received += got
        with item.lock:
            item.remaining -= 1
            if item.remaining > 0:
                return
        self.finish(item)

    def finish(self, item: _Download) -> None:
        """Close, check size and SHA-256, rename into place."""
        assert item.tmp is not None
        with item.lock:
            os.close(item.fd)
            item.fd = -1
        where = _url(self.bucket, item.key)
        size = item.tmp.stat().st_size
        if size != item.size:
            raise CryosnakeError(f"{where}: downloaded {size} B, expected {item.size} B")
        if item.sha256 is not None:
            local = file_sha256(item.tmp)
            if local != item.sha256:
                raise CryosnakeError(
                    f"{where}: SHA-256 of the downloaded bytes ({local}) does not match its "
                    f"sha256 metadata ({item.sha256}): the object is corrupt"
                )
        try:
            os.replace(item.tmp, item.target)
        except OSError as err:
            raise CryosnakeError(f"{item.target}: cannot write ({err.strerror})") from err
        item.done = True
        with self.lock:
            self.stats.downloaded.append(item.key)
            if item.replaced:
                self.stats.replaced.append(item.key)
            if item.sha256 is None:
                self.stats.unverified.append(item.key)

    def cleanup(self, items: Iterable[_Download]) -> None:
        """Close and remove the temporary files of unfinished downloads."""
        for item in items:
            if item.fd >= 0:
                os.close(item.fd)
                item.fd = -1
            if item.tmp is not None and not item.done:
                item.tmp.unlink(missing_ok=True)


def _list_objects(client: S3Client, bucket: str, prefix: str, dest: Path) -> list[_Download]:
    """The objects under ``prefix`` ('folder') and their local paths below ``dest``."""
    items: list[_Download] = []
    folder = f"{prefix}/" if prefix else ""
    with _s3(f"s3://{bucket}/{prefix}", bucket):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
        for page in pages:
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if key.endswith("/"):
                    continue  # a "folder" placeholder
                rel = _safe_relative(key, key[len(folder) :], bucket)
                items.append(_Download(key=key, target=dest / rel))
    if not items and prefix and _head(client, bucket, prefix) is not None:
        items.append(_Download(key=prefix, target=dest / prefix.rsplit("/", 1)[-1]))
    if not items:
        raise CryosnakeError(f"s3://{bucket}/{prefix}: no objects there")
    return items


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    part_size: int = DEFAULT_PART_SIZE,
    jobs: int = DEFAULT_JOBS,
    quiet: bool = False,
    client: S3Client | None = None,
) -> DownloadStats:
    """Download every object under ``s3://bucket/prefix`` into ``dest``, verified.

    Objects ``prefix/path`` go to ``dest/path``; if ``prefix`` is one object's key (and no
    object lies below it), that object goes to ``dest/<last part of the key>``. Each file
    is written under a hidden temporary name in its folder and renamed into place once its
    size and SHA-256 (when the object has ``sha256`` metadata) are right, so a failed
    download leaves no file behind.

    Parameters
    ----------
    url
        ``s3://bucket[/prefix]``.
    dest
        Local folder (created if missing).
    part_size
        Bytes per ranged request of large objects (>= 5 MiB).
    jobs
        Worker threads (requests in flight).
    quiet
        No progress bars.
    client
        A boto3 S3 client; by default one from the environment.

    Returns
    -------
    DownloadStats
        Keys downloaded, skipped, replaced, unverified; bytes and seconds.

    Raises
    ------
    CryosnakeError
        Bad URL, bucket not found, no objects, access denied, ``dest`` not writable, a
        corrupt object (SHA-256 mismatch); the message names the key or path.
    """
    start = time.monotonic()
    bucket, prefix = parse_s3_url(url)
    _check_jobs_part_size(jobs, part_size)
    dest = Path(dest)
    _writable_folder(dest)
    down = _Downloader(client or _client(jobs), bucket, part_size, quiet)
    items = _list_objects(down.client, bucket, prefix, dest)
    down.stats.source = f"s3://{bucket}/{prefix}"
    down.stats.destination = str(dest)
    down.stats.files = len(items)

    local = sum(i.target.stat().st_size for i in items if i.target.is_file())
    down.check = _Progress("check", local, quiet)
    try:
        _run_pool(jobs, items, down.plan)
    finally:
        down.check.close()
    down.stats.skipped = [i.key for i in items if i.action == "skip"]
    todo = [i for i in items if i.action == "get"]
    try:
        tasks: list[tuple[_Download, int]] = []
        for item in todo:
            down.open(item)
            offsets = list(range(0, item.size, part_size)) or [0]
            item.remaining = len(offsets)
            tasks.extend((item, offset) for offset in offsets)
        down.receive = _Progress("download", sum(i.size for i in todo), quiet)
        try:
            _run_pool(jobs, tasks, down.work)
        finally:
            down.receive.close()
    finally:
        down.cleanup(todo)
    down.stats.seconds = time.monotonic() - start
    return down.stats
