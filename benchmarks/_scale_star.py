"""STAR files and the aggregating stages at session scale (issue 18, part 3).

Measures, in one run on one machine:

* writing and reading a particles STAR file (``optics`` + ``particles`` with the labels
  ``cryosnake extract`` writes) of 10^4, 10^5 and 10^6 rows through
  :mod:`cryosnake.io.star`, side by side with :mod:`starfile` (the peer);
* reading many small per-micrograph STAR files (the CTF STARs curate reads), ours
  against starfile (the peer is timed on at most ``PEER_SMALL_FILES`` files and its
  total extrapolated; the JSON says so);
* ``cryosnake curate``, ``cryosnake merge-particles`` and ``cryosnake select2d`` at
  ``micrographs`` micrographs and the largest ``rows`` particles, on synthetic inputs
  laid out as the workflow writes them (``ctf/chunkNNNN/<movie>.star``, ...).

``bench_scale.py`` imports :func:`measure`; run alone::

    python benchmarks/_scale_star.py --out benchmarks/results/scale-star.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

import cryosnake.io
from cryosnake.io import optics_table, read_star, write_star
from cryosnake.stages import curate, merge_particles, select2d

__all__ = ["PEER_SMALL_FILES", "make_inputs", "make_particles", "measure"]

PEER_SMALL_FILES = 1000  # starfile reads ~10 ms per small file: time a sample
CHUNK = 1000  # micrographs per chunk folder, as the workflow groups them
FRAMES = 40  # frames per movie in the motion STARs
CLASSES = 50  # 2D classes of the select2d input


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _quiet(fn: Callable[[], Any]) -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def _stem(i: int) -> str:
    return f"movie_{i + 1:05d}"


def _chunk(i: int) -> str:
    return f"chunk{i // CHUNK + 1:04d}"


def particle_optics() -> pd.DataFrame:
    return optics_table(
        pixel_size=0.83,
        voltage=300,
        cs=2.7,
        amplitude_contrast=0.1,
        image_size=256,
        image_pixel_size=1.66,
    )


def make_particles(n: int, micrographs: int, seed: int = 0) -> pd.DataFrame:
    """``n`` particle rows over ``micrographs`` micrographs with the labels of extract
    (plus class2d's rlnClassNumber and angles), as one DataFrame."""
    rng = np.random.default_rng(seed)
    mic = np.sort(rng.integers(0, micrographs, n))
    first = np.searchsorted(mic, mic, side="left")
    index = np.arange(n) - first + 1
    stems = np.array([f"{_chunk(i)}/{_stem(i)}" for i in range(micrographs)], dtype=object)
    names = stems[mic]
    image = [f"{k:06d}@extract/{s}.mrcs" for k, s in zip(index, names, strict=True)]
    defocus = rng.uniform(8000, 30000, micrographs)[mic]
    return pd.DataFrame(
        {
            "rlnImageName": image,
            "rlnMicrographName": ["motioncor/" + s + ".mrc" for s in names],
            "rlnCoordinateX": rng.uniform(0, 4096, n).round(1),
            "rlnCoordinateY": rng.uniform(0, 4096, n).round(1),
            "rlnOriginXAngst": np.zeros(n),
            "rlnOriginYAngst": np.zeros(n),
            "rlnDefocusU": defocus + 150.0,
            "rlnDefocusV": defocus - 150.0,
            "rlnDefocusAngle": np.full(n, 33.5),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfMaxResolution": rng.uniform(3, 9, micrographs)[mic],
            "rlnCtfFigureOfMerit": rng.uniform(0, 0.4, micrographs)[mic],
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnAutopickFigureOfMerit": rng.uniform(0, 1, n),
            "rlnClassNumber": rng.integers(1, CLASSES + 1, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
        }
    )


def make_inputs(root: Path, micrographs: int, particles: int) -> dict[str, Any]:
    """Per-micrograph CTF, motion and extract STAR files in chunk folders, and class2d's
    run_data/run_model STARs, below ``root``; returns their paths and the seconds the
    10^4 small writes took (``write_star``)."""
    rng = np.random.default_rng(1)
    table = make_particles(particles, micrographs)
    extract_cols = [c for c in table.columns if c not in ("rlnClassNumber", "rlnAnglePsi")]
    optics = particle_optics()
    folders: dict[str, set[Path]] = {"ctf": set(), "motioncor": set(), "extract": set()}
    files: dict[str, list[str]] = {"ctf": [], "motioncor": [], "extract": []}
    starts = np.searchsorted(
        table["rlnMicrographName"].to_numpy(dtype=str),
        [f"motioncor/{_chunk(i)}/{_stem(i)}.mrc" for i in range(micrographs)],
    )
    ends = np.append(starts[1:], particles)
    walk = np.cumsum(rng.normal(0, 0.6, (micrographs, FRAMES, 2)), axis=1)
    fit = rng.uniform(0, 1, (micrographs, 3))
    seconds = 0.0
    for i in range(micrographs):
        stem, chunk = _stem(i), _chunk(i)
        ctf = pd.DataFrame(
            [
                {
                    "rlnMicrographName": f"motioncor/{chunk}/{stem}.mrc",
                    "rlnDefocusU": round(8000 + 22000 * fit[i, 0] + 150, 2),
                    "rlnDefocusV": round(8000 + 22000 * fit[i, 0] - 150, 2),
                    "rlnDefocusAngle": 33.5,
                    "rlnPhaseShift": 0.0,
                    "rlnCtfFigureOfMerit": round(0.4 * fit[i, 1], 5),
                    "rlnCtfMaxResolution": round(3 + 6 * fit[i, 2], 3),
                    "rlnVoltage": 300.0,
                    "rlnSphericalAberration": 2.7,
                    "rlnAmplitudeContrast": 0.1,
                    "rlnMicrographPixelSize": 0.83,
                }
            ]
        )
        general = pd.DataFrame(
            [
                {
                    "rlnImageSizeX": 4096,
                    "rlnImageSizeY": 4096,
                    "rlnImageSizeZ": FRAMES,
                    "rlnMicrographMovieName": f"movies/{stem}.tif",
                    "rlnMicrographBinning": 1.0,
                    "rlnMicrographOriginalPixelSize": 0.83,
                    "rlnMicrographDoseRate": 1.0,
                    "rlnMicrographPreExposure": 0.0,
                    "rlnMicrographStartFrame": 1,
                }
            ]
        )
        shifts = pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.arange(1, FRAMES + 1),
                "rlnMicrographShiftX": walk[i, :, 0],
                "rlnMicrographShiftY": walk[i, :, 1],
            }
        )
        paths = {kind: root / kind / chunk / f"{stem}.star" for kind in files}
        t0 = time.perf_counter()
        write_star(paths["ctf"], {"micrograph": ctf})
        seconds += time.perf_counter() - t0
        write_star(paths["motioncor"], {"general": general, "global_shift": shifts})
        part = table.iloc[starts[i] : ends[i]][extract_cols].reset_index(drop=True)
        write_star(paths["extract"], {"optics": optics, "particles": part})
        for kind, path in paths.items():
            files[kind].append(str(path))
            folders[kind].add(path.parent)
        if i % 7 == 0:  # the other outputs of the per-movie stages sit beside the STARs
            (paths["motioncor"].with_suffix(".mrc")).write_bytes(b"")
            (paths["extract"].with_suffix(".mrcs")).write_bytes(b"")
    model = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{k:06d}@class2d/run_classes.mrcs" for k in range(1, 51)],
            "rlnClassDistribution": np.full(CLASSES, 1 / CLASSES),
            "rlnClassScore": np.linspace(0.5, 1.0, CLASSES),
            "rlnClassParticleCount": np.full(CLASSES, particles // CLASSES),
        }
    )
    write_star(root / "class2d" / "run_model.star", {"model_classes": model})
    write_star(root / "class2d" / "run_data.star", {"optics": optics, "particles": table})
    return {
        "files": files,
        "folders": {kind: sorted(str(p) for p in dirs) for kind, dirs in folders.items()},
        "small_write_s": seconds,
        "class2d": root / "class2d",
    }


