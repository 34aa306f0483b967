"""ops.align, ops.motion, ops.dose weights and ops.gain orientation on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.ops import shift_image
from cryosnake.ops.align import align_frames
from cryosnake.ops.defects import fill_defects, find_defects
from cryosnake.ops.dose import damage_attenuation, dose_weight_norm, frame_exposures
from cryosnake.ops.gain import find_gain_orientation, orient_gain
from cryosnake.ops.motion import corrected_sums, fit_local_motion


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
    frames = np.stack([total, 2 * total])
    fill_defects(frames, mask, 300.0)
    assert np.all(frames[:, 64, 64] == 300.0) and np.all(frames[:, 30, 40] == 300.0)
    assert frames[0, 1, 1] == total[1, 1] and frames[1, 1, 1] == 2 * total[1, 1]


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
def test_corrected_sum_of_integer_shifted_frames_is_exact(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(np.float32) + 5.0
    shifts = np.array([[0.0, 0.0], [3.0, -2.0], [-4.0, 1.0], [7.0, 5.0]])  # (x, y)
    frames = np.stack([np.roll(image, (int(dy), int(dx)), axis=(0, 1)) for dx, dy in shifts])
    for tile in (128, 512):
        _, plain = corrected_sums(frames, shifts, 1.0, frame_exposures(4, 1.0), tile=tile)
        inner = (slice(8, -8), slice(8, -8))  # beyond the largest shift: no wrapped content
        np.testing.assert_allclose(plain[inner] / 4, image[inner], atol=1e-4)


def test_corrected_sum_undoes_subpixel_global_and_local_shifts() -> None:
    shape, n = (600, 700), 5
    image = blobs(shape, seed=2) * 10 + 3
    rng = np.random.default_rng(4)
    shifts = np.cumsum(rng.normal(0, 1.5, size=(n, 2)), axis=0)
    shifts -= shifts[0]
    # A local field of the model family: a linear gradient in x growing with time.
    cx, cy = np.meshgrid(np.linspace(50, 650, 5), np.linspace(50, 550, 5))
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
    t = np.arange(n)[:, None] / (n - 1)
    u = centres[None, :, 0] / (shape[1] - 1) - 0.5
    field = np.stack([1.2 * t * u, -0.8 * t * u], axis=2)  # (n, 25, 2)
    model = fit_local_motion(centres, field, shape)
    # Frames built tile-free: each pixel moved by its own local shift (Fourier shift of
    # the whole image per column band would be circular; use the model at each pixel).
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    from scipy import ndimage

    frames = []
    for k in range(n):
        lx, ly = model.shift_at(np.full(xx.size, k), xx.ravel(), yy.ravel())
        sx = shifts[k, 0] + lx.reshape(shape)
        sy = shifts[k, 1] + ly.reshape(shape)
        frames.append(ndimage.map_coordinates(image, [yy - sy, xx - sx], order=5, mode="wrap"))
    frames = np.stack(frames).astype(np.float32)
    _, plain = corrected_sums(frames, shifts, 1.0, frame_exposures(n, 1.0), local=model, tile=128)
    _, globally = corrected_sums(frames, shifts, 1.0, frame_exposures(n, 1.0), tile=128)
    inner = (slice(20, -20), slice(20, -20))
    err_local = np.abs(plain / n - image)[inner].max()
    err_global = np.abs(globally / n - image)[inner].max()
    assert err_local < 0.01 * np.abs(image).max(), err_local
    assert err_local < 0.2 * err_global, (err_local, err_global)


def test_dose_weighted_sum_matches_the_weights_of_grant_and_grigorieff() -> None:
    shape, n, px = (300, 400), 12, 1.2
    noise = np.random.default_rng(5).standard_normal(shape)  # high frequencies to weight
    image = (blobs(shape, seed=5) * 10 + noise).astype(np.float32)
    frames = np.broadcast_to(image, (n, *shape)).astype(np.float32)
    exposures = frame_exposures(n, 2.0)
    dw, plain = corrected_sums(frames, np.zeros((n, 2)), px, exposures, tile=128)
    s = np.sqrt(
        np.fft.fftfreq(shape[0], px)[:, None] ** 2 + np.fft.rfftfreq(shape[1], px)[None, :] ** 2
    )
    norm = dose_weight_norm(s, exposures)
    weight = sum(damage_attenuation(s, e) for e in exposures) / norm * np.sqrt(n)
    expected = np.fft.irfft2(np.fft.rfft2(image) * weight, s=shape)
    np.testing.assert_allclose(plain, n * image, atol=1e-3 * n * np.abs(image).max())
    # Away from the borders, where the periodic reference and the tiles (which see
    # the mean beyond the frame) differ by the extent of the filter.
    inner = (slice(24, -24), slice(24, -24))
    np.testing.assert_allclose(dw[inner], expected[inner], atol=2e-3 * np.abs(expected).max())
    assert not np.allclose(dw, plain, atol=0.05 * np.abs(plain).max())  # weighting did work
