"""Hand complete movies to the workflow: the staging folder of a live session.

The workflow processes the movies that match ``input.movies``; a live session points it
at its staging folder, ``<results>/live/movies``, which holds only complete movies, so
that a movie still being written is never planned.

- :class:`LocalStaging`: a symbolic link per movie to where the microscope wrote it
  (no copy).
- :class:`S3Staging` (runs whose default storage is S3, ``--profile aws``): the movie
  is uploaded to the staging folder under the storage prefix, resumable and checked
  with SHA-256 (:func:`cryosnake.aws.upload_files.upload`: a movie already there is
  not sent again, an upload cut short is resumed); a movie watched in S3 is copied
  there inside S3.

``stage`` returns the movie's path as the workflow names it (what the glob of
``pattern`` gives). Staging a movie twice is harmless: both keep what is already there.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from cryosnake.errors import CryosnakeError
from cryosnake.live.watch import Arrival

__all__ = ["STAGING", "LocalStaging", "S3Staging"]

# The staging folder, relative to the results folder.
STAGING = "live/movies"


def _name(arrival: Arrival) -> str:
    return posixpath.basename(arrival.source)


class LocalStaging:
    """Links in ``folder`` to the movies (``pattern``: the workflow's ``input.movies``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.pattern = str(self.folder / "*")

    def stage(self, arrival: Arrival) -> str:
        """Link the movie into the staging folder; its path there."""
        if arrival.source.startswith("s3://"):
            raise CryosnakeError(
                f"{arrival.source}: movies watched in S3 are processed with S3 storage "
                "(--profile aws)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        link = self.folder / _name(arrival)
        target = os.path.abspath(arrival.source)
        if link.is_symlink() and os.readlink(link) == target:
            return str(link)
        tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)  # a link appears whole, or not at all
        return str(link)


class S3Staging:
    """Movies in ``storage_prefix``/``folder`` (``pattern``, relative to the storage
    prefix as the workflow's paths are there).

    client : a boto3 S3 client (:func:`cryosnake.aws.s3.client`)
    """

    def __init__(self, storage_prefix: str, folder: str, client: Any) -> None:
        self.folder = folder.strip("/")
        self.url = f"{storage_prefix.rstrip('/')}/{self.folder}"
        self.pattern = f"{self.folder}/*"
        self.client = client

    def stage(self, arrival: Arrival) -> str:
        """Upload (or copy within S3) the movie into the staging folder; its path there
        as the workflow names it (relative to the storage prefix)."""
        from cryosnake.aws import s3
        from cryosnake.aws.upload_files import upload

        name = _name(arrival)
        if not arrival.source.startswith("s3://"):
            upload(arrival.source, self.url, quiet=True, client=self.client)
            return f"{self.folder}/{name}"
        url = f"{self.url}/{name}"
        bucket, key = s3.parse_s3_url(url)
        there = s3.head(self.client, bucket, key)
        if there is None or int(there["ContentLength"]) != arrival.size:
            source_bucket, source_key = s3.parse_s3_url(arrival.source)
            with s3.s3_errors(url, bucket):
                self.client.copy({"Bucket": source_bucket, "Key": source_key}, bucket, key)
        return f"{self.folder}/{name}"
