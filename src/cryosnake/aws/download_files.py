"""Download every object under an S3 prefix into a folder: skip, verify, rename into place.

:func:`download` fetches the objects with boto3's transfer manager (s3transfer): objects
no larger than the part size in one GET, larger ones in ranged GETs of the part size,
``jobs`` requests in flight, a progress bar on stderr. Every GET is conditional on the
ETag of the version planned with (``IfMatch``), so the bytes cannot come from an object
replaced in the meantime.

Integrity
    Each file is written under a hidden temporary name in its folder, hashed and
    compared with the object's ``sha256`` metadata (set by the upload), and renamed into
    place only when it matches; objects without that metadata are checked by size
    only. A failed download leaves no file behind and an older local copy untouched.

Skip
    A local file whose size and SHA-256 equal the object's is not downloaded again; one
    that differs is replaced.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferManager

from cryosnake.aws import s3, transfer
from cryosnake.aws.s3 import S3Client, object_url, parse_s3_url, s3_errors
from cryosnake.errors import CryosnakeError

__all__ = ["DownloadStats", "download"]


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
            f"{transfer.human_bytes(self.bytes_received)} received in {self.seconds:.1f} s"
        )


@dataclass
class _Object:
    """One object and its local file."""

    key: str
    target: Path
    size: int = 0
    etag: str = ""
    sha256: str | None = None
    action: str = "get"  # get | skip
    replaced: bool = False
    tmp: Path | None = None
    done: bool = False


def _tmp_path(target: Path) -> Path:
    """A hidden sibling of ``target``, as :func:`cryosnake.io.atomic_path` names them."""
    return target.with_name(f".{target.name}.tmp{os.getpid()}{target.suffix}")


def _safe_relative(key: str, rel: str, bucket: str) -> Path:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CryosnakeError(f"{object_url(bucket, key)}: key cannot be mapped to a local path")
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


class _Downloader:
    """State shared by the threads of one :func:`download` call."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self.stats = DownloadStats()
        self.lock = threading.Lock()
        self.check = transfer.Progress("check", 0, quiet=True)
        self.receive = transfer.Progress("download", 0, quiet=True)

    def plan(self, item: _Object) -> None:
        """Read the object's metadata; skip it when the local file is already identical."""
        head = s3.head(self.client, self.bucket, item.key)
        if head is None:
            raise CryosnakeError(
                f"{object_url(self.bucket, item.key)}: vanished during the download"
            )
        item.size = int(head["ContentLength"])
        item.etag = str(head["ETag"])
        item.sha256 = head.get("Metadata", {}).get(transfer.SHA256_METADATA)
        if item.target.is_dir():
            raise CryosnakeError(f"{item.target}: is a folder, cannot write {item.key} there")
        if item.target.is_file():
            local_size = item.target.stat().st_size
            same = local_size == item.size
            if same and item.sha256 is not None:
                same = transfer.file_sha256(item.target, self.check.update) == item.sha256
            else:
                self.check.add_total(-local_size)  # not hashed
            if same:
                item.action = "skip"
                return
            item.replaced = True

    def submit(self, manager: TransferManager, item: _Object) -> TransferFuture:
        """Hand the object to the transfer manager, to be written to its temporary file."""
        _writable_folder(item.target.parent)
        item.tmp = _tmp_path(item.target)
        return manager.download(
            self.bucket,
            item.key,
            str(item.tmp),
            extra_args={"IfMatch": item.etag},
            subscribers=[transfer.ProgressSubscriber(self.receive, item.size, item.etag)],
        )

    def finish(self, item: _Object) -> None:
        """Check size and SHA-256 of the temporary file, rename it into place."""
        assert item.tmp is not None
        where = object_url(self.bucket, item.key)
        size = item.tmp.stat().st_size
        if size != item.size:
            raise CryosnakeError(f"{where}: downloaded {size} B, expected {item.size} B")
        if item.sha256 is not None:
            local = transfer.file_sha256(item.tmp)
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
            self.stats.bytes_received += size
            self.stats.downloaded.append(item.key)
            if item.replaced:
                self.stats.replaced.append(item.key)
            if item.sha256 is None:
                self.stats.unverified.append(item.key)

    def fetch(self, manager: TransferManager, items: list[_Object]) -> None:
        """Download ``items`` (the transfer manager's threads), then check and place each."""
        futures = [(item, self.submit(manager, item)) for item in items]
        for item, future in futures:
            with s3_errors(object_url(self.bucket, item.key), self.bucket):
                future.result()
            self.finish(item)

    @staticmethod
    def cleanup(items: Iterable[_Object]) -> None:
        """Remove the temporary files of unfinished downloads."""
        for item in items:
            if item.tmp is not None and not item.done:
                item.tmp.unlink(missing_ok=True)


def _list_objects(client: S3Client, bucket: str, prefix: str, dest: Path) -> list[_Object]:
    """The objects under ``prefix`` ('folder') and their local paths below ``dest``."""
    items: list[_Object] = []
    folder = f"{prefix}/" if prefix else ""
    with s3_errors(f"s3://{bucket}/{prefix}", bucket):
        for obj in s3.objects(client, bucket, folder):
            key = str(obj["Key"])
            if key.endswith("/"):
                continue  # a "folder" placeholder
            rel = _safe_relative(key, key[len(folder) :], bucket)
            items.append(_Object(key=key, target=dest / rel))
    if not items and prefix and s3.head(client, bucket, prefix) is not None:
        items.append(_Object(key=prefix, target=dest / prefix.rsplit("/", 1)[-1]))
    if not items:
        raise CryosnakeError(f"s3://{bucket}/{prefix}: no objects there")
    return items


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    part_size: int = transfer.DEFAULT_PART_SIZE,
    jobs: int = transfer.DEFAULT_JOBS,
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
        Requests in flight (threads).
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
    transfer.check_jobs_part_size(jobs, part_size)
    dest = Path(dest)
    _writable_folder(dest)
    down = _Downloader(client or s3.client(jobs), bucket)
    items = _list_objects(down.client, bucket, prefix, dest)
    down.stats.source = f"s3://{bucket}/{prefix}"
    down.stats.destination = str(dest)
    down.stats.files = len(items)

    local = sum(i.target.stat().st_size for i in items if i.target.is_file())
    down.check = transfer.Progress("check", local, quiet)
    try:
        transfer.run_pool(jobs, items, down.plan)
    finally:
        down.check.close()
    down.stats.skipped = [i.key for i in items if i.action == "skip"]
    todo = [i for i in items if i.action == "get"]
    down.receive = transfer.Progress("download", sum(i.size for i in todo), quiet)
    try:
        # leaving the manager's block cancels what is still running and waits for it
        with transfer.transfer_manager(down.client, jobs, part_size) as manager:
            down.fetch(manager, todo)
    finally:
        down.receive.close()
        down.cleanup(todo)
    down.stats.seconds = time.monotonic() - start
    return down.stats
