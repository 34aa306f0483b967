"""cryosnake class2d and select2d through files, against the simulator's ground truth.

The particle set (:mod:`particles_sim`): 800 boxes of 48 px at 4.5 Å/px, 20 % junk
(aggregates, carbon/ice edges, empty boxes, off-centre picks), CTF per micrograph,
SNR 0.05 per pixel at the 1.5 Å/px micrograph sampling (0.41 at the stack's 4.5 Å/px).
Acceptance: >= 90 % of the junk in rejected classes, >= 90 % of the good particles in
selected classes, every selected class average matching a projection of the truth
volume with NCC >= 0.8, and a run killed mid-iteration that resumes and ends where an
uninterrupted run ends. The slow tests repeat this on 3000 particles and at lower SNR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from particles_sim import ParticleStack, match_projections, simulate_particles, write_particles

from cryosnake import cli
from cryosnake.io import read_mrc, read_star, write_star
from cryosnake.stages.select2d import DEFAULT_MIN_SCORE

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
ARGS = [
    "--classes",
    "10",
    "--diameter",
    "165",
    "--psi-step",
    "6",
    "--max-shift",
    "13.5",
    "--iterations",
    "25",
    "--seed",
    "3",
]


def _class2d(star: Path, out: Path, *extra: str) -> int:
    return cli.main(["class2d", "--particles", str(star), "--out-dir", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ParticleStack]:
    folder = tmp_path_factory.mktemp("class2d")
    stack = simulate_particles(800, seed=7, snr=0.05)
    return write_particles(stack, folder), stack


@pytest.fixture(scope="module")
def run(dataset: tuple[Path, ParticleStack]) -> Path:
    star, _ = dataset
    out = star.parent / "c2d"
    assert _class2d(star, out) == 0
    return out


def _selection(data_star: Path, selected_star: Path) -> np.ndarray:
    data = read_star(data_star)["particles"]
    chosen = set(read_star(selected_star)["particles"]["rlnImageName"])
    return np.array([name in chosen for name in data["rlnImageName"]])


def test_class2d_writes_relion_outputs(
    run: Path, dataset: tuple[Path, ParticleStack], capsys: pytest.CaptureFixture[str]
) -> None:
    star, _ = dataset
    assert mrcfile.validate(str(run / "run_classes.mrcs"), print_file=open(os.devnull, "w"))
    classes, voxel = read_mrc(run / "run_classes.mrcs")
    assert classes.shape == (10, 48, 48) and voxel == pytest.approx(4.5)
    model = read_star(run / "run_model.star")
    table = model["model_classes"]
    assert list(table["rlnReferenceImage"]) == [
        f"{i:06d}@{run}/run_classes.mrcs" for i in range(1, 11)
    ]
    assert table["rlnClassDistribution"].sum() == pytest.approx(1.0, abs=1e-5)
    assert table["rlnClassParticleCount"].sum() == 800
    assert np.all((table["rlnClassScore"] >= 0) & (table["rlnClassScore"] <= 1))
    assert np.all(table["rlnEstimatedResolution"] >= 9.0)  # Nyquist of 4.5 Å/px
    assert {"model_general", "model_noise", "model_class_1", "model_class_10"} <= set(model)
    data = read_star(run / "run_data.star")
    source = read_star(star)
    assert data["optics"].equals(source["optics"])
    particles = data["particles"]
    assert list(particles.columns[: len(source["particles"].columns)]) == list(
        source["particles"].columns
    )
    assert particles["rlnImageName"].tolist() == source["particles"]["rlnImageName"].tolist()
    assert particles["rlnClassNumber"].between(1, 10).all()
    assert particles["rlnAnglePsi"].between(0, 360).all()
    shift = np.hypot(particles["rlnOriginXAngst"], particles["rlnOriginYAngst"])
    assert shift.max() <= 13.5 + 1e-6
    assert particles["rlnMaxValueProbDistribution"].between(0, 1).all()
    assert np.isfinite(particles["rlnLogLikeliContribution"]).all()
    assert (run / "run_classes.png").stat().st_size > 10_000
    # A finished run started again only rewrites the outputs.
    capsys.readouterr()
    assert _class2d(star, run) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "iteration 1/" not in out


def test_select2d_rejects_junk_and_keeps_particles(
    run: Path, dataset: tuple[Path, ParticleStack], run_cli: RunCli
) -> None:
    _, stack = dataset
    selected = run.parent / "selected.star"
    plot = run.parent / "select2d.png"
    code, out, err = run_cli(
        [
            "select2d",
            "--data",
            run / "run_data.star",
            "--model",
            run / "run_model.star",
            "--out",
            selected,
            "--plot",
            plot,
        ]
    )
    assert code == 0, err
    assert f"select2d: score >= {DEFAULT_MIN_SCORE:g}" in out
    keep = _selection(run / "run_data.star", selected)
    junk_rejected = float(np.mean(~keep[~stack.good]))
    good_selected = float(np.mean(keep[stack.good]))
    print(f"junk rejected {junk_rejected:.3f}, good selected {good_selected:.3f}")
    assert junk_rejected >= 0.9
    assert good_selected >= 0.9
    assert read_star(selected)["optics"].equals(read_star(run / "run_data.star")["optics"])
    assert plot.stat().st_size > 10_000


def test_selected_class_averages_match_projections_of_the_truth(
    run: Path, dataset: tuple[Path, ParticleStack]
) -> None:
    _, stack = dataset
    table = read_star(run / "run_model.star")["model_classes"]
    classes, voxel = read_mrc(run / "run_classes.mrcs")
    chosen = np.nonzero(
        (table["rlnClassScore"] >= DEFAULT_MIN_SCORE) & (table["rlnClassParticleCount"] > 0)
    )[0]
    assert len(chosen) >= 3
    for k in chosen:
        ncc, _, _ = match_projections(
            classes[k], voxel, stack.diameter, n_directions=200, psi_step=5.0
        )
        assert ncc >= 0.8, (k + 1, ncc)


def test_select2d_by_list_and_bad_input(run: Path, tmp_path: Path, run_cli: RunCli) -> None:
    data, model = run / "run_data.star", run / "run_model.star"
    out = tmp_path / "two.star"
    code, text, err = run_cli(
        ["select2d", "--data", data, "--model", model, "--out", out, "--classes", "2,1"]
    )
    assert code == 0, err
    chosen = read_star(out)["particles"]
    source = read_star(data)["particles"]
    assert set(chosen["rlnClassNumber"]) <= {1, 2}
    assert len(chosen) == int(source["rlnClassNumber"].isin([1, 2]).sum())
    assert list(chosen.columns) == list(source.columns)
    for args, text in [
        (["--classes", "11"], "10 classes"),
        (["--classes", "1", "--min-score", "0.5"], "--min-score"),
    ]:
        code, _, err = run_cli(["select2d", "--data", data, "--model", model, "--out", out, *args])
        assert code == 1 and text in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        ["select2d", "--data", data, "--model", model, "--out", out, "--min-score", "2"]
    )
    assert code == 2 and "--min-score" in err


def test_class2d_bad_input_is_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    missing = tmp_path / "none.star"
    code, _, err = run_cli(
        ["class2d", "--particles", missing, "--classes", "4", "--out-dir", tmp_path / "o"]
    )
    assert code == 1 and "none.star" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        ["class2d", "--particles", missing, "--classes", "0", "--out-dir", tmp_path / "o"]
    )
    assert code == 2 and "--classes" in err


def test_large_boxes_are_classified_in_a_cropped_box(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """96 px boxes at 2.25 Å/px are Fourier-cropped to the 48 px working box; the class
    averages come back at 96 px and 2.25 Å/px, and still look like the particle. The
    images are named relative to the STAR file's folder, not the working directory."""
    stack = simulate_particles(300, box=96, pixel_size=2.25, seed=8, snr=0.05)
    star = write_particles(stack, tmp_path / "data")
    blocks = read_star(star)
    names = blocks["particles"]["rlnImageName"].str.replace(f"{star.parent.resolve()}/", "")
    blocks["particles"]["rlnImageName"] = names
    write_star(star, blocks)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "c2d"
    args = [
        "class2d",
        "--particles",
        str(star),
        "--out-dir",
        str(out),
        "--classes",
        "4",
        "--diameter",
        "165",
        "--box",
        "48",
        "--iterations",
        "6",
        "--psi-step",
        "10",
    ]
    assert cli.main(args) == 0
    assert "working box 48 px (4.50 Å/px)" in capsys.readouterr().out
    classes, voxel = read_mrc(out / "run_classes.mrcs")
    assert classes.shape == (4, 96, 96) and voxel == pytest.approx(2.25)
    table = read_star(out / "run_model.star")["model_classes"]
    best = int(np.argmax(table["rlnClassScore"] * table["rlnClassParticleCount"]))
    ncc, _, _ = match_projections(
        classes[best], voxel, stack.diameter, n_directions=100, psi_step=6.0
    )
    assert ncc >= 0.8
    data = read_star(out / "run_data.star")["particles"]
    assert np.hypot(data["rlnOriginXAngst"], data["rlnOriginYAngst"]).max() <= 16.5 + 1e-6


