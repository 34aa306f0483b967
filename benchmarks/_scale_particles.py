"""Particle stages at scale: peak memory and time per iteration against the particle count.

``measure(counts, box, budget, workdir)`` writes synthetic particle stacks once (stacks
of 1000 images of ``box`` px, float32: Gaussian noise on a soft disc, so that the
images are not degenerate; a particles STAR file per count with CTF values and an
optics table; the files of the largest count serve every count) and runs ``class2d``,
``initial3d`` and ``refine3d`` on each count as subprocesses (``python -m
cryosnake.cli``) with ``CRYOSNAKE_MEMORY=budget``. For each run it records the wall
time, the seconds per iteration (parsed from the stage's log), the peak resident memory
of the process (``os.wait4``'s ``ru_maxrss``), whether the particles were held in
memory or streamed (the log says), the size of the spectra and that of the Fourier
maps (fixed by the box), and the load average of the machine before and after (other
jobs share its cores). The memory budget bounds what the particles take; the grids and
the batches' temporaries come on top (``refine3d``: two back-projectors, about 1.1
GiB at 128 px, plus batches sized from half the budget).

Settings (the cheapest honest ones on a 2-core CPU: every particle is read, transformed
and searched in each iteration, over fewer poses than a production run):

- pixel size 2 Å, particle diameter 200 Å (box 256 Å at 128 px);
- ``class2d``: 4 classes, in-plane step 15°, translations within 2 Å (the working
  pixel is 4 Å: no shift but 0), working box 64 px (the default ``--box``), 2
  iterations (each a full E-step over all particles);
- ``initial3d``: 10 mini-batches of 200 in each of the 3 attempts (they do not depend
  on the count), angular step 30°, diameter 120 Å (shifts within 12 Å), resolution
  20 Å (working box 40 px), then the 3 full passes over all particles, each timed as
  an "iteration";
- ``refine3d``: 1 iteration (a global search at 15° and the coarse initial resolution
  of 30 Å, translations within 2 Å, then the reconstructions and the noise pass over
  all particles), against a soft-sphere reference.

Run ``python benchmarks/_scale_particles.py --out FILE [--counts 10000 50000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.io import write_mrc, write_star
from cryosnake.ops import initial3d as ai
from cryosnake.ops import refine3d as r3
from cryosnake.stages._images import spectra_bytes

PER_STACK = 1000
PIXEL = 2.0
DIAMETER = 200.0


def _disc(box: int) -> np.ndarray:
    y, x = np.mgrid[:box, :box] - box // 2
    r = np.hypot(x, y) * PIXEL
    return (0.5 * (1 + np.cos(np.pi * np.clip((r - 80.0) / 20.0, 0, 1)))).astype(np.float32)


def write_dataset(workdir: Path, n: int, box: int, seed: int = 0) -> None:
    """Stacks ``stack_NNN.mrcs`` of :data:`PER_STACK` images for ``n`` particles (the
    missing ones only) and the reference ``reference.mrc``."""
    workdir.mkdir(parents=True, exist_ok=True)
    disc = _disc(box)
    for k in range(-(-n // PER_STACK)):
        path = workdir / f"stack_{k:04d}.mrcs"
        if path.is_file() and path.stat().st_size >= PER_STACK * box * box * 4:
            continue
        rng = np.random.default_rng(seed + k)
        images = rng.standard_normal((PER_STACK, box, box), dtype=np.float32)
        images += 0.5 * disc
        write_mrc(path, images, PIXEL)
    reference = workdir / "reference.mrc"
    if not reference.is_file():
        z, y, x = np.mgrid[:box, :box, :box] - box // 2
        r = np.sqrt(x * x + y * y + z * z) * PIXEL
        vol = 0.5 * (1 + np.cos(np.pi * np.clip((r - 80.0) / 20.0, 0, 1)))
        write_mrc(reference, vol.astype(np.float32), PIXEL, kind="volume")


def write_star_file(workdir: Path, n: int, box: int, seed: int = 0) -> Path:
    """``particles_N.star``: the first ``n`` images, a CTF each, one optics group."""
    path = workdir / f"particles_{n}.star"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    index = np.arange(n)
    names = [
        f"{i % PER_STACK + 1:06d}@{workdir / f'stack_{i // PER_STACK:04d}.mrcs'}" for i in index
    ]
    defocus = rng.uniform(10000.0, 25000.0, n)
    optics = pd.DataFrame(
        [
            {
                "rlnOpticsGroup": 1,
                "rlnOpticsGroupName": "opticsGroup1",
                "rlnVoltage": 300.0,
                "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.1,
                "rlnImagePixelSize": PIXEL,
                "rlnImageSize": box,
                "rlnImageDimensionality": 2,
            }
        ]
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnDefocusU": defocus,
            "rlnDefocusV": defocus + 200.0,
            "rlnDefocusAngle": rng.uniform(0.0, 180.0, n),
            "rlnPhaseShift": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    write_star(path, {"optics": optics, "particles": particles})
    return path


def _stage_args(stage: str, star: Path, out: Path, workdir: Path) -> list[str]:
    common = ["--particles", str(star), "--out-dir", str(out), "--no-resume"]
    if stage == "class2d":
        return ["class2d", *common, "--classes", "4", "--diameter", str(DIAMETER),
                "--psi-step", "15", "--max-shift", "2", "--iterations", "2"]  # fmt: skip
    if stage == "initial3d":
        return ["initial3d", *common, "--diameter", "120", "--iterations", "10",
                "--batch", "200", "--step", "30", "--resolution", "20"]  # fmt: skip
    return ["refine3d", *common, "--reference", str(workdir / "reference.mrc"),
            "--diameter", str(DIAMETER), "--max-shift", "2", "--iterations", "1",
            "--initial-lowpass", "60"]  # fmt: skip


def _iteration_seconds(stage: str, log: str) -> list[float]:
    if stage in ("class2d", "refine3d"):
        pattern = rf"{stage}: iteration \d+/\d+ .*?(\d+\.\d+) s(?:\s|$)"
        return [float(m.group(1)) for m in re.finditer(pattern, log)]
    marks = [float(m.group(1)) for m in re.finditer(r"full pass \d+/\d+ .*?(\d+\.\d+) s", log)]
    done = re.search(r"initial3d: done in (\d+\.\d+) s", log)
    if not marks or done is None:
        return []
    ends = [*marks[1:], float(done.group(1))]
    return [round(b - a, 1) for a, b in zip(marks, ends, strict=True)]


def _maps_bytes(stage: str, box: int) -> int:
    """Bytes of the Fourier maps and grids a stage holds whatever the particle count."""
    if stage == "refine3d":
        return r3.plan_memory(box, 0, np, available=1 << 50).grids
    if stage == "initial3d":
        w = ai.working_box(box, PIXEL, 20.0)
        return r3.plan_memory(w, 0, np, available=1 << 50).grids
    # class2d: the M-step sums of K classes x R rotations over a 64 px half plane
    b = min(box, 64)
    n_f = int(np.pi * (b / 2) ** 2 / 2)
    return 4 * 24 * n_f * 3 * 8


def run_stage(stage: str, star: Path, out: Path, workdir: Path, budget: str) -> dict[str, Any]:
    """Run one stage in a subprocess; its figures."""
    env = {**os.environ, "CRYOSNAKE_MEMORY": budget}
    args = [sys.executable, "-m", "cryosnake.cli", *_stage_args(stage, star, out, workdir)]
    log_path = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    tick = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tick
    log = log_path.read_text()
    mode = re.search(r"particles (in memory|streamed)", log)
    return {
        "exit_status": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "iteration_s": _iteration_seconds(stage, log),
        "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
        # CPU seconds of the whole run: less sensitive than wall time to other jobs
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "particles": mode.group(1) if mode else "unknown",
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "log": str(log_path),
    }


def measure(
    counts: tuple[int, ...] = (10_000, 50_000, 100_000),
    box: int = 128,
    budget: str = "2G",
    workdir: Path = Path("/tmp/cryosnake_scale_particles"),
    stages: tuple[str, ...] = ("class2d", "initial3d", "refine3d"),
) -> dict[str, Any]:
    """Figures of every stage at every count (see the module docstring); printed as
    JSON lines as they come and returned as a JSON-able dict."""
    workdir = Path(workdir)
    tick = time.perf_counter()
    write_dataset(workdir, max(counts), box)
    results: dict[str, Any] = {
        "box": box,
        "budget": budget,
        "pixel_size": PIXEL,
        "cpus": os.cpu_count(),
        "write_s": round(time.perf_counter() - tick, 1),
        "maps_mib": {s: round(_maps_bytes(s, box) / 2**20, 1) for s in stages},
        "runs": [],
    }
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    for n in counts:
        star = write_star_file(workdir, n, box)
        for stage in stages:
            record = run_stage(stage, star, workdir / f"out_{stage}_{n}", workdir, budget)
            work_box = min(box, 64) if stage == "class2d" else box
            record.update(
                stage=stage, count=n, spectra_mib=round(spectra_bytes(n, work_box) / 2**20, 1)
            )
            print(json.dumps(record), flush=True)
            results["runs"].append(record)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the results")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--budget", default="2G")
    parser.add_argument("--workdir", default="/tmp/cryosnake_scale_particles")
    parser.add_argument("--stages", nargs="+", default=["class2d", "initial3d", "refine3d"])
    args = parser.parse_args(argv)
    results = measure(
        tuple(args.counts), args.box, args.budget, Path(args.workdir), tuple(args.stages)
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
