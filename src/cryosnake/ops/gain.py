"""Gain reference orientation."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryosnake.backend import get_array_module

__all__ = ["FLIPS", "find_gain_orientation", "orient_gain"]

FLIPS = ("none", "x", "y")


def orient_gain(gain: Any, rotate: int = 0, flip: str = "none") -> Any:
    """Rotate, then flip, a gain reference to match the movie frames.

    Parameters
    ----------
    gain : (ny, nx)
    rotate : number of 90° rotations, applied as ``xp.rot90(gain, rotate)``: from the
        row axis towards the column axis, i.e. counter-clockwise when the first row is
        displayed at the top
    flip : ``"x"`` mirrors the columns (left-right), ``"y"`` the rows (up-down)
    """
    xp = get_array_module(gain)
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
    out = xp.rot90(gain, int(rotate) % 4)
    if flip == "x":
        out = out[:, ::-1]
    elif flip == "y":
        out = out[::-1, :]
    return xp.ascontiguousarray(out)


def find_gain_orientation(raw_sum: Any, gain: Any) -> tuple[int, str, dict[tuple[int, str], float]]:
    """Find how a gain reference must be rotated/flipped to match a movie.

    Raw counts are the signal divided by the detector's gain, so the sum of raw frames
    carries the gain's fixed pattern: its high-pass part correlates with that of
    1/gain when, and only when, the gain is oriented as the frames. Each of the 8
    distinct orientations (4 rotations, with and without a left-right mirror; an
    up-down mirror is a mirror plus two rotations) is scored by that correlation.

    Parameters
    ----------
    raw_sum : (ny, nx) sum of raw (not gain-corrected) frames
    gain : (gy, gx) gain reference as stored

    Returns
    -------
    (rotate, flip, scores) : the best orientation for :func:`orient_gain` and the
    correlation of every orientation whose shape matches the frames (higher is better)
    """
    xp = get_array_module(raw_sum)
    if xp is np:
        from scipy import ndimage
    else:  # pragma: no cover - GPU
        from cupyx.scipy import ndimage

    def high_pass(image: Any) -> Any:
        image = image - ndimage.uniform_filter(image, size=9, mode="reflect")
        return (image - image.mean()) / max(float(xp.linalg.norm(image)), 1e-12)

    frames = high_pass(xp.asarray(raw_sum, dtype=xp.float32))
    scores: dict[tuple[int, str], float] = {}
    for flip in ("none", "x"):
        for rotate in range(4):
            g = orient_gain(xp.asarray(gain, dtype=xp.float32), rotate, flip)
            if g.shape != frames.shape:
                continue
            inverse = xp.where(g > 0, 1.0 / xp.maximum(g, 1e-12), 0.0).astype(xp.float32)
            scores[(rotate, flip)] = float((frames * high_pass(inverse)).sum())
    if not scores:
        raise ValueError(f"no orientation of the {gain.shape} gain matches {raw_sum.shape}")
    rotate, flip = max(scores, key=scores.__getitem__)
    return rotate, flip, scores
