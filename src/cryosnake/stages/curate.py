"""Curate micrographs: gather motion and CTF results, apply thresholds, keep the good.

Reads the per-movie motion STAR (``cryosnake motioncor``) and CTF STAR
(``cryosnake ctf``) files (``--ctf`` and ``--motion`` take files and folders: a folder
stands for every ``*.star`` file directly inside it, sorted by name), writes
``micrographs_ctf.star`` with every micrograph (RELION 3.1+ layout: ``optics`` +
``micrographs``, with ``rlnAccumMotionTotal/Early/Late`` in Å as RELION's motion
correction writes them), ``micrographs_selected.star`` with those that pass every
threshold, and ``rejected.tsv`` with one line per rejected micrograph and every reason
(columns ``micrograph``, ``reasons``, ``stage``), after the movies that inspect rejected
when ``--rejected-movies`` lists them (stage ``inspect``, the movie's file in
``micrograph``). A threshold given as 0 is not applied; one not
given takes the default of the configuration schema (config/schemas, curate section).

Example::

    cryosnake curate --ctf results/ctf/chunk0001 results/ctf/chunk0002 \\
        --motion results/motioncor/chunk0001 results/motioncor/chunk0002 \\
        --pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07 \\
        --max-resolution 8 --min-figure-of-merit 0.1 --out-dir results
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import atomic_path, optics_table, read_star_stack, star_files, write_star
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
    parser.add_argument(
        "--ctf",
        nargs="+",
        required=True,
        help="per-micrograph CTF STAR files, or folders of them (every *.star inside)",
    )
    parser.add_argument(
        "--motion",
        nargs="+",
        required=True,
        help="per-movie motion STAR files (same stems), or folders of them",
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


CTF_LABELS = (
    "rlnMicrographName",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
    "rlnMicrographPixelSize",
)
SHIFT_LABELS = ("rlnMicrographShiftX", "rlnMicrographShiftY")


def _require(
    paths: Sequence[Path], labels: Sequence[tuple[str, ...]], block: str, required: tuple[str, ...]
) -> None:
    """An error naming the first file whose ``block`` lacks a ``required`` label."""
    checked: set[tuple[str, ...]] = set()
    for path, have in zip(paths, labels, strict=True):
        if have in checked:
            continue
        missing = [label for label in required if label not in have]
        if missing:
            raise FileFormatError(f"{path}: data_{block} lacks label(s) {', '.join(missing)}")
        checked.add(have)


def _ctf_rows(paths: list[Path]) -> pd.DataFrame:
    """The first row of each CTF STAR's ``micrograph`` block, in file order."""
    stack = read_star_stack(paths, ["micrograph"])["micrograph"]
    _require(paths, stack.labels, "micrograph", CTF_LABELS)
    empty = np.flatnonzero(stack.counts == 0)
    if len(empty):
        raise FileFormatError(f"{paths[empty[0]]}: data_micrograph has no row")
    return stack.table.iloc[stack.starts].reset_index(drop=True)


def _motion(paths: list[Path], pixel_size: float) -> dict[str, np.ndarray]:
    """Accumulated motion (Å) of each movie: whole, first frames and the rest, from the
    ``global_shift`` blocks of its motion STAR."""
    stack = read_star_stack(paths, ["global_shift"])["global_shift"]
    _require(paths, stack.labels, "global_shift", SHIFT_LABELS)
    xy = stack.table[list(SHIFT_LABELS)].to_numpy(dtype=float).reshape(-1, 2)
    owner = stack.file_index
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1) * pixel_size
    within = owner[1:] == owner[:-1]  # steps between frames of one movie
    step_number = np.arange(len(steps)) - stack.starts[owner[:-1]] if len(steps) else owner[:0]
    early = within & (step_number < EARLY_FRAMES - 1)
    late = within & (step_number >= EARLY_FRAMES - 1)
    n = len(paths)

    def total(mask: np.ndarray) -> np.ndarray:
        return np.bincount(owner[:-1][mask], weights=steps[mask], minlength=n)

    return {
        "rlnAccumMotionTotal": total(within),
        "rlnAccumMotionEarly": total(early),
        "rlnAccumMotionLate": total(late),
    }


