"""Curate micrographs: gather motion and CTF results, apply thresholds, keep the good.

Reads the per-movie motion STAR (``cryosnake motioncor``) and CTF STAR
(``cryosnake ctf``) files, writes ``micrographs_ctf.star`` with every micrograph
(RELION 3.1+ layout: ``optics`` + ``micrographs``, with ``rlnAccumMotionTotal/Early/Late``
in Å as RELION's motion correction writes them), ``micrographs_selected.star`` with
those that pass every threshold, and ``rejected.tsv`` with one line per rejected
micrograph and every reason (columns ``micrograph``, ``reasons``, ``stage``), after the
movies that inspect rejected when ``--rejected-movies`` lists them (stage ``inspect``,
the movie's file in ``micrograph``). A threshold given as 0 (or not given) is not applied.

Example::

    cryosnake curate --ctf results/ctf/*.star --motion results/motioncor/*.star \\
        --pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07 \\
        --max-resolution 8 --min-figure-of-merit 0.1 --out-dir results
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, optics_table, read_star_block, write_star
from cryosnake.stages._common import positive, run_stage

__all__ = ["add_args", "main"]

EARLY_FRAMES = 4  # RELION: accumulated motion over the first frames


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
    parser.add_argument("--pixel-size", type=positive, required=True, help="Å per movie pixel")
    parser.add_argument("--voltage", type=positive, required=True, help="kV")
    parser.add_argument("--cs", type=float, required=True, help="mm")
    parser.add_argument("--amplitude-contrast", type=float, required=True, help="fraction")
    parser.add_argument("--max-resolution", type=float, default=0.0, help="Å: reject worse fits")
    parser.add_argument("--min-figure-of-merit", type=float, default=0.0, help="CTF FOM minimum")
    parser.add_argument("--min-defocus", type=float, default=0.0, help="Å, mean defocus minimum")
    parser.add_argument("--max-defocus", type=float, default=0.0, help="Å, mean defocus maximum")
    parser.add_argument("--max-astigmatism", type=float, default=0.0, help="Å, dfU - dfV maximum")
    parser.add_argument("--max-total-motion", type=float, default=0.0, help="Å, whole movie")
    parser.add_argument(
        "--max-early-motion", type=float, default=0.0, help=f"Å, first {EARLY_FRAMES} frames"
    )


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


def _motion(path: str, pixel_size: float) -> dict[str, float | str]:
    shifts = read_star_block(
        path, "global_shift", required=("rlnMicrographShiftX", "rlnMicrographShiftY")
    )
    xy = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=float)
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) * pixel_size
    return {
        "rlnMicrographMetadata": path,
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
        row["rlnMicrographName"] = str(Path(motions[stem]).with_suffix(".mrc"))
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("curate", __doc__, add_args, _run, argv)
