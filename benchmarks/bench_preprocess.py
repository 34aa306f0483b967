"""Motion correction and CTF estimation: speed and accuracy against simulator truth.

For one simulated movie (default: the ``benchmark`` preset, 4096 x 4096 x 40 frames)
reports, in one run on one machine:

* the CPU floor: one scipy.fft rfft2 pass over all frames;
* ``cryosnake motioncor`` wall time (movie already in memory; best of 5, like the
  floor) on each available device, its ratio to the floor, and the RMS error of the
  global drift and of the per-pixel trajectory at the truth's patch grid;
* ``cryosnake ctf`` on the motion-corrected sum: time, defocus / astigmatism / angle
  errors.

* torch-motion-correction (teamtomo) on the same frames, where it is installed
  (``make bench-env``; run this script with ``.venv-bench/bin/python``): its wall
  time and the error of its global drift against truth. The peer estimates motion
  only; our time includes the dose-weighted and plain sums as well.

Drift errors are given as measured (frame 1 at zero in both) and, as SCIENCE.md
defines them, after removing one constant offset. CTF against ASPIRE and
torch-ctf-estimation: ``benchmarks/bench_ctf_peers.py``.

Usage::

    python benchmarks/bench_preprocess.py --dataset /tmp/bench_ds   # simulated if absent
    python benchmarks/bench_preprocess.py --preset demo --out result.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft

from cryosnake.backend import fft_workers, gpu_available, to_device, to_host
from cryosnake.io import open_movie, read_mrc, read_star
from cryosnake.ops.ctf_fit import fit_ctf
from cryosnake.ops.defects import fill_defects, find_defects, sum_frames
from cryosnake.ops.dose import frame_exposures
from cryosnake.ops.motion import corrected_sums, measure_motion
from cryosnake.simulate import make_params, simulate_dataset

SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
REPEATS = 5  # timings: best of, on a machine that may be shared


def rms(a: np.ndarray) -> float:
    return float(np.sqrt((np.asarray(a) ** 2).sum(axis=1).mean()))


def drift_errors(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """RMS error of per-frame (x, y) shifts: as they are, and less one constant offset."""
    error = np.asarray(found) - np.asarray(truth)
    return {
        "global_rms_error_px": rms(error),
        "global_rms_error_offset_removed_px": rms(error - error.mean(axis=0)),
    }


def motioncor(frames: Any, px: float, dose: float) -> tuple[float, np.ndarray, Any, np.ndarray]:
    """What ``cryosnake motioncor`` does once the gain-corrected movie is in memory."""
    t0 = time.perf_counter()
    total = sum_frames(frames)
    defects = find_defects(total)
    fill_defects(frames, defects, float(total[~defects].mean()) / frames.shape[0])
    whole, local, _ = measure_motion(frames, px)
    dw, _ = corrected_sums(frames, whole, px, frame_exposures(len(frames), dose), local=local)
    dw = to_host(dw)
    return time.perf_counter() - t0, whole, local, dw


def load_frames(data: Path, gain: np.ndarray) -> np.ndarray:
    """The gain-corrected frames of the dataset's first movie, float32."""
    with open_movie(data / "movies" / "movie_0001.mrc") as movie:
        return np.stack([movie.frame(i) * gain for i in range(movie.n_frames)]).astype(np.float32)


