"""CTF estimation from a micrograph (after Rohou & Grigorieff 2015, CTFFIND4).

1. Average the power spectra of overlapping, edge-tapered tiles (periodogram
   averaging) and take its square root, the amplitude spectrum.
2. Subtract a smooth background (the spectrum box-filtered over about 1/16 of its
   width, which is wider than a Thon ring at the band's inner edge yet follows the
   fall-off of the spectrum) and normalise.
3. Exhaustive 1D search of the mean defocus (and, optionally, the phase shift) on the
   rotational average, maximising the normalised cross-correlation with CTF^2. The
   band's points are grouped by spatial frequency, which gives the correlation of the 2D
   spectrum with an astigmatism-free model at the cost of a radial profile.
4. Exhaustive search of the astigmatism at that mean defocus over a polar grid of
   half-astigmatism and angle (neighbours shift the CTF phase at the band's outer edge
   by at most pi/6), then 2D refinement of the mean defocus, astigmatism (and phase
   shift) from the two best distinct grid points (Nelder-Mead), maximising the
   normalised cross-correlation of CTF^2 with the background-subtracted 2D spectrum
   within [1/min_res, 1/max_res] Å^-1. With the astigmatism as
   (x, y) = (dfU - dfV) / 2 * (cos 2θ, sin 2θ) the CTF phase is linear in the
   parameters, so the phases of many candidate models are one matrix product (float32).
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
from cryosnake.ops.ctf import ctf_phase, wavelength

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


def amplitude_spectrum(
    micrograph: Any, tile: int = 512, max_tiles: int | None = None
) -> np.ndarray:
    """Square root of the averaged power spectrum of overlapping tiles.

    Parameters
    ----------
    micrograph : (ny, nx) image (NumPy or CuPy)
    tile : tile size in pixels (tiles overlap by half)
    max_tiles : at most about this many tiles, spread evenly over the micrograph

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
    starts_y = np.arange(0, ny - tile + 1, step)
    starts_x = np.arange(0, nx - tile + 1, step)
    if max_tiles is not None and len(starts_y) * len(starts_x) > max_tiles:
        keep = min(1.0, math.sqrt(max_tiles / (len(starts_y) * len(starts_x))))
        starts_y = np.unique(np.linspace(0, ny - tile, max(1, int(len(starts_y) * keep))))
        starts_x = np.unique(np.linspace(0, nx - tile, max(1, int(len(starts_x) * keep))))
        starts_y, starts_x = starts_y.astype(int), starts_x.astype(int)
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


def _amplitude_phase(amplitude_contrast: float) -> float:
    """w_phase (rad) with CTF = -sqrt(1-w^2) sin(chi) - w cos(chi) = -sin(chi + w_phase)."""
    return math.atan2(amplitude_contrast, math.sqrt(1 - amplitude_contrast**2))


def _ctf_phase(
    s2: np.ndarray,
    azimuth: np.ndarray,
    params: np.ndarray,
    voltage: float,
    cs: float,
) -> np.ndarray:
    """CTF phase chi (rad) for params = (mean defocus, x, y, phase shift in rad), where
    (x, y) = half astigmatism * (cos 2θ, sin 2θ): :func:`cryosnake.ops.ctf.ctf_phase`."""
    mean, x, y, phase = (float(v) for v in params)
    half = math.hypot(x, y)
    return np.asarray(
        ctf_phase(
            s2,
            azimuth,
            mean + half,
            mean - half,
            math.degrees(0.5 * math.atan2(y, x)),
            voltage=voltage,
            cs=cs,
            phase_shift=math.degrees(phase),
        )
    )


_CHUNK = 1 << 17  # model values per batch in _Band.ncc: 512 KiB of float32 stay in cache


