"""3D acceptance at full scale: ab initio, then gold-standard refinement, from particles
with no reference, against the simulator's ground truth.

The particles (``tests/particles_sim.py``: the built-in phantom in random orientations,
a CTF per "micrograph" of 40, defocus 1.0-2.5 µm, picking errors, coloured noise at
``--snr`` per pixel at 1.5 Å/px, RELION normalisation and contrast inversion) are
written as a STAR file and an MRC stack, then the two stages run through their command
lines with their defaults, as a user would run them:

1. ``cryosnake initial3d --particles P.star --out-dir D/initial3d`` (no reference);
2. ``cryosnake refine3d --particles P.star --reference D/initial3d/initial_model.mrc
   --out-dir D/refine3d``.

Measured against the truth:

- **ab initio**: the FSC at 20 Å between the initial model and the truth volume, after
  aligning the model to it (rotation, shift and handedness,
  :func:`cryosnake.ops.initial3d.align_volumes`) on maps Fourier-cropped to 6 Å/px;
- **refine3d**: the gold-standard resolution (``rlnFinalResolution`` of ``fsc.star``:
  FSC 0.143 of the half maps in an automatic mask, corrected by phase randomisation),
  and the FSC at 0.5 of the refined map against the truth *within the same mask*. The
  refinement's frame is the ab initio map's, a rotation ``Q`` (maybe with a mirror)
  and a shift ``d`` away from the truth's; both are fitted from the poses (``Q`` the
  rotation nearest the mean of ``A_est^T A_true``, ``d`` by least squares from the
  shifts), and the truth is rendered from its pseudo-atoms in that frame, so no
  interpolation blurs it. The median angular error is measured after ``Q``, the median
  shift error after ``d``: a rigid motion of the whole map is no error of the poses.

Run::

    .venv/bin/python benchmarks/bench_map3d.py --out benchmarks/results/map3d-cpu2.json
    .venv/bin/python benchmarks/bench_map3d.py --particles 2000 --box 64 --pixel-size 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryosnake import cli
from cryosnake.io import read_mrc, read_star
from cryosnake.ops import postprocess as pp
from cryosnake.ops.fourier import fourier_crop
from cryosnake.ops.fsc import fsc, fsc_at_resolution, shell_resolution
from cryosnake.ops.initial3d import align_volumes
from cryosnake.ops.refine3d import angular_errors
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.simulate import Atoms, render_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from particles_sim import ParticleStack, phantom, simulate_particles, write_particles

MIRROR = np.diag([1.0, 1.0, -1.0])


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return np.asarray(u @ np.diag([1.0, 1.0, d]) @ vt)


def frame_fit(estimated: np.ndarray, shifts: np.ndarray, stack: ParticleStack) -> dict[str, Any]:
    """The rigid motion (rotation ``Q``, mirror or not, shift ``d`` in px) taking the
    truth's frame to the refinement's, and the pose errors after it."""
    best: dict[str, Any] = {}
    for mirror in (False, True):
        a = MIRROR @ estimated @ MIRROR if mirror else estimated
        q = _nearest_rotation(np.einsum("nji,njk->ik", a, stack.matrices) / len(a))
        errors = angular_errors(a @ q, stack.matrices)
        if not best or np.median(errors) < np.median(best["angular_errors"]):
            best = {"mirror": mirror, "q": q, "angular_errors": errors, "poses": a}
    # t_true = t_est + (A_est d)_xy (mirrored: the map is M Q r + d, A_est = M B M)
    rows = estimated[:, :2, :].reshape(-1, 3)
    d, *_ = np.linalg.lstsq(rows, (stack.centres - shifts).ravel(), rcond=None)
    residual = (stack.centres - shifts) - (estimated[:, :2, :] @ d)
    best["d"] = d
    best["shift_errors"] = np.hypot(residual[:, 0], residual[:, 1])
    return best


def truth_in_frame(atoms: Atoms, fit: dict[str, Any], box: int, pixel_size: float) -> np.ndarray:
    """The truth volume moved into the refinement's frame: atoms at ``Q r + d`` (or
    ``M Q r + d`` when the ab initio map came out mirrored)."""
    coords = atoms.coords @ fit["q"].T
    if fit["mirror"]:
        coords = coords @ MIRROR
    coords = coords + fit["d"] * pixel_size
    moved = Atoms(coords=coords, weights=atoms.weights, sigma=atoms.sigma)
    return render_volume(moved, box, pixel_size)


def _cli(args: list[str]) -> float:
    tick = time.perf_counter()
    print("cryosnake " + " ".join(args), flush=True)
    code = cli.main(args)
    if code != 0:
        raise SystemExit(f"cryosnake {args[0]} exited with {code}")
    return time.perf_counter() - tick


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10000, help="(10000)")
    parser.add_argument("--box", type=int, default=128, help="px (128)")
    parser.add_argument("--pixel-size", type=float, default=1.5, help="Å/px (1.5)")
    parser.add_argument("--snr", type=float, default=0.05, help="per pixel at 1.5 Å/px (0.05)")
    parser.add_argument("--seed", type=int, default=11, help="of the simulation (11)")
    parser.add_argument("--work", default="/tmp/cryosnake-map3d", help="working folder")
    parser.add_argument("--device", default="auto", help="of both stages (auto)")
    parser.add_argument("--out", default=None, help="JSON report to write")
    args = parser.parse_args()
    work = Path(args.work)
    px, box = args.pixel_size, args.box
    report: dict[str, Any] = {
        "benchmark": "ab initio + refine3d from simulated particles, against the truth",
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "numpy": np.__version__,
            "load_average_start": os.getloadavg()[0],
        },
        "particles": args.particles,
        "box": box,
        "pixel_size": px,
        "snr": args.snr,
        "seed": args.seed,
        "device": args.device,
    }
    tick = time.perf_counter()
    stack = simulate_particles(
        args.particles, box=box, pixel_size=px, junk_fraction=0.0, snr=args.snr, seed=args.seed
    )
    star = write_particles(stack, work)
    report["simulation_seconds"] = time.perf_counter() - tick
    print(f"{args.particles} particles of {box} px at {px} Å/px, SNR {args.snr}: "
          f"{report['simulation_seconds']:.0f} s", flush=True)  # fmt: skip
    truth = stack.volume()

    report["initial3d_seconds"] = _cli(
        ["initial3d", "--particles", str(star), "--out-dir", str(work / "initial3d"),
         "--device", args.device]
    )  # fmt: skip
    model, _ = read_mrc(work / "initial3d" / "initial_model.mrc")
    small = int(2 * round(box * px / 6.0 / 2))  # about 6 Å/px
    coarse = box * px / small
    a = np.asarray(fourier_crop(np.asarray(model, np.float64), (small,) * 3))
    t = np.asarray(fourier_crop(truth.astype(np.float64), (small,) * 3))
    aligned, info = align_volumes(a, t, coarse)
    report["initial3d_fsc_at_20A"] = fsc_at_resolution(fsc(aligned, t), coarse, 20.0)
    report["initial3d_mirrored"] = bool(info["mirror"])
    print(f"initial3d: {report['initial3d_seconds']:.0f} s, FSC at 20 Å against the truth "
          f"{report['initial3d_fsc_at_20A']:.3f}", flush=True)  # fmt: skip

    report["refine3d_seconds"] = _cli(
        ["refine3d", "--particles", str(star), "--out-dir", str(work / "refine3d"),
         "--reference", str(work / "initial3d" / "initial_model.mrc"), "--device", args.device]
    )  # fmt: skip
    out = work / "refine3d"
    fsc_star = read_star(out / "fsc.star")
    gold = float(fsc_star["general"]["rlnFinalResolution"].iloc[0])
    data = read_star(out / "run_data.star")["particles"]
    matrices = euler_to_matrix(
        data["rlnAngleRot"].to_numpy(), data["rlnAngleTilt"].to_numpy(),
        data["rlnAnglePsi"].to_numpy(),
    )  # fmt: skip
    shifts = -data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / px
    fit = frame_fit(matrices, shifts, stack)
    moved = truth_in_frame(phantom(stack.diameter), fit, box, px)
    half1, _ = read_mrc(out / "run_half1_class001_unfil.mrc")
    half2, _ = read_mrc(out / "run_half2_class001_unfil.mrc")
    full, _ = read_mrc(out / "run_class001.mrc")
    mask, _ = pp.auto_mask(0.5 * (np.asarray(half1) + np.asarray(half2)), px)
    truth_res = shell_resolution(fsc(np.asarray(full) * mask, moved * mask), px, 0.5)
    report.update(
        {
            "gold_standard_angstrom": gold,
            "truth_fsc_0.5_angstrom_same_mask": truth_res,
            "gold_vs_truth_relative_difference": abs(truth_res - gold) / gold,
            "median_angular_error_deg": float(np.median(fit["angular_errors"])),
            "median_shift_error_px": float(np.median(fit["shift_errors"])),
            "frame_mirrored": bool(fit["mirror"]),
            "frame_shift_px": [float(v) for v in fit["d"]],
        }
    )
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
