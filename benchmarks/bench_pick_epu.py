"""Picking and CTF on a real micrograph: the EPU exposure of mrcfile's source distribution.

The exposure is ``tests/test_data/epu2.9_example.mrc`` in the mrcfile 1.5.4 sdist
(4096², 0.66655 Å/px, 300 kV, FEI extended header; a crowded field of particles of
about 110-130 Å). It is not committed (34 MB); fetch it once with::

    pip download --no-binary :all: --no-deps -d /tmp/mrcfile-sdist mrcfile==1.5.4
    tar xzf /tmp/mrcfile-sdist/mrcfile-1.5.4.tar.gz -C /tmp/mrcfile-sdist \\
        mrcfile-1.5.4/tests/test_data/epu2.9_example.mrc

The benchmark, on a user's command lines (``cryosnake ctf``, then ``cryosnake pick``
with only ``--pixel-size`` and ``--diameter``):

* CTF: ``cryosnake ctf`` beside an independent estimate (the defocus whose zeros,
  with Cs and the amplitude-contrast phase, best match the minima of the
  background-subtracted rotational average of the power spectrum) and the header's
  nominal values (objective defocus and applied defocus);
* the whole image: the number of picks, and the picks closer than a radius to the edge;
* the committed 1024² crop (``tests/data/epu_crop_bin2.mrc``, binned 2): precision and
  recall against the particles marked by eye (``tests/data/epu_crop_bin2_marks.star``;
  uncertain marks and marks within a radius of the edge neither count for nor
  against), at 0.2 x diameter and, as the marks are good to about 20 Å, at 0.3 x;
* an overlay picture of the picks on the whole image::

    .venv/bin/python benchmarks/bench_pick_epu.py \\
        --mrc /tmp/mrcfile-sdist/mrcfile-1.5.4/tests/test_data/epu2.9_example.mrc \\
        --out benchmarks/results/pick-epu.json --plot benchmarks/results/pick-epu.png
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryosnake.io import read_mrc, read_star, read_star_block, write_star
from cryosnake.ops.ctf import wavelength
from cryosnake.ops.ctf_fit import amplitude_spectrum
from cryosnake.simulate import matched_picks
from cryosnake.stages import ctf as ctf_stage
from cryosnake.stages import pick as pick_stage

ROOT = Path(__file__).resolve().parent.parent
CROP = ROOT / "tests" / "data" / "epu_crop_bin2.mrc"
MARKS = ROOT / "tests" / "data" / "epu_crop_bin2_marks.star"
PIXEL_SIZE = 0.66655
DIAMETER = 120.0
VOLTAGE, CS, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1


def run(main: Any, argv: list[str]) -> str:
    """A stage's ``main`` in this process; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {status}")
    return out.getvalue().strip()


