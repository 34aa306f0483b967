"""Picking on micrographs that cryosnake's simulator did not make.

One small case of ``tests/foreign_sim.py`` (its own specimen, CTF, coloured noise, ice
gradient and contamination; nothing shared with ``cryosnake.simulate``) picked as a
user would: ``cryosnake pick`` with the RELION ``micrographs_ctf.star`` and only
``--pixel-size`` and ``--diameter``. The full measurement (five shapes, SNR 0.005-0.05,
ASPIRE as a second generator, APPLE alongside) is ``benchmarks/bench_pick_foreign.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from foreign_sim import simulate_micrograph, write_micrographs

from cryosnake.io import read_star_block
from cryosnake.simulate import matched_picks

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]


def test_blob_picking_holds_on_a_foreign_generator(tmp_path: Path, run_cli: RunCli) -> None:
    """Globular particles at SNR 0.05 with two contamination items: recall and
    precision >= 0.85 at 0.2 x diameter, no pick inside the contamination."""
    m = simulate_micrograph(5, snr=0.05, shape_name="globule", contamination=2)
    star = write_micrographs([m], tmp_path)
    out = tmp_path / "picks.star"
    code, _, err = run_cli(
        [
            "pick", "--micrograph", tmp_path / "mic_000.mrc", "--ctf", star, "--out", out,
            "--pixel-size", m.pixel_size, "--diameter", m.diameter,
        ]
    )  # fmt: skip
    assert code == 0, err
    table = read_star_block(out, "particles")
    picks = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
    found = matched_picks(picks, m.coordinates, 0.2 * m.diameter / m.pixel_size)
    assert found >= 0.85 * len(m.coordinates), (found, len(m.coordinates), len(picks))
    assert found >= 0.85 * len(picks), (found, len(picks))
    for x, y, radius in m.junk:
        assert not np.any(np.hypot(picks[:, 0] - x, picks[:, 1] - y) < radius)
