"""Motion correction on CuPy gives the CPU's result (issue 3: within 0.01 px).

Run with ``pytest -m gpu`` where CuPy finds a CUDA device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryosnake import backend
from cryosnake.io import read_mrc, read_star
from cryosnake.ops.align import align_frames
from cryosnake.ops.defects import find_defects
from cryosnake.ops.dose import frame_exposures
from cryosnake.ops.motion import corrected_sums, local_motion
from cryosnake.simulate import load_specimen, make_detector, make_params, simulate_movie
from cryosnake.stages import motioncor

pytestmark = pytest.mark.gpu
SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    if not backend.gpu_available():
        pytest.skip("CuPy finds no CUDA device")
    return cupy


@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, float]:
    params = make_params("demo", n_movies=1, width=512, height=512, n_frames=16)
    specimen, _ = load_specimen(params)
    detector = make_detector(params, np.random.default_rng(0))
    _, it = simulate_movie(params, 0, specimen, detector, np.random.default_rng(1))
    stack = np.stack([f.astype(np.float32) * detector.gain for f in it])
    return stack, params.pixel_size


def test_alignment_and_sums_match_the_cpu(cp, frames: tuple[np.ndarray, float]) -> None:
    stack, px = frames
    defects = find_defects(stack.sum(axis=0))
    gpu_defects = find_defects(cp.asarray(stack).sum(axis=0))
    np.testing.assert_array_equal(cp.asnumpy(gpu_defects), defects)
    stack[:, defects] = float(stack.mean())
    on_gpu = cp.asarray(stack)
    cpu = align_frames(stack, px)
    gpu = align_frames(on_gpu, px)
    np.testing.assert_allclose(gpu.shifts, cpu.shifts, atol=0.01)
    cpu_local = local_motion(stack, cpu.shifts, px)
    gpu_local = local_motion(on_gpu, gpu.shifts, px)
    np.testing.assert_allclose(gpu_local.patch_shifts, cpu_local.patch_shifts, atol=0.01)
    exposures = frame_exposures(len(stack), 1.0)
    dw_cpu, plain_cpu = corrected_sums(stack, cpu.shifts, px, exposures, local=cpu_local)
    dw_gpu, plain_gpu = corrected_sums(on_gpu, gpu.shifts, px, exposures, local=gpu_local)
    assert isinstance(dw_gpu, cp.ndarray)
    scale = float(np.abs(plain_cpu).max())
    np.testing.assert_allclose(cp.asnumpy(plain_gpu), plain_cpu, atol=1e-3 * scale)
    np.testing.assert_allclose(cp.asnumpy(dw_gpu), dw_cpu, atol=1e-3 * scale)


def test_stage_on_gpu_matches_cpu(cp, tiny_dataset: Path, tmp_path: Path) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    common = ["--movie", str(movie), "--pixel-size", "2.5", "--dose-per-frame", "3",
              "--gain", str(tiny_dataset / "gain.mrc"), "--no-plot"]  # fmt: skip
    for device in ("cpu", "gpu"):
        assert (
            motioncor.main([*common, "--out-dir", str(tmp_path / device), "--device", device]) == 0
        )
    a = read_star(tmp_path / "cpu" / "movie_0001.star")["global_shift"][SHIFT].to_numpy()
    b = read_star(tmp_path / "gpu" / "movie_0001.star")["global_shift"][SHIFT].to_numpy()
    np.testing.assert_allclose(b, a, atol=0.01)
    image_a, _ = read_mrc(tmp_path / "cpu" / "movie_0001.mrc")
    image_b, _ = read_mrc(tmp_path / "gpu" / "movie_0001.mrc")
    np.testing.assert_allclose(image_b, image_a, atol=1e-3 * float(np.abs(image_a).max()))
