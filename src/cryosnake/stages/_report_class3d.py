"""The report's 3D classification section (``cryosnake class3d``, when the workflow ran it).

Read from ``<results>/class3d/``: ``run_model.star`` (block ``model_classes``, one row
per class in class order: ``rlnClassDistribution``, the share of the particles, and
``rlnEstimatedResolution``, Å), ``particles_kept.star`` (the particles refine3d
refines; a class is kept when its number is among their ``rlnClassNumber``) and
``run_classes.png`` (the class maps with their share and resolution).

The section is a table of the classes (number, share in %, resolution in Å, kept or
not), the number of particles kept and the picture. A results folder without
``class3d/run_model.star`` (classification off) has no such section.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import read_star

__all__ = ["CLASS3D", "class3d_section"]

CLASS3D = Path("class3d")  # relative to the results folder


def _kept(path: Path) -> tuple[set[int] | None, int | None]:
    """(class numbers of the kept particles, their count); (None, None): no file."""
    if not path.is_file():
        return None, None
    particles = read_star(path).get("particles", pd.DataFrame())
    if "rlnClassNumber" not in particles:
        return set(), len(particles)
    return set(particles["rlnClassNumber"].astype(int)), len(particles)


def _resolution(value: object) -> str:
    number = float(str(value))
    return f"{number:.1f}" if math.isfinite(number) else "–"


def class3d_section(
    results: Path,
    html_table: Callable[[Sequence[str], Sequence[Sequence[str]]], str],
    figure: Callable[[Path, str], str],
    missing: Callable[[str, str], str],
) -> str | None:
    """The HTML of the 3D classification section; None when ``results`` has no
    ``class3d/run_model.star``.

    ``html_table`` (head, rows), ``figure`` (a PNG embedded with its caption) and
    ``missing`` (a file not there or not readable, and why) are the report's helpers.
    """
    folder = results / CLASS3D
    model = folder / "run_model.star"
    if not model.is_file():
        return None
    try:
        classes = read_star(model).get("model_classes", pd.DataFrame())
        kept, count = _kept(folder / "particles_kept.star")
    except (CryosnakeError, OSError, UnicodeDecodeError, ValueError) as err:
        return missing(str(CLASS3D / model.name), f"not readable ({html.escape(str(err))})")
    rows = []
    for number, row in enumerate(classes.to_dict("records"), start=1):
        share = row.get("rlnClassDistribution")
        rows.append(
            [
                str(number),
                "–" if share is None else f"{100 * float(share):.1f}",
                _resolution(row.get("rlnEstimatedResolution", "nan")),
                "–" if kept is None else ("yes" if number in kept else "no"),
            ]
        )
    if count is None:
        note = missing("particles_kept.star", "not produced")
    else:
        note = f"<p>{count} particles in the kept classes go on to refine3d.</p>"
    table = html_table(["class", "share (%)", "resolution (Å)", "kept"], rows)
    picture = figure(folder / "run_classes.png", "3D classes with their share and resolution")
    return table + note + picture
