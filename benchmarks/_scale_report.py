"""``cryosnake report`` at session scale (issue 18, part 4).

Builds synthetic results folders of 10^2, 10^3 and 10^4 movies, laid out as the
workflow writes them: the aggregated tables (``movies.star``, ``micrographs_ctf.star``
with CTF and motion values and a few outliers, ``micrographs_selected.star``,
``rejected.tsv`` and ``movies_rejected.tsv`` with inspect and curate reasons,
``particles.star`` of 100 particles per movie, 10^6 at 10^4 movies, and
``particles_selected.star``) and every movie's three pictures (motion plot, CTF fit,
picks; hard links to three pictures of the size the stages write, so the folders hold
as many files as a real session at little disk cost), in per-chunk subfolders
(``motioncor/chunk0001/<movie>_motion.png``) or, with ``layout="flat"``, in the stage
folders. Then times ``cryosnake report`` in a fresh interpreter (imports included) and
records the HTML size and the number of pictures embedded.

``baseline`` (``--baseline FILE``): another version of ``stages/report.py`` (e.g.
``git show <commit>:src/cryosnake/stages/report.py > /tmp/report_old.py``) run on the
same folders, side by side; the JSON gives the ratios.

``bench_scale.py`` imports :func:`measure`; run alone::

    python benchmarks/_scale_report.py --out benchmarks/results/scale-report.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from cryosnake.io import optics_table, save_figure, write_star

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CHUNK = 50  # movies per chunk folder
PARTICLES_PER_MOVIE = 100
CONFIG = (
    "curate:\n  max_resolution: 10\n  min_figure_of_merit: 0.1\n  min_defocus: 0\n"
    "  max_defocus: 0\n  max_astigmatism: 2000\n  max_total_motion: 40\n"
    "  max_early_motion: 0\n"
)
PARTICLE_LABELS = (
    "rlnImageName rlnMicrographName rlnCoordinateX rlnCoordinateY rlnOriginXAngst "
    "rlnOriginYAngst rlnDefocusU rlnDefocusV rlnDefocusAngle rlnPhaseShift "
    "rlnCtfMaxResolution rlnCtfFigureOfMerit rlnOpticsGroup rlnAutopickFigureOfMerit"
).split()


def _movie(i: int) -> str:
    return f"movie_{i + 1:05d}"


def _chunk(i: int) -> str:
    return f"chunk{i // CHUNK + 1:04d}"


def _template_pictures(folder: Path) -> dict[str, Path]:
    """Three pictures of the sizes the stages write (noise images do not compress):
    ~230 kB motion plot, ~280 kB CTF fit, ~190 kB picks."""
    rng = np.random.default_rng(1)
    out = {}
    for name, size, shape in (
        ("motion", (9, 4.2), (200, 200)),
        ("ctf", (9.5, 4.2), (256, 256)),
        ("pick", (9.3, 5.5), (300, 300)),
    ):
        fig, (a0, a1) = plt.subplots(1, 2, figsize=size)
        a0.imshow(rng.normal(size=shape), cmap="gray")
        a1.plot(np.cumsum(rng.normal(size=40)), "o-", ms=3)
        a1.grid(alpha=0.3)
        fig.suptitle(f"template {name}")
        out[name] = save_figure(folder / f"{name}.png", fig)
    return out


def _star_loop(path: Path, optics: pd.DataFrame, block: str, table: pd.DataFrame) -> None:
    """A STAR file like write_star's, written with pandas' CSV writer (10^6 rows in
    seconds instead of tens of seconds: the inputs are not what is measured)."""
    with path.open("w") as f:
        for name, df in (("optics", optics), (block, table)):
            f.write(f"\ndata_{name}\n\nloop_\n")
            f.writelines(f"_{c} #{k}\n" for k, c in enumerate(df.columns, start=1))
            df.to_csv(f, sep="\t", header=False, index=False, float_format="%.6f")


def build_session(root: Path, movies: int, *, layout: str = "chunk", seed: int = 0) -> dict:
    """A results folder of ``movies`` movies below ``root`` (see the module docstring).

    Returns the counts and the names of the planted worst micrographs (``worst_ctf``:
    the worst CTF fit, ``worst_drift``: the largest drift).
    """
    rng = np.random.default_rng(seed)
    results = root / "results"
    results.mkdir(parents=True)
    names = [_movie(i) for i in range(movies)]
    bad_movies = rng.random(movies) < 0.01  # rejected by inspect
    inspect_rejected = [n for n, bad in zip(names, bad_movies, strict=True) if bad]
    accepted = [i for i in range(movies) if not bad_movies[i]]
    write_star(
        results / "movies.star",
        {"movies": pd.DataFrame({"rlnMicrographMovieName": [f"movies/{n}.tiff" for n in names]})},
    )
    pd.DataFrame(
        {"movie": [f"movies/{n}.tiff" for n in inspect_rejected],
         "reason": [f"movies/{n}.tiff: got 12 frames, expected 40" for n in inspect_rejected]}
    ).to_csv(results / "movies_rejected.tsv", sep="\t", index=False)  # fmt: skip
    n = len(accepted)
    du = rng.uniform(8000, 25000, n)
    res = 4 + rng.gamma(2.0, 1.0, n)
    drift = rng.gamma(4.0, 4.0, n)
    worst_ctf, worst_drift = rng.choice(n, 2, replace=False)
    res[worst_ctf], drift[worst_drift] = 30.0, 150.0
    mics = pd.DataFrame(
        {
            "rlnMicrographName": [f"results/micrographs/{_chunk(i)}/{_movie(i)}.mrc"
                                  for i in accepted],
            "rlnDefocusU": du,
            "rlnDefocusV": du - np.abs(rng.normal(0, 400, n)),
            "rlnDefocusAngle": rng.uniform(0, 180, n),
            "rlnPhaseShift": 0.0,
            "rlnCtfFigureOfMerit": np.clip(rng.normal(0.3, 0.06, n), 0, 1),
            "rlnCtfMaxResolution": res,
            "rlnMicrographMetadata": [f"results/motioncor/{_chunk(i)}/{_movie(i)}.star"
                                      for i in accepted],
            "rlnAccumMotionTotal": drift,
            "rlnAccumMotionEarly": 0.3 * drift,
            "rlnAccumMotionLate": 0.7 * drift,
            "rlnOpticsGroup": 1,
        }
    )  # fmt: skip
    reasons = [[] for _ in range(n)]
    for i in np.flatnonzero(res > 10):
        reasons[i].append(f"CTF fit to {res[i]:.1f} Å > 10.0 Å")
    fom = mics.rlnCtfFigureOfMerit.to_numpy()
    for i in np.flatnonzero(fom < 0.1):
        reasons[i].append(f"CTF figure of merit {fom[i]:.3f} < 0.1")
    for i in np.flatnonzero(drift > 40):
        reasons[i].append(f"total motion {drift[i]:.1f} Å > 40.0 Å")
    keep = np.array([not r for r in reasons])
    optics = optics_table(pixel_size=1.5, voltage=300, cs=2.7, amplitude_contrast=0.07)
    write_star(results / "micrographs_ctf.star", {"optics": optics, "micrographs": mics})
    write_star(
        results / "micrographs_selected.star",
        {"optics": optics, "micrographs": mics[keep].reset_index(drop=True)},
    )
    rejected = pd.DataFrame(
        {
            "micrograph": [f"movies/{m}.tiff" for m in inspect_rejected]
            + list(mics.rlnMicrographName[~keep]),
            "reasons": [f"movies/{m}.tiff: got 12 frames, expected 40" for m in inspect_rejected]
            + ["; ".join(r) for r in reasons if r],
            "stage": ["inspect"] * len(inspect_rejected) + ["curate"] * int((~keep).sum()),
        }
    )
    rejected.to_csv(results / "rejected.tsv", sep="\t", index=False)
    # Particles: 100 per movie on average, on the kept micrographs.
    kept = np.flatnonzero(keep)
    counts = rng.poisson(PARTICLES_PER_MOVIE * movies / max(1, kept.size), kept.size)
    on = np.repeat(kept, counts)
    total = on.size
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{k + 1:06d}@x.mrcs" for k in range(total)],
            "rlnMicrographName": mics.rlnMicrographName.to_numpy()[on],
            "rlnCoordinateX": rng.uniform(0, 4000, total),
            "rlnCoordinateY": rng.uniform(0, 4000, total),
            "rlnOriginXAngst": 0.0,
            "rlnOriginYAngst": 0.0,
            "rlnDefocusU": du[on],
            "rlnDefocusV": mics.rlnDefocusV.to_numpy()[on],
            "rlnDefocusAngle": mics.rlnDefocusAngle.to_numpy()[on],
            "rlnPhaseShift": 0.0,
            "rlnCtfMaxResolution": res[on],
            "rlnCtfFigureOfMerit": fom[on],
            "rlnOpticsGroup": 1,
            "rlnAutopickFigureOfMerit": rng.uniform(30, 80, total),
        }
    )
    poptics = optics.assign(rlnImagePixelSize=1.5, rlnImageSize=180, rlnImageDimensionality=2)
    _star_loop(results / "particles.star", poptics, "particles", table)
    _star_loop(
        results / "particles_selected.star",
        poptics,
        "particles",
        table[rng.random(total) < 0.6],
    )
    # Every movie's pictures: hard links to three templates.
    templates = _template_pictures(root / "templates")
    for i in accepted:
        for folder, ending, template in (
            ("motioncor", "_motion.png", "motion"),
            ("ctf", ".png", "ctf"),
            ("pick", ".png", "pick"),
        ):
            where = results / folder / (_chunk(i) if layout == "chunk" else "")
            where.mkdir(parents=True, exist_ok=True)
            target = where / f"{_movie(i)}{ending}"
            try:
                os.link(templates[template], target)
            except OSError:
                shutil.copyfile(templates[template], target)
    config = root / "config.yaml"
    config.write_text(CONFIG)
    return {
        "movies": movies,
        "rejected_by_inspect": len(inspect_rejected),
        "micrographs": n,
        "rejected_by_curate": int((~keep).sum()),
        "particles": total,
        "worst_ctf": _movie(accepted[worst_ctf]),
        "worst_drift": _movie(accepted[worst_drift]),
        "picture_bytes": {k: p.stat().st_size for k, p in templates.items()},
    }


# The report ("-") or a report.py in a fresh interpreter; prints its peak memory (kB).
CHILD = """
import importlib.util, resource, sys
if sys.argv[1] == "-":
    from cryosnake.cli import main
    code = main(["report", *sys.argv[2:]])
