"""Pose search and memory planning of the 3D refinement (ops.refine3d)."""

from __future__ import annotations

import numpy as np
import pytest
from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, simulate_particles

from cryosnake.backend import gpu_available
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import pose_search as ps
from cryosnake.ops import refine3d as r3

PX = 6.0
BOX = 32


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    stack = simulate_particles(120, box=BOX, pixel_size=PX, junk_fraction=0.0, snr=0.5, seed=8)
    n = len(stack.images)
    ctf = np.column_stack(
        [stack.defocus, np.zeros(n)] + [np.full(n, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)]
    )
    spectra = r3.particle_spectra(stack.images)
    settings = r3.RefineSettings(mask_diameter=165 / PX, max_shift=2.0)
    state = r3.initial_refine_state(spectra, stack.volume(), PX, 20.0, settings, np.arange(n) % 2)
    return {
        "spectra": spectra,
        "ctf": ctf,
        "volume": stack.volume(),
        "matrices": stack.matrices,
        "centres": stack.centres,
        "sigma2": state.sigma2,
    }


def test_global_search_finds_the_poses_whatever_the_batch(data: dict[str, np.ndarray]) -> None:
    settings = r3.RefineSettings(mask_diameter=165 / PX, max_shift=2.0, global_step=15.0)
    projector = fs.Projector.from_volume(data["volume"], 8)
    args = (data["spectra"], data["ctf"], projector, BOX, PX, data["sigma2"], 8, settings)
    m1, t1, s1 = ps.global_search(*args)
    m2, t2, s2 = ps.global_search(*args, budget=1)  # one particle per batch
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(s1, s2, rtol=1e-4)
    # The 15° grid puts the truth within about 11° of a node.
    assert np.median(r3.angular_errors(m1, data["matrices"])) < 12.0


def test_local_search_refines_and_is_batch_invariant(data: dict[str, np.ndarray]) -> None:
    settings = r3.RefineSettings(mask_diameter=165 / PX, max_shift=2.0)
    projector = fs.Projector.from_volume(data["volume"], 12)
    rng = np.random.default_rng(0)
    # Start 4° off (about one axis) and 0.5 px off: one local step of 4° recovers.
    start = np.einsum("nij,jk->nik", data["matrices"], ps.axis_rotations(4.0)[26])
    shifts = data["centres"] + rng.choice([-0.5, 0.5], size=data["centres"].shape)
    args = (
        data["spectra"], data["ctf"], projector, BOX, PX, data["sigma2"], 12, start, shifts,
        4.0, 0.5, settings,
    )  # fmt: skip
    m1, t1, s1 = ps.local_search(*args)
    m2, t2, s2 = ps.local_search(*args, budget=1)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(s1, s2, rtol=1e-4)
    before = np.median(r3.angular_errors(start, data["matrices"]))
    after = np.median(r3.angular_errors(m1, data["matrices"]))
    assert after < 0.5 * before
    assert np.median(np.hypot(*(t1 - data["centres"]).T)) < 0.4


def test_memory_plan_from_box_and_free_memory() -> None:
    plan = ps.plan_memory(128, 10_000, np, available=16 << 30)
    # Two padded half grids of 256 x 256 x 129 voxels at 24 B, plus temporaries.
    assert 0.5 * (1 << 30) < plan.grids < 1.5 * (1 << 30)
    assert plan.stack == 10_000 * 128 * 65 * 8
    assert plan.stack_on_device is False  # NumPy: the stack is already in memory
    bigger = ps.plan_memory(256, 10_000, np, available=64 << 30)
    assert bigger.grids == pytest.approx(8 * plan.grids, rel=0.05)
    with pytest.raises(MemoryError, match="box of 256 px needs about"):
        ps.plan_memory(256, 10_000, np, available=4 << 30)


def test_batches_follow_the_budget() -> None:
    assert ps.batch_size(1000.0, 10_000, np) == 10
    assert ps.batch_size(1000.0, 10, np) == 1  # at least one
    assert ps.batch_size(1.0, 1 << 40, np) == ps.MAX_BATCH
    assert 0 < ps.work_budget(np) <= ps.CPU_BUDGET


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_refinement_iterations_on_gpu_match_cpu(data: dict[str, np.ndarray]) -> None:
    import cupy as cp

    n = len(data["spectra"])
    settings = r3.RefineSettings(mask_diameter=165 / PX, max_shift=2.0, max_iterations=3)
    halves = np.arange(n) % 2
    states = {}
    for name, xp, spectra in (
        ("cpu", np, data["spectra"]),
        ("gpu host stack", cp, data["spectra"]),
        ("gpu device stack", cp, cp.asarray(data["spectra"])),
    ):
        state = r3.initial_refine_state(spectra, data["volume"], PX, 30.0, settings, halves)
        for _ in range(3):  # 2 global iterations, 1 local
            state, rec = r3.refine_iteration(spectra, data["ctf"], PX, state, settings, xp)
        assert isinstance(rec["full"], np.ndarray)
        states[name] = state
    cpu = states["cpu"]
    for name in ("gpu host stack", "gpu device stack"):
        gpu = states[name]
        # float32 sums in another order may flip a near-tie; the poses agree otherwise.
        assert np.median(r3.angular_errors(gpu.matrices, cpu.matrices)) < 0.5
        assert np.mean(r3.angular_errors(gpu.matrices, cpu.matrices) < 1.0) > 0.95
        np.testing.assert_allclose(gpu.fsc[: BOX // 4], cpu.fsc[: BOX // 4], atol=0.03)
        assert gpu.resolution == pytest.approx(cpu.resolution, rel=0.05)
