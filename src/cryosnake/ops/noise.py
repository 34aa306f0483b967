"""The noise power spectrum of a micrograph, measured at the zeros of its CTF.

A micrograph's power spectrum is the particles' (and ice's) signal times CTF², plus
the noise. Where the CTF is zero only the noise is left, so the noise power can be
read off the spectrum even in a micrograph crowded with particles, whose signal
dominates the low frequencies. :func:`noise_power` averages the periodograms of
overlapping tiles (:func:`cryosnake.ops.ctf_fit.amplitude_spectrum`), keeps the
Fourier pixels where CTF² < :data:`ZERO_CTF2` (the azimuthal position of a zero follows
the astigmatism), averages them in rings, and fits ``log N(s) = a + b s`` to the rings
of the first :data:`ZERO_RINGS` zeros (those at least :data:`RING_BINS` periodogram bins
apart: denser rings leak power into their zeros); beyond them ``N`` stays at the fit's
last value. Below the first zero, where no zero exists, the fit is extrapolated, but
never above the observed power there (noise cannot exceed the total). When fewer than
three rings can be measured there is no estimate (None).

The specimen's own texture (vitreous ice, carbon, the solvent) is CTF-modulated like
the particles, so the zeros do not see it. Its power per unit CTF², ``T``, is read off
the maxima of the same rings and taken as flat in frequency (as ice's is, at low
resolution, at most): the background a particle must stand out of is
``N(s) + T CTF(s)^2``. A particle's low-resolution mass rises above it; empty ice does
not.

Units: the returned power is the variance per pixel that white noise of that spectral
density would have (a periodogram divided by the window's energy), so white noise of
variance ``v`` gives ``N(s) = v`` at every ``s``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from cryosnake.backend import get_array_module, to_host
from cryosnake.ops.ctf import wavelength
from cryosnake.ops.ctf_fit import amplitude_spectrum

__all__ = ["ZERO_CTF2", "ZERO_RINGS", "NoisePower", "noise_power"]

ZERO_CTF2 = 0.03  # a Fourier pixel "at a zero" has CTF² below this
ZERO_RINGS = 8  # the noise trend is fitted over the first zeros (1 .. ZERO_RINGS)
TILE_ANGSTROM = 700.0  # periodogram tiles of about this size (a power of 2, 256-1024 px)
MAX_PIXELS = 6.5e6  # at most this many tile pixels are transformed (tiles spread evenly)
RING_BINS = 6  # zeros are used where the rings are at least this many bins apart


class NoisePower:
    """A micrograph's background power spectrum (see the module docstring).

    Attributes
    ----------
    frequencies : (m,) float64, ring centres, 1/Å
    power : (m,) float64, noise variance per pixel (white-equivalent) in each ring
    texture : the specimen texture's power per unit CTF², same units
    """

    def __init__(self, frequencies: np.ndarray, power: np.ndarray, texture: float) -> None:
        self.frequencies = np.asarray(frequencies, dtype=np.float64)
        self.power = np.asarray(power, dtype=np.float64)
        self.texture = texture

    def __call__(self, s: Any) -> Any:
        """``N`` at frequencies ``s`` (1/Å, any shape; follows ``s``'s array module)."""
        xp = get_array_module(s)
        values = np.interp(np.asarray(to_host(s), dtype=np.float64), self.frequencies, self.power)
        return xp.asarray(values, dtype=s.dtype)


def _rings(shape: int, pixel_size: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Ring index of each pixel of a centred (n, n) spectrum and the ring centres."""
    n = shape
    f = (np.arange(n) - n // 2) / (n * pixel_size)
    s = np.hypot(f[:, None], f[None, :])
    width = 1.0 / (n * pixel_size)
    index = np.floor(s / width).astype(np.int64)
    count = n // 2
    centres = (np.arange(count) + 0.5) * width
    return index, centres, count


def noise_power(micrograph: Any, pixel_size: float, ctf: Any) -> NoisePower | None:
    """Estimate the noise power spectrum of ``micrograph``.

    Parameters
    ----------
    micrograph : (ny, nx) float, NumPy or CuPy
    pixel_size : Å per pixel
    ctf : the micrograph's CTF, a :class:`cryosnake.ops.pick.MicrographCtf` (its
        defocus, voltage and ``image`` are used)

    Returns
    -------
    NoisePower from 0 to the Nyquist frequency, or None when fewer than three rings
    near the first zeros can be measured
    """
    tile = int(2 ** round(math.log2(TILE_ANGSTROM / pixel_size)))
    tile = min(max(tile, 256), 1024, *(int(n) // 2 * 2 for n in micrograph.shape))
    amp = amplitude_spectrum(micrograph, tile=tile, max_tiles=int(MAX_PIXELS / tile**2))
    n = amp.shape[0]
    taper = np.hanning(n)
    power = amp**2 / float((np.outer(taper, taper) ** 2).sum())
    index, centres, count = _rings(n, pixel_size)
    inside = index < count
    counts = np.bincount(index[inside], minlength=count)[:count].astype(np.float64)
    sums = np.bincount(index[inside], weights=power[inside], minlength=count)[:count]
    total: np.ndarray = np.asarray(sums, dtype=np.float64) / np.maximum(counts, 1.0)
    smooth = ndimage.uniform_filter1d(total, 3, mode="nearest")
    smooth[0] = total[1] if count > 1 else total[0]  # the DC ring carries the mean
    if ctf.defocus_u <= 0 or ctf.defocus_v <= 0:
        return None
    c2 = np.fft.fftshift(np.asarray(ctf.image((n, n), pixel_size, rfft=False), np.float64) ** 2)
    mean_defocus = 0.5 * (ctf.defocus_u + ctf.defocus_v)
    first_zero = 1.0 / math.sqrt(wavelength(ctf.voltage) * mean_defocus)  # Cs ignored
    last = first_zero * math.sqrt(ZERO_RINGS + 0.5)
    at_zero = inside & (c2 < ZERO_CTF2)
    z_counts = np.bincount(index[at_zero], minlength=count)[:count].astype(np.float64)
    z_power = np.bincount(index[at_zero], weights=power[at_zero], minlength=count)[:count]
    # dense rings leak power into their zeros: use the zeros at least RING_BINS apart
    lam = wavelength(ctf.voltage)
    spacing = 1.0 / (2.0 * lam * mean_defocus * np.maximum(centres, 1e-9))
    last = min(last, float(centres[spacing >= RING_BINS / (n * pixel_size)].max(initial=0.0)))
    use = (z_counts >= 8) & (centres >= 0.9 * first_zero) & (centres <= last)
    use &= centres < 0.95 * (0.5 / pixel_size)
    if use.sum() < 3:
        return None
    floor = z_power[use] / z_counts[use]
    slope, intercept = np.polyfit(centres[use], np.log(floor), 1, w=np.sqrt(z_counts[use]))
    noise = np.exp(intercept + slope * np.minimum(centres, last))  # flat beyond the fit
    reliable = np.arange(count) >= 3  # tiles' mean and window damp the first rings
    noise = np.where(reliable, np.minimum(noise, smooth), noise)
    # the specimen's own texture: the CTF-modulated power above the noise near the
    # maxima of the same rings, per unit CTF²
    at_max = inside & (c2 > 0.5)
    ring_of = index[at_max]
    excess = (power[at_max] - noise[np.minimum(ring_of, count - 1)]) / c2[at_max]
    m_counts = np.bincount(ring_of, minlength=count)[:count].astype(np.float64)
    m_sum = np.bincount(ring_of, weights=excess, minlength=count)[:count]
    rings = (m_counts >= 8) & (centres >= first_zero) & (centres <= last)
    rings &= centres < 0.95 * (0.5 / pixel_size)
    texture = float(np.median(m_sum[rings] / m_counts[rings])) if rings.any() else 0.0
    return NoisePower(centres, noise, max(texture, 0.0))
