"""CTF estimation side by side with ASPIRE's estimate_ctf and torch-ctf-estimation.

On the same simulated micrographs (default 20: the conditions of issue 3's acceptance
and of the slow test ``test_twenty_micrographs_within_tolerance``, same seed: demo
preset, 1024 x 1024 px at 1.5 Å/px, 300 kV, Cs 2.7 mm, amplitude contrast 0.07,
Poisson counts at 30 e/Å², mean defocus 0.5-4 µm, astigmatism 0-1500 Å), reports in
one run on one machine, for cryosnake (``ops.ctf_fit.fit_ctf`` with the ``ctf``
stage's defaults), ASPIRE and torch-ctf-estimation:

* mean seconds per micrograph, and each peer's time as a multiple of ours;
* median and 95th percentile of the mean-defocus error (%), of the astigmatism
  error (Å) and of the angle error (degrees, micrographs with astigmatism >= 300 Å);
* the fraction of micrographs within the acceptance (<= 1 %, <= 100 Å, <= 5°).

cryosnake and torch-ctf-estimation are timed per micrograph after one untimed warm-up
call; ASPIRE runs once on the folder of all micrographs, as its API is meant to be
used, and its time per micrograph is the total over the count (see ``_peers.py``).

The peers are not cryosnake dependencies: run it from the benchmark environment
(``make bench-env``)::

    .venv-bench/bin/python benchmarks/bench_ctf_peers.py \\
        --out benchmarks/results/ctf-peers-cpu2.json
    .venv-bench/bin/python benchmarks/bench_ctf_peers.py --count 5 --skip aspire
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _peers import aspire_ctf_batch, peer_versions, torch_ctf

import cryosnake
from cryosnake.backend import fft_workers
from cryosnake.io import read_mrc, read_star, write_mrc, write_star
from cryosnake.ops.ctf_fit import fit_ctf
from cryosnake.simulate import load_specimen, make_detector, make_params, simulate_movie

VOLTAGE, CS, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.07
PROGRAMS = ("cryosnake", "aspire", "torch-ctf-estimation")
TRUTH = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]


def make_dataset(folder: Path, count: int, seed: int) -> None:
    """``count`` micrographs as in the slow CTF test, with ``truth.star``."""
    params = make_params("demo", n_movies=1, defocus_min=5000, defocus_max=40000)
    assert (params.voltage, params.cs, params.amplitude_contrast) == (
        VOLTAGE,
        CS,
        AMPLITUDE_CONTRAST,
    )
    specimen, _ = load_specimen(params)
    detector = make_detector(params, np.random.default_rng(seed))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        truth, _ = simulate_movie(
            params, 0, specimen, detector, np.random.default_rng(seed + 1 + i), noise=False
        )
        assert truth.noiseless is not None
        counts = np.random.default_rng(seed + 1000 + i).poisson(np.maximum(truth.noiseless, 0))
        name = f"micrograph_{i + 1:04d}.mrc"
        write_mrc(folder / name, counts.astype(np.float32), params.pixel_size)
        rows.append([name, truth.defocus_u, truth.defocus_v, truth.defocus_angle])
    write_star(folder / "truth.star", {"micrographs": pd.DataFrame(rows, columns=TRUTH)})


def load_dataset(folder: Path) -> tuple[list[np.ndarray], pd.DataFrame, float]:
    truth = read_star(folder / "truth.star")["micrographs"]
    images, pixel_sizes = [], set()
    for name in truth.rlnMicrographName:
        image, px = read_mrc(folder / name)
        images.append(image.astype(np.float32))
        pixel_sizes.add(round(px, 4))
    assert len(pixel_sizes) == 1, pixel_sizes
    return images, truth, pixel_sizes.pop()


def run_ours(image: np.ndarray, px: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    fit = fit_ctf(image, px, voltage=VOLTAGE, cs=CS, amplitude_contrast=AMPLITUDE_CONTRAST)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "defocus_u": fit.defocus_u,
        "defocus_v": fit.defocus_v,
        "angle_deg": fit.angle,
    }


def run_torch_ctf(image: np.ndarray, px: float) -> dict[str, Any]:
    return torch_ctf(image, px, VOLTAGE, CS, AMPLITUDE_CONTRAST)


def per_micrograph(
    fn: Callable[[np.ndarray, float], dict[str, Any]], images: list[np.ndarray], px: float
) -> list[dict[str, Any]]:
    fn(images[0], px)  # warm-up, untimed: imports, FFT plans
    return [fn(image, px) for image in images]


def errors(fit: dict[str, Any], true: pd.Series) -> dict[str, Any]:
    mean_true = 0.5 * (true.rlnDefocusU + true.rlnDefocusV)
    astig_true = true.rlnDefocusU - true.rlnDefocusV
    defocus = 100 * abs(0.5 * (fit["defocus_u"] + fit["defocus_v"]) - mean_true) / mean_true
    astig = abs((fit["defocus_u"] - fit["defocus_v"]) - astig_true)
    angle = abs((fit["angle_deg"] - true.rlnDefocusAngle + 90.0) % 180.0 - 90.0)
    has_angle = bool(astig_true >= 300.0)
    return {
        **fit,
        "defocus_error_percent": float(defocus),
        "astigmatism_error_A": float(astig),
        "angle_error_deg": float(angle) if has_angle else None,
        "within_acceptance": bool(
            defocus <= 1.0 and astig <= 100.0 and (not has_angle or angle <= 5.0)
        ),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float | int]:
        values = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
        return {
            "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)),
            "n": int(values.size),
        }

    return {
        "seconds_per_micrograph": float(np.mean([r["seconds"] for r in rows])),
        "seconds_per_micrograph_median": float(np.median([r["seconds"] for r in rows])),
        "defocus_error_percent": stats("defocus_error_percent"),
        "astigmatism_error_A": stats("astigmatism_error_A"),
        "angle_error_deg": stats("angle_error_deg"),
        "fraction_within_acceptance": float(np.mean([r["within_acceptance"] for r in rows])),
    }


def source() -> dict[str, Any]:
    """The commit of cryosnake measured, and the files of src/ that differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = [line.split(None, 1)[-1] for line in git("status", "--porcelain", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "src_modified": changed}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "fft_workers": fft_workers(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "device": "cpu",
        "note": "2-core CPU machine; every program on the CPU",
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="benchmarks/data/ctf-peers", help="micrographs (made if absent)"
    )
    parser.add_argument("--count", type=int, default=20, help="micrographs to make (20)")
    parser.add_argument("--seed", type=int, default=80, help="seed (80: the slow test's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PROGRAMS[1:], help="peers")
    parser.add_argument("--out", default="benchmarks/results/ctf-peers-cpu2.json")
    args = parser.parse_args()

    folder = Path(args.dataset)
    if not (folder / "truth.star").is_file():
        print(f"simulating {args.count} micrographs into {folder}")
        make_dataset(folder, args.count, args.seed)
    images, truth, px = load_dataset(folder)
    fits: dict[str, list[dict[str, Any]]] = {}
    print(f"{len(images)} micrographs {images[0].shape[1]}x{images[0].shape[0]} at {px} Å/px")
    # Other processes on the machine distort the times: the load average around each
    # program goes into the report.
    load = {"start": os.getloadavg()[0]}
    fits["cryosnake"] = per_micrograph(run_ours, images, px)
    load["after cryosnake"] = os.getloadavg()[0]
    if "aspire" not in args.skip:
        _, fits["aspire"] = aspire_ctf_batch(images, px, VOLTAGE, CS, AMPLITUDE_CONTRAST)
        load["after aspire"] = os.getloadavg()[0]
    if "torch-ctf-estimation" not in args.skip:
        fits["torch-ctf-estimation"] = per_micrograph(run_torch_ctf, images, px)
        load["after torch-ctf-estimation"] = os.getloadavg()[0]
    print("1-min load average: " + ", ".join(f"{k} {v:.2f}" for k, v in load.items()))

    results: dict[str, Any] = {}
    for name, program_fits in fits.items():
        rows = []
        for fit, (_, true) in zip(program_fits, truth.iterrows(), strict=True):
            rows.append({"micrograph": true.rlnMicrographName, **errors(fit, true)})
        results[name] = {"summary": summarise(rows), "micrographs": rows}
    ours_s = results["cryosnake"]["summary"]["seconds_per_micrograph"]
    for name in results:
        summary = results[name]["summary"]
        summary["seconds_ratio_to_cryosnake"] = summary["seconds_per_micrograph"] / ours_s

    head = "program                 s/mic  x ours  defocus %  med/p95  astig Å med/p95"
    print(head + "  angle ° med/p95 (n)  within")
    for name, result in results.items():
        s = result["summary"]
        d, a, g = s["defocus_error_percent"], s["astigmatism_error_A"], s["angle_error_deg"]
        print(
            f"{name:<22} {s['seconds_per_micrograph']:6.2f} {s['seconds_ratio_to_cryosnake']:7.1f}"
            f"  {d['median']:8.3f} {d['p95']:7.3f}  {a['median']:7.1f} {a['p95']:7.1f}"
            f"  {g['median']:7.2f} {g['p95']:7.2f} ({g['n']})"
            f"  {s['fraction_within_acceptance']:6.0%}"
        )
    if "aspire" in results:
        ours, peer = results["cryosnake"]["summary"], results["aspire"]["summary"]
        faster = peer["seconds_per_micrograph"] / ours["seconds_per_micrograph"]
        smaller = all(
            ours[k]["median"] < peer[k]["median"]
            for k in ("defocus_error_percent", "astigmatism_error_A", "angle_error_deg")
        )
        print(
            f"acceptance (>= 20x faster than ASPIRE with smaller error): x{faster:.1f} faster, "
            f"median errors {'all smaller' if smaller else 'NOT all smaller'}"
        )

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "ctf estimation, side by side with peers",
            "machine": machine(),
            "versions": {"cryosnake": cryosnake.__version__, **peer_versions()},
            "cryosnake_source": source(),
            "dataset": {
                "micrographs": len(images),
                "shape": list(images[0].shape),
                "pixel_size": px,
                "voltage": VOLTAGE,
                "cs": CS,
                "amplitude_contrast": AMPLITUDE_CONTRAST,
                "seed": args.seed,
                "preset": "demo, defocus 5000-40000 Å, astigmatism 0-1500 Å, 30 e/Å² counts",
            },
            "timing": (
                "cryosnake and torch-ctf-estimation: mean of per-micrograph calls after one "
                "untimed warm-up; aspire: one estimate_ctf call on the folder / count"
            ),
            "load_average_1min": load,
            "results": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
