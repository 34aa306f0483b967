"""Live processing (issue 19): does ``cryosnake live`` keep pace with a microscope, and
does it give the batch run's results?

The test microscope (``scripts/microscope.py``) replays ``--movies`` simulated demo
movies (1024 px, 30 frames; ``cryosnake simulate --preset demo --seed SEED``) in
EPU's layout, one every ``--interval`` seconds, each written in 4 pieces; ``cryosnake
live`` watches it with the workflow's demo configuration (3D on). Then one batch run of
``snakemake`` processes the same EPU folder. Measured:

- per movie, the time from the end of its writing to its ``processed`` event (its
  micrograph, CTF, picks and particles exist), against two chunk periods;
- the cycles the session ran (kind, seconds) and whether any movie was staged or
  processed twice, or any chunk job finished twice (from the cycles' logs);
- against the batch run: the selected micrographs and the particles (by movie and
  position), the 2D classes (largest difference), and the final map (largest
  difference and the correlation of the two maps).

Nothing is fitted here, so there are no tuned seeds; ``--seed`` only makes the movies.

Run from the repository (.venv)::

    .venv/bin/python benchmarks/bench_live.py --out benchmarks/results/live-cpu2.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

from snakemake_output import finished_jobs  # noqa: E402


def _stems(path: Path, block: str, label: str) -> list[str]:
    from cryosnake.io import read_star

    return [Path(n).stem for n in read_star(path)[block][label]]


def _particles(path: Path) -> pd.DataFrame:
    from cryosnake.io import read_star

    table = read_star(path)["particles"]
    return pd.DataFrame({
        "movie": [Path(n).stem for n in table["rlnMicrographName"]],
        "x": table["rlnCoordinateX"].to_numpy(),
        "y": table["rlnCoordinateY"].to_numpy(),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, default=30)
    parser.add_argument("--interval", type=float, default=20.0)
    parser.add_argument("--chunk-size", type=int, default=5)
    parser.add_argument("--chunk-period", type=float, default=100.0)
    parser.add_argument("--class2d-every", type=int, default=1000)
    parser.add_argument("--map3d-min-particles", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_live"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/live-cpu2.json")
    args = parser.parse_args(argv)
    from cryosnake.io import read_mrc
    from cryosnake.live.ledger import read_events

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "gain.mrc").is_file():
        subprocess.run(
            [BIN / "cryosnake", "simulate", "--preset", "demo", "--seed", str(args.seed),
             "--n-movies", str(args.movies), "--out-dir", data],
            check=True,
        )  # fmt: skip
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["results"] = str(work / "results")
    config["simulate"]["enabled"] = False
    config["input"].update(gain=str(data / "gain.mrc"), chunk_size=args.chunk_size)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    watch = work / "scope" / "epu"
    scope = subprocess.Popen(
        [sys.executable, ROOT / "scripts" / "microscope.py", "--source", data / "movies",
         "--dest", watch, "--interval", str(args.interval), "--seed", str(args.seed)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    started = time.time()
    live = subprocess.run(
        [BIN / "cryosnake", "live", "--watch", watch, "--configfile", work / "config.yaml",
         "--snakefile", ROOT / "Snakefile", "--settle", "10",
         "--chunk-period", str(args.chunk_period), "--class2d-every", str(args.class2d_every),
         "--map3d-min-particles", str(args.map3d_min_particles), "--stop-after-idle", "1",
         "--poll", "2", "--cores", "2"],
        cwd=work, check=True,
    )  # fmt: skip
    session_s = time.time() - started
    scope.wait()
    del live
    results = work / "results"
    events = read_events(results / "live" / "events.tsv")
    manifest = pd.read_csv(work / "scope" / "microscope.tsv", sep="\t").set_index("movie")
    processed = events.query("event == 'processed'").set_index("movie")["time"]
    lag = processed.loc[manifest.index] - manifest["finished"]
    counts = events.query("event != 'cycle'").groupby(["event", "movie"]).size()
    cycles = [
        {"kind": d.split()[0], "ok": d.split()[1] == "ok", "seconds": float(d.split()[2])}
        for d in events.query("event == 'cycle'")["detail"]
    ]
    done = finished_jobs(sorted((results / "live" / "logs").glob("cycle-*.log")))
    twice = {f"{r}/{c}": n for (r, c), n in done.items() if c and n > 1}

    batch_config = dict(config, results=str(work / "batch"))
    batch_config["input"] = dict(
        config["input"], chunk_size=25,
        movies=str(watch / "Images-Disc*" / "GridSquare_*" / "Data" / "*_fractions.mrc"),
    )  # fmt: skip
    (work / "batch.yaml").write_text(yaml.safe_dump(batch_config))
    started = time.time()
    subprocess.run(
        [BIN / "snakemake", "--snakefile", ROOT / "Snakefile", "--configfile",
         work / "batch.yaml", "--cores", "2"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    batch_s = time.time() - started
    batch = work / "batch"
    same: dict[str, Any] = {}
    for name, block, label in (
        ("micrographs_selected.star", "micrographs", "rlnMicrographName"),
        ("movies.star", "movies", "rlnMicrographMovieName"),
    ):
        same[name] = _stems(results / name, block, label) == _stems(batch / name, block, label)
    same["particles.star"] = _particles(results / "particles.star").equals(
        _particles(batch / "particles.star")
    )
    same["particles_selected.star"] = _particles(results / "particles_selected.star").equals(
        _particles(batch / "particles_selected.star")
    )
    a, _ = read_mrc(results / "class2d" / "run_classes.mrcs")
    b, _ = read_mrc(batch / "class2d" / "run_classes.mrcs")
    same["class2d_max_abs_diff"] = float(np.abs(a - b).max())
    a, _ = read_mrc(results / "postprocess" / "postprocess.mrc")
    b, _ = read_mrc(batch / "postprocess" / "postprocess.mrc")
    same["map_max_abs_diff"] = float(np.abs(a - b).max())
    same["map_max_abs"] = float(np.abs(b).max())
    same["map_correlation"] = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    record = {
        "movies": args.movies,
        "interval_s": args.interval,
        "chunk_size": args.chunk_size,
        "chunk_period_s": args.chunk_period,
        "seed": args.seed,
        "session_s": round(session_s, 1),
        "batch_s": round(batch_s, 1),
        "lag_s": {
            "median": round(float(lag.median()), 1),
            "max": round(float(lag.max()), 1),
            "within_two_periods": int((lag <= 2 * args.chunk_period).sum()),
            "each": [round(float(x), 1) for x in lag],
        },
        "events_more_than_once": int((counts > 1).sum()),
        "chunk_jobs_finished_twice": twice,
        "cycles": cycles,
        "same_as_batch": same,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
