"""Sub-pixel shifts, registration and Fourier cropping."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from cryosnake.ops import fourier_crop, phase_ramp, register_translation, shift_image
from cryosnake.ops.fourier import resample_size, rescale_images


def gaussian(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def smooth_random(shape: tuple[int, int], seed: int, sigma: float = 2.0) -> np.ndarray:
    """A band-limited random image (Gaussian-filtered white noise)."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfft2(rng.normal(size=shape))
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    f *= np.exp(-2 * np.pi**2 * sigma**2 * (kx**2 + ky**2))
    return np.fft.irfft2(f, s=shape).astype(np.float32)


def test_phase_ramp_identity_and_shape() -> None:
    ramp = phase_ramp((10, 12), (0.0, 0.0))
    assert ramp.shape == (10, 7)
    assert ramp.dtype == np.complex64
    np.testing.assert_allclose(ramp, 1.0)


def test_integer_shift_moves_content_by_plus_shift() -> None:
    """Convention: shift_image(img, s)(r) = img(r - s): content moves by +s."""
    img = gaussian((64, 80), (20.0, 30.0), 2.0).astype(np.float32)
    out = shift_image(img, (5.0, -7.0))  # (dy, dx)
    assert out.dtype == np.float32
    assert np.unravel_index(np.argmax(out), out.shape) == (25, 23)
    np.testing.assert_allclose(out, np.roll(img, (5, -7), axis=(0, 1)), atol=1e-5)


@pytest.mark.parametrize("shift", [(0.3, -0.7), (2.25, 4.6), (-3.5, 0.5)])
def test_subpixel_shift_of_a_gaussian(shift: tuple[float, float]) -> None:
    shape = (64, 72)
    img = gaussian(shape, (30.0, 33.0), 2.5)
    out = shift_image(img, shift)
    expected = gaussian(shape, (30.0 + shift[0], 33.0 + shift[1]), 2.5)
    np.testing.assert_allclose(out, expected, atol=2e-4)


@pytest.mark.parametrize(
    "shift", [(3.37, -5.81), (-0.42, 0.13), (12.05, 7.77), (-9.99, -10.5)], ids=str
)
@pytest.mark.parametrize("shape", [(128, 128), (96, 120)], ids=str)
def test_register_translation_recovers_subpixel_shift(
    shift: tuple[float, float], shape: tuple[int, int]
) -> None:
    ref = smooth_random(shape, 11)
    moved = shift_image(ref, shift)
    dy, dx = register_translation(ref, moved, upsample=100)
    assert abs(dy - shift[0]) < 0.01
    assert abs(dx - shift[1]) < 0.01
    # swapping the arguments reverses the sign
    dy2, dx2 = register_translation(moved, ref, upsample=100)
    assert dy2 == pytest.approx(-shift[0], abs=0.01)
    assert dx2 == pytest.approx(-shift[1], abs=0.01)


def test_register_translation_sign_convention_on_a_blob() -> None:
    ref = gaussian((64, 64), (20.0, 24.0), 2.0)
    img = gaussian((64, 64), (23.4, 22.2), 2.0)  # img(r) = ref(r - (3.4, -1.8))
    dy, dx = register_translation(ref, img, upsample=100)
    assert dy == pytest.approx(3.4, abs=0.01)
    assert dx == pytest.approx(-1.8, abs=0.01)


def test_register_translation_max_shift() -> None:
    """A stronger match 20 px away is ignored when the search is limited to 5 px."""
    ref = gaussian((96, 96), (40.0, 40.0), 2.0)
    img = 1.0 * gaussian((96, 96), (60.0, 40.0), 2.0) + 0.6 * gaussian((96, 96), (42.3, 41.4), 2.0)
    assert register_translation(ref, img, upsample=100) == pytest.approx((20.0, 0.0), abs=0.02)
    dy, dx = register_translation(ref, img, upsample=100, max_shift=5.0)
    assert (dy, dx) == pytest.approx((2.3, 1.4), abs=0.02)


def test_register_translation_without_upsampling_is_integer() -> None:
    ref = smooth_random((64, 64), 2)
    dy, dx = register_translation(ref, shift_image(ref, (4.2, -2.9)), upsample=1)
    assert (dy, dx) == (4.0, -3.0)


