"""cryosnake refine3d against the simulator's ground truth.

Particles: 800 projections of the built-in phantom (48 px boxes at 4.5 Å/px, Nyquist
9 Å) in uniformly random orientations, small random shifts, a CTF per "micrograph" and
noise at SNR 0.05 (per pixel at 1.5 Å/px; :mod:`particles_sim`), no junk. Reference:
the true volume, which ``refine3d`` low-passes to 30 Å. Checked: the gold-standard
resolution, its agreement with the FSC of the map against the truth at 0.5 (no
overfitting: the half sets stay independent), the pose errors, RELION's outputs, and
that a run killed mid-iteration resumes and ends like an uninterrupted one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from particles_sim import ParticleStack, simulate_particles, write_particles

from cryosnake.backend import gpu_available
from cryosnake.io import read_mrc, read_star, write_mrc
from cryosnake.ops.fsc import fsc, shell_resolution
from cryosnake.ops.postprocess import auto_mask
from cryosnake.ops.refine3d import angular_errors
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.stages import _images

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
PX = 4.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ParticleStack]:
    folder = tmp_path_factory.mktemp("refine3d")
    stack = simulate_particles(800, junk_fraction=0.0, snr=0.05, seed=21)
    star = write_particles(stack, folder)
    reference = folder / "truth.mrc"
    write_mrc(reference, stack.volume(), PX, kind="volume")
    return star, reference, stack


def _args(star: Path, reference: Path, out: Path, iterations: int) -> list[object]:
    return [
        "refine3d", "--particles", star, "--reference", reference, "--out-dir", out,
        "--diameter", "165", "--iterations", iterations,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(dataset: tuple[Path, Path, ParticleStack]) -> Path:
    from cryosnake import cli

    star, reference, _ = dataset
    out = star.parent / "r3d"
    assert cli.main([str(a) for a in _args(star, reference, out, 8)]) == 0
    return out


def test_resolution_poses_and_no_overfitting(
    run: Path, dataset: tuple[Path, Path, ParticleStack]
) -> None:
    _, _, stack = dataset
    table = read_star(run / "fsc.star")
    gold = float(table["general"]["rlnFinalResolution"].iloc[0])
    full, voxel = read_mrc(run / "run_class001.mrc")
    assert voxel == pytest.approx(PX)
    # Against the truth within the same automatic mask as the gold standard's.
    h1, _ = read_mrc(run / "run_half1_class001_unfil.mrc")
    h2, _ = read_mrc(run / "run_half2_class001_unfil.mrc")
    mask, _ = auto_mask(0.5 * (h1 + h2), PX)
    truth = shell_resolution(fsc(full * mask, stack.volume() * mask), PX, 0.5)
    data = read_star(run / "run_data.star")["particles"]
    matrices = euler_to_matrix(data.rlnAngleRot, data.rlnAngleTilt, data.rlnAnglePsi)
    angles = angular_errors(matrices, stack.matrices)
    shifts = -data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / PX
    shift_err = np.hypot(*(shifts - stack.centres).T)
    print(
        f"gold {gold:.2f} Å, truth@0.5 {truth:.2f} Å, angle median {np.median(angles):.2f}°, "
        f"shift median {np.median(shift_err):.2f} px"
    )
    assert gold <= 11.0  # Nyquist is 9 Å
    assert abs(gold - truth) <= 0.15 * truth
    assert np.median(angles) <= 3.0
    assert np.median(shift_err) <= 0.5


def test_relion_outputs(run: Path, dataset: tuple[Path, Path, ParticleStack]) -> None:
    star, _, _ = dataset
    for name in (
        "run_class001.mrc",
        "run_half1_class001_unfil.mrc",
        "run_half2_class001_unfil.mrc",
    ):
        assert mrcfile.validate(str(run / name), print_file=open(os.devnull, "w"))
        data, _ = read_mrc(run / name)
        assert data.shape == (48, 48, 48)
    h1, _ = read_mrc(run / "run_half1_class001_unfil.mrc")
    h2, _ = read_mrc(run / "run_half2_class001_unfil.mrc")
    assert not np.allclose(h1, h2)  # two independent reconstructions
    table = read_star(run / "fsc.star")["fsc"]
    assert {"rlnResolution", "rlnAngstromResolution", "rlnFourierShellCorrelationCorrected"} <= set(
        table.columns
    )
    data = read_star(run / "run_data.star")
    source = read_star(star)
    assert data["optics"].equals(source["optics"])
    particles = data["particles"]
    assert particles["rlnImageName"].tolist() == source["particles"]["rlnImageName"].tolist()
    assert set(particles["rlnRandomSubset"]) == {1, 2}
    assert particles["rlnAngleTilt"].between(0, 180).all()
    assert (run / "run_angdist.png").stat().st_size > 10_000


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(
    dataset: tuple[Path, Path, ParticleStack], tmp_path: Path, run_cli: RunCli
) -> None:
    star, reference, _ = dataset
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli(_args(star, reference, straight, 3))[0] == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryosnake.cli", *map(str, _args(star, reference, killed, 3))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (killed / "run_checkpoint.npz").exists():  # written after iteration 1
            assert proc.poll() is None, "refine3d ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # in iteration 2
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (killed / "run_data.star").exists()
    code, out, err = run_cli(_args(star, reference, killed, 3))
    assert code == 0, err
    resumed = re.search(r"resuming from .* after iteration (\d+)", out)
    assert resumed is not None and int(resumed.group(1)) in (1, 2), out
    assert "iteration 1/" not in out and "iteration 3/3" in out
    # Same checkpointed state, same computation: the same poses as without the kill.
    a = read_star(straight / "run_data.star")["particles"]
    b = read_star(killed / "run_data.star")["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        np.testing.assert_allclose(a[label], b[label], atol=1e-6)
    # A finished run asked for more iterations goes on from its last one.
    code, out, err = run_cli(_args(star, reference, killed, 4))
    assert code == 0, err
    assert "after iteration 3" in out and "iteration 4/4" in out


def test_bad_input_is_one_line(
    dataset: tuple[Path, Path, ParticleStack], tmp_path: Path, run_cli: RunCli
) -> None:
    star, reference, _ = dataset
    flat = tmp_path / "flat.mrc"
    write_mrc(flat, np.zeros((48, 48), np.float32), PX)
    cases = [
        (["--reference", tmp_path / "missing.mrc"], "missing.mrc"),
        (["--reference", flat], "cubic"),
        (["--symmetry", "Q3"], "--symmetry"),
    ]
    for extra, needle in cases:
        args = ["refine3d", "--particles", star, "--reference", reference, "--out-dir",
                tmp_path / "o", "--iterations", "1", *extra]  # fmt: skip
        code, _, err = run_cli(args)
        assert code != 0
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


def test_box_too_large_for_the_memory_is_one_line(
    dataset: tuple[Path, Path, ParticleStack],
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    star, reference, _ = dataset
    monkeypatch.setenv("CRYOSNAKE_MEMORY", "100M")  # a 48 px box needs about 0.3 GiB
    code, _, err = run_cli(_args(star, reference, tmp_path / "o", 1))
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "box of 48 px needs about" in lines[0], err
    assert not (tmp_path / "o" / "run_class001.mrc").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_run_matches_the_cpu_run(
    run: Path, dataset: tuple[Path, Path, ParticleStack], tmp_path: Path
) -> None:
    from cryosnake import cli

    star, reference, stack = dataset
    out = tmp_path / "gpu"
    assert cli.main([str(a) for a in [*_args(star, reference, out, 8), "--device", "gpu"]]) == 0
    gold = {
        name: float(read_star(folder / "fsc.star")["general"]["rlnFinalResolution"].iloc[0])
        for name, folder in (("cpu", run), ("gpu", out))
    }
    assert gold["gpu"] == pytest.approx(gold["cpu"], rel=0.05)
    data = read_star(out / "run_data.star")["particles"]
    matrices = euler_to_matrix(
        data["rlnAngleRot"].to_numpy(), data["rlnAngleTilt"].to_numpy(),
        data["rlnAnglePsi"].to_numpy(),
    )  # fmt: skip
    assert np.median(angular_errors(matrices, stack.matrices)) <= 3.0
    cpu_map, _ = read_mrc(run / "run_class001.mrc")
    gpu_map, _ = read_mrc(out / "run_class001.mrc")
    curve = fsc(cpu_map, gpu_map)
    assert shell_resolution(curve, PX, 0.9) <= 1.05 * gold["cpu"]


def test_streamed_particles_give_the_in_memory_result(
    dataset: tuple[Path, Path, ParticleStack],
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    star, reference, _ = dataset
    for name, share in (("memory", 0.5), ("streamed", 0.0)):  # 0: stream whatever the size
        monkeypatch.setattr(_images, "IN_MEMORY_SHARE", share)
        code, out, err = run_cli(_args(star, reference, tmp_path / name, 1))
        assert code == 0, err
        assert ("particles in memory" if share else "particles streamed from") in out, out
    # Each image's transform does not depend on its batch: the same numbers.
    for map_name in ("run_class001.mrc", "run_half1_class001_unfil.mrc"):
        a, _ = read_mrc(tmp_path / "memory" / map_name)
        b, _ = read_mrc(tmp_path / "streamed" / map_name)
        np.testing.assert_array_equal(a, b)
    a_data = read_star(tmp_path / "memory" / "run_data.star")["particles"]
    b_data = read_star(tmp_path / "streamed" / "run_data.star")["particles"]
    assert a_data.equals(b_data)
