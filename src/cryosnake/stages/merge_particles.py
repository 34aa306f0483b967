"""Merge per-micrograph particle STAR files into one ``particles.star``.

Concatenates the ``particles`` blocks of the STAR files that ``cryosnake extract``
writes, in the order given (a folder stands for every ``*.star`` file directly inside
it, sorted by name; files and folders may be mixed), under one ``optics`` block (RELION
3.1 layout). Every input must have the same optics (pixel sizes, box size, voltage, Cs,
amplitude contrast); a difference is an error that names the file and the label. Nothing is
renumbered: ``rlnImageName`` keeps pointing at the per-micrograph stacks, by the
names extract wrote (relative to its ``--names-relative-to`` folder).

With ``--selected`` (``micrographs_selected.star`` from ``cryosnake curate``), only
particles of the micrographs listed there are kept; micrographs are matched by the
file-name stem of ``rlnMicrographName``. Inputs without particles are skipped; no
particle at all is not an error: the output then has an empty ``particles`` block and a
note goes to stderr. Labels that only some inputs have are dropped (and reported), so
that every row is complete.

Example::

    cryosnake merge-particles --stars results/extract/chunk0001 results/extract/chunk0002 \\
        --selected results/micrographs_selected.star --out results/particles.star
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import StarStack, read_star_block, read_star_stack, star_files, write_star
from cryosnake.stages._common import stage_main

__all__ = ["add_args", "main"]

REQUIRED = ("rlnImageName", "rlnMicrographName")
OPTICS_TOLERANCE = 1e-4  # relative, for numeric optics values written with 6 decimals


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stars",
        nargs="+",
        required=True,
        help="per-micrograph particle STAR files (extract), or folders of them "
        "(every *.star inside)",
    )
    parser.add_argument("--out", required=True, help="merged STAR file to write")
    parser.add_argument(
        "--selected",
        help="micrographs STAR (curate's micrographs_selected.star): keep only their particles",
    )


def _read(paths: list[Path]) -> tuple[StarStack, StarStack]:
    """The ``optics`` and ``particles`` blocks of every input, stacked."""
    blocks = read_star_stack(paths, ["optics", "particles"])
    optics, particles = blocks["optics"], blocks["particles"]
    none = np.flatnonzero(optics.counts == 0)
    if len(none):
        raise FileFormatError(f"{paths[none[0]]}: data_optics has no row")
    checked: set[tuple[str, ...]] = set()
    for path, labels, count in zip(paths, particles.labels, particles.counts, strict=True):
        if count and labels not in checked:
            missing = [label for label in REQUIRED if label not in labels]
            if missing:
                raise FileFormatError(f"{path}: data_particles lacks label(s) {', '.join(missing)}")
            checked.add(labels)
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


def _optics_at_fault(optics: StarStack) -> list[int]:
    """The inputs whose optics may differ from the first input's, in order."""
    counts, reference = optics.counts, optics.table.iloc[: optics.counts[0]]
    bad = counts != counts[0]
    first_labels = set(optics.labels[0])
    bad |= np.array([set(labels) != first_labels for labels in optics.labels])
    owner = optics.file_index
    position = np.minimum(np.arange(len(owner)) - optics.starts[owner], len(reference) - 1)
    for label in optics.labels[0]:
        have, want = optics.table[label], reference[label].iloc[position]
        a, b = pd.to_numeric(have, errors="coerce"), pd.to_numeric(want, errors="coerce")
        if a.notna().all() and b.notna().all():
            x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
            scale = np.maximum(np.abs(x), np.abs(y))
            with np.errstate(invalid="ignore"):
                same = (x == y) | (np.abs(x - y) <= np.maximum(OPTICS_TOLERANCE * scale, 1e-9))
        else:
            same = np.array([_same(u, v) for u, v in zip(have, want, strict=True)], dtype=bool)
        bad[owner[~same]] = True
    return [int(i) for i in np.flatnonzero(bad)]


def _identity(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError as err:
        raise FileFormatError(f"{path}: no such file") from err
    return info.st_dev, info.st_ino


def _selected_stems(path: str) -> set[str]:
    table = read_star_block(path, "micrographs", required=("rlnMicrographName",))
    return {Path(str(name)).stem for name in table["rlnMicrographName"]}


def _run(args: argparse.Namespace) -> int:
    paths = star_files(args.stars, "--stars")
    seen: set[tuple[int, int]] = set()  # (device, inode): the same file by any name
    for path in paths:
        key = _identity(path)
        if key in seen:
            raise CryosnakeError(f"--stars: {path} is given twice")
        seen.add(key)
    if Path(args.out).exists() and _identity(Path(args.out)) in seen:
        raise CryosnakeError(f"--out: {args.out} is also one of --stars")
    selected = _selected_stems(args.selected) if args.selected else None

    optics, stack = _read(paths)
    first, reference = str(paths[0]), optics.table.iloc[: optics.counts[0]]
    reference = reference.reset_index(drop=True)
    reference = reference[list(optics.labels[0])]
    for fault in _optics_at_fault(optics):  # the detailed message for the first at fault
        start = optics.starts[fault]
        rows = optics.table.iloc[start : start + optics.counts[fault]]
        _check_optics(str(paths[fault]), rows[list(optics.labels[fault])], first, reference)
    particles, owner = stack.table, stack.file_index
    keep = np.ones(len(particles), dtype=bool)
    dropped_micrographs = dropped_particles = 0
    if selected is not None and len(particles):
        codes, names = pd.factorize(particles["rlnMicrographName"].astype(str))
        chosen = np.array([Path(name).stem in selected for name in names], dtype=bool)
        keep = chosen[codes]
        dropped_particles = int((~keep).sum())
        pairs = owner[~keep].astype(np.int64) * max(len(names), 1) + codes[~keep]
        dropped_micrographs = len(np.unique(pairs))
    kept = np.bincount(owner[keep], minlength=len(paths))
    contributing = np.flatnonzero(kept)
    empty = int((stack.counts == 0).sum())
    if len(contributing):
        label_sets = {stack.labels[i] for i in contributing}
        common = set.intersection(*(set(labels) for labels in label_sets))
        order = [c for c in stack.labels[contributing[0]] if c in common]
        lost = sorted(set().union(*label_sets) - common)
        if lost:
            print(
                f"merge-particles: dropped label(s) {', '.join(lost)} (not in every input)",
                file=sys.stderr,
            )
        merged = particles.loc[keep, order].reset_index(drop=True)
        for label in order:  # integers that were padded for inputs without the label
            if isinstance(merged[label].dtype, pd.Int64Dtype):
                merged[label] = merged[label].astype(np.int64)
    else:
        merged = pd.DataFrame(columns=list(stack.labels[0]) or list(REQUIRED))
    write_star(args.out, {"optics": reference, "particles": merged})
    note = f", {dropped_particles} particles of {dropped_micrographs} micrographs not selected"
    print(
        f"merge-particles: {len(merged)} particles from {len(contributing)} of {len(paths)} "
        f"micrograph STAR files ({empty} without particles"
        + (note if selected is not None else "")
        + f") -> {args.out}"
    )
    if len(merged) == 0:
        print(
            f"merge-particles: no particles in {len(paths)} STAR files; wrote an empty "
            f"particles block to {args.out}",
            file=sys.stderr,
        )
    return 0


main = stage_main("merge-particles", __doc__, add_args, _run)
