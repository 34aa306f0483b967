"""CuPy arrays through the ops: same results as NumPy, results stay on the device.

Run with ``pytest -m gpu`` where CuPy finds a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake import backend
from cryosnake.ops import (
    ctf_2d,
    damage_attenuation,
    fourier_crop,
    register_translation,
    shift_image,
)
from cryosnake.ops.gain import orient_gain

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    if not backend.gpu_available():
        pytest.skip("CuPy finds no CUDA device")
    return cupy


def smooth(shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    f = np.fft.rfft2(rng.normal(size=shape))
    k2 = np.fft.fftfreq(shape[0])[:, None] ** 2 + np.fft.rfftfreq(shape[1])[None, :] ** 2
    return np.fft.irfft2(f * np.exp(-2 * np.pi**2 * 4.0 * k2), s=shape).astype(np.float32)


def test_shift_and_register_on_gpu(cp) -> None:
    ref = smooth((128, 128))
    moved = shift_image(cp.asarray(ref), (3.37, -5.81))
    assert isinstance(moved, cp.ndarray) and moved.dtype == cp.float32
    np.testing.assert_allclose(cp.asnumpy(moved), shift_image(ref, (3.37, -5.81)), atol=1e-4)
    dy, dx = register_translation(cp.asarray(ref), moved, upsample=100)
    assert (dy, dx) == pytest.approx((3.37, -5.81), abs=0.01)


def test_ctf_and_dose_on_gpu(cp) -> None:
    ctf = ctf_2d((64, 96), 1.2, 15000, 12000, 30.0, xp=cp)
    assert isinstance(ctf, cp.ndarray)
    np.testing.assert_allclose(
        cp.asnumpy(ctf), ctf_2d((64, 96), 1.2, 15000, 12000, 30.0), atol=1e-5
    )
    s = np.linspace(0, 0.5, 50)
    np.testing.assert_allclose(
        cp.asnumpy(damage_attenuation(cp.asarray(s), 20.0)), damage_attenuation(s, 20.0), rtol=1e-6
    )


def test_crop_and_gain_on_gpu(cp) -> None:
    img = smooth((64, 64))
    out = fourier_crop(cp.asarray(img), (32, 32))
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out), fourier_crop(img, (32, 32)), atol=1e-5)
    g = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(
        cp.asnumpy(orient_gain(cp.asarray(g), 1, "x")), orient_gain(g, 1, "x")
    )
