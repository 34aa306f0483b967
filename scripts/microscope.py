"""A test microscope: replay a folder of movies into a folder at a microscope's pace.

Every movie file directly in ``--source`` (in name order) is written into ``--dest``
one by one, a new one every ``--interval`` seconds, each in ``--pieces`` flushed pieces
spread over ``--write-time`` seconds under its final name (as a detector writes it), so
that ``cryosnake live --watch DEST`` can be tried against it. With ``--layout epu`` the
names and folders are those of Thermo Fisher EPU
(``Images-Disc1/GridSquare_*/Data/FoilHole_*_Data_*_*_<date>_<time>_fractions.<ext>``,
then the exposure's ``.xml`` written atomically once the movie is complete); with
``--layout flat`` the movies keep their names. A TSV manifest gets one row per movie.

Usage::

    python scripts/microscope.py --source results/sim/movies --dest /tmp/scope/run1
    python scripts/microscope.py --source movies --dest out --interval 2 --count 10 --layout flat
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

from cryosnake.io import MOVIE_SUFFIXES

EPU_SUFFIX = {".mrc": ".mrc", ".mrcs": ".mrc", ".tif": ".tiff", ".tiff": ".tiff", ".eer": ".eer"}
MOVIES_PER_SQUARE = 8
MANIFEST_HEADER = ("source", "movie", "path", "started", "finished")


class MicroscopeError(Exception):
    """A replay that cannot start (e.g. no movies in the source folder)."""


def epu_stamp(when: float) -> str:
    """EPU's ``<YYYYMMDD>_<HHMMSS>`` of the unix time ``when`` (UTC)."""
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(when))


def epu_name(hole: int, area: int, exposure: int, when: float) -> str:
    """EPU's exposure stem ``FoilHole_<hole>_Data_<area>_<exposure>_<date>_<time>``
    (the movie is ``<stem>_fractions.<ext>``, its metadata ``<stem>.xml``)."""
    return f"FoilHole_{hole:08d}_Data_{area:08d}_{exposure:08d}_{epu_stamp(when)}"


