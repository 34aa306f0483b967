"""Electron wavelength, CTF zeros and the astigmatism angle convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cryosnake.ops import ctf_2d, frequency_grid, interaction_constant, wavelength


@pytest.mark.parametrize(
    ("kv", "angstrom"), [(300.0, 0.019687), (200.0, 0.025079), (100.0, 0.037014)]
)
def test_relativistic_wavelength(kv: float, angstrom: float) -> None:
    assert wavelength(kv) == pytest.approx(angstrom, abs=1e-5)


def test_interaction_constant_300kv() -> None:
    # sigma_e = 2 pi m e lambda / h^2 = 6.526e-4 rad / (V Å) at 300 kV
    assert interaction_constant(300.0) == pytest.approx(6.526e-4, rel=2e-3)
    assert interaction_constant(200.0) > interaction_constant(300.0)


def test_frequency_grid_axes() -> None:
    kx, ky = frequency_grid((6, 8), 2.0)
    assert kx.shape == (1, 5) and ky.shape == (6, 1)
    np.testing.assert_allclose(kx[0], np.arange(5) / 16.0)
    np.testing.assert_allclose(ky[:, 0], np.fft.fftfreq(6) / 2.0)
    kx_full, _ = frequency_grid((6, 8), 2.0, rfft=False)
    np.testing.assert_allclose(kx_full[0], np.fft.fftfreq(8) / 2.0)


def analytic_zeros(defocus: float, kv: float, cs_mm: float, w: float, n_max: int) -> np.ndarray:
    """Spatial frequencies (1/Å) of the first CTF zeros, from
    -sqrt(1-w^2) sin(chi) - w cos(chi) = -sin(chi + asin(w)) = 0,
    chi(s) = pi lam df s^2 - pi/2 Cs lam^3 s^4, i.e. chi = n pi - asin(w)."""
    lam = wavelength(kv)
    cs = cs_mm * 1e7
    a = 0.5 * math.pi * cs * lam**3
    b = math.pi * lam * defocus
    out = []
    for n in range(0, n_max + 1):
        c = n * math.pi - math.asin(w)
        if c <= 0:
            continue
        if b * b < 4 * a * c:  # beyond the Cs turning point
            break
        u = (b - math.sqrt(b * b - 4 * a * c)) / (2 * a)  # s^2, the root on the rising branch
        out.append(math.sqrt(u))
    return np.array(out)


@pytest.mark.parametrize(("defocus", "kv", "w"), [(15000.0, 300.0, 0.07), (8000.0, 200.0, 0.1)])
def test_ctf_zeros_match_analytic_formula(defocus: float, kv: float, w: float) -> None:
    n, px = 4096, 1.0
    ctf = ctf_2d((4, n), px, defocus, defocus, 0.0, voltage=kv, cs=2.7, amplitude_contrast=w)
    line = ctf[0].astype(np.float64)  # ky = 0: along kx
    s = np.fft.rfftfreq(n) / px
    assert line[0] == pytest.approx(-w, abs=1e-6)  # CTF(0) = -w (dark particles)
    sign = np.signbit(line)
    idx = np.flatnonzero(sign[1:] != sign[:-1])
    # linear interpolation of each crossing
    zeros = s[idx] - line[idx] * (s[idx + 1] - s[idx]) / (line[idx + 1] - line[idx])
    zeros = zeros[zeros < 0.25]  # below the Cs turning point region
    expected = analytic_zeros(defocus, kv, 2.7, w, 60)
    expected = expected[expected < 0.25]
    assert len(zeros) == len(expected) >= 8
    np.testing.assert_allclose(zeros, expected, atol=2e-5)  # grid step is 2.4e-4 1/Å


def test_phase_shift_moves_the_zeros() -> None:
    n, px, df = 2048, 1.0, 6000.0
    plain = ctf_2d((2, n), px, df, df, 0.0, amplitude_contrast=0.0)[0]
    shifted = ctf_2d((2, n), px, df, df, 0.0, amplitude_contrast=0.0, phase_shift=90.0)[0]
    # w = 0: CTF = -sin(chi); with a 90° phase plate, -sin(chi - pi/2) = cos(chi)
    lam = wavelength(300.0)
    s = np.fft.rfftfreq(n) / px
    chi = math.pi * lam * df * s**2 - 0.5 * math.pi * 2.7e7 * lam**3 * s**4
    np.testing.assert_allclose(plain, -np.sin(chi), atol=1e-5)
    np.testing.assert_allclose(shifted, np.cos(chi), atol=1e-5)


def test_bfactor_envelope() -> None:
    n, px = 512, 1.0
    base = ctf_2d((n, n), px, 10000, 10000, 0.0)
    damped = ctf_2d((n, n), px, 10000, 10000, 0.0, bfactor=100.0)
    kx, ky = frequency_grid((n, n), px, dtype=np.float64)
    np.testing.assert_allclose(damped, base * np.exp(-25.0 * (kx**2 + ky**2)), atol=1e-6)


def test_rfft_and_full_grids_agree() -> None:
    full = ctf_2d((64, 64), 1.5, 12000, 9000, 33.0, rfft=False)
    half = ctf_2d((64, 64), 1.5, 12000, 9000, 33.0)
    np.testing.assert_allclose(full[:, :32], half[:, :32], atol=1e-6)  # kx = +-Nyquist differ
    # Friedel symmetry: CTF(-k) = CTF(k)
    np.testing.assert_allclose(full[1:32, 1:32], full[63:32:-1, 63:32:-1], atol=1e-6)


def _first_zero_along(ctf_centred: np.ndarray, angle_deg: float, step: float = 0.05) -> float:
    """Radius (pixels of the centred full FFT grid) of the first sign change along a ray
    at ``angle_deg`` from the x axis (columns) towards the y axis (rows)."""
    n = ctf_centred.shape[0]
    c = n // 2
    r = np.arange(0.0, c - 2, step)
    t = math.radians(angle_deg)
    rows = c + r * math.sin(t)
    cols = c + r * math.cos(t)
    values = ndimage.map_coordinates(ctf_centred.astype(np.float64), [rows, cols], order=3)
    crossing = np.flatnonzero(np.signbit(values[1:]) != np.signbit(values[:-1]))
    return float(r[crossing[0]])


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
def test_astigmatism_angle_convention(angle: float) -> None:
    """dfU > dfV, so rings are closest (first zero nearest) along the U axis, which lies
    at ``angle`` from the x axis (columns) counter-clockwise, i.e. towards +y (rows)."""
    n = 256
    ctf = ctf_2d((n, n), 2.0, 24000.0, 12000.0, angle, rfft=False)
    centred = np.fft.fftshift(ctf)
    directions = np.arange(0.0, 180.0, 5.0)
    radii = np.array([_first_zero_along(centred, a) for a in directions])
    nearest = directions[np.argmin(radii)]
    farthest = directions[np.argmax(radii)]
    assert min(abs(nearest - angle), 180 - abs(nearest - angle)) <= 5.0
    assert min(abs(farthest - (angle + 90) % 180), 180 - abs(farthest - (angle + 90) % 180)) <= 5
    # and the first zero along U matches the analytic one for dfU (along V: dfV)
    px_per_inv_a = n * 2.0  # centred-grid pixels per 1/Å
    s_u = analytic_zeros(24000.0, 300.0, 2.7, 0.07, 3)[0] * px_per_inv_a
    s_v = analytic_zeros(12000.0, 300.0, 2.7, 0.07, 3)[0] * px_per_inv_a
    assert _first_zero_along(centred, angle) == pytest.approx(s_u, abs=0.1)
    assert _first_zero_along(centred, angle + 90.0) == pytest.approx(s_v, abs=0.1)


def test_astigmatism_on_the_rfft_grid_uses_rows_as_y() -> None:
    """Along kx (row 0 of the rfft grid) the defocus is dfU when angle = 0, dfV at 90."""
    n = 1024
    at0 = ctf_2d((n, n), 1.0, 20000, 10000, 0.0)
    at90 = ctf_2d((n, n), 1.0, 20000, 10000, 90.0)
    iso_u = ctf_2d((n, n), 1.0, 20000, 20000, 0.0)
    iso_v = ctf_2d((n, n), 1.0, 10000, 10000, 0.0)
    np.testing.assert_allclose(at0[0], iso_u[0], atol=1e-5)  # along x: U
    np.testing.assert_allclose(at0[:, 0], iso_v[:, 0], atol=1e-5)  # along y: V
    np.testing.assert_allclose(at90[0], iso_v[0], atol=1e-5)
    np.testing.assert_allclose(at90[:, 0], iso_u[:, 0], atol=1e-5)
