"""Particle picking side by side with ASPIRE's APPLE picker.

On the same simulated micrographs (default 8: demo preset, 1024 x 1024 px at 1.5 Å/px,
150 Å particles, 40 per micrograph, junk on, Poisson counts of the expected dose sum;
the conditions of the slow test ``test_demo_micrographs_blob_and_template_against_truth``)
reports in one run on one machine, for

* cryosnake blob picking (``ops.pick.pick_blobs`` with the true CTF, as the ``pick``
  stage runs it),
* cryosnake template picking (``ops.pick.pick_templates``, 14 projections of the true
  volume low-passed at 4.5 Å, every 10°),
* ASPIRE's APPLE picker (Heimowitz, Andén & Singer 2018; reference-free, no CTF),

the precision and recall against the truth (one-to-one matching within 0.2 x diameter),
the fraction of junk (aggregates, ice) not picked, seconds per micrograph and
micrographs per second, and each program's time as a multiple of cryosnake's blob
picking. Times are per micrograph after one untimed warm-up call (imports, FFT plans,
the noise simulation of the automatic threshold, cached per micrograph size).

APPLE is configured with its defaults for a particle of 100 px, except two things its
defaults assume of a 4k micrograph: its discarded margins (99-100 px) become 10 px, and
its training-window counts ``tau1`` and ``tau2`` (3 % and 30 % of the query windows of
a 4000 px micrograph) become 3 % and 30 % of the query windows of these micrographs
(the defaults exceed the number of windows and fail). Its centres are in micrograph
pixels (x = column); against the truth they are within 1-2 px of ours (no correction).
Its input files are written without a pixel size in the header (ASPIRE refuses a
header pixel size it was not also given).

APPLE comes with ASPIRE, a benchmark peer already (``requirements-peers.txt``): run it
from the benchmark environment (``make bench-env``)::

    .venv-bench/bin/python benchmarks/bench_pick.py --out benchmarks/results/pick-peers-cpu2.json
    .venv/bin/python benchmarks/bench_pick.py --skip apple   # cryosnake only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

import cryosnake
from cryosnake.backend import fft_workers
from cryosnake.io import read_mrc, read_star, write_mrc, write_star
from cryosnake.ops.pick import MicrographCtf, pick_blobs, pick_templates
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.simulate import (
    load_specimen,
    make_detector,
    make_params,
    matched_picks,
    simulate_movie,
)

DIAMETER = 150.0
PROGRAMS = ("cryosnake-blob", "cryosnake-template", "apple")
VIEWS = [(rot, tilt) for tilt in (45.0, 90.0, 135.0) for rot in (0.0, 90.0, 180.0, 270.0)]
VIEWS += [(0.0, 0.0), (0.0, 180.0)]


def make_dataset(folder: Path, count: int, seed: int) -> None:
    """``count`` demo micrographs (movies of one simulated dataset) and ``truth.star``."""
    params = make_params("demo", n_movies=count, seed=seed)
    specimen, volume = load_specimen(params)
    seeds = np.random.SeedSequence(seed).spawn(count + 1)
    detector = make_detector(params, np.random.default_rng(seeds[0]))
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "volume.mrc", volume, params.pixel_size)
    ctf, particles, junk = [], [], []
    for i in range(count):
        truth, _ = simulate_movie(
            params, i, specimen, detector, np.random.default_rng(seeds[i + 1]), noise=False
        )
        assert truth.noiseless is not None
        counts = np.random.default_rng([seed, i]).poisson(np.maximum(truth.noiseless, 0))
        name = f"micrograph_{i + 1:04d}.mrc"
        write_mrc(folder / name, counts.astype(np.float32), params.pixel_size)
        ctf.append([name, truth.defocus_u, truth.defocus_v, truth.defocus_angle])
        particles += [[name, x, y] for x, y in truth.coordinates]
        junk += [[name, j["x"], j["y"], j["diameter"], j["type"]] for j in truth.junk]
    coords = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]
    write_star(
        folder / "truth.star",
        {
            "micrographs": pd.DataFrame(
                ctf, columns=["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
            ),
            "particles": pd.DataFrame(particles, columns=coords),
            "junk": pd.DataFrame(junk, columns=[*coords, "csnkJunkDiameterAngst", "csnkJunkType"]),
        },
    )


def templates(volume: np.ndarray, pixel_size: float) -> np.ndarray:
    images = [project_volume(volume, euler_to_matrix(rot, tilt, 0.0)) for rot, tilt in VIEWS]
    return np.array([ndimage.gaussian_filter(im, 4.5 / pixel_size) for im in images], np.float32)


def apple_pick(path: Path, particle_px: int, margin: int = 10) -> np.ndarray:
    """APPLE's ``process_micrograph_centers`` with tau1/tau2 scaled to the micrograph."""
    from aspire.apple.apple import Apple
    from aspire.apple.picking import Picker

    a = Apple(
        particle_size=particle_px,
        output_dir=None,
        mrc_margin_left=margin,
        mrc_margin_right=margin,
        mrc_margin_top=margin,
        mrc_margin_bottom=margin,
    )
    picker = Picker(
        a.particle_size, a.max_particle_size, a.min_particle_size, a.query_image_size,
        a.tau1, a.tau2, a.minimum_overlap_amount, a.container_size, str(path), None,
        model=a.model, model_opts=a.model_opts, mrc_margin_left=margin,
        mrc_margin_right=margin, mrc_margin_top=margin, mrc_margin_bottom=margin,
        mrc_shrink_factor=a.mrc_shrink_factor, mrc_gauss_filter_size=a.mrc_gauss_filter_size,
        mrc_gauss_filter_sigma=a.mrc_gauss_filter_sigma,
        response_thresh_norm_factor=a.response_thresh_norm_factor,
        conv_map_nthreads=a.conv_map_nthreads,
    )  # fmt: skip
    score = picker.query_score()
    windows = int(score.size)
    picker.tau1, picker.tau2 = max(1, int(0.03 * windows)), max(2, int(0.3 * windows))
    step = max(1, windows // 20)
    while True:  # as Apple.process_micrograph_centers, with steps fitted to the size
        segmentation = picker.run_svm(score)
        if np.all(segmentation):
            picker.tau2 += step
        elif not np.any(segmentation):
            picker.tau1 += step
        else:
            break
    segmentation = picker.morphology_ops(segmentation)
    return np.asarray(picker.extract_particles(segmentation), dtype=np.float64).reshape(-1, 2)


def time_all(fn: Callable[[int], np.ndarray], count: int) -> tuple[list[np.ndarray], list[float]]:
    fn(0)  # warm-up, untimed
    picks, seconds = [], []
    for i in range(count):
        t0 = time.perf_counter()
        picks.append(fn(i))
        seconds.append(time.perf_counter() - t0)
    return picks, seconds


def score(
    picks: list[np.ndarray], seconds: list[float], truth: dict[str, pd.DataFrame], names: list[str],
    pixel_size: float,
) -> dict[str, Any]:  # fmt: skip
    found = picked = total = junk_items = junk_picked = 0
    rows = []
    for name, xy, s in zip(names, picks, seconds, strict=True):
        t = truth["particles"][truth["particles"].rlnMicrographName == name]
        t_xy = t[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
        m = matched_picks(xy, t_xy, 0.2 * DIAMETER / pixel_size)
        j = truth["junk"][truth["junk"].rlnMicrographName == name]
        hits = sum(
            bool(len(xy)) and bool(np.any(np.hypot(*(xy - [r.rlnCoordinateX, r.rlnCoordinateY]).T)
                                          < 0.5 * r.csnkJunkDiameterAngst / pixel_size))
            for r in j.itertuples()
        )  # fmt: skip
        found, picked, total = found + m, picked + len(xy), total + len(t_xy)
        junk_items, junk_picked = junk_items + len(j), junk_picked + hits
        rows.append(
            {"micrograph": name, "picks": len(xy), "matched": m, "particles": len(t_xy),
             "junk": len(j), "junk_picked": hits, "seconds": s}
        )  # fmt: skip
    precision = found / max(picked, 1)
    recall = found / max(total, 1)
    return {
        "summary": {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "junk_not_picked": 1 - junk_picked / max(junk_items, 1),
            "junk_items": junk_items,
            "seconds_per_micrograph": float(np.mean(seconds)),
            "micrographs_per_second": float(1.0 / np.mean(seconds)),
        },
        "micrographs": rows,
    }


def source() -> dict[str, Any]:
    """The commit of cryosnake measured, and the files of src/ that differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = [line.split(None, 1)[-1] for line in git("status", "--porcelain", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "src_modified": changed}


def versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {"cryosnake": cryosnake.__version__}
    for name in ("aspire", "scikit-learn"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dataset", default="benchmarks/data/pick", help="micrographs (made if absent)"
    )
    parser.add_argument("--count", type=int, default=8, help="micrographs to make (8)")
    parser.add_argument("--seed", type=int, default=201, help="seed of the dataset (201)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PROGRAMS, help="programs")
    parser.add_argument("--out", help="JSON report to write")
    args = parser.parse_args()
    folder = Path(args.dataset)
    if not (folder / "truth.star").is_file():
        print(f"simulating {args.count} micrographs into {folder}")
        make_dataset(folder, args.count, args.seed)
    truth = read_star(folder / "truth.star")
    names = list(truth["micrographs"].rlnMicrographName)
    images, pixel_sizes = [], set()
    for name in names:
        image, px = read_mrc(folder / name)
        images.append(np.asarray(image, dtype=np.float32))
        pixel_sizes.add(round(px, 4))
    assert len(pixel_sizes) == 1, pixel_sizes
    px = pixel_sizes.pop()
    ctfs = [
        MicrographCtf(r.rlnDefocusU, r.rlnDefocusV, r.rlnDefocusAngle)
        for r in truth["micrographs"].itertuples()
    ]
    volume, _ = read_mrc(folder / "volume.mrc")
    bank = templates(np.asarray(volume, dtype=np.float32), px)
    print(f"{len(images)} micrographs {images[0].shape[1]}x{images[0].shape[0]} at {px} Å/px")

    runs: dict[str, Callable[[int], np.ndarray]] = {
        "cryosnake-blob": lambda i: pick_blobs(images[i], px, DIAMETER, ctf=ctfs[i]).coordinates,
        "cryosnake-template": lambda i: (
            pick_templates(images[i], px, DIAMETER, bank, px, ctf=ctfs[i]).coordinates
        ),
    }
    scratch = None
    if "apple" not in args.skip:
        import mrcfile

        logging.disable(logging.WARNING)  # ASPIRE logs every step
        scratch = tempfile.TemporaryDirectory(prefix="apple-")
        for name, image in zip(names, images, strict=True):
            with mrcfile.new(Path(scratch.name) / name, overwrite=True) as mrc:
                mrc.set_data(image)  # no pixel size: ASPIRE refuses one it was not given
        particle_px = int(round(DIAMETER / px))
        runs["apple"] = lambda i: apple_pick(Path(scratch.name) / names[i], particle_px)

    load = {"start": os.getloadavg()[0]}
    results: dict[str, Any] = {}
    for program, fn in runs.items():
        if program in args.skip:
            continue
        picks, seconds = time_all(fn, len(images))
        results[program] = score(picks, seconds, truth, names, px)
        load[f"after {program}"] = os.getloadavg()[0]
    if scratch is not None:
        scratch.cleanup()
    print("1-min load average: " + ", ".join(f"{k} {v:.2f}" for k, v in load.items()))
    ours = results.get("cryosnake-blob", next(iter(results.values())))["summary"]
    print("program              precision  recall    F1  junk not picked   s/mic  mic/s  x blob")
    for program, result in results.items():
        s = result["summary"]
        s["seconds_ratio_to_cryosnake_blob"] = (
            s["seconds_per_micrograph"] / ours["seconds_per_micrograph"]
        )
        print(
            f"{program:<20} {s['precision']:9.3f} {s['recall']:7.3f} {s['f1']:5.3f}"
            f"  {s['junk_not_picked']:9.0%} ({s['junk_items']})  {s['seconds_per_micrograph']:6.2f}"
            f" {s['micrographs_per_second']:6.2f} {s['seconds_ratio_to_cryosnake_blob']:7.1f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "particle picking, side by side with ASPIRE's APPLE picker",
            "machine": {
                "cpus": os.cpu_count(),
                "fft_workers": fft_workers(),
                "python": platform.python_version(),
                "processor": platform.processor() or platform.machine(),
                "device": "cpu",
            },
            "versions": versions(),
            "cryosnake_source": source(),
            "dataset": {
                "micrographs": len(images),
                "shape": list(images[0].shape),
                "pixel_size": px,
                "diameter": DIAMETER,
                "seed": args.seed,
                "preset": "demo (40 particles, junk on), Poisson counts of the dose sum",
                "match_radius_px": 0.2 * DIAMETER / px,
            },
            "timing": "per micrograph after one untimed warm-up call",
            "load_average_1min": load,
            "results": results,
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