else:
    spec = importlib.util.spec_from_file_location("baseline_report", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(sys.argv[2:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
raise SystemExit(code)
"""


def time_report(root: Path, out: Path, baseline: Path | None = None) -> dict[str, Any]:
    """Run the report (or ``baseline``, a report.py) in a fresh interpreter on
    ``root``/results; wall seconds, HTML bytes, pictures embedded."""
    args = ["--results", str(root / "results"), "--out", str(out)]
    args += ["--config", str(root / "config.yaml")]
    command = [sys.executable, "-c", CHILD, "-" if baseline is None else str(baseline), *args]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"report failed: {done.stderr.strip()}")
    page = out.read_text(encoding="utf-8")
    return {
        "seconds": round(seconds, 2),
        "html_bytes": len(page.encode()),
        "pictures": page.count(";base64,"),
        "peak_memory_mb": round(int(done.stderr.split()[-1]) / 1024),
    }


def measure(
    movies: Sequence[int] = (100, 1_000, 10_000),
    workdir: Path | None = None,
    *,
    layout: str = "chunk",
    baseline: Path | None = None,
) -> dict[str, Any]:
    """Build a session of each size in ``movies`` below ``workdir`` (a temporary folder
    when None) and time ``cryosnake report`` on it (and ``baseline``, a report.py of
    another version, on the same folder when given)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        runs = []
        for n in movies:
            root = Path(workdir) / f"session_{n}_{layout}"
            if root.exists():
                shutil.rmtree(root)
            t0 = time.perf_counter()
            session = build_session(root, n, layout=layout)
            session["build_seconds"] = round(time.perf_counter() - t0, 1)
            run: dict[str, Any] = {"session": session}
            run["report"] = time_report(root, root / "report.html")
            page = (root / "report.html").read_text(encoding="utf-8")
            run["report"]["worst_named"] = all(
                session[k] in page for k in ("worst_ctf", "worst_drift")
            )
            if baseline is not None:
                old = time_report(root, root / "report_baseline.html", baseline)
                run["baseline"] = old
                run["ratio_seconds"] = round(run["report"]["seconds"] / old["seconds"], 2)
                run["ratio_bytes"] = round(run["report"]["html_bytes"] / old["html_bytes"], 3)
            print(json.dumps(run), flush=True)
            runs.append(run)
            shutil.rmtree(root)
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "pandas": pd.__version__,
                "platform": platform.platform(),
            },
            "layout": layout,
            "baseline": None if baseline is None else str(baseline),
            "runs": runs,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layout", choices=("chunk", "flat"), default="chunk")
    parser.add_argument("--baseline", type=Path, default=None, help="a report.py to compare")
    parser.add_argument("--out", type=Path, default=None, help="JSON file of the figures")
    args = parser.parse_args(argv)
    result = measure(args.movies, args.workdir, layout=args.layout, baseline=args.baseline)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
