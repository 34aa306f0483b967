"""Radiation damage and exposure weighting (Grant & Grigorieff 2015)."""

from __future__ import annotations

from typing import Any

from cryosnake.backend import get_array_module

__all__ = [
    "critical_exposure",
    "damage_attenuation",
    "dose_weight_norm",
    "frame_exposures",
]


def critical_exposure(s: Any) -> Any:
    """Critical exposure N_e(s) = 0.245 * s^-1.665 + 2.81 (e/Å^2), s in 1/Å.

    ``s == 0`` maps to infinity (no damage of the zero frequency).
    """
    xp = get_array_module(s)
    s = xp.asarray(s, dtype=xp.float64)
    with_zero = s <= 0
    safe = xp.where(with_zero, 1.0, s)
    ne = 0.245 * safe**-1.665 + 2.81
    return xp.where(with_zero, xp.inf, ne)


def damage_attenuation(s: Any, exposure: float) -> Any:
    """Amplitude attenuation exp(-N / (2 N_e(s))) after accumulated ``exposure`` e/Å^2."""
    xp = get_array_module(s)
    return xp.exp(-exposure / (2.0 * critical_exposure(s)))


def frame_exposures(n_frames: int, dose_per_frame: float, pre_exposure: float = 0.0) -> Any:
    """Accumulated exposure at the middle of each frame, e/Å^2: (n,) float64."""
    import numpy as np

    return pre_exposure + (np.arange(n_frames) + 0.5) * dose_per_frame


def dose_weight_norm(s: Any, exposures: Any) -> Any:
    """sqrt(sum_i q_i(s)^2) over frames, q_i = damage_attenuation(s, exposure_i).

    The dose weight of frame i is ``q_i(s) / dose_weight_norm(s)`` (Grant & Grigorieff
    2015): the weights sum in quadrature to one at each frequency, so the noise of the
    weighted sum stays white while each frequency is taken from the frames that still
    carry it.
    """
    xp = get_array_module(s)
    total = xp.zeros(s.shape, dtype=xp.float64)
    for exposure in exposures:
        total += damage_attenuation(s, float(exposure)) ** 2
    return xp.sqrt(total)
