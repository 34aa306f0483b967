"""Resumable multipart uploads: the parts of files larger than the part size.

Why not boto3's transfer manager
    s3transfer starts a new multipart upload for every file, names it nothing a later
    process could recognise, and aborts it when the transfer fails; it cannot go on with
    an upload that an earlier process started. An upload cut short (process killed, spot
    instance reclaimed, network lost) would start over from its first byte, and the
    upload command promises that it does not. So every multipart upload, fresh or
    resumed, is started, sent part by part and completed here (one sender for multipart
    uploads, whichever run started them); files no larger than the part size and every
    download go through the transfer manager (:mod:`cryosnake.aws.upload_files`,
    :mod:`cryosnake.aws.download_files`). The parts are sent by cryosnake's thread pool
    (:func:`cryosnake.aws.transfer.run_pool`), ``jobs`` at a time.

Integrity
    Every part is sent with its own SHA-256 (``ChecksumSHA256``), which S3 checks before
    it stores the bytes; the upload is created with the file's SHA-256 as metadata
    ``sha256`` and completes into an object whose S3 checksum is the composite SHA-256
    of its parts (:meth:`MultipartUploads.complete` returns it for the caller to check).

Resume
    S3 does not tell the metadata of a multipart upload in progress, so each upload
    identifies itself with a small *marker part*, part number 10000
    (:data:`MARKER_PART`), whose content names the file's SHA-256, size and part size.
    Completion lists only the data parts, so S3 discards the marker. The next run
    resumes a pending upload of the same key only if its marker matches the local file
    (same content, same part layout), keeps the parts whose size and checksum (SHA-256,
    or the MD5 ETag) match the local bytes and sends the others. Pending uploads of the
    key that do not match are aborted.
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cryosnake.aws.s3 import S3Client, error_code, object_url, s3_errors
from cryosnake.aws.transfer import MIB, SHA256_METADATA, Progress
from cryosnake.errors import CryosnakeError

__all__ = ["MARKER_PART", "MAX_DATA_PARTS", "MultipartUpload", "MultipartUploads"]

MARKER_PART = 10_000  # part number of the marker that identifies an upload (never completed)
MAX_DATA_PARTS = MARKER_PART - 1


@dataclass
class MultipartUpload:
    """One file's multipart upload: its layout, the parts in S3, the parts to send."""

    path: Path
    key: str
    size: int
    mtime_ns: int
    sha256: str  # hex SHA-256 of the whole file
    part_size: int
    upload_id: str = ""
    resumed: bool = False
    reused: int = 0  # parts of a resumed upload already in S3
    parts: dict[int, tuple[str, str]] = field(default_factory=dict)  # number -> (ETag, SHA b64)
    todo: list[int] = field(default_factory=list)  # part numbers still to send
    remaining: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_parts(self) -> int:
        return math.ceil(self.size / self.part_size)

    def part_length(self, number: int) -> int:
        return min(self.part_size, self.size - (number - 1) * self.part_size)

    def read_part(self, number: int) -> bytes:
        """The local bytes of data part ``number``."""
        return _read_range(self.path, (number - 1) * self.part_size, self.part_length(number))


def part_size_for(size: int, part_size: int) -> int:
    """``part_size``, raised (in whole MiB) when the file would need too many parts."""
    if math.ceil(size / part_size) <= MAX_DATA_PARTS:
        return part_size
    return math.ceil(size / MAX_DATA_PARTS / MIB) * MIB


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


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
    """Send one part with its SHA-256 (which S3 checks); return (ETag, SHA-256 b64)."""
    sha = _b64(hashlib.sha256(data).digest())
    with s3_errors(f"{object_url(bucket, key)} part {number}", bucket):
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


