"""cryosnake live against the test microscope (scripts/microscope.py) on tiny movies.

The microscope writes the movies in EPU's layout, each in pieces under its final name,
at a set pace; the session must keep pace, give the batch run's results, and survive
being killed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake_output import finished_jobs
from test_workflow import snakemake, tiny_config

from cryosnake.io import read_mrc, read_star
from cryosnake.live.ledger import read_events

ROOT = Path(__file__).resolve().parents[2]
CRYOSNAKE = str(Path(sys.executable).parent / "cryosnake")
pytestmark = pytest.mark.workflow
CHUNK_PERIOD = 30.0  # s: a run of the chunk lane on tiny movies takes 10-20 s here


@pytest.fixture(scope="module")
def movies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny movies (and their gain) made by the simulator."""
    data = tmp_path_factory.mktemp("live-data")
    subprocess.run(
        [CRYOSNAKE, "simulate", "--preset", "tiny", "--seed", "3", "--n-movies", "6",
         "--format", "tiff", "--pixel-size", "2.5", "--dose-per-frame", "3.0",
         "--out-dir", str(data)],
        check=True, capture_output=True,
    )  # fmt: skip
    return data


def _config(root: Path, movies: Path) -> Path:
    config = tiny_config(root)
    config["simulate"]["enabled"] = False
    config["input"].update(gain=str(movies / "gain.mrc"), chunk_size=2)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _microscope(movies: Path, dest: Path, interval: float, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "microscope.py"), "--source",
         str(movies / "movies"), "--dest", str(dest), "--interval", str(interval),
         "--pieces", "3", "--manifest", str(dest.parent / "microscope.tsv"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _live(root: Path, config: Path, watch: Path, idle_minutes: float) -> list[str]:
    return [
        CRYOSNAKE, "live", "--watch", str(watch), "--configfile", str(config),
        "--snakefile", str(ROOT / "Snakefile"), "--settle", "2",
        "--chunk-period", str(CHUNK_PERIOD), "--class2d-every", "1000",
        "--stop-after-idle", str(idle_minutes), "--poll", "0.5", "--cores", "2",
    ]  # fmt: skip


def _picks(results: Path) -> pd.DataFrame:
    """The particles of particles.star by movie and position, in the file's order."""
    table = read_star(results / "particles.star")["particles"]
    return pd.DataFrame({
        "movie": [Path(n).stem for n in table["rlnMicrographName"]],
        "x": table["rlnCoordinateX"].to_numpy(),
        "y": table["rlnCoordinateY"].to_numpy(),
    })  # fmt: skip


@pytest.mark.slow  # a session and a batch run: 2 min; make test-slow, bench_live.py
def test_live_keeps_pace_and_gives_the_batch_results(movies: Path, tmp_path: Path) -> None:
    watch = tmp_path / "microscope" / "epu"
    config = _config(tmp_path, movies)
    scope = _microscope(movies, watch, 6.0)
    live = subprocess.run(
        _live(tmp_path, config, watch, 0.2), cwd=tmp_path, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert scope.wait(timeout=60) == 0
    assert live.returncode == 0, live.stdout[-2000:] + live.stderr[-2000:]
    results = tmp_path / "results"
    events = read_events(results / "live" / "events.tsv")
    manifest = pd.read_csv(tmp_path / "microscope" / "microscope.tsv", sep="\t")
    assert len(manifest) == 6
    processed = events.query("event == 'processed'").set_index("movie")["time"]
    assert sorted(processed.index) == sorted(manifest["movie"])
    # Each movie's micrograph, CTF and picks exist within two chunk periods of its arrival.
    lag = processed.loc[manifest["movie"]].to_numpy() - manifest["finished"].to_numpy()
    print(f"arrival to processed: {np.round(lag, 1)} s (chunk period {CHUNK_PERIOD} s)")
    assert (lag > 0).all() and (lag <= 2 * CHUNK_PERIOD).all()
    table = dict(line.split("\t") for line in (results / "chunks.tsv").read_text().splitlines()[1:])
    for movie, chunk in table.items():
        for folder, suffix in (("micrographs", ".mrc"), ("ctf", ".star"), ("pick", ".star")):
            assert (results / folder / chunk / f"{movie}{suffix}").is_file(), (folder, movie)
    assert (results / "live" / "report.html").stat().st_size > 10_000
    assert (results / "report.html").is_file()  # the final run's

    # The same movies in one batch run: the same selections and classes.
    batch_config = yaml.safe_load(config.read_text())
    batch_config["results"] = str(tmp_path / "batch")
    batch_config["input"].update(
        movies=str(watch / "Images-Disc*" / "GridSquare_*" / "Data" / "*_fractions.tiff"),
        chunk_size=25,
    )
    batch = snakemake(tmp_path, config=batch_config)
    assert batch.returncode == 0, batch.stderr[-3000:]
    other = tmp_path / "batch"
    for name in ("micrographs_selected.star", "movies.star"):
        block = "micrographs" if name.startswith("micro") else "movies"
        column = "rlnMicrographName" if block == "micrographs" else "rlnMicrographMovieName"
        a = [Path(n).stem for n in read_star(results / name)[block][column]]
        b = [Path(n).stem for n in read_star(other / name)[block][column]]
        assert a == b, name
    pd.testing.assert_frame_equal(_picks(results), _picks(other))
    a_classes, _ = read_mrc(results / "class2d" / "run_classes.mrcs")
    b_classes, _ = read_mrc(other / "class2d" / "run_classes.mrcs")
    np.testing.assert_allclose(a_classes, b_classes, rtol=1e-5, atol=1e-6)
    a_sel = read_star(results / "particles_selected.star").get("particles", pd.DataFrame())
    b_sel = read_star(other / "particles_selected.star").get("particles", pd.DataFrame())
    assert len(a_sel) == len(b_sel)


def test_a_killed_session_restarts_losing_nothing_and_doing_nothing_twice(
    movies: Path, tmp_path: Path
) -> None:
    watch = tmp_path / "microscope" / "epu"
    config = _config(tmp_path, movies)
    scope = _microscope(movies, watch, 1.5, "--count", "5")
    command = _live(tmp_path, config, watch, 0.15)
    first = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    logs = tmp_path / "results" / "live" / "logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it while its first cycle runs jobs
        log = logs / "cycle-0001-chunks.log"
        if log.is_file() and "Finished jobid" in log.read_text():
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(2)  # the microscope goes on meanwhile
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert scope.wait(timeout=60) == 0
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    events = read_events(tmp_path / "results" / "live" / "events.tsv")
    counts = events.query("event != 'cycle'").groupby(["event", "movie"]).size()
    assert (counts == 1).all(), counts[counts != 1]
    for kind in ("arrived", "staged", "processed"):
        assert len(events.query("event == @kind")) == 5, kind
    cycle_logs = sorted(logs.glob("cycle-*.log"))
    assert cycle_logs[0].name == "cycle-0001-chunks.log"  # the killed run's log is kept
    done = finished_jobs(cycle_logs)
    per_chunk = {(rule, chunk): n for (rule, chunk), n in done.items() if chunk}
    assert per_chunk and max(per_chunk.values()) == 1, per_chunk
    chunks = set(pd.read_csv(tmp_path / "results" / "chunks.tsv", sep="\t")["chunk"])
    for rule in ("inspect", "motioncor", "ctf", "pick", "extract"):
        assert {c for (r, c) in per_chunk if r == rule} == chunks, rule
