"""3D classification's parts (ops.class3d) and the weighted insertion it relies on."""

from __future__ import annotations

import numpy as np
import pytest
from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, simulate_particles

from cryosnake.backend import gpu_available
from cryosnake.ops import class3d as c3
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import pose_search as ps
from cryosnake.ops import refine3d as r3
from cryosnake.simulate import phantom_states

PX = 6.0
BOX = 32


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    whole, partial = phantom_states(150.0, domain=1)
    stack = simulate_particles(
        160, box=BOX, pixel_size=PX, junk_fraction=0.0, snr=0.5, seed=9, specimens=(whole, partial)
    )
    n = len(stack.images)
    ctf = np.column_stack(
        [stack.defocus, np.zeros(n)] + [np.full(n, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)]
    )
    assert stack.states is not None
    return {
        "spectra": r3.particle_spectra(stack.images),
        "ctf": ctf,
        "states": stack.states,
        "volumes": np.stack([stack.volume(state=0), stack.volume(state=1)]),
    }


def _settings(classes: int, iterations: int = 4) -> c3.ClassSettings:
    search = r3.RefineSettings(
        mask_diameter=165 / PX, max_shift=2.0, max_iterations=iterations, tau2_fudge=4.0
    )
    return c3.ClassSettings(classes=classes, search=search, seed=3)


def test_posteriors_follow_the_likelihood_and_the_prior() -> None:
    log_likelihood = np.array([[50.0, 50.0], [50.0, 40.5], [4.5, 450.0]])
    p = c3.class_posteriors(log_likelihood, np.array([0.5, 0.5]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] == pytest.approx(0.5)
    assert np.log(p[1, 0] / p[1, 1]) == pytest.approx(9.5)
    assert p[2, 1] == pytest.approx(1.0)
    q = c3.class_posteriors(log_likelihood[:1], np.array([0.75, 0.25]))
    assert q[0, 0] == pytest.approx(0.75)
    assert c3.class_posteriors(log_likelihood, np.array([1.0, 0.0]))[:, 1].max() == 0.0


def test_marginal_likelihood_over_poses() -> None:
    scores = np.array([[10.0, 0.0, 0.0, 0.0], [10.0, 10.0, 10.0, 10.0]])
    ll = ps.log_mean_likelihood(scores)
    # one pose of four at 50: log(e^50 / 4 + 3/4); four at 50: 50
    assert ll[0] == pytest.approx(50.0 - np.log(4.0), abs=1e-9)
    assert ll[1] == pytest.approx(50.0)
    assert np.isfinite(ps.log_mean_likelihood(np.array([[60.0, 0.0]]))).all()  # no overflow


def test_weighted_insertion_scales_numerator_and_weight(data: dict[str, np.ndarray]) -> None:
    spectra, ctf = data["spectra"][:20], data["ctf"][:20]
    rng = np.random.default_rng(0)
    matrices = np.tile(np.eye(3), (20, 1, 1))
    shifts = rng.normal(size=(20, 2))
    sigma2 = np.ones(BOX // 2 + 1)
    grids = []
    for weights in (None, np.ones(20), np.full(20, 0.25)):
        bp = fs.BackProjector.zeros(BOX)
        r3.insert_particles(bp, spectra, ctf, matrices, shifts, sigma2, PX, weights=weights)
        grids.append(bp)
    np.testing.assert_allclose(grids[1].numerator, grids[0].numerator, rtol=1e-6)
    np.testing.assert_allclose(grids[2].weight, 0.25 * grids[0].weight, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grids[2].numerator, 0.25 * grids[0].numerator, rtol=1e-5, atol=1e-6)


def test_classes_from_one_map_start_alike_then_split(data: dict[str, np.ndarray]) -> None:
    n = len(data["spectra"])
    settings = _settings(2)
    state = c3.initial_class_state(
        data["spectra"], [data["volumes"][0]], PX, 30.0, settings, np.arange(n) % 2
    )
    assert state.references.shape == (2, BOX, BOX, BOX)
    np.testing.assert_array_equal(state.references[0], state.references[1])
    state, recs = c3.class_iteration(data["spectra"], data["ctf"], PX, state, settings)
    # One search for both (same map), then a random assignment.
    np.testing.assert_array_equal(state.matrices[0], state.matrices[1])
    assert set(np.unique(state.posteriors)) == {0.0, 1.0}
    assert 0.35 < state.fractions[0] < 0.65
    assert all(rec is not None for rec in recs)
    state, _ = c3.class_iteration(data["spectra"], data["ctf"], PX, state, settings)
    # Then the E-step: posteriors from the scores, shares from the posteriors.
    np.testing.assert_allclose(state.posteriors.sum(axis=1), 1.0)
    np.testing.assert_allclose(state.fractions, state.posteriors.mean(axis=0))
    assert not np.array_equal(state.references[0], state.references[1])
    assert state.iteration == 2 and len(state.changes) == 2 and state.changes[0] == 1.0


def test_one_reference_per_class_and_their_count() -> None:
    settings = _settings(3)
    spectra = np.zeros((4, BOX, BOX // 2 + 1), dtype=np.complex64)
    maps = [np.zeros((BOX, BOX, BOX), dtype=np.float32)] * 2
    with pytest.raises(ValueError, match="2 references for 3 classes"):
        c3.initial_class_state(spectra, maps, PX, 30.0, settings, np.arange(4) % 2)
    with pytest.raises(ValueError, match="classes must be >= 1"):
        c3.ClassSettings(classes=0, search=settings.search)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_classification_on_gpu_matches_cpu(data: dict[str, np.ndarray]) -> None:
    import cupy as cp

    n = len(data["spectra"])
    settings = _settings(2)
    states = {}
    for name, xp, spectra in (
        ("cpu", np, data["spectra"]),
        ("gpu host stack", cp, data["spectra"]),
        ("gpu device stack", cp, cp.asarray(data["spectra"])),
    ):
        state = c3.initial_class_state(
            spectra, list(data["volumes"]), PX, 30.0, settings, np.arange(n) % 2
        )
        for _ in range(3):
            state, _ = c3.class_iteration(spectra, data["ctf"], PX, state, settings, xp)
        states[name] = state
    cpu = states["cpu"]
    for name in ("gpu host stack", "gpu device stack"):
        gpu = states[name]
        assert np.mean(gpu.classes == cpu.classes) > 0.97
        np.testing.assert_allclose(gpu.fractions, cpu.fractions, atol=0.03)
        finite = np.isfinite(cpu.resolutions)
        np.testing.assert_allclose(gpu.resolutions[finite], cpu.resolutions[finite], rtol=0.05)
