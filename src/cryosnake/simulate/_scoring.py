"""Scoring against ground truth: how many picks match the true particle centres."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def matched_picks(picks: np.ndarray, truth: np.ndarray, radius: float) -> int:
    """One-to-one matches (Hungarian) between picks and truth within ``radius`` px.

    ``picks`` and ``truth`` are (n, 2) arrays of (x, y) centres. Precision is
    ``matched / len(picks)`` and recall ``matched / len(truth)``.
    """
    if len(picks) == 0 or len(truth) == 0:
        return 0
    d = np.hypot(*(picks[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    cost = np.where(d <= radius, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] <= radius).sum())
