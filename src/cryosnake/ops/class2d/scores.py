"""Scores of 2D class averages: how particle-like each class is (:func:`class_scores`,
which ``select2d`` uses to tell particles from junk)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.class2d.common import _host
from cryosnake.ops.class2d.images import soft_circle

__all__ = [
    "class_scores",
]

MASS_TOLERANCE = 1.25  # class masses within this factor of the particles' score full marks
MASS_SPREAD = 3.0  # mass tolerance: at least this many robust sd of the particles' log mass
MASS_SSNR_HALF = 5.0  # the mass criterion counts half at this SSNR of shells 0-1
CONTAINMENT_Z = 1.0  # containment: judged at its estimate + this many standard errors


def class_scores(
    halves: Any,
    ssnr: np.ndarray,
    pixel_size: float,
    diameter: float,
    counts: np.ndarray,
) -> dict[str, np.ndarray]:
    """How particle-like each class average is: a score in [0, 1] (``select2d``).

    ``score = containment x signal x mass_agreement``, each factor near 1 for a class
    of good particles. Containment and mass are measured on the averages of disjoint
    particle subsets of each class
    (:func:`~cryosnake.ops.class2d.engine.subset_averages`), low-passed to
    ``diameter / 8``; the signal and the trust in the mass on the class SSNR:

    - ``containment``: the fraction of the class's low-resolution signal energy that lies
      inside the circle of ``diameter``, with the energy estimated without noise bias as
      the sum of the products of every pair of different subsets (their noise is
      independent), taken at the estimate plus :data:`CONTAINMENT_Z` standard errors
      (jackknife over the subsets) and clipped to [0, 1]. A
      particle is confined to its diameter; aggregates, ice and carbon edges,
      off-centre picks and the average of empty boxes spread over the box. (The energy
      of one average, ``a * a``, would add the average's noise, which is uniform over
      the box and grows as the class gets fewer particles, so that small classes of
      good particles would look spread out.)
    - ``signal = 1 - exp(-2 ssnr_low)``, with ``ssnr_low`` the class's mean spectral SNR
      in the shells up to ``diameter / 5``: a class without signal scores near 0.
    - ``mass_agreement``: ``a = min(1, r * MASS_TOLERANCE, MASS_TOLERANCE / r)`` with
      ``r`` the class's ``mass`` (the integral of its density inside the circle) over
      the reference mass: every projection of one particle integrates to the same mass
      whatever the view, so a class much heavier (aggregates, several particles) or
      lighter (fragments) than the particles is junk. The reference is the
      particle-weighted median mass of the classes whose containment x signal is at
      least 0.9 (it assumes one particle species dominates those). The mass lives in
      the lowest frequencies, where the CTF passes little (about the amplitude
      contrast) and the class average is mostly its prior, so it is trusted in
      proportion to the SSNR there: ``mass_agreement = 1 - w (1 - a)`` with
      ``w = ssnr_mass / (ssnr_mass + MASS_SSNR_HALF)`` and ``ssnr_mass`` the mean SSNR
      of shells 0 and 1. The mass is that of the mean of the subsets.

    Parameters
    ----------
    halves : (K, parts, b, b) averages of ``parts`` >= 2 disjoint particle subsets per
        class, before masking (:func:`~cryosnake.ops.class2d.engine.subset_averages`)
    ssnr : (K, b//2+1) spectral SNR per shell
        (:attr:`~cryosnake.ops.class2d.engine.Class2DState.ssnr`)
    pixel_size : Å per pixel of ``halves``
    diameter : Å, the particle (mask) diameter
    counts : (K,) particles per class (weights of the reference mass)

    Returns
    -------
    dict of (K,) NumPy float arrays: ``containment``, ``containment_estimate`` (the
    estimate alone, clipped to [0, 1]), ``containment_error`` (its jackknife standard
    error), ``ssnr_low``, ``mass``, ``mass_ratio``, ``mass_weight``, ``score``
    """
    xp = get_array_module(halves)
    box = int(halves.shape[-1])
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    ky = xp.asarray(np.fft.fftfreq(box).astype(np.float32))[:, None]
    kx = xp.asarray(np.fft.rfftfreq(box).astype(np.float32))[None, :]
    s2 = (kx * kx + ky * ky) / pixel_size**2
    lowpass = xp.exp(-math.log(2.0) * s2 * (diameter / 8.0) ** 2)  # half at diameter / 8
    spec = fft.rfft2(xp.asarray(halves, dtype=xp.float32), axes=(-2, -1), **kw)
    smooth = fft.irfft2(spec * lowpass, s=(box, box), axes=(-2, -1), **kw).astype(xp.float64)
    inside = soft_circle(box, diameter / pixel_size, 0.0, xp)
    parts = int(smooth.shape[1])
    # Signal energy (total, within the circle) of every pair of subsets.
    total = np.zeros((len(smooth), parts, parts))
    within = np.zeros((len(smooth), parts, parts))
    for i in range(parts):
        for j in range(i + 1, parts):
            energy = smooth[:, i] * smooth[:, j]
            total[:, i, j] = _host(energy.sum(axis=(1, 2)))
            within[:, i, j] = _host((energy * inside).sum(axis=(1, 2)))

    def _fraction(keep: np.ndarray) -> np.ndarray:
        t = total[:, keep][:, :, keep].sum(axis=(1, 2))
        w = within[:, keep][:, :, keep].sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(t > 0, w / t, 0.0)

    estimate = _fraction(np.ones(parts, dtype=bool))
    # Jackknife over the subsets: the standard error of the estimate.
    leave_out = np.stack([_fraction(np.arange(parts) != i) for i in range(parts)], axis=1)
    error = np.sqrt(
        (parts - 1) / parts * ((leave_out - leave_out.mean(axis=1)[:, None]) ** 2).sum(axis=1)
    )
    containment = np.clip(estimate + CONTAINMENT_Z * error, 0.0, 1.0)
    containment = np.where(total.sum(axis=(1, 2)) > 0, containment, 0.0)
    mass = _host((smooth.mean(axis=1) * inside).sum(axis=(1, 2))).astype(np.float64)
    ssnr = np.asarray(ssnr, dtype=np.float64)
    shells = max(1, min(box // 2, int(box * pixel_size / (diameter / 5.0))))
    ssnr_low = ssnr[:, 1 : shells + 1].mean(axis=1)
    ssnr_mass = ssnr[:, 0:2].mean(axis=1)
    mass_weight = ssnr_mass / (ssnr_mass + MASS_SSNR_HALF)
    shape_score = containment * (1.0 - np.exp(-2.0 * ssnr_low))
    weights = np.asarray(counts, dtype=np.float64)
    pool = (shape_score >= 0.9) & (weights > 0) & (mass > 0)
    if not pool.any():
        pool = (weights > 0) & (mass > 0)
    if pool.any():
        order = np.argsort(mass[pool])
        cumulative = np.cumsum(weights[pool][order])
        reference = float(mass[pool][order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    else:
        reference = float("nan")
    ratio = mass / reference if reference > 0 else np.full(len(mass), np.nan)
    # The masses of the particle-like classes scatter (noise, the CTF's weak low
    # frequencies, crowded neighbours in the normalisation area): the tolerance widens to
    # MASS_SPREAD robust standard deviations of their log mass when that is larger.
    tolerance = MASS_TOLERANCE
    if pool.sum() >= 3 and reference > 0:
        logs = np.log(mass[pool] / reference)
        order = np.argsort(np.abs(logs))
        cumulative = np.cumsum(weights[pool][order])
        mad = float(np.abs(logs)[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
        tolerance = max(MASS_TOLERANCE, math.exp(MASS_SPREAD * 1.4826 * mad))
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.minimum(1.0, np.minimum(ratio * tolerance, tolerance / ratio))
    agreement = np.where(np.isfinite(agreement) & (ratio > 0), agreement, 0.0)
    agreement = 1.0 - mass_weight * (1.0 - agreement)
    return {
        "containment": containment,
        "containment_estimate": np.clip(estimate, 0.0, 1.0),
        "containment_error": error,
        "ssnr_low": ssnr_low,
        "mass": mass,
        "mass_ratio": np.nan_to_num(ratio, nan=0.0),
        "mass_weight": mass_weight,
        "score": np.where(weights > 0, shape_score * agreement, 0.0),
    }
