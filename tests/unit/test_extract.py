"""cryosnake.ops.extract on synthetic micrographs of Gaussian blobs at known positions."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake import backend
from cryosnake.ops.extract import (
    box_corners,
    cut_boxes,
    default_box,
    extract_particles,
    normalise_background,
    recentre_and_crop,
)
from cryosnake.ops.fourier import fast_size, fourier_crop, register_translation, shift_image

SIGMA = 2.5  # px; a Gaussian this wide is band-limited well below Nyquist
SHAPE = (200, 240)
# (x, y) with remainders near +-0.5, where rounding to the nearest pixel errs most.
CENTRES = np.array([[60.45, 50.4], [120.55, 70.3], [180.7, 140.45], [90.25, 150.6], [150.0, 100.0]])


def blobs(centres: np.ndarray, shape: tuple[int, int] = SHAPE, sigma: float = SIGMA) -> np.ndarray:
    """A bright micrograph (10) with dark Gaussian particles (-4 deep) at ``centres``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = np.full(shape, 10.0)
    for x, y in centres:
        image -= 4.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def centred_gaussian(size: int, sigma: float) -> np.ndarray:
    g = np.arange(size) - size // 2
    return np.exp(-(g[:, None] ** 2 + g[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def centre_errors(stack: np.ndarray, sigma: float) -> np.ndarray:
    """Distance (px) of each image's blob from the box centre, by cross-correlation."""
    ref = centred_gaussian(stack.shape[-1], sigma)
    out = []
    for image in stack:
        dy, dx = register_translation(ref, image, upsample=100, max_shift=4)
        out.append(np.hypot(dy, dx))
    return np.array(out)


def test_centres_are_sub_pixel_accurate() -> None:
    stack, kept = extract_particles(blobs(CENTRES), CENTRES, 48, background_diameter=30)
    assert stack.shape == (5, 48, 48) and stack.dtype == np.float32
    assert kept.all()
    errors = centre_errors(stack, SIGMA)
    assert errors.max() < 0.02, errors
    # The test can fail: boxes cut at the rounded coordinates alone are off by ~0.5 px.
    corners, _, _ = box_corners(CENTRES, 48, SHAPE)
    naive = -cut_boxes(blobs(CENTRES), corners, 48)
    assert np.median(centre_errors(naive, SIGMA)) > 0.4


def test_batched_shift_and_crop_equals_fourier_module() -> None:
    rng = np.random.default_rng(0)
    boxes = rng.normal(size=(4, 64, 64)).astype(np.float32)
    shifts = rng.uniform(-0.5, 0.5, size=(4, 2))
    for size in (64, 40):
        out = recentre_and_crop(boxes, shifts, size)
        for i in range(4):
            expected = shift_image(boxes[i], tuple(shifts[i]))
            if size < 64:
                expected = fourier_crop(expected, (size, size))
            np.testing.assert_allclose(out[i], expected, atol=2e-5)


def test_background_normalised_to_mean_0_sd_1() -> None:
    rng = np.random.default_rng(1)
    micrograph = blobs(CENTRES) * 3.0 + 2.0 * rng.normal(size=SHAPE).astype(np.float32)
    for diameter, size in ((30.0, None), (None, None), (12.0, 24)):
        stack, _ = extract_particles(
            micrograph, CENTRES, 48, size=size, background_diameter=diameter
        )
        b = stack.shape[-1]
        d = 0.75 * b if diameter is None else diameter  # RELION's default: 75 % of the box
        g = np.arange(b) - b // 2
        background = (g[:, None] ** 2 + g[None, :] ** 2) > (d / 2) ** 2
        values = stack[:, background]
        np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-4)
        # The particle (inside the circle) is far from the background level.
        assert (stack[:, b // 2, b // 2] > 3.0).all()


def test_flat_background_is_not_divided_by_zero() -> None:
    out = normalise_background(np.full((2, 16, 16), 5.0, np.float32), 8.0)
    assert np.all(out == 0.0)
    # Flat up to float32 rounding: shifted, not blown up.
    stack, _ = extract_particles(blobs(CENTRES[:1]), CENTRES[:1], 48)
    assert np.abs(stack).max() < 5.0


def test_contrast_inversion_makes_particles_white() -> None:
    micrograph = blobs(CENTRES)  # dark particles, as in a micrograph
    white, _ = extract_particles(micrograph, CENTRES, 48)
    dark, _ = extract_particles(micrograph, CENTRES, 48, invert=False)
    assert (white[:, 24, 24] > 2.0).all()
    assert (dark[:, 24, 24] < -2.0).all()
    np.testing.assert_array_equal(white, -dark)
    chunked, _ = extract_particles(micrograph, CENTRES, 48, chunk=2)  # 3 batches
    np.testing.assert_allclose(chunked, white, atol=1e-5)


def test_fourier_crop_halves_the_sampling_and_keeps_the_centre() -> None:
    sigma = 4.0
    noise = 0.01 * np.random.default_rng(2).normal(size=SHAPE)  # a background to normalise
    micrograph = blobs(CENTRES, sigma=sigma) + noise.astype(np.float32)
    stack, _ = extract_particles(micrograph, CENTRES, 48, size=24)
    assert stack.shape == (5, 24, 24)
    # In the binned pixels the blob is half as wide and still on the centre (12, 12).
    errors = centre_errors(stack, sigma / 2)
    assert errors.max() < 0.02, errors
    ref = centred_gaussian(24, sigma / 2).ravel()
    for image in stack:
        assert np.corrcoef(image.ravel(), ref)[0, 1] > 0.999


def test_boxes_crossing_the_edge_are_skipped() -> None:
    ny, nx = SHAPE
    coords = np.array(
        [
            [24.0, 100.0],  # box [0, 48): inside
            [23.4, 100.0],  # rounds to 23: box starts at -1
            [nx - 23.6, 100.0],  # rounds to nx - 24: box ends at nx
            [nx - 23.4, 100.0],  # rounds to nx - 23: one pixel over
            [100.0, 23.6],  # rounds to 24: inside
            [100.0, ny - 10.0],
            [-50.0, 100.0],  # off the micrograph
        ]
    )
    stack, kept = extract_particles(blobs(coords), coords, 48)
    np.testing.assert_array_equal(kept, [True, False, True, False, True, False, False])
    assert stack.shape == (3, 48, 48)


def test_no_coordinates_give_an_empty_stack() -> None:
    stack, kept = extract_particles(blobs(CENTRES), np.zeros((0, 2)), 48, size=32)
    assert stack.shape == (0, 32, 32) and stack.dtype == np.float32
    assert kept.shape == (0,)
    assert normalise_background(np.zeros((0, 8, 8), np.float32), 4.0).shape == (0, 8, 8)


def test_default_box_is_even_fft_friendly_and_about_1_8_diameters() -> None:
    for diameter in (20.0, 60.0, 61.7, 100.0, 333.0):
        box = default_box(diameter)
        assert box % 2 == 0 and box == fast_size(box)
        assert 1.8 * diameter <= box <= 2.0 * diameter
    assert default_box(100.0) == 180


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="even"):
        extract_particles(blobs(CENTRES), CENTRES, 47)
    with pytest.raises(ValueError, match="size"):
        extract_particles(blobs(CENTRES), CENTRES, 48, size=50)
    with pytest.raises(ValueError, match="no background"):
        normalise_background(np.zeros((1, 16, 16), np.float32), 40.0)


@pytest.mark.gpu
def test_gpu_matches_cpu() -> None:
    cp = pytest.importorskip("cupy")
    if not backend.gpu_available():
        pytest.skip("CuPy finds no CUDA device")
    micrograph = blobs(CENTRES) + np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    cpu, kept_cpu = extract_particles(micrograph, CENTRES, 64, size=48, background_diameter=30)
    gpu, kept_gpu = extract_particles(
        cp.asarray(micrograph), CENTRES, 64, size=48, background_diameter=30, chunk=2
    )
    assert isinstance(gpu, cp.ndarray) and gpu.dtype == cp.float32
    np.testing.assert_array_equal(kept_cpu, kept_gpu)
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, atol=1e-4)
