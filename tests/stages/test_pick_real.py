"""Picking a real micrograph: a 1024² crop of an EPU exposure, binned 2 (tests/data/).

The particles were marked by eye before any picker ran on it (tests/data/README.md).
The marks are good to about 20 Å, so they are matched at 0.3 x diameter here; the
benchmark ``benchmarks/bench_pick_epu.py`` reports 0.2 x as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.io import read_mrc, read_star_block, write_star
from cryosnake.simulate import matched_picks

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]
DATA = Path(__file__).resolve().parent.parent / "data"
DIAMETER = 120.0


def test_a_crowded_real_micrograph_is_picked(tmp_path: Path, run_cli: RunCli) -> None:
    """At least 40 % of the marked particles are found and 40 % of the picks are marked
    particles (0.50 / 0.50 measured; the bar guards against the automatic threshold
    sitting above nearly every candidate, as it did: no pick at all); none at the edge."""
    micrograph = DATA / "epu_crop_bin2.mrc"
    _, pixel = read_mrc(micrograph)
    ctf = {
        "rlnMicrographName": micrograph.name,
        "rlnDefocusU": 27231.0,
        "rlnDefocusV": 27197.0,
        "rlnDefocusAngle": 140.6,
        "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
    }
    star = write_star(tmp_path / "ctf.star", {"micrograph": pd.DataFrame([ctf])})
    out = tmp_path / "picks.star"
    code, _, err = run_cli(
        [
            "pick", "--micrograph", micrograph, "--ctf", star, "--out", out,
            "--pixel-size", pixel, "--diameter", DIAMETER,
        ]
    )  # fmt: skip
    assert code == 0, err
    picks = read_star_block(out, "particles")[["rlnCoordinateX", "rlnCoordinateY"]]
    xy = picks.to_numpy(dtype=float)
    marks = read_star_block(DATA / "epu_crop_bin2_marks.star", "particles")
    m_xy = marks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
    r = 0.5 * DIAMETER / pixel
    inside = (m_xy.min(axis=1) >= r) & (m_xy.max(axis=1) <= 511 - r)
    sure = m_xy[(marks.rlnClassNumber.to_numpy() == 1) & inside]
    radius = 0.3 * DIAMETER / pixel
    found = matched_picks(xy, sure, radius)
    others = m_xy[~((marks.rlnClassNumber.to_numpy() == 1) & inside)]
    near_other = np.hypot(*(xy[:, None, :] - others[None]).transpose(2, 0, 1)).min(axis=1)
    scored = int((near_other > radius).sum())  # picks of uncertain or edge marks: not scored
    assert found >= 0.4 * len(sure), (found, len(sure), len(xy))
    assert found >= 0.4 * scored, (found, scored)
    assert ((xy >= 0.9 * r) & (xy <= 511 - 0.9 * r)).all()
