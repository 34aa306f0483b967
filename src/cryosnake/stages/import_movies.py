"""Collect the per-movie reports of ``cryosnake inspect`` into RELION's ``movies.star``.

Writes ``movies.star`` (RELION 3.1 layout: ``data_optics`` and ``data_movies``) that
RELION's motion correction, cryoSPARC's import and cryosnake's later stages read, and
a tab-separated summary with one line per movie. Movies whose frame size differs from
the rest are an error: one optics group holds one detector geometry.

A movie that ``cryosnake inspect --reject`` rejected (its report holds ``rejected``)
is left out of ``movies.star`` and listed, with the reason, in ``--rejected`` (a TSV:
``movie``, ``reason``); the workflow's later stages process the others. That every
movie is rejected is an error that gives the first reason.

Example::

    cryosnake import --reports results/inspect/chunk0001 --out results/movies.star \\
        --summary results/movies_summary.tsv --rejected results/movies_rejected.tsv \\
        --pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, optics_table, read_json, write_star
from cryosnake.stages._common import add_acquisition_args, stage_main

__all__ = ["add_args", "main", "report_files"]

_SUMMARY_COLUMNS = [
    "movie",
    "n_frames",
    "width",
    "height",
    "dose_per_frame_measured",
    "total_dose",
    "hot_pixels",
]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reports",
        nargs="+",
        required=True,
        help="JSON reports written by cryosnake inspect, or folders of them (every *.json)",
    )
    parser.add_argument("--out", required=True, help="movies.star to write")
    parser.add_argument("--summary", help="TSV summary to write")
    parser.add_argument(
        "--rejected", help="TSV of the movies inspect rejected (movie, reason) to write"
    )
    add_acquisition_args(parser, pixel_help="Å per pixel")


def report_files(paths: list[str]) -> list[Path]:
    """``paths``, with every folder among them replaced by its ``*.json`` files; with a
    folder among them, in the order of the file names whatever their folder (so that
    the chunks a session is split into do not change the order of movies.star)."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    if any(Path(p).is_dir() for p in paths):
        files.sort(key=lambda f: f.name)
    return files


def _run(args: argparse.Namespace) -> int:
    rows, rejected = [], []
    for path in report_files(args.reports):
        report = read_json(path)
        if "rejected" in report:
            rejected.append({"movie": report.get("movie", path), "reason": report["rejected"]})
            print(f"import: rejected {rejected[-1]['movie']}: {report['rejected']}")
            continue
        missing = [k for k in _SUMMARY_COLUMNS if k not in report]
        if missing:
            raise CryosnakeError(f"{path}: not an inspect report (lacks {', '.join(missing)})")
        rows.append({k: report[k] for k in _SUMMARY_COLUMNS})
    if not rows:
        raise CryosnakeError(
            f"--reports: every movie ({len(rejected)}) was rejected by inspect; the first: "
            f"{rejected[0]['reason']}"
        )
    table = pd.DataFrame(rows)
    if table["movie"].duplicated().any():
        dup = table.loc[table["movie"].duplicated(), "movie"].iloc[0]
        raise CryosnakeError(f"{dup}: listed twice in --reports")
    sizes = table.groupby(["width", "height"]).size()
    if len(sizes) > 1:
        common = sizes.idxmax()
        odd = table[(table.width != common[0]) | (table.height != common[1])].iloc[0]
        raise CryosnakeError(
            f"{odd.movie}: frames are {odd.width} x {odd.height} px, the other movies "
            f"{common[0]} x {common[1]} px"
        )
    optics = optics_table(
        pixel_size=args.pixel_size,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
    )
    movies = pd.DataFrame({"rlnMicrographMovieName": table["movie"], "rlnOpticsGroup": 1})
    write_star(args.out, {"optics": optics, "movies": movies})
    if args.summary:
        with atomic_path(args.summary) as tmp:
            table.to_csv(tmp, sep="\t", index=False)
    if args.rejected:
        with atomic_path(args.rejected) as tmp:
            pd.DataFrame(rejected, columns=["movie", "reason"]).to_csv(tmp, sep="\t", index=False)
    print(
        f"import: {len(table)} movies -> {args.out}, {len(rejected)} rejected "
        f"(median dose {table.dose_per_frame_measured.median():.3f} e/Å²/frame, "
        f"{table.n_frames.min()}-{table.n_frames.max()} frames)"
    )
    return 0


main = stage_main("import", __doc__, add_args, _run)
