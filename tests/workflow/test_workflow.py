"""The Snakemake workflow: dry runs, lint, config errors and a real run on tiny data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from snakemake_output import job_counts

from cryosnake.io import read_mrc, read_star

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow
SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]


def snakemake(
    workdir: Path, *args: str, config: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the repository's Snakefile in ``workdir``."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
    ]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    else:
        cmd += ["--configfile", str(ROOT / "config" / "config.yaml")]
    # Without .venv/bin on PATH: the workflow finds `cryosnake` by itself.
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return subprocess.run(
        [*cmd, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )


def tiny_config(root: Path, n_movies: int = 2, fmt: str = "mrc") -> dict[str, Any]:
    """A configuration that simulates ``n_movies`` tiny movies under ``root``."""
    data = root / "data"
    suffix = ".mrc" if fmt == "mrc" else ".tif"
    return {
        "results": str(root / "results"),
        "acquisition": {"pixel_size": 2.5, "dose_per_frame": 3.0},
        "input": {"movies": str(data / "movies" / f"*{suffix}"), "gain": str(data / "gain.mrc")},
        "simulate": {
            "enabled": True,
            "preset": "tiny",
            "seed": 3,
            "n_movies": n_movies,
            "format": fmt,
            "out_dir": str(data),
        },
        # 256 px micrographs at 2.5 Å/px: every CTF fit accepted, boxes of 80 px (not
        # 1.8 x 60 px) so that a few particles clear the edges; two classes; no 3D.
        "curate": {"max_resolution": 0},
        "extract": {"box": 80},
        "class2d": {"classes": 2, "iterations": 3},
        "map3d": False,  # a handful of particles: no map
    }


def test_dry_run_of_the_default_config_lists_the_demo_jobs(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts == {
        "simulate": 1,
        # the 6 demo movies make one chunk (input.chunk_size 25): one job per stage
        "inspect": 1,
        "import_movies": 1,
        "motioncor": 1,
        "ctf": 1,
        "curate": 1,
        "pick": 1,
        "extract": 1,
        "merge_particles": 1,
        "class2d": 1,
        "select2d": 1,
        "initial3d": 1,
        "refine3d": 1,
        "postprocess": 1,
        "report": 1,
        "all": 1,
        "total": 16,
    }
    # A dry run keeps no chunk table.
    assert not (tmp_path / "results" / "chunks.tsv").exists()


def _shell_commands(stdout: str) -> dict[str, str]:
    """{stage: its shell command} of a dry run's ``cryosnake <stage>`` jobs."""
    commands = {}
    for line in stdout.splitlines():
        if line.startswith("Shell command: ") and " cryosnake " in line:
            commands[line.split(" cryosnake ")[1].split()[0]] = line
    return commands


@pytest.mark.parametrize("classes", [0, 2])
def test_class3d_feeds_refine3d_only_when_on(tmp_path: Path, classes: int) -> None:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["class3d"].update(classes=classes, keep=[2] if classes else [])
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    commands = _shell_commands(result.stdout)
    refine = commands["refine3d"]
    if not classes:
        assert "class3d" not in counts and "results/class3d" not in result.stdout
        assert "--particles results/particles_selected.star" in refine
        return
    assert counts["class3d"] == counts["refine3d"] == 1
    assert counts["total"] == 17  # the demo's 16 jobs and class3d
    assert "--particles results/class3d/particles_kept.star" in refine
    class3d = commands["class3d"]
    for option in (
        "--particles results/particles_selected.star",
        "--reference results/initial3d/initial_model.mrc",
        "--out-dir results/class3d",
        "--classes 2",
        "--keep 2",
        "--names-relative-to .",
    ):
        assert option in class3d, class3d
    # The report and `all` ask for the classes.
    report = result.stdout.split("rule report:")[1].split("reason:")[0]
    assert "results/class3d/run_model.star" in report
    assert "results/class3d/particles_kept.star" in report


