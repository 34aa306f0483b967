"""Upload a file or a folder to S3: skip what is there, resume what was cut, verify.

:func:`upload` sends a file or a folder (recursively) to ``s3://bucket/prefix`` and
shows progress bars on stderr. Files no larger than the part size go in one PutObject
sent by boto3's transfer manager (s3transfer); larger files go as resumable multipart
uploads, whose parts :mod:`cryosnake.aws.multipart` sends itself (it says why).

Integrity
    Each object carries the SHA-256 of its whole content as user metadata ``sha256``
    (``x-amz-meta-sha256``, hex digest). A single put is sent with that SHA-256 as its
    ``ChecksumSHA256``, every part of a multipart upload with its own; S3 checks them
    before it stores the bytes. After an upload, ``head_object`` must report the
    expected size, metadata and S3 checksum (the SHA-256 of a single put, or the
    composite SHA-256 of the parts).

Skip
    An object whose size and ``sha256`` metadata equal the local file's is not sent
    again; with ``verify=True`` it is downloaded (through the transfer manager) and
    hashed first, and re-sent if its bytes do not match (a corrupt object).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from s3transfer.manager import TransferManager

from cryosnake.aws import s3, transfer
from cryosnake.aws.multipart import MultipartUpload, MultipartUploads
from cryosnake.aws.s3 import S3Client, object_url, parse_s3_url, s3_errors
from cryosnake.errors import CryosnakeError

__all__ = ["UploadStats", "upload"]


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
            f"{transfer.human_bytes(self.bytes_sent)} sent in {self.seconds:.1f} s"
        )


@dataclass
class _File:
    """One local file and what to do with it."""

    path: Path
    key: str
    size: int
    mtime_ns: int
    sha256: str = ""
    action: str = "skip"  # skip | put | multipart
    reason: str = "new"  # new | changed | corrupt (why it is sent)
    multipart: MultipartUpload | None = None


class _Sha256Sink:
    """A write-only file that hashes what the transfer manager writes into it, in order."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


