"""Projections of volumes (real space) for simulation and reference generation."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["project_volume"]


def project_volume(volume: np.ndarray, matrix: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Line integral of a volume rotated by ``matrix`` (RELION convention), along z.

    ``image(x, y) = sum_z volume(A^T (x, y, z))`` with coordinates relative to the box
    centre (``n // 2``), so the reference point ``r`` lands at ``(A r)[:2]``.

    Parameters
    ----------
    volume : (n, n, n) float, indexed [z, y, x]
    matrix : (3, 3) rotation
    order : spline order of the interpolation (1 = trilinear)

    Returns
    -------
    (n, n) float32, in volume units times voxel length (sum over voxels)
    """
    vol = np.asarray(volume, dtype=np.float32)
    n = vol.shape[0]
    if vol.shape != (n, n, n):
        raise ValueError(f"project_volume: cubic volume expected, got {vol.shape}")
    c = n // 2
    grid = np.arange(n, dtype=np.float64) - c
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()])  # image-frame (x, y, z)
    ref = np.asarray(matrix, dtype=np.float64).T @ pts  # reference-frame (x, y, z)
    coords = np.stack([ref[2], ref[1], ref[0]]) + c  # array index order (z, y, x)
    sampled = ndimage.map_coordinates(vol, coords, order=order, mode="constant", cval=0.0)
    out: Any = sampled.reshape(n, n, n).sum(axis=0)
    return np.asarray(out, dtype=np.float32)
