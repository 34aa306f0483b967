"""Radiation damage and exposure weighting (Grant & Grigorieff 2015)."""

from __future__ import annotations

from typing import Any

from cryosnake.backend import get_array_module

__all__ = ["critical_exposure", "damage_attenuation"]


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
