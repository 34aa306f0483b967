"""Collect the per-movie reports of ``cryosnake inspect`` into RELION's ``movies.star``.

Writes ``movies.star`` (RELION 3.1 layout: ``data_optics`` and ``data_movies``) that
RELION's motion correction, cryoSPARC's import and cryosnake's later stages read, and
a tab-separated summary with one line per movie. Movies whose frame size differs from
the rest are an error: one optics group holds one detector geometry.

Example::

    cryosnake import --reports results/inspect/*.json --out results/movies.star \\
        --summary results/movies_summary.tsv --pixel-size 1.5 --voltage 300 --cs 2.7 \\
        --amplitude-contrast 0.07
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, optics_table, read_json, write_star
from cryosnake.stages._common import positive, run_stage

__all__ = ["add_args", "main"]

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
        "--reports", nargs="+", required=True, help="JSON reports written by cryosnake inspect"
    )
    parser.add_argument("--out", required=True, help="movies.star to write")
    parser.add_argument("--summary", help="TSV summary to write")
    parser.add_argument("--pixel-size", type=positive, required=True, help="Å per pixel")
    parser.add_argument("--voltage", type=positive, required=True, help="kV")
    parser.add_argument("--cs", type=float, required=True, help="spherical aberration, mm")
    parser.add_argument(
        "--amplitude-contrast", type=float, required=True, help="amplitude contrast fraction"
    )


def _run(args: argparse.Namespace) -> int:
    rows = []
    for path in args.reports:
        report = read_json(path)
        missing = [k for k in _SUMMARY_COLUMNS if k not in report]
        if missing:
            raise CryosnakeError(f"{path}: not an inspect report (lacks {', '.join(missing)})")
        rows.append({k: report[k] for k in _SUMMARY_COLUMNS})
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
    print(
        f"import: {len(table)} movies -> {args.out} "
        f"(median dose {table.dose_per_frame_measured.median():.3f} e/Å²/frame, "
        f"{table.n_frames.min()}-{table.n_frames.max()} frames)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("import", __doc__, add_args, _run, argv)