def bench_star(rows: Sequence[int], micrographs: int, root: Path) -> list[dict[str, Any]]:
    """Write and read a particles STAR of each size: ours and starfile's."""
    out = []
    optics = particle_optics()
    for n in rows:
        table = make_particles(n, min(micrographs, max(1, n // 100))).drop(
            columns=["rlnClassNumber", "rlnAnglePsi"]
        )
        blocks = {"optics": optics, "particles": table}
        ours_w, _ = _timed(lambda b=blocks, n=n: write_star(root / f"ours_{n}.star", b))
        peer_w, _ = _timed(
            lambda b=blocks, n=n: starfile.write(
                b, root / f"peer_{n}.star", overwrite=True, float_format="%.6f"
            )
        )
        ours_r, back = _timed(lambda n=n: read_star(root / f"ours_{n}.star"))
        peer_r, _ = _timed(lambda n=n: starfile.read(root / f"ours_{n}.star", always_dict=True))
        assert len(back["particles"]) == n
        out.append(
            {
                "rows": n,
                "columns": table.shape[1],
                "mb": round((root / f"ours_{n}.star").stat().st_size / 1e6, 1),
                "ours_write_s": round(ours_w, 3),
                "peer_write_s": round(peer_w, 3),
                "write_ratio": round(peer_w / ours_w, 1),
                "ours_read_s": round(ours_r, 3),
                "peer_read_s": round(peer_r, 3),
                "read_ratio": round(peer_r / ours_r, 1),
            }
        )
        for name in (f"ours_{n}.star", f"peer_{n}.star"):
            (root / name).unlink()
        print(f"STAR {n} rows: {out[-1]}", flush=True)
    return out


def bench_small(files: list[str], small_write_s: float) -> dict[str, Any]:
    """Read the per-micrograph CTF STARs one by one (ours and starfile's) and, where
    cryosnake has it, all at once with ``read_star_stack`` (what the stages use)."""
    ours, _ = _timed(lambda: [read_star(p) for p in files])
    sample = files[:PEER_SMALL_FILES]
    peer, _ = _timed(lambda: [starfile.read(p, always_dict=True) for p in sample])
    peer_total = peer * len(files) / len(sample)
    out: dict[str, Any] = {
        "files": len(files),
        "ours_write_s": round(small_write_s, 3),
        "ours_read_s": round(ours, 3),
        "peer_read_s": round(peer_total, 3),
        "peer_files_timed": len(sample),
        "read_ratio": round(peer_total / ours, 1),
    }
    stack_reader = getattr(cryosnake.io, "read_star_stack", None)  # absent before issue 18
    if stack_reader is not None:
        stacked, _ = _timed(lambda: stack_reader(files, ["micrograph"]))
        out["ours_stack_read_s"] = round(stacked, 3)
        out["stack_read_ratio"] = round(peer_total / stacked, 1)
    return out


def bench_stages(inputs: dict[str, Any], root: Path, use_folders: bool) -> dict[str, float]:
    """Seconds of curate, merge-particles and select2d on the synthetic session."""
    given = inputs["folders"] if use_folders else inputs["files"]
    out = root / "out"
    times: dict[str, float] = {}
    times["curate_s"], _ = _timed(
        lambda: _quiet(
            lambda: curate.main(
                [
                    "--ctf",
                    *given["ctf"],
                    "--motion",
                    *given["motioncor"],
                    "--pixel-size",
                    "0.83",
                    "--voltage",
                    "300",
                    "--cs",
                    "2.7",
                    "--amplitude-contrast",
                    "0.1",
                    "--max-resolution",
                    "8",
                    "--min-figure-of-merit",
                    "0.05",
                    "--min-defocus",
                    "5000",
                    "--max-defocus",
                    "40000",
                    "--max-astigmatism",
                    "1000",
                    "--max-total-motion",
                    "60",
                    "--max-early-motion",
                    "20",
                    "--out-dir",
                    str(out),
                ]
            )
        )
    )
    times["merge_particles_s"], _ = _timed(
        lambda: _quiet(
            lambda: merge_particles.main(
                [
                    "--stars",
                    *given["extract"],
                    "--selected",
                    str(out / "micrographs_selected.star"),
                    "--out",
                    str(out / "particles.star"),
                ]
            )
        )
    )
    class2d = inputs["class2d"]
    times["select2d_s"], _ = _timed(
        lambda: _quiet(
            lambda: select2d.main(
                [
                    "--data",
                    str(class2d / "run_data.star"),
                    "--model",
                    str(class2d / "run_model.star"),
                    "--out",
                    str(out / "particles_selected.star"),
                    "--min-score",
                    "0.8",
                ]
            )
        )
    )
    return {k: round(v, 3) for k, v in times.items()}


def measure(
    rows: Sequence[int] = (10_000, 100_000, 1_000_000),
    micrographs: int = 10_000,
    workdir: Path | None = None,
    *,
    use_folders: bool = True,
) -> dict[str, Any]:
    """Time STAR write/read against rows (ours and starfile's) and curate,
    merge-particles and select2d at ``micrographs`` micrographs and ``max(rows)``
    particles; the inputs go below ``workdir`` (a temporary folder when None).

    ``use_folders`` gives the stages the chunk folders instead of the 10^4 file names.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        star = bench_star(rows, micrographs, root)
        t_inputs, inputs = _timed(lambda: make_inputs(root / "session", micrographs, max(rows)))
        print(f"inputs made in {t_inputs:.1f} s", flush=True)
        small = bench_small(inputs["files"]["ctf"], inputs["small_write_s"])
        print(f"small files: {small}", flush=True)
        stages = bench_stages(inputs, root, use_folders)
        print(f"stages: {stages}", flush=True)
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "pandas": pd.__version__,
                "platform": platform.platform(),
            },
            "star": star,
            "small_files": small,
            "stages": {
                "micrographs": micrographs,
                "particles": max(rows),
                "inputs": "folders" if use_folders else "files",
                **stages,
            },
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--micrographs", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--files", action="store_true", help="give the stages file names, not folders"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file of the figures")
    args = parser.parse_args(argv)
    result = measure(args.rows, args.micrographs, args.workdir, use_folders=not args.files)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
