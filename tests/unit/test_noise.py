"""The background power spectrum read off a micrograph at its CTF zeros."""

from __future__ import annotations

import numpy as np

from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.noise import noise_power
from cryosnake.ops.pick import MicrographCtf

PIXEL = 1.5
CTF = MicrographCtf(defocus_u=21000.0, defocus_v=19000.0, angle=30.0, amplitude_contrast=0.1)


def _micrograph(texture: float, noise: float, blobs: float, seed: int = 0) -> np.ndarray:
    """White noise of variance ``noise``, plus through the CTF: a white texture of
    power ``texture`` per unit CTF² and, with ``blobs`` > 0, a crowd of particle-sized
    Gaussian blobs (low-resolution mass far above the texture)."""
    rng = np.random.default_rng(seed)
    n = 1024
    white = np.fft.rfft2(rng.standard_normal((n, n))) * np.sqrt(texture)
    mass = np.zeros((n, n))
    if blobs > 0:
        yy, xx = rng.uniform(40, n - 40, (2, 150))
        mass[yy.astype(int), xx.astype(int)] = blobs
        ky = np.fft.fftfreq(n)[:, None]
        kx = np.fft.rfftfreq(n)[None, :]
        white = white + np.fft.rfft2(mass) * np.exp(-2 * np.pi**2 * 25.0**2 * (kx**2 + ky**2))
    c = ctf_2d((n, n), PIXEL, CTF.defocus_u, CTF.defocus_v, CTF.angle, amplitude_contrast=0.1)
    image = np.fft.irfft2(white * c, s=(n, n)) + rng.normal(0.0, np.sqrt(noise), (n, n))
    return image.astype(np.float32)


def test_noise_and_texture_are_measured_under_a_crowd_of_particles() -> None:
    for blobs in (0.0, 3000.0):
        est = noise_power(_micrograph(texture=1.0, noise=2.0, blobs=blobs), PIXEL, CTF)
        assert est is not None
        s = np.array([0.005, 0.02, 0.05, 0.1, 0.2])
        assert np.allclose(est(s), 2.0, rtol=0.15), (blobs, est(s))
        assert abs(est.texture - 1.0) < 0.25, (blobs, est.texture)


def test_no_estimate_without_zero_rings() -> None:
    near_focus = MicrographCtf(defocus_u=800.0, defocus_v=800.0, angle=0.0)
    assert noise_power(_micrograph(0.5, 2.0, 0.0), PIXEL, near_focus) is None