def _checkpoint_iteration(path: Path) -> int:
    try:
        with np.load(path) as z:
            return int(json.loads(str(z["scalars"]))["iteration"])
    except (OSError, ValueError, KeyError, EOFError):
        return 0


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(
    run: Path,
    dataset: tuple[Path, ParticleStack],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    star, stack = dataset
    out = tmp_path / "killed"
    checkpoint = out / "run_checkpoint.npz"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryosnake.cli",
            "class2d",
            "--particles",
            str(star),
            "--out-dir",
            str(out),
            *ARGS,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while _checkpoint_iteration(checkpoint) < 2:
            assert proc.poll() is None, "class2d finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-iteration 3
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "run_model.star").exists()
    capsys.readouterr()
    assert _class2d(star, out) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "iteration 1/" not in text
    # Same checkpointed state, same computation: the same classification.
    first = read_star(run / "run_data.star")["particles"]
    second = read_star(out / "run_data.star")["particles"]
    assert np.mean(first["rlnClassNumber"] == second["rlnClassNumber"]) >= 0.98
    selected = out / "selected.star"
    assert (
        cli.main(
            [
                "select2d",
                "--data",
                str(out / "run_data.star"),
                "--model",
                str(out / "run_model.star"),
                "--out",
                str(selected),
            ]
        )
        == 0
    )
    keep = _selection(out / "run_data.star", selected)
    assert np.mean(~keep[~stack.good]) >= 0.9 and np.mean(keep[stack.good]) >= 0.9
    # --no-resume starts over.
    capsys.readouterr()
    assert _class2d(star, out, "--no-resume", "--iterations", "1") == 0
    text = capsys.readouterr().out
    assert "resuming" not in text and "iteration 1/1" in text


