"""2D classification speed: particles x iterations per second, CPU and GPU.

On simulated particles (the phantom at 2.5 Å/px in 64 px boxes, 20 % junk, SNR 0.05 at
1.5 Å/px; ``tests/particles_sim.py``) reports, for each device available (CPU always,
GPU where CuPy finds one), in one run on one machine:

* seconds per EM iteration in the steady state of a run (after ``--warmup``
  iterations from the random start, when the classes have formed, the posteriors are
  sharp and every shell up to Nyquist - 2 is in use), best of ``--repeats``, and the
  throughput in particles x iterations per second;
* the floor: the time of the E-step's one unavoidable matrix product (all poses of all
  particles against all rotated references) run alone with the same batches, and the
  iteration's time as a multiple of it (the rest: M-step, softmax, noise spectrum,
  back-projection);
* the size of the search (classes x rotations x translations, frequencies).

Usage::

    .venv/bin/python benchmarks/bench_class2d.py --out benchmarks/results/class2d-cpu2.json
    .venv/bin/python benchmarks/bench_class2d.py --particles 5000 --classes 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cryosnake.backend import fft_workers, get_array_module, gpu_available, to_device
from cryosnake.ops import class2d as c2
from cryosnake.ops.class2d.project import _geometry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, simulate_particles


def _sync(xp: Any) -> None:
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def _floor(data: c2.ParticleData, state: c2.Class2DState, settings: c2.Class2DSettings) -> float:
    """Seconds of the E-step's pose matrix products alone (same shapes and batches)."""
    xp = get_array_module(data.spectra)
    geom = _geometry(data.box, state.r_max, settings, data.pixel_size, xp)
    n_t, n_f = int(geom.ramps.shape[0]), int(geom.flat.shape[0])
    kr = settings.n_classes * settings.n_rotations
    zr = xp.ones((kr, 2 * n_f), dtype=xp.float32)
    yr = xp.ones((settings.batch * n_t, 2 * n_f), dtype=xp.float32)
    _sync(xp)
    tick = time.perf_counter()
    for start in range(0, data.n, settings.batch):
        rows = (min(start + settings.batch, data.n) - start) * n_t
        _ = yr[:rows] @ zr.T
    _sync(xp)
    return time.perf_counter() - tick


def bench(
    device: str, args: argparse.Namespace, images: np.ndarray, ctf: np.ndarray
) -> dict[str, Any]:
    pixel = args.pixel_size
    data = c2.prepare_particles(to_device(images, device), pixel, args.box, ctf)
    xp = get_array_module(data.spectra)
    settings = c2.Class2DSettings(
        n_classes=args.classes,
        mask_diameter=165.0 / pixel,
        psi_step=args.psi_step,
        max_shift=args.max_shift,
        batch=args.batch or (2048 if device == "gpu" else 128),
    )
    rng = np.random.default_rng(0)
    state = c2.initial_state(data, settings, rng)
    for _ in range(args.warmup):
        state = c2.em_iteration(data, state, settings, rng)
    state = replace(state, r_max=args.box // 2 - 2, converged=False)  # all shells
    times = []
    for _ in range(args.repeats):
        _sync(xp)
        tick = time.perf_counter()
        state = c2.em_iteration(data, state, settings, rng)
        _sync(xp)
        times.append(time.perf_counter() - tick)
    floors = [_floor(data, state, settings) for _ in range(args.repeats)]
    geom = _geometry(data.box, state.r_max, settings, data.pixel_size, xp)
    n_t, n_f = int(geom.ramps.shape[0]), int(geom.flat.shape[0])
    best, floor = min(times), min(floors)
    flops = 2.0 * data.n * n_t * 2 * n_f * settings.n_classes * settings.n_rotations
    return {
        "device": device,
        "particles": data.n,
        "box": data.box,
        "classes": settings.n_classes,
        "rotations": settings.n_rotations,
        "translations": n_t,
        "frequencies": n_f,
        "batch": settings.batch,
        "seconds_per_iteration": best,
        "seconds_each_iteration": times,
        "particle_iterations_per_second": data.n / best,
        "pose_gemm_floor_s": floor,
        "ratio_to_floor": best / floor,
        "pose_gemm_gflops": flops / floor / 1e9,
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "fft_workers": fft_workers(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    if gpu_available():
        import cupy

        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return info


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000, help="particles (1000)")
    parser.add_argument("--box", type=int, default=64, help="px (64)")
    parser.add_argument("--pixel-size", type=float, default=3.5, help="Å/px (3.5)")
    parser.add_argument("--classes", type=int, default=10, help="K (10)")
    parser.add_argument("--psi-step", type=float, default=5.0, help="degrees (5)")
    parser.add_argument("--max-shift", type=float, default=3.0, help="px (3)")
    parser.add_argument("--batch", type=int, default=0, help="particles per batch (auto)")
    parser.add_argument("--warmup", type=int, default=8, help="iterations before timing (8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations (3)")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    stack = simulate_particles(args.particles, box=args.box, pixel_size=args.pixel_size, seed=5)
    n = args.particles
    ctf = np.column_stack(
        [stack.defocus, np.zeros(n)] + [np.full(n, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)]
    )
    devices = ["cpu"] + (["gpu"] if gpu_available() else [])
    results = [bench(device, args, stack.images, ctf) for device in devices]
    print(
        f"{'device':6} {'s/iteration':>12} {'particles x it/s':>17} {'floor s':>8} {'x floor':>8}"
    )
    for r in results:
        print(
            f"{r['device']:6} {r['seconds_per_iteration']:12.2f} "
            f"{r['particle_iterations_per_second']:17.1f} {r['pose_gemm_floor_s']:8.2f} "
            f"{r['ratio_to_floor']:8.2f}"
        )
    report = {
        "task": (
            f"class2d EM iteration at full resolution: {n} particles of {args.box} px, "
            f"K = {args.classes}, psi step {args.psi_step} deg, shifts within {args.max_shift} px"
        ),
        "timing": (
            f"best of {args.repeats} iterations after {args.warmup} from the start "
            "(the machine may be shared)"
        ),
        "machine": machine(),
        "results": results,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