def _names(paths: Sequence[str], root: str | None) -> list[str]:
    """:func:`file_name` of each path, the folder's relative name worked out once."""
    if root is None:
        return list(paths)
    folders: dict[str, str | None] = {}
    out = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in folders:
            relative = file_name(folder or os.curdir, root)
            folders[folder] = None if relative == (folder or os.curdir) else relative
        inside = folders[folder]
        if inside is None:  # outside the root: as given
            out.append(path)
        else:
            out.append(name if inside == os.curdir else os.path.join(inside, name))
    return out


def _reasons(table: pd.DataFrame, args: argparse.Namespace) -> list[list[str]]:
    """Per micrograph, the thresholds it fails, in words."""
    u, v = table["rlnDefocusU"].to_numpy(float), table["rlnDefocusV"].to_numpy(float)
    res, fom = (
        table["rlnCtfMaxResolution"].to_numpy(float),
        table["rlnCtfFigureOfMerit"].to_numpy(float),
    )
    total = table["rlnAccumMotionTotal"].to_numpy(float)
    early = table["rlnAccumMotionEarly"].to_numpy(float)
    mean, astig = 0.5 * (u + v), u - v
    checks: list[tuple[float, np.ndarray, Callable[[int], str]]] = [
        (args.max_resolution, res > args.max_resolution,
         lambda i: f"CTF fit to {res[i]:.1f} Å > {args.max_resolution} Å"),
        (args.min_figure_of_merit, fom < args.min_figure_of_merit,
         lambda i: f"CTF figure of merit {fom[i]:.3f} < {args.min_figure_of_merit}"),
        (args.min_defocus, mean < args.min_defocus,
         lambda i: f"defocus {mean[i]:.0f} Å < {args.min_defocus} Å"),
        (args.max_defocus, mean > args.max_defocus,
         lambda i: f"defocus {mean[i]:.0f} Å > {args.max_defocus} Å"),
        (args.max_astigmatism, astig > args.max_astigmatism,
         lambda i: f"astigmatism {astig[i]:.0f} Å > {args.max_astigmatism} Å"),
        (args.max_total_motion, total > args.max_total_motion,
         lambda i: f"total motion {total[i]:.1f} Å > {args.max_total_motion} Å"),
        (args.max_early_motion, early > args.max_early_motion,
         lambda i: f"early motion {early[i]:.1f} Å > {args.max_early_motion} Å"),
    ]  # fmt: skip
    out: list[list[str]] = [[] for _ in range(len(table))]
    for limit, failed, text in checks:
        if limit > 0:
            for i in np.flatnonzero(failed):
                out[i].append(text(int(i)))
    return out


def _run(args: argparse.Namespace) -> int:
    ctf_paths = star_files(args.ctf, "--ctf")
    motion_paths = star_files(args.motion, "--motion")
    motions = {p.stem: p for p in motion_paths}
    if len(motions) != len(motion_paths):
        raise CryosnakeError("--motion: two motion STAR files share a name")
    matched = []
    for path in ctf_paths:
        if path.stem not in motions:
            raise CryosnakeError(f"{path}: no motion STAR named {path.stem}.star among --motion")
        matched.append(motions[path.stem])
    table = _ctf_rows(ctf_paths)
    # The dose-weighted sum is the micrograph later stages use.
    metadata = [str(p) for p in matched]
    micrographs = [os.path.splitext(p)[0] + ".mrc" for p in metadata]
    table["rlnMicrographName"] = _names(micrographs, args.names_root)
    table["rlnMicrographMetadata"] = _names(metadata, args.names_root)
    for label, values in _motion(matched, args.pixel_size).items():
        table[label] = values
    table["rlnOpticsGroup"] = 1
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
    reasons = _reasons(table, args)
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