class MultipartUploads:
    """The multipart uploads of one bucket: those pending in S3, those this run sends.

    Parameters
    ----------
    client
        A boto3 S3 client, shared by the threads that send parts.
    bucket
        The bucket.
    tagging
        URL-encoded S3 tags of the objects created (``Tagging``), or None.
    """

    def __init__(self, client: S3Client, bucket: str, tagging: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.tagging = tagging
        self.pending: dict[str, list[str]] = {}  # key -> upload ids in progress

    def list_pending(self, prefix: str) -> None:
        """Find the multipart uploads in progress under ``prefix`` (also checks the bucket)."""
        with s3_errors(f"s3://{self.bucket}/{prefix}", self.bucket):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.pending.setdefault(upload["Key"], []).append(upload["UploadId"])

    def abort_pending(self, key: str) -> None:
        """Abort the pending uploads of ``key`` (its object is up to date or sent whole)."""
        for upload_id in self.pending.get(key, []):
            self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        with s3_errors(object_url(self.bucket, key), self.bucket):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as err:
                if error_code(err) != "NoSuchUpload":
                    raise

    def start(
        self,
        path: Path,
        key: str,
        size: int,
        mtime_ns: int,
        sha256: str,
        part_size: int,
        check: Progress,
    ) -> MultipartUpload:
        """Resume the pending upload of this file version, or create one; abort the rest.

        ``check`` shows the bytes hashed to compare the parts already in S3.
        """
        upload = MultipartUpload(path, key, size, mtime_ns, sha256, part_size_for(size, part_size))
        marker = _marker(sha256, size, upload.part_size)
        for upload_id in self.pending.get(key, []):
            kept = None if upload.upload_id else self._kept_parts(upload, upload_id, marker, check)
            if kept is None:
                self._abort(key, upload_id)
            else:
                upload.upload_id, upload.parts, upload.resumed = upload_id, kept, True
                upload.reused = len(kept)
        if not upload.upload_id:
            self._create(upload, marker)
        upload.todo = [n for n in range(1, upload.n_parts + 1) if n not in upload.parts]
        upload.remaining = len(upload.todo)
        return upload

    def _kept_parts(
        self, upload: MultipartUpload, upload_id: str, marker: bytes, check: Progress
    ) -> dict[int, tuple[str, str]] | None:
        """Parts of a pending upload that hold the local bytes; None if it is not ours."""
        where = f"{object_url(self.bucket, upload.key)} (upload {upload_id})"
        with s3_errors(where, self.bucket):
            try:
                listed: dict[int, dict[str, Any]] = {}
                pages = self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=upload.key, UploadId=upload_id
                )
                for page in pages:
                    for part in page.get("Parts", []):
                        listed[int(part["PartNumber"])] = part
            except ClientError as err:
                if error_code(err) == "NoSuchUpload":
                    return None
                raise
        flag = listed.get(MARKER_PART)
        if flag is None or not _part_matches(flag, *_digests(marker)):
            return None  # another file version, another part size, or not ours
        kept: dict[int, tuple[str, str]] = {}
        for number, part in sorted(listed.items()):
            if number > upload.n_parts:
                continue
            length = upload.part_length(number)
            if int(part.get("Size", -1)) != length:
                continue
            check.add_total(length)
            md5, sha = _digests(upload.read_part(number))
            check.update(length)
            if _part_matches(part, md5, sha):
                kept[number] = (str(part["ETag"]), sha)
        return kept

    def _create(self, upload: MultipartUpload, marker: bytes) -> None:
        """Start a multipart upload and send its marker part."""
        tagging = {"Tagging": self.tagging} if self.tagging else {}
        with s3_errors(object_url(self.bucket, upload.key), self.bucket):
            response = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                Metadata={SHA256_METADATA: upload.sha256},
                ChecksumAlgorithm="SHA256",
                **tagging,
            )
            upload.upload_id = str(response["UploadId"])
            self.client.upload_part(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                PartNumber=MARKER_PART,
                Body=marker,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64(hashlib.sha256(marker).digest()),
            )

    def send(self, upload: MultipartUpload, number: int) -> bool:
        """Send data part ``number``; True once no part of the upload is left to send."""
        etag, sha = _upload_part(
            self.client, self.bucket, upload.key, upload.upload_id, number, upload.read_part(number)
        )
        with upload.lock:
            upload.parts[number] = (etag, sha)
            upload.remaining -= 1
            return upload.remaining == 0

    def complete(self, upload: MultipartUpload) -> str:
        """Complete the upload from its data parts; return the object's S3 checksum.

        The checksum (base64) is the composite SHA-256 of the parts' SHA-256s, which S3
        reports for the object as ``<checksum>-<parts>``.

        Raises
        ------
        CryosnakeError
            The file changed (size or modification time) while it was being sent.
        """
        try:
            st = upload.path.stat()
        except OSError as err:
            raise CryosnakeError(f"{upload.path}: cannot read ({err.strerror})") from err
        if (st.st_size, st.st_mtime_ns) != (upload.size, upload.mtime_ns):
            raise CryosnakeError(f"{upload.path}: changed during the upload; run again")
        numbers = range(1, upload.n_parts + 1)
        parts = [
            {"PartNumber": n, "ETag": upload.parts[n][0], "ChecksumSHA256": upload.parts[n][1]}
            for n in numbers
        ]
        with s3_errors(object_url(self.bucket, upload.key), self.bucket):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": parts},
            )
        composite = hashlib.sha256(b"".join(base64.b64decode(upload.parts[n][1]) for n in numbers))
        return _b64(composite.digest())