class _Band:
    """Points of the fitting band with the spectrum on them, for batched evaluation.

    The phase of -CTF = sin(chi + w_phase) is linear in the parameters
    p = (mean defocus, x, y, phase shift), (x, y) = half astigmatism * (cos 2θ, sin 2θ):
    chi + w_phase = p @ basis + offset. A point may stand for several spectrum points of
    one spatial frequency (its weight; its data is the sum over them), which leaves the
    correlation of astigmatism-free models unchanged.

    Parameters
    ----------
    s2, azimuth : squared frequency (1/Å²) and azimuth (rad) of the points
    data : mean-free spectrum, summed over the spectrum points of each point
    weight : number of spectrum points of each point
    energy : sum of the squared mean-free spectrum over the spectrum points
    voltage, cs, amplitude_contrast : kV, mm, fraction
    """

    def __init__(
        self,
        s2: np.ndarray,
        azimuth: np.ndarray,
        data: np.ndarray,
        weight: np.ndarray,
        energy: float,
        voltage: float,
        cs: float,
        amplitude_contrast: float,
    ) -> None:
        lam = wavelength(voltage)
        a = math.pi * lam * s2
        self.basis = np.stack(
            [a, a * np.cos(2 * azimuth), a * np.sin(2 * azimuth), -np.ones_like(a)]
        ).astype(np.float32)
        offset = _amplitude_phase(amplitude_contrast) - 0.5 * math.pi * cs * 1e7 * lam**3 * s2**2
        self.offset = offset.astype(np.float32)
        self.data = data.astype(np.float32)
        self.weight = weight.astype(np.float32)
        self.count = float(weight.sum())
        self.energy = energy

    def ncc(self, params: np.ndarray) -> np.ndarray:
        """Normalised cross-correlation of CTF^2 with the spectrum per row of (k, 4) params."""
        scores = np.empty(len(params))
        rows = max(1, _CHUNK // self.basis.shape[1])
        for i in range(0, len(params), rows):
            model = params[i : i + rows].astype(np.float32) @ self.basis
            model += self.offset
            np.sin(model, out=model)
            np.square(model, out=model)
            cross = (model @ self.data).astype(np.float64)
            total = (model @ self.weight).astype(np.float64)
            np.square(model, out=model)
            variance = (model @ self.weight).astype(np.float64) - total * total / self.count
            denominator = np.sqrt(np.maximum(variance, 0.0) * self.energy)
            scores[i : i + rows] = np.divide(
                cross, denominator, out=np.zeros_like(cross), where=denominator > 0
            )
        return scores


def _astigmatism_grid(max_half: float, spacing: float) -> np.ndarray:
    """(x, y) on rings of half astigmatism 0..max_half, neighbours at most spacing apart."""
    points = [np.zeros((1, 2))]
    for h in np.linspace(0.0, max_half, math.ceil(max_half / spacing) + 1)[1:]:
        count = math.ceil(2 * math.pi * h / spacing)
        turns = 2 * math.pi * np.arange(count) / count
        points.append(h * np.column_stack([np.cos(turns), np.sin(turns)]))
    return np.concatenate(points)


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
    energy = float(data @ data)
    optics = (voltage, cs, amplitude_contrast)
    points = _Band(s2[half], azimuth[half], data, np.ones_like(data), energy, *optics)
    # Rotational average: one point per spatial frequency.
    frequencies, ring = np.unique(s2[half], return_inverse=True)
    profile = _Band(
        frequencies,
        np.zeros_like(frequencies),
        np.bincount(ring, data),
        np.bincount(ring),
        energy,
        *optics,
    )

    # 1D search of the mean defocus (astigmatism 0) on a grid finer than a ring shift.
    lo, hi = defocus_range
    step = max(20.0, (hi - lo) / 400)
    means = np.arange(lo, hi + step, step)
    phases = np.radians(np.arange(0, 180, 10)) if fit_phase_shift else np.array([0.0])
    candidates = np.zeros((phases.size * means.size, 4))
    candidates[:, 0] = np.tile(means, phases.size)
    candidates[:, 3] = np.repeat(phases, means.size)
    mean0, _, _, phase0 = candidates[np.argmax(profile.ncc(candidates))]

    # Astigmatism search at that mean; neighbours shift chi at the band edge by <= pi/6.
    spacing = max_res**2 / (6 * wavelength(voltage))
    astigmatisms = _astigmatism_grid(max_astigmatism / 2, spacing)
    candidates = np.zeros((len(astigmatisms), 4))
    candidates[:, 0], candidates[:, 1:3], candidates[:, 3] = mean0, astigmatisms, phase0
    order = np.argsort(-points.ncc(candidates))
    # Refine the best grid point and the best one outside its neighbourhood.
    distance = np.hypot(*(astigmatisms[order] - astigmatisms[order[0]]).T)
    starts = [order[0], *order[distance > 2 * spacing][:1]]

    def parameters(x: np.ndarray) -> np.ndarray:
        """(mean, x, y, phase) from the optimiser's variables."""
        return x if fit_phase_shift else np.append(x, phase0)

    def cost(x: np.ndarray) -> float:
        params = parameters(x)
        if 2 * math.hypot(params[1], params[2]) > max_astigmatism or not (
            lo * 0.8 <= params[0] <= hi * 1.2
        ):
            return 1.0
        return -float(points.ncc(params[None, :])[0])

    size = 4 if fit_phase_shift else 3
    simplex_steps = np.diag([step, spacing, spacing, math.radians(10)][:size])
    results = []
    for start in candidates[starts, :size]:
        results.append(
            scipy.optimize.minimize(
                cost,
                start,
                method="Nelder-Mead",
                options={
                    "initial_simplex": np.vstack([start, start + simplex_steps]),
                    "xatol": 1.0,
                    "fatol": 1e-6,
                    "maxiter": 600,
                },
            )
        )
    result = min(results, key=lambda r: r.fun)
    params = parameters(result.x)
    mean, x, y, phase = (float(v) for v in params)
    half_astig = math.hypot(x, y)  # U is the larger defocus
    angle_deg = math.degrees(0.5 * math.atan2(y, x)) % 180.0
    figure_of_merit = -float(result.fun)

    # Per-ring correlation over the whole spectrum beyond min_res, rings along the phase.
    chi = _ctf_phase(s2, azimuth, params, voltage, cs)
    fitted = np.sin(chi + _amplitude_phase(amplitude_contrast)) ** 2
    freq, ring_cc = _ring_correlation(fitted, data2d, s2, azimuth, chi, min_res)
    max_resolution = _fit_resolution(freq, ring_cc, nyquist)
    return CtfFit(
        defocus_u=mean + half_astig,
        defocus_v=mean - half_astig,
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
    chi: np.ndarray,
    min_res: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of fit and spectrum in rings one Thon period wide (along chi)."""
    usable = (azimuth >= 0) & (s2 >= 1 / min_res**2)
    period = np.floor(chi[usable] / math.pi).astype(int)
    ring = period - period.min()
    m, d = fitted[usable], data[usable]
    count = np.bincount(ring)
    keep = count >= 30

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, values)[keep]

    count = count[keep]
    freq = ring_sum(np.sqrt(s2[usable])) / count
    sum_m, sum_d = ring_sum(m), ring_sum(d)
    cross = ring_sum(m * d) - sum_m * sum_d / count
    var_m = ring_sum(m * m) - sum_m**2 / count
    var_d = ring_sum(d * d) - sum_d**2 / count
    denominator = np.sqrt(np.maximum(var_m * var_d, 0.0))
    cc = np.divide(cross, denominator, out=np.zeros_like(cross), where=denominator > 0)
    order = np.argsort(freq)
    return freq[order], cc[order]


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
