"""Peaks of score maps and what noise alone would give: the picker's statistics.

Non-maximum suppression and sub-pixel refinement of peaks, robust statistics of map
pixels, and the null model of the automatic threshold: the figures of merit of peaks in
pure noise (:class:`NullModel`) and the Benjamini-Hochberg cut against it
(:func:`fdr_threshold`). Host arrays (NumPy) only; :mod:`cryosnake.ops.pick` uses them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "FALSE_PICK_RATE",
    "NullModel",
    "background_stats",
    "disc",
    "fdr_threshold",
    "find_peaks",
    "local_maxima",
    "refine_peaks",
    "robust",
    "stamp",
]

FALSE_PICK_RATE = 0.05  # automatic threshold: false discovery rate of noise peaks
NULL_TAIL = 0.05  # fraction of the null peaks the exponential tail is fitted to


def robust(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 x median absolute deviation (> 0)."""
    if values.size == 0:
        return 0.0, 1.0
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    return med, mad if mad > 0 else max(float(np.std(values)), 1e-20)


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


def background_stats(
    maps: list[np.ndarray], locate: np.ndarray, peaks: np.ndarray, free: np.ndarray, r_px: float
) -> list[tuple[float, float]]:
    """Median and robust sd of each map over background pixels.

    Background: outside ``~free`` and outside discs of radius ``r`` around the peaks
    whose ``locate`` value is more than 3 robust sd above the background (iterated).
    """
    stats = [robust(m[free]) for m in maps]
    lm, ls = robust(locate[free])
    for _ in range(2):
        values = locate[peaks[:, 0], peaks[:, 1]] if len(peaks) else np.zeros(0)
        strong = peaks[(values - lm) / ls > 3.0]
        mask = free.copy()
        stamp(mask, strong, r_px)
        if mask.sum() < 0.1 * mask.size:  # crowded: keep the estimate we have
            break
        lm, ls = robust(locate[mask])
        stats = [robust(m[mask]) for m in maps]
    return stats


class NullModel:
    """Figures of merit of candidate peaks in pure noise: the null distribution.

    ``scores`` are the peaks of ``realisations`` noise images processed like the
    micrograph. :meth:`expected` is the expected number of noise peaks at or above a
    score in one micrograph: counted where there are enough, and beyond the top
    :data:`NULL_TAIL` peaks from an exponential fitted to them (maximum likelihood),
    so that small expectations are not zero.
    """

    def __init__(
        self,
        scores: np.ndarray,
        realisations: int,
        map_stats: list[tuple[float, float]] | None = None,
    ) -> None:
        self.scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
        self.realisations = max(1, realisations)
        self.map_stats = map_stats  # median and robust sd of each noise map
        m = min(len(self.scores), max(10, int(NULL_TAIL * len(self.scores))))
        if m == 0:
            self.u, self.beta, self.m = 0.0, 1.0, 0
            return
        self.m = m
        self.u = float(self.scores[m - 1])
        self.beta = max(float(np.mean(self.scores[:m] - self.u)), 1e-6)

    def expected(self, t: float) -> float:
        """Expected number of noise peaks with a figure of merit >= ``t``."""
        if self.m == 0:
            return 0.0
        if t >= self.u:
            return self.m / self.realisations * math.exp(-(t - self.u) / self.beta)
        return float(np.count_nonzero(self.scores >= t)) / self.realisations

    def level(self, expected: float) -> float:
        """The figure of merit that noise reaches ``expected`` times per micrograph."""
        if self.m == 0:
            return 0.0
        ratio = expected * self.realisations / self.m
        if ratio <= 1.0:
            return self.u + self.beta * math.log(1.0 / ratio)
        k = min(len(self.scores) - 1, int(expected * self.realisations))
        return float(self.scores[k])


def fdr_threshold(scores: np.ndarray, null: NullModel) -> float:
    """Benjamini-Hochberg threshold: the lowest score ``s_k`` (k-th best) for which the
    noise is expected to give at most ``FALSE_PICK_RATE * k`` peaks above it.

    With no such score (pure noise) the threshold is the score noise reaches
    ``FALSE_PICK_RATE`` times per micrograph, above every candidate.
    """
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    best = 0
    for k, s in enumerate(ranked, start=1):
        if null.expected(float(s)) <= FALSE_PICK_RATE * k:
            best = k
    if best == 0:
        return max(null.level(FALSE_PICK_RATE), float(ranked[0]) if len(ranked) else -np.inf)
    if best < len(ranked):
        return 0.5 * float(ranked[best - 1] + ranked[best])
    return float(ranked[best - 1]) - 1e-9
