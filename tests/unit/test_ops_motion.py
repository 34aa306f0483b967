"""ops.align, ops.motion, ops.dose weights and ops.gain orientation on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.ops import shift_image
from cryosnake.ops.align import align_frames
from cryosnake.ops.dose import damage_attenuation, dose_weight_norm, frame_exposures
from cryosnake.ops.gain import find_gain_orientation, orient_gain
from cryosnake.ops.motion import find_defects, fit_local_motion, replace_defects


def blobs(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth random image (low-passed noise) to move around."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfft2(rng.standard_normal(shape))
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    f *= np.exp(-(ky**2 + kx**2) / (2 * 0.05**2))
    return np.fft.irfft2(f, s=shape).astype(np.float32)


def test_align_frames_recovers_known_subpixel_shifts() -> None:
    rng = np.random.default_rng(1)
    ref = blobs((256, 256))
    truth = np.cumsum(rng.normal(0, 0.8, size=(12, 2)), axis=0)
    truth -= truth[0]
    frames = np.stack(
        [shift_image(ref, (dy, dx)) + 0.05 * rng.standard_normal(ref.shape) for dx, dy in truth]
    ).astype(np.float32)
    result = align_frames(frames, pixel_size=2.0, bfactor=0.0, align_pixel_size=2.0)
    assert result.converged
    assert np.all(result.shifts[0] == 0.0)
    np.testing.assert_allclose(result.shifts, truth, atol=0.05)


def test_fit_local_motion_recovers_a_field_of_the_model_family() -> None:
    shape, n = (400, 600), 10
    cx, cy = np.meshgrid(np.linspace(60, 540, 5), np.linspace(40, 360, 5))
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
    t = np.arange(n)[:, None] / (n - 1)
    u = centres[None, :, 0] / (shape[1] - 1) - 0.5
    v = centres[None, :, 1] / (shape[0] - 1) - 0.5
    sx = 2.0 * t * u + 0.7 * t**2 * v * v
    sy = -1.5 * t**3 * u * v + 0.4 * t
    offsets = np.random.default_rng(0).normal(0, 1, size=(1, 25, 2))  # per-patch constants
    shifts = np.stack([sx, sy], axis=2) + offsets
    model = fit_local_motion(centres, shifts, shape)
    for frame in range(n):
        mx, my = model.shift_at(np.full(25, frame), centres[:, 0], centres[:, 1])
        np.testing.assert_allclose(mx, sx[frame], atol=1e-8)
        np.testing.assert_allclose(my, sy[frame], atol=1e-8)
    mx, my = model.shift_at(0, np.array([0.0, 599.0]), np.array([0.0, 399.0]))
    np.testing.assert_allclose([mx, my], 0.0, atol=1e-12)  # zero at the first frame


def test_defects_are_found_and_replaced() -> None:
    rng = np.random.default_rng(3)
    total = rng.poisson(300.0, size=(128, 128)).astype(np.float32)
    hot = [(5, 7), (64, 64), (127, 0)]
    for y, x in hot:
        total[y, x] = 3000.0
    total[30, 40] = 0.0  # dead
    mask = find_defects(total)
    assert {tuple(p) for p in np.argwhere(mask)} == {*hot, (30, 40)}
    fixed = replace_defects(total, mask, 300.0)
    assert fixed[64, 64] == 300.0 and fixed[1, 1] == total[1, 1]


def test_dose_weights_sum_to_one_in_quadrature() -> None:
    s = np.linspace(0.0, 0.33, 50)
    exposures = frame_exposures(30, 1.0)
    np.testing.assert_allclose(exposures[[0, -1]], [0.5, 29.5])
    norm = dose_weight_norm(s, exposures)
    total = sum((damage_attenuation(s, e) / norm) ** 2 for e in exposures)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)
    first = damage_attenuation(s, exposures[0]) / norm
    last = damage_attenuation(s, exposures[-1]) / norm
    assert np.all(first[1:] > last[1:])  # early frames carry the high frequencies
    np.testing.assert_allclose(first[0], 1 / np.sqrt(30))


@pytest.mark.parametrize("rotate", range(4))
@pytest.mark.parametrize("flip", ["none", "x", "y"])
def test_gain_orientation_search(rotate: int, flip: str) -> None:
    rng = np.random.default_rng(rotate)
    true_gain = (1.0 + 0.08 * rng.standard_normal((96, 96))).astype(np.float32)
    raw = rng.poisson(40.0 * 20 / true_gain).astype(np.float32)  # counts = signal / gain
    # The file holds a gain that orient_gain(., rotate, flip) turns into the true one.
    stored = next(
        cand
        for cand in (orient_gain(true_gain, r, f) for r in range(4) for f in ("none", "x"))
        if np.array_equal(orient_gain(cand, rotate, flip), true_gain)
    )
    found_rotate, found_flip, scores = find_gain_orientation(raw, stored)
    assert np.array_equal(orient_gain(stored, found_rotate, found_flip), true_gain)
    best = sorted(scores.values())
    assert best[-1] > 3 * max(best[-2], 0.01)


def test_gain_orientation_of_a_non_square_gain_that_fits_no_way() -> None:
    with pytest.raises(ValueError, match="no orientation"):
        find_gain_orientation(np.ones((64, 48)), np.ones((50, 50)))


@pytest.mark.parametrize("shape", [(600, 700), (333, 517), (256, 256)])
def test_local_correction_is_exact_without_motion(shape: tuple[int, int]) -> None:
    from cryosnake.ops.motion import _undo_local

    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    still = fit_local_motion(np.array([[50.0, 60.0], [200.0, 150.0]]), np.zeros((4, 2, 2)), shape)
    for tile in (128, 512):
        np.testing.assert_allclose(_undo_local(image, still, 2, tile), image, atol=1e-5)


def test_local_correction_undoes_a_uniform_shift() -> None:
    from cryosnake.ops.motion import _undo_local

    shape, n = (600, 700), 5
    image = blobs(shape, seed=2)
    centres = np.array([[100.0, 100.0], [600.0, 100.0], [100.0, 500.0], [600.0, 500.0]])
    track = (np.arange(n) / (n - 1))[:, None, None] * np.array([1.3, -0.7])
    model = fit_local_motion(centres, np.broadcast_to(track, (n, 4, 2)).copy(), shape)
    moved = shift_image(image, (-0.7, 1.3))  # frame(r) = image(r - (1.3, -0.7))
    back = _undo_local(moved, model, n - 1, 256)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(back - image)[inner].max() < 0.01 * np.abs(image).max()
