"""cryosnake initial3d against the simulator's ground truth.

Particles: 1500 projections of the built-in phantom (48 px at 4.5 Å/px) in random
orientations with a CTF per "micrograph", SNR 0.05 at 1.5 Å/px (:mod:`particles_sim`),
no junk. Acceptance: the ab initio map, aligned to the truth (rotation, shift and
handedness: projections cannot tell a map from its mirror image), has FSC >= 0.5 with
it at 20 Å.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from particles_sim import ParticleStack, simulate_particles, write_particles

from cryosnake.backend import gpu_available
from cryosnake.io import read_mrc, read_star, write_star
from cryosnake.ops.fourier import fourier_crop
from cryosnake.ops.fsc import fsc, fsc_at_resolution
from cryosnake.ops.initial3d import align_volumes, rotate_volume
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.stages import _images

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
PX = 4.5


def _fsc_at(a: np.ndarray, b: np.ndarray, pixel_size: float, resolution: float) -> float:
    return fsc_at_resolution(fsc(a, b), pixel_size, resolution)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ParticleStack]:
    from cryosnake import cli

    folder = tmp_path_factory.mktemp("initial3d")
    stack = simulate_particles(1500, junk_fraction=0.0, snr=0.05, seed=5)
    star = write_particles(stack, folder)
    args = ["initial3d", "--particles", str(star), "--out-dir", str(folder / "ai"),
            "--diameter", "165", "--iterations", "30"]  # fmt: skip
    assert cli.main(args) == 0
    return folder / "ai", stack


def test_ab_initio_map_matches_the_truth_at_20_angstrom(run: tuple[Path, ParticleStack]) -> None:
    out, stack = run
    volume, voxel = read_mrc(out / "initial_model.mrc")
    assert volume.shape == (48, 48, 48) and voxel == pytest.approx(PX)
    assert mrcfile.validate(str(out / "initial_model.mrc"), print_file=open(os.devnull, "w"))
    # Compare at 6.75 Å/px (Nyquist 13.5 Å), enough for 20 Å and 3x faster to align.
    small = np.asarray(fourier_crop(volume, (32, 32, 32)))
    truth = np.asarray(fourier_crop(stack.volume(), (32, 32, 32)))
    aligned, info = align_volumes(small, truth, 6.75)
    value = _fsc_at(aligned, truth, 6.75, 20.0)
    print(f"FSC at 20 Å {value:.3f}, mirror {info['mirror']}")
    assert value >= 0.5
    particles = read_star(out / "initial_model_data.star")["particles"]
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(particles)
    assert (out / "initial_model.png").stat().st_size > 10_000


def test_align_volumes_finds_rotation_shift_and_mirror(run: tuple[Path, ParticleStack]) -> None:
    _, stack = run
    truth = np.asarray(fourier_crop(stack.volume(), (32, 32, 32)))
    matrix = euler_to_matrix(40.0, 70.0, -25.0)
    moved = rotate_volume(truth[::-1].copy(), matrix, np.array([2.0, -1.0, 1.0]))
    aligned, info = align_volumes(moved, truth, 6.75)
    assert info["mirror"] is True
    # (two trilinear resamplings and an integer shift blur it a little)
    assert _fsc_at(aligned, truth, 6.75, 20.0) > 0.85
    unmirrored, info = align_volumes(rotate_volume(truth, matrix), truth, 6.75)
    assert info["mirror"] is False
    assert _fsc_at(unmirrored, truth, 6.75, 20.0) > 0.85


def test_bad_input_is_one_line(
    run: tuple[Path, ParticleStack], tmp_path: Path, run_cli: RunCli
) -> None:
    out, _ = run
    star = out.parent / "particles.star"
    for extra, needle in ((["--symmetry", "X2"], "--symmetry"), (["--resolution", "5"], "Nyquist")):
        code, _, err = run_cli(
            ["initial3d", "--particles", star, "--out-dir", tmp_path / "o", *extra]
        )
        assert code != 0
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_ab_initio_matches_the_truth(run: tuple[Path, ParticleStack], tmp_path: Path) -> None:
    from cryosnake import cli

    out, stack = run
    star = out.parent / "particles.star"
    args = ["initial3d", "--particles", str(star), "--out-dir", str(tmp_path / "gpu"),
            "--diameter", "165", "--iterations", "30", "--device", "gpu"]  # fmt: skip
    assert cli.main(args) == 0
    volume, _ = read_mrc(tmp_path / "gpu" / "initial_model.mrc")
    small = np.asarray(fourier_crop(volume, (32, 32, 32)))
    truth = np.asarray(fourier_crop(stack.volume(), (32, 32, 32)))
    aligned, _ = align_volumes(small, truth, 6.75)
    assert _fsc_at(aligned, truth, 6.75, 20.0) >= 0.5


def test_streamed_particles_give_the_in_memory_result(
    run: tuple[Path, ParticleStack],
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, _ = run
    source = read_star(out.parent / "particles.star")
    star = tmp_path / "few.star"  # 200 particles, 2 mini-batches, 30° steps: a few seconds
    write_star(star, {"optics": source["optics"], "particles": source["particles"].iloc[:200]})
    for name, share in (("memory", 0.5), ("streamed", 0.0)):  # 0: stream whatever the size
        monkeypatch.setattr(_images, "IN_MEMORY_SHARE", share)
        args = ["initial3d", "--particles", star, "--out-dir", tmp_path / name, "--diameter",
                "165", "--iterations", "2", "--batch", "100", "--step", "30"]  # fmt: skip
        code, log, err = run_cli(args)
        assert code == 0, err
        assert ("particles in memory" if share else "particles streamed from") in log, log
    a, _ = read_mrc(tmp_path / "memory" / "initial_model.mrc")
    b, _ = read_mrc(tmp_path / "streamed" / "initial_model.mrc")
    np.testing.assert_array_equal(a, b)
    a_data = read_star(tmp_path / "memory" / "initial_model_data.star")["particles"]
    b_data = read_star(tmp_path / "streamed" / "initial_model_data.star")["particles"]
    assert a_data.equals(b_data)
