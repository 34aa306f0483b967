"""Detector defects: hot and dead pixels found in the sum of a movie's frames, and filled.

A movie's frames are summed (:func:`sum_frames`), pixels that stand out from their
neighbourhood in that sum are flagged (:func:`find_defects`), and those pixels are set
to one value in every frame (:func:`fill_defects`) before motion is measured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module, parallel_map

__all__ = ["fill_defects", "find_defects", "sum_frames"]


def find_defects(total: Any, *, threshold: float = 8.0) -> Any:
    """Hot and dead pixels of a detector from the sum of a movie's frames.

    A pixel is a defect when it deviates from the median of its 5x5 neighbourhood by
    more than ``threshold`` robust standard deviations (1.4826 MAD) of all such
    deviations, or when it is zero while that median is not.

    A full 5x5 median filter of a 4k image costs seconds, so the median is taken only
    where it can matter: pixels that deviate from the mean of their four neighbours by
    more than 0.4 ``threshold`` robust SDs (a looser screen that every defect passes,
    clusters of up to 2x2 included), zeros, and the 8 neighbours of each (the centre of
    a 3x3 cluster). The robust SDs are estimated on a regular lattice of ~65,000 pixels.

    Parameters
    ----------
    total : (ny, nx) sum of the gain-corrected frames

    Returns
    -------
    (ny, nx) bool mask, on the device of ``total``
    """
    xp = get_array_module(total)
    t = xp.asarray(total, dtype=xp.float32)
    ny, nx = t.shape
    pad = xp.pad(t, 2, mode="reflect")
    step = max(1, int(math.sqrt(ny * nx / 65536.0)))
    ly, lx = np.meshgrid(np.arange(0, ny, step), np.arange(0, nx, step), indexing="ij")
    ly, lx = xp.asarray(ly.ravel()), xp.asarray(lx.ravel())

    def robust_sd(values: Any) -> float:
        mad = float(xp.median(xp.abs(values - xp.median(values))))
        return 1.4826 * mad if mad > 0 else float(xp.std(values)) or 1.0

    sigma = robust_sd(t[ly, lx] - _median5(pad, ly, lx))
    # The screen: deviation from the mean of the four neighbours, in bands of rows in
    # parallel; its robust SD from the same lattice.
    at = pad[ly + 1, lx + 2] + pad[ly + 3, lx + 2] + pad[ly + 2, lx + 1] + pad[ly + 2, lx + 3]
    limit = 0.4 * threshold * robust_sd(t[ly, lx] - 0.25 * at)
    candidate = xp.zeros((ny + 2, nx + 2), dtype=bool)  # a border of False for the growth
    grown = xp.empty((ny, nx), dtype=bool)
    bands = [(a, min(a + 256, ny)) for a in range(0, ny, 256)]

    def screen(band: tuple[int, int]) -> None:
        a, b = band
        deviation = pad[a + 1 : b + 1, 2:-2] + pad[a + 3 : b + 3, 2:-2]
        deviation += pad[a + 2 : b + 2, 1:-3]
        deviation += pad[a + 2 : b + 2, 3:-1]
        deviation *= -0.25
        deviation += t[a:b]
        xp.abs(deviation, out=deviation)
        out = candidate[a + 1 : b + 1, 1:-1]
        xp.greater(deviation, limit, out=out)
        out |= t[a:b] == 0

    def grow(band: tuple[int, int]) -> None:  # each candidate and its 8 neighbours
        a, b = band
        rows = candidate[a : b + 2]
        vertical = rows[:-2] | rows[1:-1]
        vertical |= rows[2:]
        out = grown[a:b]
        xp.bitwise_or(vertical[:, :-2], vertical[:, 1:-1], out=out)
        out |= vertical[:, 2:]

    for _ in parallel_map(screen, bands, xp):
        pass
    for _ in parallel_map(grow, bands, xp):
        pass
    mask = xp.zeros((ny, nx), dtype=bool)
    yy, xx = xp.nonzero(grown)
    if yy.size == 0:
        return mask
    flat = yy * nx + xx
    if flat.size > 0.05 * ny * nx:  # not a detector with a few defects: check everywhere
        flat = xp.arange(ny * nx)
        yy, xx = flat // nx, flat % nx
    for lo in range(0, int(flat.size), 1 << 20):  # bounded memory for the gathers
        y, x = yy[lo : lo + (1 << 20)], xx[lo : lo + (1 << 20)]
        local = _median5(pad, y, x)
        value = t[y, x]
        bad = (xp.abs(value - local) > threshold * sigma) | ((value == 0) & (local > 0))
        mask[y[bad], x[bad]] = True
    return mask


def _median5(padded: Any, y: Any, x: Any) -> Any:
    """Median of the 5x5 neighbourhood of pixels (y, x) of an image padded by 2."""
    xp = get_array_module(padded)
    d = xp.arange(5)
    rows = (y[:, None] + d[None, :])[:, :, None]
    cols = (x[:, None] + d[None, :])[:, None, :]
    return xp.median(padded[rows, cols].reshape(y.size, 25), axis=1)


def sum_frames(frames: Any) -> Any:
    """(ny, nx) float32 sum over the frames of (n, ny, nx), bands of rows in parallel."""
    xp = get_array_module(frames)
    _, ny, nx = frames.shape
    total = xp.empty((ny, nx), dtype=xp.float32)
    bands = [(a, min(a + 256, ny)) for a in range(0, ny, 256)]

    def one_band(band: tuple[int, int]) -> None:
        a, b = band
        xp.sum(frames[:, a:b], axis=0, dtype=xp.float32, out=total[a:b])

    for _ in parallel_map(one_band, bands, xp):
        pass
    return total


def fill_defects(frames: Any, mask: Any, fill: float) -> None:
    """Set the pixels of ``mask`` to ``fill`` in every frame of ``frames``, in place."""
    xp = get_array_module(frames)
    ys, xs = xp.nonzero(mask)
    if ys.size:
        frames[:, ys, xs] = fill
