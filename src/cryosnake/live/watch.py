"""Watch a microscope's output folder (or an S3 prefix) for complete movies.

A detector writes a movie under its final name while it records it, so a file that
exists is not yet a movie. :class:`FolderWatcher` reports a movie once it is complete:

- its EPU metadata file is there (EPU writes ``<stem>.xml`` next to
  ``<stem>_fractions.tiff`` once the movie is written), or
- its size and modification time have not changed for ``settle`` seconds, as seen by
  this watcher (its own clock, so a skewed file server clock cannot make a movie look
  older than it is).

Layouts: EPU's ``Images-Disc*/GridSquare_*/Data/*_fractions.{tiff,eer,mrc}`` (in an
EPU ``Data`` folder only the ``*_fractions`` and ``*_EER`` files are movies: the other
``.mrc`` files there are EPU's own sums), or any folder of movie files, searched
recursively; hidden files and folders (temporary names) are skipped.

:class:`S3Watcher` lists ``s3://bucket/prefix`` instead: an object appears in S3 only
once it is complete, so every listed movie has arrived.

Movies are named by their file stem, as the workflow names them; two files of one
name are an error (naming both), not a guess.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryosnake.errors import ConfigError, CryosnakeError
from cryosnake.io import MOVIE_SUFFIXES

__all__ = ["Arrival", "FolderWatcher", "S3Watcher", "is_movie", "make_watcher"]

# EPU names the movie of exposure <stem> <stem>_fractions.<ext> (<stem>_EER.eer for
# Falcon 4 EER) and its metadata <stem>.xml.
MOVIE_ENDINGS = ("_fractions", "_EER")


@dataclass(frozen=True)
class Arrival:
    """A complete movie: its name (file stem), where it is (a path, or an s3:// URL)
    and its size in bytes."""

    movie: str
    source: str
    size: int


def is_movie(path: PurePosixPath | Path) -> bool:
    """Whether ``path`` names a movie file: a movie suffix, not hidden, and in an EPU
    ``Data`` folder a ``*_fractions`` or ``*_EER`` name."""
    if path.name.startswith(".") or path.suffix.lower() not in MOVIE_SUFFIXES:
        return False
    if path.parent.name == "Data" and path.parent.parent.name.startswith("GridSquare_"):
        return path.stem.endswith(MOVIE_ENDINGS)
    return True


def _metadata_name(stem: str) -> str | None:
    for ending in MOVIE_ENDINGS:
        if stem.endswith(ending):
            return stem[: -len(ending)] + ".xml"
    return None


def _scan(root: str) -> Iterator[os.DirEntry[str]]:
    """Every file under ``root`` (recursively), hidden entries skipped."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _scan(entry.path)
        elif entry.is_file():
            yield entry


class _Names:
    """Movie name -> source, refusing a second file of one name."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = dict(known)

    def claim(self, movie: str, source: str) -> bool:
        """True when ``movie`` is new; False when it is known from ``source`` itself."""
        before = self.known.get(movie)
        if before is None:
            self.known[movie] = source
            return True
        if before == source:
            return False
        raise CryosnakeError(
            f"{source}: a second movie named {movie!r} (the first is {before}); "
            "movies are named by their file name without suffix"
        )


class FolderWatcher:
    """Complete movies under a local folder (see the module's description).

    root : the folder the microscope writes to
    settle : seconds a file's size and modification time must stay unchanged
    known : movie -> source of movies already reported (a restarted session's)
    clock : seconds, monotonic (tests give their own)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        settle: float,
        known: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise ConfigError(f"--watch: {root}: no such folder")
        self.settle = settle
        self.clock = clock
        self._names = _Names(known or {})
        self._seen: dict[str, tuple[int, int, float]] = {}  # path -> size, mtime_ns, since

    @property
    def waiting(self) -> int:
        """Movie files seen but not yet complete."""
        return len(self._seen)

    def poll(self) -> list[Arrival]:
        """The movies complete since the last call, in name order."""
        now = self.clock()
        files = {e.path: e for e in _scan(self.root) if is_movie(Path(e.path))}
        folders = {os.path.dirname(p) for p in files}
        xml = {
            os.path.join(folder, name)
            for folder in folders
            for name in os.listdir(folder)
            if name.endswith(".xml")
        }
        arrived = []
        for path, entry in sorted(files.items()):
            stem = os.path.splitext(entry.name)[0]
            if self._names.known.get(stem) == path:
                continue
            stat = entry.stat()
            state = (stat.st_size, stat.st_mtime_ns)
            before = self._seen.get(path)
            since = before[2] if before is not None and before[:2] == state else now
            self._seen[path] = (*state, since)
            metadata = _metadata_name(stem)
            written = metadata is not None and os.path.join(os.path.dirname(path), metadata) in xml
            if stat.st_size > 0 and (written or now - since >= self.settle):
                if self._names.claim(stem, path):
                    arrived.append(Arrival(stem, path, stat.st_size))
                self._seen.pop(path, None)
        for path in set(self._seen) - set(files):
            del self._seen[path]  # gone before it settled
        return sorted(arrived, key=lambda a: a.movie)


class S3Watcher:
    """Movies under ``s3://bucket/prefix`` (every object listed is complete).

    client : a boto3 S3 client (:func:`cryosnake.aws.s3.client`)
    known : movie -> URL of movies already reported
    """

    def __init__(self, url: str, client: Any, known: dict[str, str] | None = None) -> None:
        from cryosnake.aws.s3 import parse_s3_url

        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(self.url)
        self.client = client
        self._names = _Names(known or {})

    waiting = 0  # an object in S3 is complete

    def poll(self) -> list[Arrival]:
        """The movies listed for the first time, in name order."""
        from cryosnake.aws import s3

        arrived = []
        prefix = self.prefix + "/" if self.prefix else ""
        try:
            items = list(s3.objects(self.client, self.bucket, prefix))
        except s3.ERRORS as err:
            raise CryosnakeError(f"--watch: cannot list {self.url} ({err})") from err
        for item in items:
            key = item["Key"]
            relative = PurePosixPath(key[len(prefix) :])
            if any(part.startswith(".") for part in relative.parts) or not is_movie(relative):
                continue
            url = s3.object_url(self.bucket, key)
            stem = posixpath.splitext(relative.name)[0]
            if int(item.get("Size", 0)) > 0 and self._names.claim(stem, url):
                arrived.append(Arrival(stem, url, int(item["Size"])))
        return sorted(arrived, key=lambda a: a.movie)


def make_watcher(
    where: str, settle: float, known: dict[str, str], client_factory: Callable[[], Any]
) -> FolderWatcher | S3Watcher:
    """The watcher of ``where`` (a folder, or an s3:// URL)."""
    if where.startswith("s3://"):
        return S3Watcher(where, client_factory(), known)
    return FolderWatcher(where, settle, known)
