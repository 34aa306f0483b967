"""Curate micrographs: gather motion and CTF results, apply thresholds, keep the good.

Reads the per-movie motion STAR (``cryosnake motioncor``) and CTF STAR
(``cryosnake ctf``) files, writes ``micrographs_ctf.star`` with every micrograph
(RELION 3.1+ layout: ``optics`` + ``micrographs``, with ``rlnAccumMotionTotal/Early/Late``
in Å as RELION's motion correction writes them), ``micrographs_selected.star`` with
those that pass every threshold, and ``rejected.tsv`` with one line per rejected
micrograph and every reason (columns ``micrograph``, ``reasons``, ``stage``), after the
movies that inspect rejected when ``--rejected-movies`` lists them (stage ``inspect``,
the movie's file in ``micrograph``). A threshold given as 0 is not applied; one not
given takes the default of the configuration schema (config/schemas, curate section).

Example::

    cryosnake curate --ctf results/ctf/*.star --motion results/motioncor/*.star \\
        --pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07 \\
        --max-resolution 8 --min-figure-of-merit 0.1 --out-dir results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, optics_table, read_star_block, write_star
from cryosnake.stages._common import (
    SchemaDefault,
    add_acquisition_args,
    add_names_root_arg,
    file_name,
    stage_main,
)

__all__ = ["add_args", "main"]

EARLY_FRAMES = 4  # RELION: accumulated motion over the first frames
# Thresholds: the curate section of the configuration (its schema holds the defaults).
THRESHOLDS = {
    "max_resolution": "Å: reject worse CTF fits",
    "min_figure_of_merit": "CTF figure of merit minimum",
    "min_defocus": "Å, mean defocus minimum",
    "max_defocus": "Å, mean defocus maximum",
    "max_astigmatism": "Å, dfU - dfV maximum",
    "max_total_motion": "Å, whole movie",
    "max_early_motion": f"Å, first {EARLY_FRAMES} frames",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ctf", nargs="+", required=True, help="per-micrograph CTF STAR files")
    parser.add_argument(
        "--motion", nargs="+", required=True, help="per-movie motion STAR files (same stems)"
    )
    parser.add_argument("--out-dir", required=True, help="folder for the STAR and TSV files")
    parser.add_argument(
        "--rejected-movies",
        help="TSV of the movies inspect rejected (cryosnake import --rejected), "
        "copied into rejected.tsv",
    )
    add_acquisition_args(parser, pixel_help="Å per movie pixel")
    for key, text in THRESHOLDS.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=float,
            default=SchemaDefault(f"curate.{key}"),
            help=f"{text} (default %(default)s; 0: not applied)",
        )
    add_names_root_arg(parser)


def _rejected_movies(path: str) -> pd.DataFrame:
    try:
        movies = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise CryosnakeError(f"--rejected-movies {path}: cannot read ({err})") from err
    if not {"movie", "reason"} <= set(movies.columns):
        raise CryosnakeError(f"--rejected-movies {path}: needs the columns movie and reason")
    return pd.DataFrame(
        {"micrograph": movies["movie"], "reasons": movies["reason"], "stage": "inspect"}
    )


def _motion(path: str, pixel_size: float) -> dict[str, float]:
    shifts = read_star_block(
        path, "global_shift", required=("rlnMicrographShiftX", "rlnMicrographShiftY")
    )
    xy = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=float)
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) * pixel_size
    return {
        "rlnAccumMotionTotal": float(steps.sum()),
        "rlnAccumMotionEarly": float(steps[: EARLY_FRAMES - 1].sum()),
        "rlnAccumMotionLate": float(steps[EARLY_FRAMES - 1 :].sum()),
    }


def _reasons(row: pd.Series, args: argparse.Namespace) -> list[str]:
    out = []
    mean = 0.5 * (row.rlnDefocusU + row.rlnDefocusV)
    checks = [
        (args.max_resolution, row.rlnCtfMaxResolution > args.max_resolution,
         f"CTF fit to {row.rlnCtfMaxResolution:.1f} Å > {args.max_resolution} Å"),
        (args.min_figure_of_merit, row.rlnCtfFigureOfMerit < args.min_figure_of_merit,
         f"CTF figure of merit {row.rlnCtfFigureOfMerit:.3f} < {args.min_figure_of_merit}"),
        (args.min_defocus, mean < args.min_defocus,
         f"defocus {mean:.0f} Å < {args.min_defocus} Å"),
        (args.max_defocus, mean > args.max_defocus,
         f"defocus {mean:.0f} Å > {args.max_defocus} Å"),
        (args.max_astigmatism, row.rlnDefocusU - row.rlnDefocusV > args.max_astigmatism,
         f"astigmatism {row.rlnDefocusU - row.rlnDefocusV:.0f} Å > {args.max_astigmatism} Å"),
        (args.max_total_motion, row.rlnAccumMotionTotal > args.max_total_motion,
         f"total motion {row.rlnAccumMotionTotal:.1f} Å > {args.max_total_motion} Å"),
        (args.max_early_motion, row.rlnAccumMotionEarly > args.max_early_motion,
         f"early motion {row.rlnAccumMotionEarly:.1f} Å > {args.max_early_motion} Å"),
    ]  # fmt: skip
    for limit, failed, text in checks:
        if limit > 0 and failed:
            out.append(text)
    return out


def _run(args: argparse.Namespace) -> int:
    motions = {Path(p).stem: p for p in args.motion}
    if len(motions) != len(args.motion):
        raise CryosnakeError("--motion: two motion STAR files share a name")
    rows = []
    for path in args.ctf:
        ctf = read_star_block(
            path,
            "micrograph",
            required=(
                "rlnMicrographName",
                "rlnDefocusU",
                "rlnDefocusV",
                "rlnDefocusAngle",
                "rlnCtfFigureOfMerit",
                "rlnCtfMaxResolution",
                "rlnMicrographPixelSize",
            ),
        ).iloc[0]
        stem = Path(path).stem
        if stem not in motions:
            raise CryosnakeError(f"{path}: no motion STAR named {stem}.star among --motion")
        row = ctf.to_dict()
        # The dose-weighted sum is the micrograph later stages use.
        micrograph = Path(motions[stem]).with_suffix(".mrc")
        row["rlnMicrographName"] = file_name(micrograph, args.names_root)
        row["rlnMicrographMetadata"] = file_name(motions[stem], args.names_root)
        row.update(_motion(motions[stem], args.pixel_size))
        row["rlnOpticsGroup"] = 1
        rows.append(row)
    table = pd.DataFrame(rows)
    sizes = table["rlnMicrographPixelSize"].astype(float).unique()
    if len(sizes) != 1:
        raise CryosnakeError(f"--ctf: micrographs of different pixel sizes {sorted(sizes)}")
    # Acquisition values live in the optics table.
    table = table.drop(
        columns=[
            "rlnVoltage",
            "rlnSphericalAberration",
            "rlnAmplitudeContrast",
            "rlnMicrographPixelSize",
        ],
        errors="ignore",
    )
    reasons = [_reasons(row, args) for _, row in table.iterrows()]
    keep = np.array([not r for r in reasons], dtype=bool)
    optics = optics_table(
        pixel_size=args.pixel_size,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
    )
    optics["rlnMicrographPixelSize"] = float(sizes[0])  # binned micrographs
    out = Path(args.out_dir)
    write_star(out / "micrographs_ctf.star", {"optics": optics, "micrographs": table})
    write_star(
        out / "micrographs_selected.star",
        {"optics": optics, "micrographs": table[keep].reset_index(drop=True)},
    )
    rejected = pd.DataFrame(
        {
            "micrograph": table.rlnMicrographName[~keep],
            "reasons": ["; ".join(r) for r, k in zip(reasons, keep, strict=True) if not k],
            "stage": "curate",
        }
    )
    if args.rejected_movies:
        movies = _rejected_movies(args.rejected_movies)
        rejected = pd.concat([movies, rejected], ignore_index=True)
    with atomic_path(out / "rejected.tsv") as tmp:
        rejected.to_csv(tmp, sep="\t", index=False)
    print(
        f"curate: {int(keep.sum())} of {len(table)} micrographs selected, "
        f"{int((~keep).sum())} rejected -> {out / 'micrographs_selected.star'}"
    )
    return 0


main = stage_main("curate", __doc__, add_args, _run)