def run_motion_peer(
    frames: np.ndarray, px: float, truth_global: np.ndarray
) -> dict[str, Any] | None:
    """torch-motion-correction on the same frames, or None (with a note) if absent."""
    try:
        from _peers import peer_versions, torch_motion_correction
    except ImportError:
        from benchmarks._peers import peer_versions, torch_motion_correction
    try:
        seconds, shifts = torch_motion_correction(frames.copy(), px)
    except ImportError as err:
        print(f"torch-motion-correction not run ({err}); see make bench-env")
        return None
    n, ny, nx = frames.shape
    return {
        "task": f"motion estimation {n}x{ny}x{nx}",
        "program": "torch-motion-correction",
        "version": peer_versions()["torch-motion-correction"],
        "device": "cpu",
        "seconds": seconds,
        **drift_errors(shifts, truth_global),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="benchmarks/data/benchmark")
    parser.add_argument("--preset", default="benchmark")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    data = Path(args.dataset)
    if not (data / "movies" / "movie_0001.mrc").is_file():
        simulate_dataset(make_params(args.preset, n_movies=1), data)
    params = read_star(data / "truth" / "movie_0001_motion.star")
    truth_global = params["global_shift"][SHIFT].to_numpy()
    truth_local = params["local_shift"]
    gain, px = read_mrc(data / "gain.mrc")
    general = params["general"].iloc[0]
    dose = float(general.rlnMicrographDoseRate)
    frames = load_frames(data, gain)
    n, ny, nx = frames.shape
    floors = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for i in range(n):
            scipy.fft.rfft2(frames[i], workers=fft_workers())
        floors.append(time.perf_counter() - t0)
    floor = min(floors)
    rows: list[dict[str, Any]] = []
    devices = ["cpu"] + (["gpu"] if gpu_available() else [])
    for device in devices:
        # The runs share the loaded array, as the stage does (no second 2.7 GB copy in
        # memory). The first run fills the defects in place; later runs find none.
        on_device = to_device(frames, device)  # on the CPU, the same array
        if device == "gpu":  # warm-up: kernels compile on first use
            motioncor(on_device[:4].copy(), px, dose)
        runs = [motioncor(on_device, px, dose) for _ in range(REPEATS)]
        seconds, whole, local, dw = min(runs, key=lambda run: run[0])
        shifts = whole + local.mean_shift()  # reported global: frame-averaged motion
        key = ["rlnMicrographFrameNumber", "rlnCoordinateY", "rlnCoordinateX"]
        grid = truth_local.sort_values(key)
        cx = grid.rlnCoordinateX.to_numpy()
        cy = grid.rlnCoordinateY.to_numpy()
        t = grid.rlnMicrographFrameNumber.to_numpy() - 1
        lx, ly = local.shift_at(t, cx, cy)
        found = np.stack([whole[t, 0] + lx, whole[t, 1] + ly], axis=1)
        rows.append(
            {
                "task": f"motioncor {n}x{ny}x{nx}",
                "device": device,
                "seconds": seconds,
                "seconds_each_run": [run[0] for run in runs],
                "ratio_to_rfft2_floor": seconds / floor,
                **drift_errors(shifts, truth_global),
                "local_rms_error_px": rms(found - grid[SHIFT].to_numpy()),
                "global_only_rms_error_px": rms(shifts[t] - grid[SHIFT].to_numpy()),
            }
        )
        t0 = time.perf_counter()
        fit = fit_ctf(dw, px)
        ctf_s = time.perf_counter() - t0
        truth_ctf = read_star(data / "truth" / "movie_0001_ctf.star")["micrograph"].iloc[0]
        mean_t = 0.5 * (truth_ctf.rlnDefocusU + truth_ctf.rlnDefocusV)
        rows.append(
            {
                "task": f"ctf {ny}x{nx}",
                "device": "cpu",
                "seconds": ctf_s,
                "defocus_error_percent": 100
                * abs(0.5 * (fit.defocus_u + fit.defocus_v) - mean_t)
                / mean_t,
                "astigmatism_error_A": abs(
                    (fit.defocus_u - fit.defocus_v)
                    - (truth_ctf.rlnDefocusU - truth_ctf.rlnDefocusV)
                ),
                "angle_error_deg": abs((fit.angle - truth_ctf.rlnDefocusAngle + 90) % 180 - 90),
            }
        )
    del on_device
    frames = load_frames(data, gain)  # afresh for the peer: ours filled the defects in place
    peer = run_motion_peer(frames, px, truth_global)
    if peer is not None:
        ours = next(r for r in rows if r["device"] == "cpu" and r["task"].startswith("motioncor"))
        peer["ours_cpu_seconds"] = ours["seconds"]
        peer["peer_seconds_over_ours"] = peer["seconds"] / ours["seconds"]
        rows.append(peer)
    print(f"rfft2 floor over {n} frames: {floor:.2f} s")
    for row in rows:
        print(json.dumps(row))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "rfft2_floor_s": floor,
                    "rfft2_floor_each_run_s": floors,
                    "timing": f"best of {REPEATS} runs for the floor and for cryosnake "
                    "(the machine is shared); the peer once",
                    "machine": {"cpus": fft_workers(), "python": platform.python_version()},
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
