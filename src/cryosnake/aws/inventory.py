"""Snakemake's knowledge of the workflow's files in S3, from one listing.

To plan a run, Snakemake asks whether each input and output exists and when it was
written. With S3 as default storage, snakemake-storage-plugin-s3 answers with requests
per file (a HEAD per file; for a file that is not there, or a folder output, a HEAD of
the bucket and a listing as well), and its own inventory lists only the folder of the
first file it is asked about. A session of 10,000 movies in 400 chunks is then tens of
thousands of requests before the first job starts.

:func:`prime_inventory` instead lists the storage prefix once (pages of 1,000 objects)
and fills Snakemake's file cache with every object, with every folder above an object
(existing, written at its newest object's time, as the plugin reports folders), and
marks the bucket as fully known, so that a file not listed is known to be missing
without a request. The workflow calls it once, in the process that plans the jobs
(common.smk), and not when a path of the configuration points elsewhere in the same
bucket (it would then be taken for missing).

:func:`recheck_missing_folders` works around the plugin's memory of folders: it
remembers that a folder output is not there (no object under it) and says so ever
after, so a chunk job retried after a spot reclaim, whose first attempt had written
nothing, is reported as having written nothing too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cryosnake.aws import s3
from cryosnake.aws.s3 import parse_s3_url
from cryosnake.errors import CryosnakeError

__all__ = [
    "StoredObject",
    "list_storage",
    "points_elsewhere",
    "prime_inventory",
    "recheck_missing_folders",
]


class StoredObject(NamedTuple):
    """An object of the bucket: its key, last-modified time (s since the epoch), bytes."""

    key: str
    mtime: float
    size: int


def list_storage(
    storage_prefix: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
) -> list[StoredObject]:
    """Every object under ``storage_prefix`` (``s3://BUCKET/PROJECT``).

    Raises
    ------
    CryosnakeError
        The prefix cannot be listed (the message names it).
    """
    bucket, base = parse_s3_url(storage_prefix)
    client = client or s3.client(endpoint_url=endpoint_url, region=region)
    prefix = f"{base.rstrip('/')}/" if base else ""
    try:
        return [
            StoredObject(item["Key"], item["LastModified"].timestamp(), int(item["Size"]))
            for item in s3.objects(client, bucket, prefix)
            if not item["Key"].endswith("/")
        ]
    except s3.ERRORS as err:
        where = s3.object_url(bucket, prefix)
        raise CryosnakeError(
            f"{where}: cannot list ({s3.error_code(err) or s3.describe(err)})"
        ) from err


def points_elsewhere(config: Mapping[str, Any], storage_prefix: str) -> str | None:
    """A configuration value that names an object of the storage prefix's bucket outside
    the prefix (the inventory would take it for missing), or None."""
    bucket, base = parse_s3_url(storage_prefix)
    inside = f"s3://{bucket}/{base.rstrip('/')}/" if base else f"s3://{bucket}/"
    stack: list[Any] = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str):
            if value.startswith(f"s3://{bucket}/") and not value.startswith(inside):
                return value
    return None


def prime_inventory(
    iocache: Any, local_prefix: Path, storage_prefix: str, objects: Iterable[StoredObject]
) -> int:
    """Fill Snakemake's ``iocache`` (``workflow.iocache``) with ``objects`` (listed from
    ``storage_prefix`` by :func:`list_storage`) and their folders, keyed as the storage
    plugin keys them (``local_prefix``/BUCKET/KEY, ``local_prefix`` the provider's),
    and mark the bucket as known; returns how many files and folders it holds."""
    from snakemake_interface_storage_plugins.io import Mtime

    bucket, base = parse_s3_url(storage_prefix)
    root = Path(local_prefix) / bucket
    top = base.rstrip("/")
    folders: dict[str, tuple[float, int]] = {}
    count = 0

    def note(key: str, mtime: float, size: int) -> None:
        path = str(root / key)
        iocache.mtime[path] = Mtime(storage=mtime)
        iocache.size[path] = size
        iocache.exists_in_storage[path] = True

    for obj in objects:
        note(obj.key, obj.mtime, obj.size)
        count += 1
        folder = posixpath.dirname(obj.key)
        while folder and len(folder) > len(top):
            newest, total = folders.get(folder, (0.0, 0))
            folders[folder] = (max(newest, obj.mtime), total + obj.size)
            folder = posixpath.dirname(folder)
    for folder, (mtime, size) in folders.items():
        note(folder, mtime, size)
    iocache.exists_in_storage.has_inventory.add(str(root))
    return count + len(folders)


def recheck_missing_folders() -> bool:
    """Make snakemake-storage-plugin-s3 (0.3.6) look again for a folder it found missing.

    Its ``StorageObject.is_dir`` keeps its first answer; after a failed attempt of a
    job with folder outputs (which Snakemake checks) the answer "no folder" would stand
    after the retry wrote the folder, and the run would stop with "missing files".
    Only a found folder is remembered now. Returns False when the plugin has no such
    method (another version: nothing changed).
    """
    try:
        from snakemake_storage_plugin_s3 import StorageObject
    except ImportError:
        return False
    if not hasattr(StorageObject, "get_subkeys") or getattr(StorageObject, "_rechecks", False):
        return getattr(StorageObject, "_rechecks", False)

    def is_dir(self: Any) -> bool:
        if not self._is_dir:
            self._is_dir = any(self.get_subkeys())
        return bool(self._is_dir)

    StorageObject.is_dir = is_dir
    StorageObject._rechecks = True
    return True
