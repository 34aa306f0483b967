"""Foundation benchmarks: FFT backend, movie reading, simulation speed.

Compares, in one run on one machine:

* 2D real FFT of a ``size x size`` float32 micrograph: ``cryosnake.backend``'s choice
  (scipy.fft with all workers; CuPy when a GPU is present) against ``numpy.fft``;
* reading a ``frames x size x size`` uint16 movie frame by frame through
  ``cryosnake.io.open_movie`` against reading it whole with ``mrcfile.read`` /
  ``tifffile.imread`` (LZW-compressed TIFF), both summing the frames;
* simulating one movie of the ``demo`` preset (and of ``benchmark`` with
  ``--with-benchmark-preset``).

Usage::

    python benchmarks/bench_foundation.py [--size 2048] [--frames 20] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import scipy.fft
import tifffile

from cryosnake.backend import cupy_available, fft_workers, gpu_available
from cryosnake.io import open_movie, write_movie
from cryosnake.simulate import load_specimen, make_detector, make_params, simulate_movie


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls, seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_fft(size: int) -> list[dict[str, Any]]:
    image = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    peer = best_of(lambda: np.fft.rfft2(image))
    ours = best_of(lambda: scipy.fft.rfft2(image, workers=fft_workers()))
    rows = [
        {
            "task": f"rfft2 {size}x{size} float32",
            "ours": "scipy.fft",
            "ours_s": ours,
            "peer": "numpy.fft",
            "peer_s": peer,
        }
    ]
    if gpu_available():
        import cupy as cp

        gimage = cp.asarray(image)

        def gpu_fft() -> None:
            cp.fft.rfft2(gimage)
            cp.cuda.Device().synchronize()

        rows.append(
            {
                "task": f"rfft2 {size}x{size} float32",
                "ours": "cupy.fft (device-resident)",
                "ours_s": best_of(gpu_fft, repeats=10),
                "peer": "numpy.fft",
                "peer_s": peer,
            }
        )
    return rows


def bench_read(size: int, frames: int, folder: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    data = rng.poisson(1.0, size=(frames, size, size)).astype(np.uint16)
    rows = []
    for suffix, whole in ((".mrc", "mrcfile.read"), (".tif", "tifffile.imread (LZW)")):
        path = folder / f"movie{suffix}"
        write_movie(
            path,
            iter(data),
            n_frames=frames,
            frame_shape=(size, size),
            dtype=np.uint16,
            pixel_size=1.0,
        )

        def ours(path: Path = path) -> None:
            with open_movie(path) as movie:
                total = np.zeros((size, size), np.float32)
                for i in range(movie.n_frames):
                    total += movie.frame(i)

        def peer(path: Path = path) -> None:
            if path.suffix == ".mrc":
                stack = mrcfile.read(str(path))
            else:
                stack = tifffile.imread(str(path))
            stack.sum(axis=0, dtype=np.float32)

        rows.append(
            {
                "task": f"read+sum {frames}x{size}x{size} uint16 {suffix}",
                "ours": "open_movie, frame by frame",
                "ours_s": best_of(ours, repeats=2),
                "peer": whole,
                "peer_s": best_of(peer, repeats=2),
            }
        )
    return rows


def bench_simulate(preset: str) -> dict[str, Any]:
    params = make_params(preset, n_movies=1)
    specimen, _ = load_specimen(params)
    detector = make_detector(params, np.random.default_rng(0))
    t0 = time.perf_counter()
    _, frames = simulate_movie(params, 0, specimen, detector, np.random.default_rng(1))
    for _ in frames:
        pass
    seconds = time.perf_counter() - t0
    return {
        "task": f"simulate one {preset} movie ({params.n_frames}x{params.height}x{params.width})",
        "ours": "cryosnake.simulate",
        "ours_s": seconds,
        "peer": None,
        "peer_s": None,
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "fft_workers": fft_workers(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cupy": cupy_available(),
    }
    if gpu_available():
        import cupy as cp

        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="micrograph size, px")
    parser.add_argument("--frames", type=int, default=20, help="frames of the read test")
    parser.add_argument("--with-benchmark-preset", action="store_true")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    rows = bench_fft(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench_read(args.size, args.frames, Path(tmp))
    rows.append(bench_simulate("demo"))
    if args.with_benchmark_preset:
        rows.append(bench_simulate("benchmark"))

    for row in rows:
        ratio = row["peer_s"] / row["ours_s"] if row["peer_s"] else None
        row["speedup"] = ratio
        peer = f"{row['peer']} {row['peer_s']:.3f} s" if row["peer"] else "-"
        speed = f"x{ratio:.2f}" if ratio else ""
        print(f"{row['task']:<48} {row['ours']} {row['ours_s']:.3f} s | {peer} {speed}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
