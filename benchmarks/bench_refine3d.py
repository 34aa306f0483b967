"""3D: reconstruction side by side with ASPIRE, and refine3d time per iteration.

Two measurements, in one run on one machine (CPU always, and the GPU where CuPy finds
one):

1. **Reconstruction from particles with known poses**, cryosnake's Fourier insertion
   (``ops.fourier_slice.BackProjector``: 2x padded grid, trilinear, gridding-corrected,
   lightly regularised) against ASPIRE's ``MeanEstimator`` (least squares by conjugate
   gradient on a Fourier-Bessel basis with NUFFTs). The images are exact projections of
   the built-in phantom rendered from its pseudo-atoms (not by either program's
   projector), at uniformly random orientations, no CTF, plus white noise at
   ``--snr``. Reported: seconds, and the FSC of each map against the truth volume
   (resolution at FSC 0.5 and 0.143). ASPIRE's rotation and axis conventions differ
   from RELION's; the benchmark tries the rotation and its transpose, and the volume's
   axes as given and reversed, and reports the combination that matches the truth
   (``aspire_convention``) - a convention check, the other three give no map.
2. **refine3d**: ``--refine-particles`` particles with CTF and noise
   (``tests/particles_sim.py``, SNR 0.05 at 1.5 Å/px) refined from the truth low-passed
   to 30 Å: seconds per iteration (global and local), iterations and seconds to
   convergence, the gold-standard resolution, the truth FSC at 0.5 within the same
   mask, the median angular and shift errors - on each device (``--devices``), from the
   same particles, so the GPU's figures are its speed-up and its agreement with the CPU.

Run from the benchmark environment (``make bench-env``)::

    .venv-bench/bin/python benchmarks/bench_refine3d.py --out benchmarks/results/refine3d-cpu2.json
    .venv/bin/python benchmarks/bench_refine3d.py --skip aspire   # cryosnake only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryosnake.backend import array_module, gpu_available
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import postprocess as pp
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fsc import fsc, shell_resolution
from cryosnake.ops.rotation import random_rotations
from cryosnake.simulate import phantom_atoms, render_projection, render_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, simulate_particles


def _resolutions(volume: np.ndarray, truth: np.ndarray, pixel_size: float) -> dict[str, float]:
    curve = fsc(volume, truth)
    return {
        "fsc_0.5_angstrom": shell_resolution(curve, pixel_size, 0.5),
        "fsc_0.143_angstrom": shell_resolution(curve, pixel_size, 0.143),
    }


def reconstruction(args: argparse.Namespace) -> dict[str, Any]:
    n, box, px = args.particles, args.box, args.pixel_size
    rng = np.random.default_rng(7)
    atoms = phantom_atoms(150.0)
    truth = render_volume(atoms, box, px).astype(np.float64)
    matrices = random_rotations(n, rng)
    clean = np.stack([render_projection(atoms, m, box, px) for m in matrices])
    noise_sd = float(np.sqrt(clean.var() / args.snr))
    images = (clean + rng.normal(0.0, noise_sd, clean.shape)).astype(np.float32)
    print(f"{n} projections of {box} px at {px} Å, SNR {args.snr}", flush=True)
    out: dict[str, Any] = {"particles": n, "box": box, "pixel_size": px, "snr": args.snr}

    tick = time.perf_counter()
    bp = fs.BackProjector.zeros(box)
    bp.insert(r3.particle_spectra(images), matrices)
    ours = np.asarray(bp.reconstruct(1e-3 * float(np.mean(bp.weight)) * 8))
    seconds = time.perf_counter() - tick
    out["cryosnake"] = {"seconds": seconds, **_resolutions(ours, truth, px)}
    print(f"cryosnake: {seconds:.1f} s {out['cryosnake']}", flush=True)

    if "aspire" not in args.skip:
        import logging

        from aspire.reconstruction import MeanEstimator
        from aspire.source import ArrayImageSource

        logging.disable(logging.WARNING)
        best: dict[str, Any] | None = None
        for transpose_rotation in (False, True):
            src = ArrayImageSource(images.astype(np.float64), pixel_size=px)
            rot = np.transpose(matrices, (0, 2, 1)) if transpose_rotation else matrices
            src.rotations = rot.astype(np.float64)
            tick = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="aspire-") as scratch:
                # its defaults write a checkpoint every 10 iterations into the cwd
                estimator = MeanEstimator(src, checkpoint_prefix=f"{scratch}/volume")
                volume = estimator.estimate()
            seconds = time.perf_counter() - tick
            data = np.asarray(volume.asnumpy()[0], dtype=np.float64)
            for reverse_axes in (False, True):
                candidate = data.transpose(2, 1, 0) if reverse_axes else data
                res = _resolutions(candidate, truth, px)
                if best is None or res["fsc_0.5_angstrom"] < best["fsc_0.5_angstrom"]:
                    best = {
                        "seconds": seconds,
                        **res,
                        "aspire_convention": {
                            "rotation_transposed": transpose_rotation,
                            "axes_reversed": reverse_axes,
                        },
                    }
        out["aspire"] = best
        print(f"aspire: {best}", flush=True)
    return out


def refinement(args: argparse.Namespace, device: str) -> dict[str, Any]:
    n, box, px = args.refine_particles, args.refine_box, args.refine_pixel_size
    stack = simulate_particles(n, box=box, pixel_size=px, junk_fraction=0.0, snr=0.05, seed=3)
    truth = render_volume(phantom_atoms(150.0), box, px)
    ctf = np.column_stack(
        [stack.defocus, np.zeros(n)] + [np.full(n, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)]
    )
    xp = array_module("gpu" if device == "gpu" else "cpu")
    plan = r3.plan_memory(box, n, xp)
    spectra = r3.particle_spectra(stack.images)
    if plan.stack_on_device:
        spectra = xp.asarray(spectra)
    settings = r3.RefineSettings(mask_diameter=165 / px, max_shift=16.5 / px, max_iterations=12)
    halves = np.random.default_rng(0).permutation(n) % 2
    state = r3.initial_refine_state(spectra, truth, px, 30.0, settings, halves)
    iterations: list[dict[str, Any]] = []
    started = time.perf_counter()
    rec: dict[str, Any] = {}
    while not state.converged and state.iteration < settings.max_iterations:
        kind = "global" if state.iteration < settings.global_iterations else "local"
        tick = time.perf_counter()
        state, rec = r3.refine_iteration(spectra, ctf, px, state, settings, xp)
        if xp is not np:
            xp.cuda.Device().synchronize()
        seconds = time.perf_counter() - tick
        iterations.append(
            {"iteration": state.iteration, "kind": kind, "step": state.step,
             "seconds": seconds, "resolution": state.resolution}
        )  # fmt: skip
        print(f"refine3d on the {device}, iteration {state.iteration} ({kind}): {seconds:.1f} s, "
              f"{state.resolution:.2f} Å", flush=True)  # fmt: skip
    total = time.perf_counter() - started
    half1, half2 = rec["halves"]
    mask, _ = pp.auto_mask(0.5 * (half1 + half2), px)
    curves = pp.corrected_fsc(half1, half2, mask, np.random.default_rng(0))
    gold = shell_resolution(np.asarray(curves["corrected"]), px, 0.143)
    truth_res = shell_resolution(fsc(rec["full"] * mask, truth * mask), px, 0.5)
    angles = r3.angular_errors(state.matrices, stack.matrices)
    shifts = np.hypot(*(state.shifts - stack.centres).T)
    glob = [i["seconds"] for i in iterations if i["kind"] == "global"]
    local = [i["seconds"] for i in iterations if i["kind"] == "local"]
    return {
        "device": device,
        "particles": n,
        "box": box,
        "pixel_size": px,
        "poses": {"matrices": state.matrices, "map": rec["full"]},
        "iterations": iterations,
        "converged": state.converged,
        "seconds_to_convergence": total,
        "seconds_per_global_iteration": float(np.mean(glob)) if glob else None,
        "seconds_per_local_iteration": float(np.mean(local)) if local else None,
        "gold_standard_angstrom": gold,
        "truth_fsc_0.5_angstrom_same_mask": truth_res,
        "median_angular_error_deg": float(np.median(angles)),
        "median_shift_error_px": float(np.median(shifts)),
    }


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000, help="reconstruction (2000)")
    parser.add_argument("--box", type=int, default=64, help="px (64)")
    parser.add_argument("--pixel-size", type=float, default=3.0, help="Å/px (3.0)")
    parser.add_argument("--snr", type=float, default=0.1, help="per pixel (0.1)")
    parser.add_argument("--refine-particles", type=int, default=2000, help="refine3d (2000)")
    parser.add_argument("--refine-box", type=int, default=64, help="px (64)")
    parser.add_argument("--refine-pixel-size", type=float, default=3.375, help="Å/px (3.375)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["aspire", "refine3d"])
    parser.add_argument(
        "--devices", nargs="*", default=None, choices=["cpu", "gpu"],
        help="of the refine3d run (default: the CPU, and the GPU where CuPy finds one)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="JSON report to write")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "3D reconstruction side by side with ASPIRE; refine3d iterations",
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "numpy": np.__version__,
            "load_average_start": os.getloadavg()[0],
        },
        "reconstruction": reconstruction(args),
    }
    if gpu_available():
        import cupy

        report["machine"]["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    if "refine3d" not in args.skip:
        devices = args.devices or (["cpu"] + (["gpu"] if gpu_available() else []))
        runs = [refinement(args, device) for device in devices]
        if len(runs) == 2:  # the GPU against the CPU, from the same particles
            cpu, gpu = (run.pop("poses") for run in runs)
            runs[1]["agreement_with_cpu"] = {
                "median_pose_difference_deg": float(
                    np.median(r3.angular_errors(gpu["matrices"], cpu["matrices"]))
                ),
                "map_fsc_0.5_angstrom": shell_resolution(
                    fsc(gpu["map"], cpu["map"]), args.refine_pixel_size, 0.5
                ),
                "speed_up_to_convergence": runs[0]["seconds_to_convergence"]
                / runs[1]["seconds_to_convergence"],
            }
        for run in runs:
            run.pop("poses", None)
        report["refine3d"] = runs if len(runs) > 1 else runs[0]
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
