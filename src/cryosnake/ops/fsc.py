"""Fourier shell correlation of two volumes, and the resolution read from it.

A frequency ``k`` (cycles per box) belongs to shell ``rint(|k|)``, as in the projectors of
:mod:`cryosnake.ops.fourier_slice`; shells run from 0 (DC) to ``n // 2`` (Nyquist).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.fourier_slice.grid import check_box

__all__ = ["fsc", "fsc_at_resolution", "shell_frequencies", "shell_resolution"]


def _shells_rfftn(n: int, xp: Any) -> tuple[Any, Any]:
    """Shell (rint |k|) of each point of an (n, n, n//2+1) ``rfftn`` half spectrum and
    its multiplicity in the full spectrum (2 where the mate is not stored, else 1)."""
    k = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shells = np.rint(r).astype(np.int64)
    mult = np.where((kx == 0) | (kx == n // 2), 1.0, 2.0)
    return xp.asarray(shells.ravel()), xp.asarray(np.broadcast_to(mult, r.shape).ravel())


def fsc(volume1: Any, volume2: Any) -> np.ndarray:
    """Fourier shell correlation of two volumes.

    ``FSC(s) = Re sum F1 conj(F2) / sqrt(sum |F1|^2 sum |F2|^2)`` over the frequencies of
    shell ``s`` (``rint(|k|) = s``, cycles per box) of the full 3D spectrum; shells
    beyond ``n // 2`` (the corners of the cube) are left out.

    Parameters
    ----------
    volume1, volume2 : (n, n, n) real (NumPy or CuPy, both on one device)

    Returns
    -------
    (n//2+1,) float64 NumPy, shell 0 = DC; 0 in shells where either volume has no power
    """
    xp = get_array_module(volume1, volume2)
    fft = fft_module(xp)
    if volume1.shape != volume2.shape or volume1.ndim != 3 or len(set(volume1.shape)) != 1:
        raise ValueError(
            f"two cubic volumes of one size expected: {volume1.shape}, {volume2.shape}"
        )
    n = int(volume1.shape[0])
    check_box(n)
    kw = fft_kwargs(xp)
    f1 = fft.rfftn(xp.asarray(volume1, dtype=xp.float64), **kw).ravel()
    f2 = fft.rfftn(xp.asarray(volume2, dtype=xp.float64), **kw).ravel()
    shells, mult = _shells_rfftn(n, xp)
    keep = shells <= n // 2
    shells, mult, f1, f2 = shells[keep], mult[keep], f1[keep], f2[keep]
    n_shells = n // 2 + 1

    def _sum(values: Any) -> np.ndarray:
        total = xp.bincount(shells, weights=mult * values, minlength=n_shells)
        return np.asarray(total.get() if hasattr(total, "get") else total, dtype=np.float64)

    cross = _sum((f1 * xp.conj(f2)).real)
    p1 = _sum(f1.real**2 + f1.imag**2)
    p2 = _sum(f2.real**2 + f2.imag**2)
    denom = np.sqrt(p1 * p2)
    return np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)


def shell_frequencies(n: int, pixel_size: float) -> np.ndarray:
    """(n//2+1,) spatial frequency of each shell in 1/Å: ``s / (n pixel_size)``."""
    return np.arange(n // 2 + 1) / (n * pixel_size)


def fsc_at_resolution(fsc_curve: Any, pixel_size: float, resolution: float) -> float:
    """The FSC at ``resolution`` Å, interpolated linearly between the two shells about
    its fractional shell ``n pixel_size / resolution`` (the inverse of
    :func:`shell_resolution`'s reading).

    fsc_curve : (n//2+1,) per shell (:func:`fsc`); pixel_size : Å per voxel
    """
    curve = np.asarray(fsc_curve, dtype=np.float64).ravel()
    n = 2 * (len(curve) - 1)
    shell = n * pixel_size / resolution
    if not 0.0 <= shell <= n // 2:
        raise ValueError(f"{resolution:g} Å is outside the curve (Nyquist {2 * pixel_size:g} Å)")
    k = min(int(np.floor(shell)), len(curve) - 2)
    return float(curve[k] + (shell - k) * (curve[k + 1] - curve[k]))


def shell_resolution(fsc_curve: Any, pixel_size: float, threshold: float = 0.143) -> float:
    """Resolution in Å where an FSC curve first drops below ``threshold``.

    The search starts after shell 1 (shells 0 and 1 are always trusted); the crossing
    between the last shell ``s - 1`` at or above the threshold and the first shell ``s``
    below it is interpolated linearly, and the resolution is ``n pixel_size / shell``
    at that fractional shell. A curve that never drops gives Nyquist, ``2 pixel_size``.

    Parameters
    ----------
    fsc_curve : (n//2+1,) per shell, shell 0 = DC (:func:`fsc`)
    pixel_size : Å per voxel
    threshold : 0.143 for gold-standard half maps, 0.5 against a reference
    """
    curve = np.asarray(fsc_curve, dtype=np.float64).ravel()
    if len(curve) < 2:
        raise ValueError("an FSC curve of at least 2 shells is expected")
    n = 2 * (len(curve) - 1)
    for s in range(2, len(curve)):
        if curve[s] < threshold:
            above, below = curve[s - 1], curve[s]
            frac = (above - threshold) / (above - below) if above != below else 0.0
            shell = (s - 1) + float(np.clip(frac, 0.0, 1.0))
            return float(n * pixel_size / shell)
    return 2.0 * pixel_size
