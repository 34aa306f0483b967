"""Post-processing of gold-standard half maps: mask, corrected FSC, B-factor, sharpening.

Every step works on the half-space spectra (``rfftn``) of (n, n, n) maps indexed
[z, y, x] with the origin at ``n // 2``; frequencies are grouped into shells of width
one Fourier pixel (shell ``k`` holds ``|f| n`` rounded to ``k``, i.e. ``k / (n p)``
1/Å for a voxel of ``p`` Å).

- **Mask** (:func:`auto_mask`): the average of the half maps low-passed to
  ``lowpass`` Å (15 by default, the molecular envelope), thresholded, kept as the
  connected regions holding at least 5 % of the largest one's volume (noise blobs go),
  extended by ``extend`` voxels and given a raised-cosine edge of ``soft`` voxels. The
  automatic threshold is ``max(mu + 6 sd, mu + 0.05 (max - mu))``, with ``mu`` and
  ``sd`` the mean and standard deviation of the low-passed map in the corners of the
  box (beyond 0.95 of the half box, where a centred particle has no density): the
  envelope at 5 % of the peak density, or six noise standard deviations when noise
  dominates.
- **FSC** (:func:`cryosnake.ops.fsc.fsc`):
  ``FSC(k) = Re sum F1 F2* / sqrt(sum |F1|^2 sum |F2|^2)`` over shell ``k``, for the
  unmasked and the masked half maps.
- **Phase-randomisation correction** (Chen et al. 2013): the mask adds correlation of
  its own (both masked maps share its edges). Beyond the shell where the unmasked FSC
  first drops below :data:`RANDOMISE_AT` (0.8), the phases of both half maps are
  replaced by random ones (independent per map, Hermitian), the maps masked again, and
  their FSC ``FSC_rand`` measures the mask's share:
  ``FSC_true = (FSC_masked - FSC_rand) / (1 - FSC_rand)`` beyond that shell,
  ``FSC_masked`` below it.
- **Resolution**: where the corrected FSC first falls below 0.143 (Rosenthal &
  Henderson 2003), linearly interpolated between shells.
- **B-factor** (Rosenthal & Henderson 2003): the Guinier plot ``ln |F(s)|`` (the
  shell-averaged amplitude of the masked, FSC-weighted average map) against ``s^2``
  is fitted by a straight line between 1/10 Å and the resolution (when the resolution
  is better than 8 Å; otherwise there are too few shells and the map is not
  sharpened, only FSC-weighted and low-passed); amplitudes decay as
  ``exp(-B s^2 / 4)``, so the slope is ``-B / 4`` and the map is sharpened by
  ``exp(B s^2 / 4)``. As in RELION, the B-factor used for sharpening is reported
  negative (``-B``).
- **Sharpened map**: the average map times the FSC weight
  ``sqrt(2 FSC / (1 + FSC))`` (the expected correlation of the average with the truth,
  which down-weights noisy shells), times the sharpening, low-passed with a raised
  cosine of width :data:`LOWPASS_EDGE` shells at the resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

from cryosnake.ops.fsc import fsc, shell_frequencies, shell_resolution

__all__ = [
    "FSC_THRESHOLD",
    "LOWPASS_EDGE",
    "RANDOMISE_AT",
    "PostprocessResult",
    "auto_mask",
    "corrected_fsc",
    "fit_bfactor",
    "guinier",
    "postprocess",
    "randomise_phases",
    "sharpen",
    "shell_index",
    "soft_edge",
]

FSC_THRESHOLD = 0.143  # gold-standard criterion (Rosenthal & Henderson 2003)
RANDOMISE_AT = 0.8  # phases randomised beyond the shell where the unmasked FSC drops below
LOWPASS_EDGE = 2  # shells: width of the raised-cosine low-pass at the resolution
GUINIER_LOW = 10.0  # Å: the Guinier fit starts here


def shell_index(n: int) -> np.ndarray:
    """(n, n, n//2+1) int: the shell of each point of an ``rfftn`` half spectrum."""
    fz = np.fft.fftfreq(n) * n
    fx = np.fft.rfftfreq(n) * n
    r = np.sqrt(fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2)
    return np.rint(r).astype(np.int64)


def _spectrum(volume: np.ndarray) -> np.ndarray:
    return scipy.fft.rfftn(np.fft.ifftshift(np.asarray(volume, dtype=np.float64)))


def _volume(spectrum: np.ndarray, n: int) -> np.ndarray:
    return np.fft.fftshift(scipy.fft.irfftn(spectrum, s=(n, n, n)))


def _shell_sum(values: np.ndarray, shells: np.ndarray, n: int) -> np.ndarray:
    keep = shells <= n // 2
    return np.bincount(shells[keep], weights=values[keep], minlength=n // 2 + 1)


def soft_edge(binary: np.ndarray, width: float) -> np.ndarray:
    """A raised-cosine edge of ``width`` voxels around a binary mask (1 inside)."""
    inside = np.asarray(binary, dtype=bool)
    if width <= 0 or not inside.any():
        return inside.astype(np.float32)
    distance = ndimage.distance_transform_edt(~inside)
    edge = 0.5 * (1.0 + np.cos(np.pi * np.clip(distance / width, 0.0, 1.0)))
    return np.where(inside, 1.0, edge).astype(np.float32)


def _lowpass(volume: np.ndarray, pixel_size: float, resolution: float) -> np.ndarray:
    """Gaussian low-pass with amplitude 1/2 at ``resolution`` Å."""
    n = volume.shape[0]
    fz = np.fft.fftfreq(n)
    fx = np.fft.rfftfreq(n)
    s2 = (fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2) / pixel_size**2
    filt = np.exp(-math.log(2.0) * s2 * resolution**2)
    return _volume(_spectrum(volume) * filt, n)


def auto_mask(
    volume: np.ndarray,
    pixel_size: float,
    *,
    lowpass: float = 15.0,
    threshold: float | None = None,
    extend: float = 3.0,
    soft: float = 6.0,
) -> tuple[np.ndarray, float]:
    """A soft mask around the molecule in ``volume`` (see the module docstring).

    Returns the (n, n, n) float32 mask in [0, 1] and the threshold used (on the map
    low-passed to ``lowpass`` Å).
    """
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    smooth = _lowpass(vol, pixel_size, lowpass)
    if threshold is None:
        g = np.arange(n) - n // 2
        r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
        corners = smooth[r > 0.95 * (n // 2)]
        mu, sd = float(corners.mean()), float(corners.std())
        threshold = max(mu + 6.0 * sd, mu + 0.05 * (float(smooth.max()) - mu))
    binary = smooth > threshold
    labels, count = ndimage.label(binary)
    if count == 0:
        raise ValueError(
            f"auto_mask: nothing in the map above the threshold {threshold:.4g} "
            f"(maximum {float(smooth.max()):.4g})"
        )
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1
    binary = np.isin(labels, keep)
    if extend > 0:
        binary = ndimage.distance_transform_edt(~binary) <= extend
    return soft_edge(binary, soft), float(threshold)


def randomise_phases(volume: np.ndarray, shell: int, rng: np.random.Generator) -> np.ndarray:
    """``volume`` with the phases of every shell beyond ``shell`` replaced by random
    ones (amplitudes kept; the result is real, i.e. the phases are Hermitian)."""
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    spec = _spectrum(vol)
    # The phases of a real white-noise volume are random and Hermitian.
    noise = _spectrum(rng.standard_normal((n, n, n)))
    phase = noise / np.maximum(np.abs(noise), 1e-30)
    beyond = shell_index(n) > shell
    spec[beyond] = np.abs(spec[beyond]) * phase[beyond]
    return _volume(spec, n)


def corrected_fsc(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray | int]:
    """Unmasked, masked, phase-randomised masked and corrected FSC curves.

    Returns a dict with ``unmasked``, ``masked``, ``randomised``, ``corrected`` (each
    (n//2+1,)) and ``randomise_shell`` (phases randomised beyond it).
    """
    h1, h2 = np.asarray(half1, np.float64), np.asarray(half2, np.float64)
    n = h1.shape[0]
    unmasked = fsc(h1, h2)
    masked = fsc(h1 * mask, h2 * mask)
    below = np.flatnonzero(unmasked[1:] < RANDOMISE_AT)
    shell = int(below[0]) + 1 if len(below) else n // 2
    shell = max(shell, 2)
    r1 = randomise_phases(h1, shell, rng)
    r2 = randomise_phases(h2, shell, rng)
    randomised = fsc(r1 * mask, r2 * mask)
    corrected = masked.copy()
    k = np.arange(len(masked)) > shell
    with np.errstate(divide="ignore", invalid="ignore"):
        fixed = (masked - randomised) / (1.0 - randomised)
    corrected[k] = np.nan_to_num(fixed[k], nan=0.0)
    return {
        "unmasked": unmasked,
        "masked": masked,
        "randomised": randomised,
        "corrected": corrected,
        "randomise_shell": shell,
    }


def guinier(volume: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Guinier plot of ``volume``: (s^2 in 1/Å^2, ln of the shell-mean amplitude), for
    shells 1 .. n//2 (shells without amplitude give -inf)."""
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    shells = shell_index(n)
    amp = _shell_sum(np.abs(_spectrum(vol)), shells, n)
    count = np.bincount(shells[shells <= n // 2], minlength=n // 2 + 1)
    mean = amp / np.maximum(count, 1)
    s = shell_frequencies(n, pixel_size)
    with np.errstate(divide="ignore"):
        log_amp = np.log(mean)
    return s[1:] ** 2, log_amp[1:]


def fit_bfactor(
    s2: np.ndarray, log_amp: np.ndarray, low: float, high: float
) -> tuple[float, float, np.ndarray]:
    """Least-squares line through the Guinier plot between ``low`` and ``high`` Å.

    Returns (B, intercept, used) with ``ln|F| = intercept - B s^2 / 4`` (B > 0 for
    decaying amplitudes) and ``used`` the boolean mask of the points fitted.
    """
    used = (s2 >= 1.0 / low**2) & (s2 <= 1.0 / high**2) & np.isfinite(log_amp)
    if used.sum() < 3:
        raise ValueError(
            f"fit_bfactor: fewer than 3 shells between {low:g} and {high:.3g} Å to fit"
        )
    slope, intercept = np.polyfit(s2[used], log_amp[used], 1)
    return float(-4.0 * slope), float(intercept), used


def sharpen(
    volume: np.ndarray,
    pixel_size: float,
    bfactor: float,
    fsc_curve: np.ndarray,
    resolution: float,
) -> np.ndarray:
    """FSC-weighted, sharpened by ``exp(bfactor s^2 / 4)`` and low-passed at
    ``resolution`` Å (raised cosine over :data:`LOWPASS_EDGE` shells)."""
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    shells = shell_index(n)
    s = shell_frequencies(n, pixel_size)
    f = np.clip(np.asarray(fsc_curve, dtype=np.float64), 0.0, 1.0)
    weight = np.sqrt(2.0 * f / (1.0 + f))
    weight[0] = 1.0
    cutoff = n * pixel_size / resolution  # shell of the resolution
    k = np.arange(n // 2 + 1)
    lowpass = 0.5 * (1.0 + np.cos(np.pi * np.clip((k - cutoff) / LOWPASS_EDGE + 0.5, 0.0, 1.0)))
    filt = weight * np.exp(bfactor * s**2 / 4.0) * lowpass
    filt_full = np.where(shells <= n // 2, filt[np.minimum(shells, n // 2)], 0.0)
    return _volume(_spectrum(vol) * filt_full, n)


@dataclass
class PostprocessResult:
    """Everything ``cryosnake postprocess`` writes.

    sharpened : (n, n, n) float32 sharpened map (not masked)
    mask : (n, n, n) float32 soft mask
    curves : per-shell FSC curves of :func:`corrected_fsc` and ``frequency`` (1/Å)
    resolution : Å at FSC 0.143 of the corrected curve
    bfactor : Å^2 used for sharpening (negative, RELION's sign)
    guinier : ``s2``, ``original``, ``weighted``, ``sharpened`` log amplitudes, ``used``
    mask_threshold : the mask's threshold (None when the mask was given)
    """

    sharpened: np.ndarray
    mask: np.ndarray
    curves: dict[str, np.ndarray]
    resolution: float
    bfactor: float
    intercept: float
    guinier: dict[str, np.ndarray]
    randomise_shell: int
    mask_threshold: float | None


def postprocess(
    half1: np.ndarray,
    half2: np.ndarray,
    pixel_size: float,
    *,
    mask: np.ndarray | None = None,
    bfactor: float | None = None,
    seed: int = 0,
) -> PostprocessResult:
    """Mask, corrected FSC, resolution, B-factor and sharpened map of two half maps.

    ``bfactor`` (Å^2, negative sharpens) overrides the Guinier fit; ``mask`` the
    automatic mask.
    """
    h1, h2 = np.asarray(half1, np.float64), np.asarray(half2, np.float64)
    if h1.shape != h2.shape or h1.ndim != 3 or len(set(h1.shape)) != 1:
        raise ValueError(f"half maps of one cubic size expected, got {h1.shape}, {h2.shape}")
    n = h1.shape[0]
    average = 0.5 * (h1 + h2)
    threshold = None
    if mask is None:
        mask, threshold = auto_mask(average, pixel_size)
    elif mask.shape != h1.shape:
        raise ValueError(f"mask of shape {mask.shape} for maps of {h1.shape}")
    rng = np.random.default_rng(seed)
    curves = corrected_fsc(h1, h2, mask, rng)
    corrected = np.asarray(curves["corrected"])
    resolution = shell_resolution(corrected, pixel_size, FSC_THRESHOLD)
    weight = np.sqrt(2.0 * np.clip(corrected, 0, 1) / (1.0 + np.clip(corrected, 0, 1)))
    weight[0] = 1.0
    shells = shell_index(n)
    weighted = _volume(
        _spectrum(average * mask)
        * np.where(shells <= n // 2, weight[np.minimum(shells, n // 2)], 0),
        n,
    )
    s2, original = guinier(average * mask, pixel_size)
    _, log_weighted = guinier(weighted, pixel_size)
    if bfactor is None and resolution < GUINIER_LOW * 0.8:
        b, intercept, used = fit_bfactor(s2, log_weighted, GUINIER_LOW, resolution)
        sharpening = -b
    elif bfactor is None:  # no shells beyond 10 Å to fit: FSC weighting only
        sharpening, intercept = 0.0, float("nan")
        used = np.zeros(len(s2), dtype=bool)
    else:
        sharpening = float(bfactor)
        used = np.zeros(len(s2), dtype=bool)
        intercept = float("nan")
    sharpened = sharpen(average, pixel_size, -sharpening, corrected, resolution)
    _, log_sharpened = guinier(sharpened * mask, pixel_size)
    return PostprocessResult(
        sharpened=sharpened.astype(np.float32),
        mask=np.asarray(mask, dtype=np.float32),
        curves={
            "frequency": shell_frequencies(n, pixel_size),
            **{k: np.asarray(v) for k, v in curves.items() if k != "randomise_shell"},
        },
        resolution=resolution,
        bfactor=sharpening,
        intercept=intercept,
        guinier={
            "s2": s2,
            "original": original,
            "weighted": log_weighted,
            "sharpened": log_sharpened,
            "used": used,
        },
        randomise_shell=int(curves["randomise_shell"]),
        mask_threshold=threshold,
    )
