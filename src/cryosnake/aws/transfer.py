"""What uploads and downloads share: sizes, SHA-256, progress, threads, the transfer manager.

:func:`cryosnake.aws.upload_files.upload` and :func:`cryosnake.aws.download_files.download`
move bytes with boto3's transfer manager (s3transfer, :func:`transfer_manager`), except
the parts of multipart uploads, which :mod:`cryosnake.aws.multipart` sends itself so
that an upload cut short can be resumed. This module holds the pieces both directions
use: part size and job limits, :func:`file_sha256`, the progress bars on stderr and
their s3transfer subscriber, and the thread pool that plans (hashes, HEADs) the files.

Integrity
    Each object carries the SHA-256 of its whole content as user metadata ``sha256``
    (:data:`SHA256_METADATA`, ``x-amz-meta-sha256``, hex digest), which uploads set and
    check, and downloads compare with the bytes they got before they rename a file into
    place.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, ClassVar, TypeVar

from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber
from tqdm import tqdm

from cryosnake.aws.s3 import S3Client
from cryosnake.errors import ConfigError, CryosnakeError

__all__ = [
    "BLOCK",
    "DEFAULT_JOBS",
    "DEFAULT_PART_SIZE",
    "MIB",
    "MIN_PART_SIZE",
    "SHA256_METADATA",
    "Progress",
    "ProgressSubscriber",
    "check_jobs_part_size",
    "file_sha256",
    "human_bytes",
    "notice",
    "run_pool",
    "transfer_manager",
]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 64 * MIB
DEFAULT_JOBS = 8
SHA256_METADATA = "sha256"  # user metadata key (x-amz-meta-sha256): hex SHA-256 of the object
BLOCK = 8 * MIB  # read size for hashing

T = TypeVar("T")
R = TypeVar("R")


def human_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


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
            while block := f.read(BLOCK):
                digest.update(block)
                if progress is not None:
                    progress(len(block))
    except OSError as err:
        raise CryosnakeError(f"{path}: cannot read ({err.strerror})") from err
    return digest.hexdigest()


def check_jobs_part_size(jobs: int, part_size: int) -> None:
    """Raise ConfigError unless ``jobs`` >= 1 and ``part_size`` >= S3's minimum part size."""
    if jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {jobs}")
    if part_size < MIN_PART_SIZE:
        raise ConfigError(f"part size: must be >= {MIN_PART_SIZE // MIB} MiB, got {part_size} B")


class Progress:
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


class ProgressSubscriber(BaseSubscriber):
    """Feeds one transfer's progress to a :class:`Progress` bar.

    ``size`` and ``etag``, when known from our own HEAD, are handed to s3transfer so
    that it does not HEAD the object again; the ETag also makes every GET of the
    download conditional (``IfMatch``).
    """

    def __init__(self, bar: Progress, size: int | None = None, etag: str | None = None) -> None:
        self.bar = bar
        self.size = size
        self.etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        if self.size is not None:
            future.meta.provide_transfer_size(self.size)
        if self.etag is not None:
            future.meta.provide_object_etag(self.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self.bar.update(bytes_transferred)


class _TransferManager(TransferManager):
    """s3transfer's manager, whose downloads may also say ``IfMatch``.

    s3transfer adds the ETag it is given to its ranged GETs, but not to the single GET
    of an object below the threshold; passing ``IfMatch`` ourselves ties both to the
    version whose size and ``sha256`` metadata the download is checked against.
    """

    ALLOWED_DOWNLOAD_ARGS: ClassVar[list[str]] = [*TransferManager.ALLOWED_DOWNLOAD_ARGS, "IfMatch"]


def transfer_manager(client: S3Client, jobs: int, part_size: int) -> TransferManager:
    """s3transfer's manager with ``jobs`` requests in flight and parts of ``part_size``.

    Objects no larger than ``part_size`` are sent or fetched in one request, larger ones
    in parts of ``part_size`` (ranged GETs). Use it as a context manager: leaving the
    block on an error cancels the transfers still running and waits for their threads.
    """
    config = TransferConfig(
        multipart_threshold=part_size + 1,
        multipart_chunksize=part_size,
        max_request_concurrency=jobs,
    )
    return _TransferManager(client, config)


def notice(command: str, message: str) -> None:
    """One line on stderr that does not garble a progress bar."""
    tqdm.write(f"cryosnake {command}: {message}", file=sys.stderr)


def run_pool(jobs: int, items: Iterable[T], work: Callable[[T], R]) -> list[R]:
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
