"""Rotations in RELION's convention (ZYZ Euler angles rot, tilt, psi, in degrees).

A particle with angles (rot, tilt, psi) is the reference rotated by
``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` (RELION's ``Euler_angles2matrix``), then projected
along z: a point ``r`` of the reference appears at ``(A @ r)[:2]`` = (x, y) in the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["euler_to_matrix", "matrix_to_euler", "random_rotations"]


def euler_to_matrix(rot: Any, tilt: Any, psi: Any) -> np.ndarray:
    """Rotation matrices from ZYZ Euler angles in degrees.

    Parameters
    ----------
    rot, tilt, psi : scalars or arrays of shape (n,), degrees

    Returns
    -------
    (3, 3) or (n, 3, 3) float64
    """
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((*np.shape(a), 3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(matrix: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ZYZ Euler angles (rot, tilt, psi) in degrees from rotation matrices (..., 3, 3).

    Inverse of :func:`euler_to_matrix` with tilt in [0, 180]; at tilt 0 or 180 (gimbal
    lock) the in-plane angle is carried by psi and rot is 0.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tilt = np.arccos(np.clip(m[..., 2, 2], -1.0, 1.0))
    sin_tilt = np.sqrt(m[..., 2, 0] ** 2 + m[..., 2, 1] ** 2)
    regular = sin_tilt > 1e-6
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi = np.where(regular, np.arctan2(m[..., 1, 2], -m[..., 0, 2]), 0.0)
    # Gimbal lock: A = Rz(psi) Ry(0 or 180); recover psi from the upper-left block.
    sign = np.where(m[..., 2, 2] < 0, -1.0, 1.0)
    locked_psi = np.arctan2(-m[..., 1, 0] * sign, m[..., 0, 0] * sign)
    psi = np.where(regular, psi, locked_psi)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly from SO(3) (Haar measure).

    Uses uniformly distributed unit quaternions (Shoemake 1992). Returns (n, 3, 3).
    """
    u1, u2, u3 = rng.random((3, n))
    q = np.stack(
        [
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
        ],
        axis=1,
    )
    x, y, z, w = q.T
    m = np.empty((n, 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m
