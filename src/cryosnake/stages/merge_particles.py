"""Merge per-micrograph particle STAR files into one ``particles.star``.

Concatenates the ``particles`` blocks of the STAR files that ``cryosnake extract``
writes, in the order given, under one ``optics`` block (RELION 3.1 layout). Every
input must have the same optics (pixel sizes, box size, voltage, Cs, amplitude
contrast); a difference is an error that names the file and the label. Nothing is
renumbered: ``rlnImageName`` keeps pointing at the per-micrograph stacks, by the
names extract wrote (relative to its ``--names-relative-to`` folder).

With ``--selected`` (``micrographs_selected.star`` from ``cryosnake curate``), only
particles of the micrographs listed there are kept; micrographs are matched by the
file-name stem of ``rlnMicrographName``. Inputs without particles are skipped; no
particle at all is not an error: the output then has an empty ``particles`` block and a
note goes to stderr. Labels that only some inputs have are dropped (and reported), so
that every row is complete.

Example::

    cryosnake merge-particles --stars results/extract/*.star \\
        --selected results/micrographs_selected.star --out results/particles.star
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import read_star, read_star_block, write_star
from cryosnake.stages._common import stage_main

__all__ = ["add_args", "main"]

REQUIRED = ("rlnImageName", "rlnMicrographName")
OPTICS_TOLERANCE = 1e-4  # relative, for numeric optics values written with 6 decimals


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stars", nargs="+", required=True, help="per-micrograph particle STAR files (extract)"
    )
    parser.add_argument("--out", required=True, help="merged STAR file to write")
    parser.add_argument(
        "--selected",
        help="micrographs STAR (curate's micrographs_selected.star): keep only their particles",
    )


def _read(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``optics`` and ``particles`` blocks of one input."""
    blocks = read_star(path)
    for name in ("optics", "particles"):
        if name not in blocks:
            raise FileFormatError(
                f"{path}: no data_{name} block (found: {', '.join(sorted(blocks)) or 'none'})"
            )
    optics, particles = blocks["optics"], blocks["particles"]
    if len(optics) == 0:
        raise FileFormatError(f"{path}: data_optics has no row")
    if len(particles):
        missing = [label for label in REQUIRED if label not in particles.columns]
        if missing:
            raise FileFormatError(f"{path}: data_particles lacks label(s) {', '.join(missing)}")
    return optics, particles


def _same(a: object, b: object) -> bool:
    try:
        x, y = float(a), float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(x, y, rel_tol=OPTICS_TOLERANCE, abs_tol=1e-9)


def _check_optics(path: str, optics: pd.DataFrame, first: str, reference: pd.DataFrame) -> None:
    """An error naming ``path`` and the label where its optics differ from the first's."""
    if len(optics) != len(reference):
        raise CryosnakeError(
            f"{path}: {len(optics)} optics groups, {first} has {len(reference)}; "
            "merge particles of one acquisition setting only"
        )
    labels = sorted(set(reference.columns) | set(optics.columns))
    for label in labels:
        if label not in optics.columns or label not in reference.columns:
            raise CryosnakeError(f"{path}: optics label {label} is in only one of it and {first}")
        for a, b in zip(optics[label], reference[label], strict=True):
            if not _same(a, b):
                raise CryosnakeError(
                    f"{path}: optics differ from {first}: {label} {a} vs {b} "
                    "(extract every micrograph with the same box, binning and pixel size)"
                )


def _selected_stems(path: str) -> set[str]:
    table = read_star_block(path, "micrographs", required=("rlnMicrographName",))
    return {Path(str(name)).stem for name in table["rlnMicrographName"]}


def _run(args: argparse.Namespace) -> int:
    seen: set[str] = set()
    for path in args.stars:
        key = str(Path(path).resolve())
        if key in seen:
            raise CryosnakeError(f"--stars: {path} is given twice")
        seen.add(key)
    if str(Path(args.out).resolve()) in seen:
        raise CryosnakeError(f"--out: {args.out} is also one of --stars")
    selected = _selected_stems(args.selected) if args.selected else None

    first, reference = "", pd.DataFrame()
    tables: list[pd.DataFrame] = []
    empty = dropped_micrographs = dropped_particles = 0
    columns: list[str] | None = None
    for path in args.stars:
        optics, particles = _read(path)
        empty += len(particles) == 0
        if not first:
            first, reference = path, optics
            columns = list(particles.columns)
        else:
            _check_optics(path, optics, first, reference)
        if len(particles) and selected is not None:
            stems = particles["rlnMicrographName"].map(lambda name: Path(str(name)).stem)
            keep = stems.isin(selected).to_numpy()
            dropped_micrographs += int(stems[~keep].nunique())
            dropped_particles += int((~keep).sum())
            particles = particles[keep]
        if len(particles):
            tables.append(particles)
    first_columns = columns or list(REQUIRED)
    if tables:
        common = set.intersection(*(set(t.columns) for t in tables))
        order = [c for c in tables[0].columns if c in common]
        lost = sorted(set().union(*(set(t.columns) for t in tables)) - common)
        if lost:
            print(
                f"merge-particles: dropped label(s) {', '.join(lost)} (not in every input)",
                file=sys.stderr,
            )
        merged = pd.concat([t[order] for t in tables], ignore_index=True)
    else:
        merged = pd.DataFrame(columns=first_columns)
    write_star(args.out, {"optics": reference, "particles": merged})
    note = f", {dropped_particles} particles of {dropped_micrographs} micrographs not selected"
    print(
        f"merge-particles: {len(merged)} particles from {len(tables)} of {len(args.stars)} "
        f"micrograph STAR files ({empty} without particles"
        + (note if selected is not None else "")
        + f") -> {args.out}"
    )
    if len(merged) == 0:
        print(
            f"merge-particles: no particles in {len(args.stars)} STAR files; wrote an empty "
            f"particles block to {args.out}",
            file=sys.stderr,
        )
    return 0


main = stage_main("merge-particles", __doc__, add_args, _run)