def zero_fit_defocus(image: np.ndarray, pixel_size: float) -> float:
    """Mean defocus (Å) whose CTF zeros best match the minima of the rotational average.

    The rotational average of the tiles' power spectrum (1/30 to 1/6 Å^-1) minus a
    quartic in s fitted to its logarithm; its local minima s_i are zeros, where
    chi(s_i) + atan(w / sqrt(1 - w^2)) is a multiple of pi. Grid search over 0.3-6 µm.
    """
    amp = amplitude_spectrum(image, tile=512)
    n = amp.shape[0]
    f = (np.arange(n) - n // 2) / (n * pixel_size)
    s = np.hypot(f[:, None], f[None, :])
    ring = np.floor(s * n * pixel_size).astype(int)
    count = n // 2
    ok = ring < count
    radial = np.bincount(ring[ok], weights=np.log(amp[ok] ** 2), minlength=count)[:count]
    radial /= np.maximum(np.bincount(ring[ok], minlength=count)[:count], 1)
    centres = np.arange(count) / (n * pixel_size)
    band = (centres > 1 / 30) & (centres < 1 / 6)
    trend = np.polyval(np.polyfit(centres[band], radial[band], 4), centres)
    resid = radial - trend
    idx = np.flatnonzero(band)
    minima = [i for i in idx[1:-1] if resid[i] < resid[i - 1] and resid[i] < resid[i + 1]]
    s_min = centres[minima]
    lam = wavelength(VOLTAGE)
    phase = math.atan(AMPLITUDE_CONTRAST / math.sqrt(1 - AMPLITUDE_CONTRAST**2))
    best, best_cost = 0.0, np.inf
    for df in np.arange(3000.0, 60000.0, 5.0):
        chi = math.pi * lam * df * s_min**2 - 0.5 * math.pi * CS * 1e7 * lam**3 * s_min**4
        k = (chi + phase) / math.pi
        cost = float(np.sum((k - np.round(k)) ** 2))
        if cost < best_cost:
            best, best_cost = float(df), cost
    return best


def header_defocus(path: Path) -> dict[str, float]:
    """The nominal defocus values of the FEI extended header, µm."""
    with mrcfile.open(path, permissive=True, header_only=False) as mrc:
        ext = mrc.indexed_extended_header
        return {
            "defocus_um": float(ext["Defocus"][0]) * 1e6,
            "applied_defocus_um": float(ext["Applied defocus"][0]) * 1e6,
        }


def crop_scores(ctf_star: Path) -> dict[str, Any]:
    """Picks on the committed crop against the marks."""
    _, px = read_mrc(CROP)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "crop.star"
        table = read_star_block(ctf_star, "micrograph").assign(rlnMicrographPixelSize=px)
        ctf_star = write_star(Path(tmp) / "crop_ctf.star", {"micrograph": table})
        run(pick_stage.main, ["--micrograph", str(CROP), "--ctf", str(ctf_star), "--out",
                              str(out), "--pixel-size", f"{px}", "--diameter", f"{DIAMETER}",
                              "--ignore-header-pixel-size"])  # fmt: skip
        picks = read_star_block(out, "particles")[["rlnCoordinateX", "rlnCoordinateY"]]
    xy = picks.to_numpy(dtype=float).reshape(-1, 2)
    marks = read_star(MARKS)["particles"]
    m_xy = marks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
    r = 0.5 * DIAMETER / px
    size = 512
    edge = (m_xy.min(axis=1) < r) | (m_xy.max(axis=1) > size - 1 - r)
    sure = (marks["rlnClassNumber"].to_numpy() == 1) & ~edge
    result: dict[str, Any] = {"picks": len(xy), "marked": int(sure.sum())}
    for factor in (0.2, 0.3):
        radius = factor * DIAMETER / px
        found = matched_picks(xy, m_xy[sure], radius)
        other = m_xy[~sure]
        spare = 0
        if len(other) and len(xy):
            d = np.hypot(xy[:, None, 0] - other[None, :, 0], xy[:, None, 1] - other[None, :, 1])
            spare = int((d.min(axis=1) <= radius).sum())
        scored = max(len(xy) - spare, 1)
        result[f"at_{factor}_diameter"] = {
            "precision": found / scored,
            "recall": found / max(int(sure.sum()), 1),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mrc", required=True, help="epu2.9_example.mrc (see the docstring)")
    parser.add_argument("--out", help="JSON report to write")
    parser.add_argument("--plot", help="PNG of the picks on the whole image")
    args = parser.parse_args()
    mrc = Path(args.mrc)
    with tempfile.TemporaryDirectory() as tmp:
        ctf_star = Path(tmp) / "ctf.star"
        ctf_line = run(ctf_stage.main, ["--micrograph", str(mrc), "--out", str(ctf_star),
                                        "--pixel-size", f"{PIXEL_SIZE}", "--voltage",
                                        f"{VOLTAGE}", "--cs", f"{CS}", "--amplitude-contrast",
                                        f"{AMPLITUDE_CONTRAST}"])  # fmt: skip
        row = read_star_block(ctf_star, "micrograph").iloc[0]
        image, _ = read_mrc(mrc)
        independent = zero_fit_defocus(np.asarray(image, dtype=np.float32), PIXEL_SIZE)
        picks_star = Path(tmp) / "picks.star"
        argv = ["--micrograph", str(mrc), "--ctf", str(ctf_star), "--out", str(picks_star),
                "--pixel-size", f"{PIXEL_SIZE}", "--diameter", f"{DIAMETER}"]  # fmt: skip
        if args.plot:
            argv += ["--plot", args.plot]
        pick_line = run(pick_stage.main, argv)
        picks = read_star_block(picks_star, "particles")
        crop = crop_scores(ctf_star)
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float).reshape(-1, 2)
    ny, nx = image.shape[-2:]
    r = 0.5 * DIAMETER / PIXEL_SIZE
    # the picker's rule: no centre closer to the border than a radius less one working
    # pixel (7.5 px here); count those closer than 0.9 radius
    on_edge = int(((xy < 0.9 * r) | (xy > np.array([nx, ny]) - 1 - 0.9 * r)).any(axis=1).sum())
    mean_df = 0.5 * (float(row.rlnDefocusU) + float(row.rlnDefocusV))
    report = {
        "micrograph": mrc.name,
        "ctf": {
            "cryosnake_defocus_u_um": float(row.rlnDefocusU) / 1e4,
            "cryosnake_defocus_v_um": float(row.rlnDefocusV) / 1e4,
            "cryosnake_mean_um": mean_df / 1e4,
            "cryosnake_fit_resolution_A": float(row.rlnCtfMaxResolution),
            "zero_fit_mean_um": independent / 1e4,
            "header": header_defocus(mrc),
            "log": ctf_line,
        },
        "whole_image": {
            "picks": len(xy),
            "picks_closer_than_0.9_radius_to_the_edge": on_edge,
            "log": pick_line,
        },
        "crop_against_marks": crop,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
