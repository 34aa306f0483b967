"""CTF estimation from a micrograph (after Rohou & Grigorieff 2015, CTFFIND4).

1. Average the power spectra of overlapping, edge-tapered tiles (periodogram
   averaging) and take its square root, the amplitude spectrum.
2. Subtract a smooth background (the spectrum box-filtered over about 1/16 of its
   width, which is wider than a Thon ring at the band's inner edge yet follows the
   fall-off of the spectrum) and normalise.
3. Exhaustive 1D search of the mean defocus (and, optionally, the phase shift) on the
   rotational average, maximising the normalised cross-correlation with CTF^2.
4. 2D refinement of defocus U, V and the astigmatism angle (and phase shift) by
   maximising the normalised cross-correlation of CTF^2 with the background-subtracted
   2D spectrum within [1/min_res, 1/max_res] Å^-1, from a grid of astigmatism
   starting points (Nelder-Mead).
5. Figure of merit = that correlation; fit resolution = the highest frequency up to
   which the per-ring correlation of fit and spectrum stays above 0.3 (rings along
   the fitted CTF's own phase, so each holds half a Thon period).

All inputs and outputs are NumPy arrays; a CuPy micrograph is moved to the host for the
fit (the spectrum is small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
import scipy.optimize
from scipy import ndimage

from cryosnake.backend import fft_workers, to_host
from cryosnake.ops.ctf import wavelength

__all__ = ["CtfFit", "amplitude_spectrum", "fit_ctf"]


@dataclass(frozen=True)
class CtfFit:
    """Result of :func:`fit_ctf` (RELION conventions: Å, degrees, U >= V)."""

    defocus_u: float
    defocus_v: float
    angle: float  # [0, 180)
    phase_shift: float  # degrees
    figure_of_merit: float  # normalised cross-correlation in the fitted band
    max_resolution: float  # Å, the fit holds up to here
    spectrum: np.ndarray  # (n, n) background-subtracted spectrum, centred (for plots)
    model: np.ndarray  # (n, n) fitted CTF^2 on the same grid, centred
    spectrum_pixel_size: float  # Å per pixel of the tiles
    ring_frequency: np.ndarray  # 1/Å, per-ring correlation for the fit-resolution plot
    ring_correlation: np.ndarray


def amplitude_spectrum(micrograph: Any, tile: int = 512) -> np.ndarray:
    """Square root of the averaged power spectrum of overlapping tiles.

    Parameters
    ----------
    micrograph : (ny, nx) image (NumPy or CuPy)
    tile : tile size in pixels (tiles overlap by half)

    Returns
    -------
    (tile, tile) float64, zero frequency at the centre
    """
    image = np.asarray(to_host(micrograph), dtype=np.float64)
    ny, nx = image.shape
    tile = min(tile, ny // 2 * 2, nx // 2 * 2)
    taper = np.hanning(tile)
    window = np.outer(taper, taper)
    step = tile // 2
    starts_y = range(0, ny - tile + 1, step)
    starts_x = range(0, nx - tile + 1, step)
    power = np.zeros((tile, tile))
    count = 0
    for y0 in starts_y:
        for x0 in starts_x:
            piece = image[y0 : y0 + tile, x0 : x0 + tile]
            piece = (piece - piece.mean()) * window
            power += np.abs(scipy.fft.fft2(piece, workers=fft_workers())) ** 2
            count += 1
    return np.sqrt(np.fft.fftshift(power / count))


def _subtract_background(amp: np.ndarray) -> np.ndarray:
    """Amplitude spectrum minus its box-filtered background, per-ring normalised."""
    n = amp.shape[0]
    box = max(5, n // 16) | 1
    background = ndimage.uniform_filter(amp, size=box, mode="reflect")
    out = amp - background
    # Divide by the local spread so that every ring weighs alike.
    spread = np.sqrt(ndimage.uniform_filter(out**2, size=box, mode="reflect"))
    return out / np.maximum(spread, 1e-12 * float(spread.max()) + 1e-30)


def _grid(n: int, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared frequency (1/Å²) and azimuth (rad, CCW from x) of a centred n x n grid."""
    k = (np.arange(n) - n // 2) / (n * pixel_size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    return kx * kx + ky * ky, np.arctan2(ky, kx)


class _Model:
    """CTF^2 on the points of the fitting band, for fast repeated evaluation."""

    def __init__(
        self,
        s2: np.ndarray,
        azimuth: np.ndarray,
        voltage: float,
        cs: float,
        amplitude_contrast: float,
    ) -> None:
        lam = wavelength(voltage)
        self.a = math.pi * lam * s2
        self.b = 0.5 * math.pi * cs * 1e7 * lam**3 * s2 * s2
        self.cos2 = np.cos(2 * azimuth)
        self.sin2 = np.sin(2 * azimuth)
        self.w_phase = math.atan2(amplitude_contrast, math.sqrt(1 - amplitude_contrast**2))

    def ctf2(self, mean: float, half_astig: float, angle: float, phase: float) -> np.ndarray:
        # df(a) = mean + half_astig * cos(2(a - angle))
        ca, sa = math.cos(2 * angle), math.sin(2 * angle)
        df = mean + half_astig * (self.cos2 * ca + self.sin2 * sa)
        chi = self.a * df - self.b - phase
        # CTF = -sqrt(1-w^2) sin(chi) - w cos(chi) = -sin(chi + w_phase)
        return np.sin(chi + self.w_phase) ** 2


def _ncc(model: np.ndarray, data: np.ndarray) -> float:
    m = model - model.mean()
    denominator = math.sqrt(float((m * m).sum()) * float((data * data).sum()))
    return float((m * data).sum()) / denominator if denominator > 0 else 0.0


def fit_ctf(
    micrograph: Any,
    pixel_size: float,
    *,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.07,
    min_res: float = 30.0,
    max_res: float = 5.0,
    defocus_range: tuple[float, float] = (3000.0, 50000.0),
    max_astigmatism: float = 3000.0,
    fit_phase_shift: bool = False,
    tile: int = 512,
) -> CtfFit:
    """Estimate defocus U/V, astigmatism angle (and phase shift) of a micrograph.

    Parameters
    ----------
    micrograph : (ny, nx) image
    pixel_size : Å per pixel
    voltage, cs, amplitude_contrast : kV, mm, fraction
    min_res, max_res : Å, the band of the fit (low and high resolution limits)
    defocus_range : Å, range of the mean defocus searched
    max_astigmatism : Å, largest dfU - dfV considered
    fit_phase_shift : also fit a phase shift (phase-plate data)
    tile : periodogram tile size, px
    """
    nyquist = 2.0 * pixel_size
    max_res = max(max_res, nyquist * 1.05)
    if not min_res > max_res:
        raise ValueError(f"min_res {min_res} Å must be larger than max_res {max_res} Å")
    amp = amplitude_spectrum(micrograph, tile)
    n = amp.shape[0]
    data2d = _subtract_background(amp)
    s2, azimuth = _grid(n, pixel_size)
    band = (s2 >= 1 / min_res**2) & (s2 <= 1 / max_res**2)
    # The spectrum is centro-symmetric: one half-plane holds all information.
    half = band & (azimuth >= 0) & (azimuth < math.pi)
    data = data2d[half] - data2d[half].mean()
    model = _Model(s2[half], azimuth[half], voltage, cs, amplitude_contrast)

    phases = np.radians(np.arange(0, 180, 10)) if fit_phase_shift else np.array([0.0])
    # 1D search of the mean defocus (astigmatism 0) on a grid finer than a ring shift.
    lo, hi = defocus_range
    step = max(20.0, (hi - lo) / 400)
    best = (-np.inf, lo, 0.0)
    for phase in phases:
        for mean in np.arange(lo, hi + step, step):
            score = _ncc(model.ctf2(mean, 0.0, 0.0, phase), data)
            if score > best[0]:
                best = (score, mean, phase)
    _, mean0, phase0 = best

    def cost(x: np.ndarray) -> float:
        mean, half_astig, angle = x[0], x[1], x[2]
        phase = x[3] if fit_phase_shift else phase0
        if abs(2 * half_astig) > max_astigmatism or not lo * 0.8 <= mean <= hi * 1.2:
            return 1.0
        return -_ncc(model.ctf2(mean, half_astig, angle, phase), data)

    results = []
    for astig in (200.0, 600.0, 1200.0):
        for angle in np.radians(np.arange(0, 180, 30)):
            start = [mean0, astig / 2, angle] + ([phase0] if fit_phase_shift else [])
            simplex = np.array(start)[None, :] + np.diag(
                [step, 100.0, math.radians(15)] + ([math.radians(10)] if fit_phase_shift else [])
            )
            x0 = np.vstack([start, simplex])
            results.append(
                scipy.optimize.minimize(
                    cost,
                    start,
                    method="Nelder-Mead",
                    options={"initial_simplex": x0, "xatol": 1.0, "fatol": 1e-6, "maxiter": 600},
                )
            )
    result = min(results, key=lambda r: r.fun)
    mean, half_astig, angle = (float(v) for v in result.x[:3])
    phase = float(result.x[3]) if fit_phase_shift else float(phase0)
    if half_astig < 0:  # U is the larger defocus
        half_astig, angle = -half_astig, angle + math.pi / 2
    defocus_u, defocus_v = mean + half_astig, mean - half_astig
    angle_deg = math.degrees(angle) % 180.0
    figure_of_merit = -float(result.fun)

    # Per-ring correlation over the whole spectrum beyond min_res, rings along the phase.
    full_model = _Model(s2, azimuth, voltage, cs, amplitude_contrast)
    fitted = full_model.ctf2(mean, half_astig, math.radians(angle_deg), phase)
    freq, ring_cc = _ring_correlation(
        fitted, data2d, s2, azimuth, full_model, mean, half_astig, angle_deg, phase, min_res
    )
    max_resolution = _fit_resolution(freq, ring_cc, nyquist)
    return CtfFit(
        defocus_u=defocus_u,
        defocus_v=defocus_v,
        angle=angle_deg,
        phase_shift=math.degrees(phase) % 360.0,
        figure_of_merit=figure_of_merit,
        max_resolution=max_resolution,
        spectrum=data2d,
        model=fitted,
        spectrum_pixel_size=pixel_size,
        ring_frequency=freq,
        ring_correlation=ring_cc,
    )


def _ring_correlation(
    fitted: np.ndarray,
    data: np.ndarray,
    s2: np.ndarray,
    azimuth: np.ndarray,
    model: _Model,
    mean: float,
    half_astig: float,
    angle_deg: float,
    phase: float,
    min_res: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of fit and spectrum in rings one Thon period wide (along chi)."""
    ca, sa = math.cos(2 * math.radians(angle_deg)), math.sin(2 * math.radians(angle_deg))
    df = mean + half_astig * (model.cos2 * ca + model.sin2 * sa)
    chi = model.a * df - model.b - phase
    upper = azimuth >= 0
    usable = upper & (s2 >= 1 / min_res**2)
    period = np.floor(chi / math.pi).astype(int)
    freq, cc = [], []
    for k in np.unique(period[usable]):
        ring = usable & (period == k)
        if ring.sum() < 30:
            continue
        m, d = fitted[ring], data[ring] - data[ring].mean()
        freq.append(float(np.sqrt(s2[ring]).mean()))
        cc.append(_ncc(m, d))
    order = np.argsort(freq)
    return np.asarray(freq)[order], np.asarray(cc)[order]


def _fit_resolution(freq: np.ndarray, cc: np.ndarray, nyquist: float) -> float:
    """Å: the highest ring of the first run of rings whose correlation (running mean
    over three rings) stays at or above 0.3."""
    if freq.size == 0:
        return float("inf")
    smooth = np.convolve(cc, np.ones(3) / 3, mode="same") if cc.size >= 3 else cc
    good = np.flatnonzero(smooth >= 0.3)
    if good.size == 0:
        return float(1.0 / freq[0])
    last = good[0]
    while last + 1 < cc.size and smooth[last + 1] >= 0.3:
        last += 1
    return float(max(1.0 / freq[last], nyquist))