def test_lint_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"acquisition": {"pixel_size": -1.5}}, "acquisition.pixel_size"),
        ({"acquisition": {"voltage": "high"}}, "acquisition.voltage"),
        ({"simulate": {"preset": "huge"}}, "simulate.preset"),
        ({"inspect": {"dose_tolerence": 0.2}}, "inspect.dose_tolerence"),
        ({"input": {"gain_flip": "z"}}, "input.gain_flip"),
        ({"input": {"movies": "elsewhere/*.mrc"}}, "input.movies"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    config = tiny_config(tmp_path)
    for section, values in change.items():
        config.setdefault(section, {}).update(values)
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "config error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("cryosnake: config error: " + key), errors[0]


def test_existing_movies_are_discovered_by_glob(tmp_path: Path) -> None:
    movies = tmp_path / "session"
    movies.mkdir()
    for name in ("b_0002.tiff", "a_0001.mrc", "notes.txt"):
        (movies / name).write_bytes(b"")
    config = {
        "results": str(tmp_path / "results"),
        "input": {"movies": str(movies / "*"), "gain": None},
        "simulate": {"enabled": False},
    }
    # A file that is not a movie is an error naming it, not silently skipped.
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "notes.txt" in result.stderr
    assert "cryosnake: config error: input.movies:" in result.stderr
    (movies / "notes.txt").unlink()
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, result.stderr
    assert "chunk0001.log" in result.stdout
    per_stage = {"inspect": 1, "motioncor": 1, "ctf": 1, "pick": 1, "extract": 1}
    assert job_counts(result.stdout) == {
        "all": 1,
        "import_movies": 1,
        **per_stage,
        "curate": 1,
        "merge_particles": 1,
        "class2d": 1,
        "select2d": 1,
        "initial3d": 1,
        "refine3d": 1,
        "postprocess": 1,
        "report": 1,
        "total": 15,
    }
    # One movie per chunk: a job of each per-movie stage per movie.
    config["input"]["chunk_size"] = 1
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, result.stderr
    assert "chunk0002.log" in result.stdout
    assert {k: job_counts(result.stdout)[k] for k in per_stage} == dict.fromkeys(per_stage, 2)


def test_no_matching_movie_is_an_error(tmp_path: Path) -> None:
    config = {
        "results": str(tmp_path / "results"),
        "input": {"movies": str(tmp_path / "nothing" / "*.tiff"), "gain": None},
        "simulate": {"enabled": False},
    }
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "cryosnake: config error: input.movies: no movie file matches" in result.stderr


def test_real_run_on_tiny_data(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, n_movies=2, fmt="tiff")
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    star = starfile.read(results / "movies.star", always_dict=True)
    assert set(star) == {"optics", "movies"}
    assert star["optics"]["rlnMicrographOriginalPixelSize"].tolist() == [2.5]
    movies = star["movies"]["rlnMicrographMovieName"].tolist()
    assert [Path(m).name for m in movies] == ["movie_0001.tif", "movie_0002.tif"]
    # Both movies in one chunk, kept in chunks.tsv; one log and benchmark per chunk.
    chunks = (results / "chunks.tsv").read_text().splitlines()
    assert chunks == ["movie\tchunk", "movie_0001\tchunk0001", "movie_0002\tchunk0001"]
    assert (results / "benchmarks" / "inspect" / "chunk0001.tsv").is_file()
    assert (results / "logs" / "inspect" / "chunk0001.log").is_file()
    for stem in ("movie_0001", "movie_0002"):
        assert (results / "inspect" / "chunk0001" / f"{stem}.png").stat().st_size > 1000
        image, px = read_mrc(results / "micrographs" / "chunk0001" / f"{stem}.mrc")
        assert image.shape == (256, 256) and px == pytest.approx(2.5)
        shifts = read_star(results / "motioncor" / "chunk0001" / f"{stem}.star")["global_shift"]
        truth = read_star(tmp_path / "data" / "truth" / f"{stem}_motion.star")["global_shift"]
        error = (shifts[SHIFT].to_numpy() - truth[SHIFT].to_numpy()) ** 2
        assert np.sqrt(error.sum(axis=1).mean()) < 0.3
    micrographs = read_star(results / "micrographs_ctf.star")
    assert set(micrographs) == {"optics", "micrographs"} and len(micrographs["micrographs"]) == 2
    assert (results / "micrographs_selected.star").is_file()
    assert (results / "rejected.tsv").is_file()
    # Particles: picked, extracted, classified and selected, RELION's layout throughout.
    particles = read_star(results / "particles.star")
    assert set(particles) == {"optics", "particles"} and len(particles["particles"]) > 0
    for name in particles["particles"]["rlnImageName"]:
        index, stack = name.split("@")
        assert int(index) >= 1 and (tmp_path / stack).is_file(), name
    data = read_star(results / "class2d" / "run_data.star")["particles"]
    assert len(data) == len(particles["particles"])
    assert set(data["rlnClassNumber"]) <= {1, 2}
    assert mrcfile.validate(
        str(results / "class2d" / "run_classes.mrcs"), print_file=open(os.devnull, "w")
    )
    # Four particles make no class worth keeping by score; the file is still there.
    selected = read_star(results / "particles_selected.star")
    assert "optics" in selected and len(selected.get("particles", [])) <= len(data)
    # The run's report (2D only: map3d is off) stands alone.
    page = (results / "report.html").read_text()
    assert "data:image/png;base64," in page and "particles kept by 2D selection" in page
    # The simulated input is valid MRC and the inspect reports saw the dose we gave.
    assert mrcfile.validate(str(tmp_path / "data" / "gain.mrc"), print_file=open(os.devnull, "w"))
    summary = (results / "movies_summary.tsv").read_text().splitlines()
    assert len(summary) == 3
    # Nothing left to do afterwards; forcing one rule reruns that rule's jobs and what
    # reads its outputs: import_movies lists the movies curate reports as rejected, and
    # no per-movie work depends on it (motioncor reads inspect's verdicts itself).
    again = snakemake(tmp_path, "-n", config=config)
    assert "Nothing to be done" in again.stdout + again.stderr
    forced = snakemake(tmp_path, "-n", "--forcerun", "import_movies", config=config)
    assert job_counts(forced.stdout) == {
        "all": 1,
        "import_movies": 1,
        "curate": 1,
        "merge_particles": 1,
        "class2d": 1,
        "select2d": 1,
        "report": 1,
        "total": 7,
    }


def test_truncated_movie_is_rejected_and_the_others_go_on(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """One truncated movie among three: inspect rejects it with its reason, the other
    two are processed to the end (2D here), rejected.tsv and the report name it, and
    nothing else is made of it."""
    movies = tmp_path / "movies"
    shutil.copytree(tiny_dataset / "movies", movies)
    body = (movies / "movie_0002.mrc").read_bytes()
    (movies / "movie_0003.mrc").write_bytes(body[: len(body) // 2])
    config = tiny_config(tmp_path)
    config["simulate"] = {"enabled": False}
    config["input"] = {"movies": str(movies / "*.mrc"), "gain": str(tiny_dataset / "gain.mrc")}
    planned = snakemake(tmp_path, "-n", config=config)
    assert planned.returncode == 0, planned.stderr[-3000:]
    # The three movies are one chunk: one motioncor job, which leaves out the movies
    # inspect rejects.
    assert job_counts(planned.stdout)["motioncor"] == 1
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    report = json.loads((results / "inspect" / "chunk0001" / "movie_0003.json").read_text())
    assert "truncated" in report["rejected"] or "not a valid MRC" in report["rejected"]
    assert (results / "inspect" / "chunk0001" / "movie_0003.png").stat().st_size > 1000
    names = read_star(results / "movies.star")["movies"]["rlnMicrographMovieName"]
    assert [Path(n).stem for n in names] == ["movie_0001", "movie_0002"]
    assert len(read_star(results / "micrographs_ctf.star")["micrographs"]) == 2
    assert not list(results.glob("**/movie_0003*.mrc")) and not list(
        results.glob("**/movie_0003.star")
    )
    rejected = pd.read_csv(results / "rejected.tsv", sep="\t")
    row = rejected[rejected.micrograph.str.endswith("movie_0003.mrc")]
    assert row.stage.tolist() == ["inspect"] and "movie_0003.mrc" in row.reasons.iloc[0]
    assert "movies rejected by inspect</th><td>1</td>" in (results / "report.html").read_text()
    # A new run plans nothing for the rejected movie.
    again = snakemake(tmp_path, "-n", config=config)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_config_readme_is_generated_from_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
