"""Peaks of score maps: non-maximum suppression and sub-pixel refinement.

Host arrays (NumPy) only; the pickers (:mod:`cryosnake.ops.pick.select`,
:mod:`~cryosnake.ops.pick.blob`, :mod:`~cryosnake.ops.pick.template`) use them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "disc",
    "find_peaks",
    "local_maxima",
    "refine_peaks",
    "stamp",
]


def disc(radius: float) -> np.ndarray:
    h = int(math.ceil(radius))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    return np.asarray((yy * yy + xx * xx) <= radius * radius)


def stamp(mask: np.ndarray, centres: np.ndarray, radius: float) -> None:
    """Set discs of ``radius`` around ``centres`` (row, col) to False."""
    h = int(math.ceil(radius))
    window = disc(radius)
    ny, nx = mask.shape
    for i, j in centres:
        y0, y1 = max(0, i - h), min(ny, i + h + 1)
        x0, x1 = max(0, j - h), min(nx, j + h + 1)
        sub = window[y0 - (i - h) : y1 - (i - h), x0 - (j - h) : x1 - (j - h)]
        mask[y0:y1, x0:x1][sub] = False


def find_peaks(score: np.ndarray, distance: float, border: float) -> np.ndarray:
    """Local maxima at least ``distance`` apart (greedy, strongest first), clear of
    ``border`` pixels. Returns (k, 2) int64 (row, col)."""
    ny, nx = score.shape
    local = score == ndimage.maximum_filter(score, footprint=disc(max(distance / 2, 1)))
    rows, cols = np.nonzero(local)
    inside = (rows >= border) & (rows <= ny - 1 - border)
    inside &= (cols >= border) & (cols <= nx - 1 - border)
    rows, cols = rows[inside], cols[inside]
    order = np.argsort(score[rows, cols], kind="stable")[::-1]
    rows, cols = rows[order], cols[order]
    keep = np.ones(len(rows), dtype=bool)
    d2 = distance * distance
    for k in range(len(rows)):
        if keep[k]:
            close = (rows[k + 1 :] - rows[k]) ** 2 + (cols[k + 1 :] - cols[k]) ** 2 < d2
            keep[k + 1 :] &= ~close
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64).reshape(-1, 2)


def refine_peaks(score: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Sub-pixel peak positions (row, col): a parabola through 3 points on each axis."""
    out = peaks.astype(np.float64)
    if len(peaks) == 0:
        return out
    ny, nx = score.shape
    for axis, n in ((0, ny), (1, nx)):
        i, j = peaks[:, 0], peaks[:, 1]
        lo = np.clip(peaks[:, axis] - 1, 0, n - 1)
        hi = np.clip(peaks[:, axis] + 1, 0, n - 1)
        a = score[lo, j] if axis == 0 else score[i, lo]
        c = score[hi, j] if axis == 0 else score[i, hi]
        b = score[i, j]
        den = a - 2.0 * b + c
        ok = (den < 0) & (lo != peaks[:, axis]) & (hi != peaks[:, axis])
        step = np.zeros(len(peaks))
        step[ok] = np.clip(0.5 * (a[ok] - c[ok]) / den[ok], -0.5, 0.5)
        out[:, axis] += step
    return out


def local_maxima(score: np.ndarray, peaks: np.ndarray, radius: float) -> np.ndarray:
    """Sub-pixel positions (row, col) of the maximum of ``score`` within ``radius``
    pixels of each of ``peaks``."""
    h = int(math.ceil(radius))
    window = disc(radius)
    ny, nx = score.shape
    out = peaks.astype(np.float64).reshape(-1, 2)
    for n, (i, j) in enumerate(peaks):
        y0, y1 = max(0, i - h), min(ny, i + h + 1)
        x0, x1 = max(0, j - h), min(nx, j + h + 1)
        sub = score[y0:y1, x0:x1]
        inside = window[y0 - (i - h) : y1 - (i - h), x0 - (j - h) : x1 - (j - h)]
        a, b = np.unravel_index(int(np.argmax(np.where(inside, sub, -np.inf))), sub.shape)
        out[n] = refine_peaks(score, np.array([[y0 + a, x0 + b]], dtype=np.int64))[0]
    return out
