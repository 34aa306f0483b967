"""2D classification numerics: CTF, resampling, rotations, Wiener averages, EM, scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from particles_sim import phantom
from scipy import ndimage

from cryosnake.backend import gpu_available
from cryosnake.ops import class2d as c2
from cryosnake.ops.class2d.engine import _maximise
from cryosnake.ops.class2d.estep import _pass, _significant
from cryosnake.ops.class2d.project import _geometry
from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.fourier_slice import pad_image_spectra, project_images
from cryosnake.ops.rotation import euler_to_matrix, random_rotations
from cryosnake.simulate import render_projection

PX = 5.0
BOX = 40


def _view(seed: int, box: int = BOX, px: float = PX) -> np.ndarray:
    """A projection of the phantom (150 Å) in a random orientation, unit variance."""
    mat = random_rotations(1, np.random.default_rng(seed))[0]
    image = render_projection(phantom(150.0), mat, box, px)
    return (image / image.std()).astype(np.float32)


def _rotate_shift(image: np.ndarray, psi: float, shift: tuple[float, float]) -> np.ndarray:
    """RELION's convention: out(r) = image(A^T (r - t)), A = Rz(psi), t = (dx, dy)."""
    box = image.shape[-1]
    a = euler_to_matrix(0.0, 0.0, psi)[:2, :2]
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64) - box // 2
    x, y = xx - shift[0], yy - shift[1]
    u = a[0, 0] * x + a[1, 0] * y  # (A^T r)_x
    v = a[0, 1] * x + a[1, 1] * y
    return ndimage.map_coordinates(image, [v + box // 2, u + box // 2], order=3, mode="constant")


def _ctf_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    df = rng.uniform(10000.0, 25000.0, n)
    astig = rng.uniform(0.0, 400.0, n)
    return np.column_stack(
        [df + astig / 2, df - astig / 2, rng.uniform(0, 180, n), np.zeros(n)]
        + [np.full(n, v) for v in (300.0, 2.7, 0.07)]
    )


def _apply_ctf(images: np.ndarray, ctf: np.ndarray, px: float) -> np.ndarray:
    """Images as the microscope and the inversion make them: F^-1[-CTF F[image]]."""
    out = np.empty_like(images)
    for i, (image, row) in enumerate(zip(images, ctf, strict=True)):
        c = ctf_2d(image.shape, px, row[0], row[1], row[2], voltage=row[4], cs=row[5],
                   amplitude_contrast=row[6])  # fmt: skip
        out[i] = np.fft.irfft2(np.fft.rfft2(image) * -c, s=image.shape)
    return out


def test_model_ctf_is_minus_ctf_2d() -> None:
    rng = np.random.default_rng(0)
    rows = _ctf_rows(3, rng)
    rows[:, 3] = [0.0, 30.0, 90.0]  # phase shifts
    settings = c2.Class2DSettings(n_classes=1, mask_diameter=30.0)
    geom = _geometry(BOX, BOX // 2 - 2, settings, PX, np)
    got = c2.model_ctf(rows, geom.kx, geom.ky)
    for i, row in enumerate(rows):
        ref = ctf_2d((BOX, BOX), PX, row[0], row[1], row[2], phase_shift=row[3])
        np.testing.assert_allclose(got[i], -ref.ravel()[geom.flat], atol=2e-5)


def test_resize_keeps_the_centre_and_band_limited_values() -> None:
    yy, xx = np.mgrid[0:64, 0:64] - 32
    blob = np.exp(-((xx - 3) ** 2 + (yy + 5) ** 2) / (2 * 6.0**2)).astype(np.float32)
    small = c2.resize_images(blob[None], 32)[0]  # pixel j of 32 sits at pixel 2j of 64
    np.testing.assert_allclose(small, blob[::2, ::2], atol=2e-3)
    back = c2.resize_images(small[None], 64)[0]
    np.testing.assert_allclose(back, blob, atol=5e-3)


def test_rotated_references_follow_relion_psi_convention() -> None:
    """Projecting a class at rotation psi gives the spectrum of the image rotated by
    A = Rz(psi) (image(r) = class(A^T r)), and not of the opposite rotation."""
    ref = _view(1)
    settings = c2.Class2DSettings(n_classes=1, mask_diameter=36.0, psi_step=15.0)
    geom = _geometry(BOX, BOX // 2 - 4, settings, PX, np)
    proj = project_images(pad_image_spectra(ref[None]), geom.cells)[0]  # (R, F)
    for r in (2, 7, 17):
        psi = settings.psi_angles[r]
        image = _rotate_shift(ref, psi, (0.0, 0.0))
        spec = np.fft.rfft2(np.fft.ifftshift(image)).ravel()[geom.flat]
        err = np.abs(proj[r] - spec).sum() / np.abs(spec).sum()
        opposite = np.abs(proj[(-r) % settings.n_rotations] - spec).sum() / np.abs(spec).sum()
        assert err < 0.06, err
        assert opposite > 0.5


def test_wiener_average_of_rotated_ctf_images_recovers_the_class() -> None:
    """The M-step with known poses (noise-free, many defoci) rebuilds the image."""
    rng = np.random.default_rng(3)
    ref = _view(2)
    settings = c2.Class2DSettings(n_classes=1, mask_diameter=36.0, psi_step=10.0)
    n = 120
    rot = rng.integers(0, settings.n_rotations, n)
    images = np.stack([_rotate_shift(ref, settings.psi_angles[r], (0.0, 0.0)) for r in rot])
    ctf = _ctf_rows(n, rng)
    data = c2.prepare_particles(_apply_ctf(images, ctf, PX), PX, BOX, ctf)
    geom = _geometry(BOX, BOX // 2 - 2, settings, PX, np)
    sums, _ = _pass(data, geom, settings, np.ones(BOX // 2 + 1), None, None,
                    (np.zeros(n, dtype=int), rot))  # fmt: skip
    inv_tau2 = np.full((1, BOX // 2 + 1), 1e-6)
    masked, _, _ = _maximise(data, geom, settings, sums, inv_tau2)
    truth = ref * c2.soft_circle(BOX, 36.0, settings.mask_edge)
    corr = np.corrcoef(masked[0].ravel(), truth.ravel())[0, 1]
    assert corr > 0.97
    assert float(masked[0].std()) == pytest.approx(float(truth.std()), rel=0.1)


def test_significant_poses_keep_nearly_all_probability() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3.0, (5, 2000)).astype(np.float32)
    logits[0] = -50.0
    logits[0, 7] = 0.0  # one sharp particle
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    total = prob.sum(axis=1)
    full = prob / total[:, None]
    kept = _significant(prob.copy(), total)
    np.testing.assert_allclose(kept.sum(axis=1), 1.0, rtol=1e-5)
    assert np.count_nonzero(kept[0]) == 1
    lost = np.where(kept > 0, 0.0, full).sum(axis=1)
    assert np.all(lost <= 1.0e-3)


def _three_views(n_each: int, snr: float, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Particles of three different views with random psi, shifts, CTF and noise."""
    rng = np.random.default_rng(seed)
    views = [_view(10 + v) for v in range(3)]
    label = np.repeat(np.arange(3), n_each)
    n = len(label)
    psi = rng.uniform(0, 360, n)
    shift = rng.integers(-2, 3, (n, 2)).astype(float)
    clean = np.stack(
        [
            _rotate_shift(views[k], p, (s[0], s[1]))
            for k, p, s in zip(label, psi, shift, strict=True)
        ]
    )
    ctf = _ctf_rows(n, rng)
    signal = _apply_ctf(clean, ctf, PX)
    noise = rng.normal(0, math.sqrt(float(signal.var()) / snr), signal.shape)
    images = (signal + noise).astype(np.float32)
    images /= images[:, :4, :].std()
    return images, {"label": label, "psi": psi, "shift": shift, "ctf": ctf}


def test_em_separates_views_and_recovers_poses() -> None:
    """Three views at SNR 0.5 per pixel: the classes are pure, and within a class the
    estimated psi and shift differ from the truth by one rotation and one offset."""
    images, truth = _three_views(60, 0.5, seed=4)
    settings = c2.Class2DSettings(
        n_classes=3, mask_diameter=34.0, psi_step=6.0, max_shift=3.0, batch=64, reseed_until=4
    )
    data = c2.prepare_particles(images, PX, BOX, truth["ctf"])
    rng = np.random.default_rng(1)
    state = c2.initial_state(data, settings, rng)
    for _ in range(12):
        state = c2.em_iteration(data, state, settings, rng)
        if state.converged:
            break
    label = truth["label"]
    for k in range(3):
        members = state.assignment[label == k]
        values, counts = np.unique(members, return_counts=True)
        assert counts.max() >= 0.95 * len(members), (k, values, counts)
        cls = values[np.argmax(counts)]
        sel = (label == k) & (state.assignment == cls)
        # image = Rz(psi_est) class = Rz(psi_true) view  ->  psi_est - psi_true is constant.
        dpsi = np.deg2rad(state.psi[sel] - truth["psi"][sel])
        mean = np.angle(np.exp(1j * dpsi).mean())
        spread = np.rad2deg(np.abs(np.angle(np.exp(1j * (dpsi - mean)))))
        assert np.median(spread) < 4.0 and np.mean(spread < 10.0) > 0.9
        # shifts: t_est = t_true + R(psi_true) c for the class's offset c (a few px).
        assert np.mean(np.abs(state.shift[sel] - truth["shift"][sel]) <= 2.5) > 0.85


def test_class_scores_tell_particles_from_junk() -> None:
    yy, xx = np.mgrid[0:BOX, 0:BOX].astype(float) - BOX // 2
    mask = c2.soft_circle(BOX, 34.0, 2.0)
    views = [_view(5 + i) * mask for i in range(3)]  # three views: the same mass
    edge = np.where(xx * 0.8 + yy * 0.6 > 3.0, 2.0, 0.0)
    spread = sum(
        np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 5.0**2))
        for cx, cy in ((-12, 4), (10, -11), (6, 13), (0, 0))
    )
    clump = 2.0 * views[0] + _rotate_shift(views[1], 40.0, (2.0, -1.0))  # compact, heavy
    rng = np.random.default_rng(0)
    clean = np.stack([*views, edge, spread, clump, np.zeros((BOX, BOX))])
    # Four subsets per class: the signal plus independent noise (pure noise for the last).
    subsets = clean[:, None] + rng.normal(0, 0.3, (len(clean), 4, BOX, BOX))
    subsets[-1] = rng.normal(0, 1, (4, BOX, BOX))
    ssnr = np.full((len(clean), BOX // 2 + 1), 50.0)
    ssnr[-1] = 0.05  # no signal
    counts = np.array([100, 80, 60, 30, 30, 30, 30])
    scores = c2.class_scores(subsets.astype(np.float32), ssnr, PX, 34.0 * PX, counts)
    assert np.all(scores["containment"][:3] > 0.97)
    np.testing.assert_allclose(scores["mass_ratio"][:3], 1.0, atol=0.05)
    assert np.all(scores["score"][:3] >= 0.97)
    assert scores["containment"][5] > 0.95 and scores["mass_ratio"][5] > 2.5
    assert np.all(scores["score"][3:] < 0.8)
    assert scores["ssnr_low"][-1] == pytest.approx(0.05)
    # The noise of one average would make a particle look spread out; the products of
    # independent subsets do not: with noise as strong as the signal, still contained.
    noisy = (clean[:3, None] + rng.normal(0, 4.0, (3, 4, BOX, BOX))).astype(np.float32)
    fair = c2.class_scores(noisy, ssnr[:3], PX, 34.0 * PX, counts[:3])
    assert np.all(fair["containment_estimate"] > 0.9)
    same = np.repeat(noisy.mean(axis=1, keepdims=True), 4, axis=1)  # products = a * a
    biased = c2.class_scores(same, ssnr[:3], PX, 34.0 * PX, counts[:3])
    assert np.all(biased["containment_estimate"] < 0.9)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_em_iteration_on_gpu_matches_cpu() -> None:
    import cupy as cp

    images, truth = _three_views(20, 0.5, seed=5)
    settings = c2.Class2DSettings(n_classes=3, mask_diameter=34.0, psi_step=10.0, batch=16)
    cpu = c2.prepare_particles(images, PX, BOX, truth["ctf"])
    gpu = c2.prepare_particles(cp.asarray(images), PX, BOX, truth["ctf"])
    s_cpu = c2.initial_state(cpu, settings, np.random.default_rng(0))
    s_gpu = c2.initial_state(gpu, settings, np.random.default_rng(0))
    assert isinstance(s_gpu.classes, cp.ndarray)
    for _ in range(3):
        s_cpu = c2.em_iteration(cpu, s_cpu, settings)
        s_gpu = c2.em_iteration(gpu, s_gpu, settings)
    assert np.mean(s_cpu.assignment == s_gpu.assignment) > 0.95
    np.testing.assert_allclose(
        cp.asnumpy(s_gpu.classes), s_cpu.classes, atol=0.05 * s_cpu.classes.std()
    )