def find_movies(source: Path) -> list[Path]:
    """The movie files directly in ``source``, in name order."""
    if not source.is_dir():
        return []
    return sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in MOVIE_SUFFIXES)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden temporary file in the same folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_pieces(source: Path, target: Path, pieces: int, write_time: float) -> None:
    """Copy ``source`` to ``target`` (its final name from the first byte) in ``pieces``
    flushed pieces, the first at once and the last ``write_time`` seconds later."""
    size = source.stat().st_size
    start = time.monotonic()
    with source.open("rb") as src, target.open("wb") as out:
        for k in range(pieces):
            if k:
                time.sleep(max(0.0, start + k * write_time / (pieces - 1) - time.monotonic()))
            out.write(src.read(size * (k + 1) // pieces - size * k // pieces))
            out.flush()


class EpuNamer:
    """Unique random EPU numbers: a new grid square every ``MOVIES_PER_SQUARE`` movies,
    two to four exposures per foil hole."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.used: set[int] = set()
        self.square = self.hole = 0
        self.left_in_hole = 0

    def number(self) -> int:
        """A fresh 8-digit number, never given before in this session."""
        while (n := self.rng.randrange(10_000_000, 100_000_000)) in self.used:
            pass
        self.used.add(n)
        return n

    def next(self, index: int) -> tuple[int, int, int, int, bool]:
        """(square, hole, area, exposure, new square?) of the ``index``-th movie."""
        new_square = index % MOVIES_PER_SQUARE == 0
        if new_square:
            self.square, self.left_in_hole = self.number(), 0
        if self.left_in_hole == 0:
            self.hole, self.left_in_hole = self.number(), self.rng.randint(2, 4)
        self.left_in_hole -= 1
        return self.square, self.hole, self.number(), self.number(), new_square

    def unique_id(self) -> uuid.UUID:
        """A seeded random UUID (EPU's ``uniqueID`` of an image)."""
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


def _movie_xml(stem: str, source: str, unique_id: uuid.UUID) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<MicroscopeImage>\n'
        f"  <name>{stem}</name>\n  <uniqueID>{unique_id}</uniqueID>\n"
        f"  <source>{source}</source>\n</MicroscopeImage>\n"
    )


def replay(
    source: Path,
    dest: Path,
    interval: float = 20.0,
    count: int | None = None,
    layout: str = "epu",
    pieces: int = 4,
    write_time: float | None = None,
    manifest: Path | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Replay the movies of ``source`` into ``dest`` and return the manifest rows.

    ``write_time`` defaults to half the interval and ``manifest`` to
    ``dest/../microscope.tsv`` (rewritten; one row appended and flushed per movie).
    """
    if layout not in ("epu", "flat"):
        raise ValueError(f"unknown layout {layout!r}")
    movies = find_movies(source)[:count]
    if not movies:
        raise MicroscopeError(f"no movie files ({', '.join(MOVIE_SUFFIXES)}) in {source}")
    write_time = interval / 2 if write_time is None else write_time
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest.parent / "microscope.tsv" if manifest is None else manifest
    manifest.parent.mkdir(parents=True, exist_ok=True)
    namer, stems, rows = EpuNamer(seed), set[str](), list[dict[str, str]]()
    t0 = time.monotonic()
    with manifest.open("w") as table:
        table.write("\t".join(MANIFEST_HEADER) + "\n")
        table.flush()
        for i, movie in enumerate(movies):
            time.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            started = time.time()
            if layout == "flat":
                target, xml = dest / movie.name, None
            else:
                square, hole, area, exposure, new_square = namer.next(i)
                data = dest / "Images-Disc1" / f"GridSquare_{square:08d}" / "Data"
                if new_square:
                    data.mkdir(parents=True, exist_ok=True)
                    name = f"GridSquare_{epu_stamp(started)}.xml"
                    write_atomic(data.parent / name, f"<GridSquare>{square}</GridSquare>\n")
                stem = epu_name(hole, area, exposure, started)
                assert stem not in stems, f"duplicate EPU name {stem}"
                stems.add(stem)
                target = data / f"{stem}_fractions{EPU_SUFFIX[movie.suffix.lower()]}"
                xml = (data / f"{stem}.xml", _movie_xml(stem, movie.name, namer.unique_id()))
            write_pieces(movie, target, pieces, write_time)
            finished = time.time()
            if xml is not None:
                write_atomic(*xml)
            row = {
                "source": movie.name,
                "movie": target.stem,
                "path": target.relative_to(dest).as_posix(),
                "started": f"{started:.3f}",
                "finished": f"{finished:.3f}",
            }
            table.write("\t".join(row[key] for key in MANIFEST_HEADER) + "\n")
            table.flush()
            rows.append(row)
            elapsed = time.monotonic() - t0
            print(f"microscope: {i + 1}/{len(movies)} {target.name} written ({elapsed:.1f} s)")
            sys.stdout.flush()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, metavar="DIR", required=True, help="folder of movies to replay"
    )
    parser.add_argument(
        "--dest", type=Path, metavar="DIR", required=True, help="the microscope's output folder"
    )
    parser.add_argument(
        "--interval", type=float, metavar="SECONDS", default=20.0, help="seconds between starts"
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="replay only the first N movies (default all)"
    )
    parser.add_argument("--layout", choices=("epu", "flat"), default="epu", help="folder layout")
    parser.add_argument(
        "--pieces", type=int, metavar="K", default=4, help="flushed pieces per movie"
    )
    parser.add_argument(
        "--write-time", type=float, metavar="SECONDS", help="seconds per movie (half the interval)"
    )
    parser.add_argument(
        "--manifest", type=Path, metavar="PATH", help="TSV manifest (DEST/../microscope.tsv)"
    )
    parser.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the EPU numbers")
    args = parser.parse_args(argv)
    if args.interval < 0 or args.pieces < 1 or (args.count is not None and args.count < 1):
        parser.error("--interval must be >= 0, --pieces and --count >= 1")
    if args.write_time is not None and args.write_time < 0:
        parser.error("--write-time must be >= 0")
    try:
        replay(
            args.source,
            args.dest,
            interval=args.interval,
            count=args.count,
            layout=args.layout,
            pieces=args.pieces,
            write_time=args.write_time,
            manifest=args.manifest,
            seed=args.seed,
        )
    except MicroscopeError as error:
        print(f"microscope: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