class _Uploader:
    """State shared by the threads of one :func:`upload` call."""

    def __init__(
        self,
        client: S3Client,
        manager: TransferManager,
        bucket: str,
        part_size: int,
        verify: bool,
        tags: dict[str, str] | None,
    ) -> None:
        self.client = client
        self.manager = manager
        self.bucket = bucket
        self.part_size = part_size
        self.verify = verify
        self.tagging = urlencode(tags) if tags else None
        self.multipart = MultipartUploads(client, bucket, self.tagging)
        self.stats = UploadStats()
        self.lock = threading.Lock()
        self.check = transfer.Progress("check", 0, quiet=True)
        self.send = transfer.Progress("upload", 0, quiet=True)

    # -- planning -----------------------------------------------------------------------

    def plan(self, item: _File) -> None:
        """Hash the file, compare with the object, prepare (or resume) its upload."""
        item.sha256 = transfer.file_sha256(item.path, self.check.update)
        where = object_url(self.bucket, item.key)
        head = s3.head(self.client, self.bucket, item.key)
        if head is not None:
            remote_sha = head.get("Metadata", {}).get(transfer.SHA256_METADATA)
            remote_size = int(head["ContentLength"])
            same = remote_size == item.size and remote_sha == item.sha256
            if same and self.verify:
                if self.remote_sha256(item.key, remote_size, str(head["ETag"])) != item.sha256:
                    same = False
                    item.reason = "corrupt"
                    transfer.notice(
                        "upload",
                        f"{where}: bytes do not match its sha256 metadata (corrupt object); "
                        f"uploading {item.path} again",
                    )
            elif not same:
                item.reason = "changed"
                transfer.notice(
                    "upload",
                    f"{where}: differs from {item.path} "
                    f"(size {remote_size} vs {item.size} or SHA-256); replacing it",
                )
            if same:
                item.action = "skip"
                self.multipart.abort_pending(item.key)
                return
        if item.size <= self.part_size:
            item.action = "put"
            self.multipart.abort_pending(item.key)
            return
        item.action = "multipart"
        item.multipart = mpu = self.multipart.start(
            item.path, item.key, item.size, item.mtime_ns, item.sha256, self.part_size, self.check
        )
        if mpu.resumed:
            transfer.notice(
                "upload",
                f"{where}: resuming an interrupted upload, "
                f"{mpu.reused} of {mpu.n_parts} parts already there",
            )

    def remote_sha256(self, key: str, size: int, etag: str) -> str:
        """Hex SHA-256 of the object's bytes (the version ``etag``), fetched from S3."""
        self.check.add_total(size)
        sink = _Sha256Sink()
        future = self.manager.download(
            self.bucket,
            key,
            sink,
            extra_args={"IfMatch": etag},
            subscribers=[transfer.ProgressSubscriber(self.check, size, etag)],
        )
        with s3_errors(object_url(self.bucket, key), self.bucket):
            future.result()
        return sink.digest.hexdigest()

    def tag_existing(self, key: str) -> None:
        """Give an object that is already there (and skipped) the requested tags."""
        if not self.tagging:
            return
        tags = [{"Key": k, "Value": v} for k, v in parse_qsl(self.tagging)]
        with s3_errors(object_url(self.bucket, key), self.bucket):
            self.client.put_object_tagging(Bucket=self.bucket, Key=key, Tagging={"TagSet": tags})

    # -- sending ------------------------------------------------------------------------

    def put_all(self, items: list[_File]) -> None:
        """Send whole files, one PutObject each, through the transfer manager."""
        futures = []
        for item in items:
            extra_args = {
                "Metadata": {transfer.SHA256_METADATA: item.sha256},
                "ChecksumSHA256": _b64_of_hex(item.sha256),  # S3 refuses other bytes
            }
            if self.tagging:
                extra_args["Tagging"] = self.tagging
            subscriber = transfer.ProgressSubscriber(self.send, item.size)
            future = self.manager.upload(
                str(item.path), self.bucket, item.key, extra_args, [subscriber]
            )
            futures.append((item, future))
        for item, future in futures:
            with s3_errors(object_url(self.bucket, item.key), self.bucket):
                future.result()
            with self.lock:
                self.stats.bytes_sent += item.size
            self.check_object(item, _b64_of_hex(item.sha256))

    def send_part(self, task: tuple[_File, int | None]) -> None:
        """Send one part of a multipart upload; the last part completes the upload.

        ``None`` instead of a part number: every part is already there, only the
        completion is missing.
        """
        item, number = task
        upload = item.multipart
        assert upload is not None
        if number is not None:
            last = self.multipart.send(upload, number)
            length = upload.part_length(number)
            self.send.update(length)
            with self.lock:
                self.stats.bytes_sent += length
                self.stats.parts_sent += 1
            if not last:
                return
        self.check_object(item, self.multipart.complete(upload))

    def check_object(self, item: _File, checksum: str) -> None:
        """After sending: S3 must report the expected size, metadata and checksum."""
        where = object_url(self.bucket, item.key)
        head = s3.head(self.client, self.bucket, item.key)
        if head is None:
            raise CryosnakeError(f"{where}: missing right after its upload")
        size = int(head["ContentLength"])
        remote_sha = head.get("Metadata", {}).get(transfer.SHA256_METADATA)
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
            if item.multipart is not None and item.multipart.resumed:
                self.stats.resumed.append(item.key)
                self.stats.parts_reused += item.multipart.reused
            if item.reason == "changed":
                self.stats.replaced.append(item.key)
            elif item.reason == "corrupt":
                self.stats.corrupt.append(item.key)


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _local_files(src: Path, prefix: str) -> list[_File]:
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
        items.append(_File(path=path, key=key, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return items


def upload(
    src: str | os.PathLike[str],
    url: str,
    *,
    part_size: int = transfer.DEFAULT_PART_SIZE,
    jobs: int = transfer.DEFAULT_JOBS,
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
        Requests in flight (threads).
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
    transfer.check_jobs_part_size(jobs, part_size)
    items = _local_files(Path(src), prefix)
    client = client or s3.client(jobs)
    with transfer.transfer_manager(client, jobs, part_size) as manager:
        up = _Uploader(client, manager, bucket, part_size, verify, tags)
        up.stats.destination = f"s3://{bucket}/{prefix}"
        up.stats.files = len(items)
        up.multipart.list_pending(prefix)

        up.check = transfer.Progress("check", sum(i.size for i in items), quiet)
        try:
            transfer.run_pool(jobs, items, up.plan)
        finally:
            up.check.close()
        up.stats.skipped = [i.key for i in items if i.action == "skip"]
        transfer.run_pool(jobs, up.stats.skipped, up.tag_existing)

        puts = [i for i in items if i.action == "put"]
        parts: list[tuple[_File, int | None]] = []
        for item in items:
            if item.multipart is not None:
                parts.extend((item, n) for n in item.multipart.todo)
                if not item.multipart.todo:  # every part already there
                    parts.append((item, None))
        total = sum(i.size for i in puts) + sum(
            i.multipart.part_length(n) for i, n in parts if i.multipart and n is not None
        )
        up.send = transfer.Progress("upload", total, quiet)
        try:
            up.put_all(puts)
            transfer.run_pool(jobs, parts, up.send_part)
        finally:
            up.send.close()
    up.stats.seconds = time.monotonic() - start
    return up.stats