def test_fourier_crop_preserves_mean_and_low_frequencies() -> None:
    n, m = 128, 64
    yy, xx = np.mgrid[0:n, 0:n]
    k = 3  # cycles across the box: far below the new Nyquist (32)
    img = 5.0 + np.cos(2 * np.pi * k * xx / n) + 0.5 * np.sin(2 * np.pi * 2 * yy / n)
    img += 0.3 * np.cos(2 * np.pi * 50 * xx / n)  # above the new Nyquist: must vanish
    out = fourier_crop(img, (m, m))
    assert out.shape == (m, m) and out.dtype == np.float32
    assert out.mean() == pytest.approx(img.mean(), rel=1e-6)
    yo, xo = np.mgrid[0:m, 0:m]
    expected = 5.0 + np.cos(2 * np.pi * k * xo / m) + 0.5 * np.sin(2 * np.pi * 2 * yo / m)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fourier_crop_samples_a_band_limited_image() -> None:
    """Output sample j coincides with input sample 2j (point values preserved)."""
    img = smooth_random((96, 64), 9, sigma=6.0)  # negligible power above 1/4 cycles/px
    out = fourier_crop(img, (48, 32))
    np.testing.assert_allclose(out, img[::2, ::2], atol=2e-3 * np.abs(img).max())


def test_fourier_crop_3d_and_odd_sizes() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 20, 20)) + 2.0
    out = fourier_crop(vol, (11, 11, 11))
    assert out.shape == (11, 11, 11)
    assert out.mean() == pytest.approx(vol.mean(), rel=1e-5)
    same = fourier_crop(vol, vol.shape)
    np.testing.assert_allclose(same[1:, 1:, 1:].mean(), vol[1:, 1:, 1:].mean(), rtol=0.1)


def test_fourier_crop_rejects_bad_targets() -> None:
    with pytest.raises(ValueError):
        fourier_crop(np.zeros((8, 8)), (16, 16))
    with pytest.raises(ValueError):
        fourier_crop(np.zeros((8, 8)), (4, 4, 4))


def test_shift_uses_rfft_consistent_with_phase_ramp() -> None:
    img = smooth_random((32, 40), 1)
    f = scipy.fft.rfft2(img) * phase_ramp(img.shape, (1.25, -2.5))
    np.testing.assert_allclose(
        scipy.fft.irfft2(f, s=img.shape), shift_image(img, (1.25, -2.5)), atol=1e-5
    )


def _blob(box: int, pixel: float, offset: tuple[float, float] = (3.0, -5.0)) -> np.ndarray:
    """A Gaussian of 6 Å sigma at ``offset`` Å from pixel box // 2, sampled at ``pixel``."""
    centre = (box // 2 + offset[0] / pixel, box // 2 + offset[1] / pixel)
    return gaussian((box, box), centre, 6.0 / pixel)[None].astype(np.float32)


@pytest.mark.parametrize(
    ("box", "pixel", "new_pixel", "new_box"),
    [(64, 1.25, 1.24, 64), (64, 1.24, 1.25, 64), (50, 2.0, 1.5, 72), (64, 1.5, 2.0, 48),
     (63, 1.0599, 1.0, 64), (64, 1.0, 1.0, 80), (64, 1.0, 1.0, 40)],
)  # fmt: skip
def test_rescale_images_samples_the_same_image_on_the_new_grid(
    box: int, pixel: float, new_pixel: float, new_box: int
) -> None:
    out = rescale_images(_blob(box, pixel), pixel, new_pixel, new_box)
    assert out.shape == (1, new_box, new_box) and out.dtype == np.float32
    np.testing.assert_allclose(out, _blob(new_box, new_pixel), atol=3e-4)


def test_resample_size_finds_an_exact_ratio_or_the_closest() -> None:
    size, new = resample_size(64, 1.25 / 1.24)
    assert size >= 64 and abs(new / size / (1.25 / 1.24) - 1) <= 1e-4
    assert resample_size(64, 2.0) == (64, 128)
    size, new = resample_size(10, np.pi)  # no size up to 40 within 1e-4: the closest
    errors = [abs(round(n * np.pi) / n / np.pi - 1) for n in range(10, 41)]
    assert 10 <= size <= 40 and abs(new / size / np.pi - 1) == pytest.approx(min(errors))