def _accuracy(
    stack: ParticleStack, folder: Path, classes: int, extra: Sequence[str] = ()
) -> dict[str, float]:
    star = write_particles(stack, folder)
    out = folder / "c2d"
    args = [
        "class2d",
        "--particles",
        str(star),
        "--out-dir",
        str(out),
        "--classes",
        str(classes),
        "--diameter",
        "165",
        *extra,
    ]
    tick = time.perf_counter()
    assert cli.main(args) == 0
    seconds = time.perf_counter() - tick
    selected = folder / "selected.star"
    assert (
        cli.main(
            [
                "select2d",
                "--data",
                str(out / "run_data.star"),
                "--model",
                str(out / "run_model.star"),
                "--out",
                str(selected),
            ]
        )
        == 0
    )
    keep = _selection(out / "run_data.star", selected)
    table = read_star(out / "run_model.star")["model_classes"]
    averages, voxel = read_mrc(out / "run_classes.mrcs")
    chosen = np.nonzero(
        (table["rlnClassScore"] >= DEFAULT_MIN_SCORE) & (table["rlnClassParticleCount"] > 0)
    )[0]
    nccs = [match_projections(averages[k], voxel, stack.diameter)[0] for k in chosen]
    return {
        "junk_rejected": float(np.mean(~keep[~stack.good])),
        "good_selected": float(np.mean(keep[stack.good])),
        "min_ncc": float(min(nccs)),
        "classes_selected": float(len(chosen)),
        "seconds": seconds,
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", [101, 102])
def test_3000_particles(seed: int, tmp_path: Path) -> None:
    stack = simulate_particles(3000, seed=seed, snr=0.05)
    result = _accuracy(stack, tmp_path, 20)
    print(f"3000 particles, K = 20, seed {seed}: {result}")
    assert result["junk_rejected"] >= 0.9 and result["good_selected"] >= 0.9
    assert result["min_ncc"] >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("snr", [0.02, 0.01])
def test_lower_snr(snr: float, tmp_path: Path) -> None:
    """SNR 0.02 and 0.01 at 1.5 Å/px (0.16 and 0.08 per pixel of the stack)."""
    stack = simulate_particles(1500, seed=11, snr=snr)
    result = _accuracy(stack, tmp_path, 16)
    print(f"1500 particles, K = 16, SNR {snr} (stack {stack.snr_stack:.3f}): {result}")
    assert result["good_selected"] >= 0.9
    assert result["junk_rejected"] >= (0.85 if snr >= 0.02 else 0.75)
    assert result["min_ncc"] >= 0.8


def test_streamed_particles_give_the_in_memory_result(
    dataset: tuple[Path, ParticleStack],
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    star, _ = dataset
    source = read_star(star)
    few = tmp_path / "few.star"  # 300 particles, 2 iterations: a few seconds
    write_star(few, {"optics": source["optics"], "particles": source["particles"].iloc[:300]})
    # 300 spectra of 48 px take 2.8 MiB: in memory under 1 GiB, streamed under 4 MiB.
    for name, budget in (("memory", "1G"), ("streamed", "4M")):
        monkeypatch.setenv("CRYOSNAKE_MEMORY", budget)
        args = ["class2d", "--particles", few, "--out-dir", tmp_path / name, *ARGS]
        code, out, err = run_cli([*args, "--iterations", "2"])
        assert code == 0, err
        kind = "particles in memory" if name == "memory" else "particles streamed from"
        assert kind in out, out
    a, _ = read_mrc(tmp_path / "memory" / "run_classes.mrcs")
    b, _ = read_mrc(tmp_path / "streamed" / "run_classes.mrcs")
    np.testing.assert_array_equal(a, b)
    a_data = read_star(tmp_path / "memory" / "run_data.star")["particles"]
    b_data = read_star(tmp_path / "streamed" / "run_data.star")["particles"]
    assert a_data.equals(b_data)
