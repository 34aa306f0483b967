"""Background statistics and what noise alone would give: the automatic threshold.

Robust statistics of map pixels (:func:`robust`, :func:`background_stats`) and the
null model of the automatic threshold: the figures of merit of peaks in pure noise
(:class:`NullModel`) and the Benjamini-Hochberg cut against it (:func:`fdr_threshold`).
Host arrays (NumPy) only.

Automatic threshold, the same for both pickers: the null distribution of the figure of
merit comes from white noise of the micrograph's size passed through the same filters
(the same template bank; :mod:`cryosnake.ops.pick.blob` and
:mod:`~cryosnake.ops.pick.template` build it); a Benjamini-Hochberg procedure then keeps
the largest set of best candidates in which noise would account for at most
:data:`FALSE_PICK_RATE` of the picks. Pure noise and empty ice therefore give no pick,
while a micrograph full of particles is thresholded lower than a single candidate would
be. Blob picks with a CTF are scored against the whitened background, so the threshold
follows the micrograph's own noise and texture (a crowded micrograph does not raise it);
template picks, and blob picks without a CTF, are scored against the micrograph's
background pixels. ``threshold`` overrides it.
"""

from __future__ import annotations

import math

import numpy as np

from cryosnake.ops.pick.peaks import stamp

__all__ = [
    "FALSE_PICK_RATE",
    "NULL_TAIL",
    "NullModel",
    "background_stats",
    "fdr_threshold",
    "robust",
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
