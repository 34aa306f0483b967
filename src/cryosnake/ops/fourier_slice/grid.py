"""The frequency grids shared by the 2D and 3D projectors: the kept frequencies of an
image half plane, phase ramps of shifts, the gridding apodisation, argument checks.

An image spectrum is the ``rfft2`` half plane (n, n//2+1) of the image with its origin
(pixel ``n // 2``) moved to index 0; frequencies ``k = (kx, ky)`` are in cycles per box,
``ky`` in ``fftfreq`` order. A frequency belongs to shell ``rint(|k|)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BATCH",
    "PAD",
    "HalfPlane",
    "gridding",
    "half_plane",
    "phase_ramps",
    "plane_shells",
]

PAD = 2  # default oversampling of the padded Fourier grids (RELION's padding factor)
BATCH = 128  # default images per vectorised batch


@dataclass(frozen=True)
class HalfPlane:
    """The kept frequencies of an image half plane (n, n//2+1), flattened (NumPy).

    flat : (F,) int index into the flattened half plane
    kx, ky : (F,) float64 cycles per box
    shells : (F,) int64 ``rint(|k|)``
    hermitian : (F,) float64, 1 on the column ``kx = 0`` (whose mates ``-k`` are in the
        plane too) and 2 elsewhere (whose mates are implicit): the weight of a frequency
        in a sum over the full plane
    """

    flat: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    shells: np.ndarray
    hermitian: np.ndarray

    @property
    def mate(self) -> np.ndarray:
        """(F,) float32: 1/2 on the column ``kx = 0``, else 1 (insertion weights, so that
        a frequency and its mate, both stored there, count once together)."""
        return (0.5 * self.hermitian).astype(np.float32)


def plane_shells(n: int) -> np.ndarray:
    """(n, n//2+1) int64: the shell ``rint(|k|)`` of every point of a half plane."""
    ky = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    return np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int64)


def half_plane(n: int, r_max: float, *, dc: bool = True) -> HalfPlane:
    """The frequencies of shells ``0 .. r_max`` of a half plane of box ``n``, without the
    Nyquist row and column (``ky = -n/2``, ``kx = n/2``: their sign is ambiguous) and,
    with ``dc=False``, without the DC term (for mean-free images)."""
    ky = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    fy, fx = np.meshgrid(ky, kx, indexing="ij")
    shells = np.rint(np.sqrt(fx**2 + fy**2))
    keep = (shells <= r_max) & (fx < n // 2) & (fy > -(n // 2))
    keep.ravel()[0] &= dc
    flat = np.flatnonzero(keep.ravel())
    fx, fy = fx.ravel()[flat], fy.ravel()[flat]
    return HalfPlane(
        flat=flat,
        kx=fx,
        ky=fy,
        shells=shells.ravel()[flat].astype(np.int64),
        hermitian=np.where(fx == 0, 1.0, 2.0),
    )


def phase_ramps(
    plane: HalfPlane, shifts: Any, n: int, xp: Any = np, *, double: bool = False
) -> Any:
    """(..., F) complex64 ``exp(-2 pi i (kx dx + ky dy) / n)`` for shifts (..., 2)
    (dx, dy) px, on the device of ``xp``: the spectrum of an image shifted by ``t``
    (``image(r) = original(r - t)``) is the original's times this ramp.

    The phases are computed in float32 (ramps made per particle in the searches), in
    float64 with ``double=True`` (ramps made once and reused).
    """
    dtype = xp.float64 if double else xp.float32
    t = xp.asarray(shifts, dtype=dtype)
    kx = xp.asarray(plane.kx * (-2.0 * math.pi / n), dtype=dtype)
    ky = xp.asarray(plane.ky * (-2.0 * math.pi / n), dtype=dtype)
    phase = t[..., 0:1] * kx + t[..., 1:2] * ky
    return (xp.cos(phase) + 1j * xp.sin(phase)).astype(xp.complex64)


def gridding(n: int, pad: int, ndim: int, xp: Any = np) -> Any:
    """(n,)*ndim float32 apodisation of linear interpolation on a grid padded ``pad``
    times: ``prod_axes sinc^2(x / (pad n))``, ``x`` in pixels from the origin ``n // 2``
    (linear interpolation of a transform convolves it with a triangle, which multiplies
    the image by this)."""
    s = np.sinc((np.arange(n) - n // 2) / (pad * n)) ** 2
    out = s
    for _ in range(ndim - 1):
        out = out[..., None] * s
    return xp.asarray(out.astype(np.float32))


def check_box(n: int) -> None:
    """Raise ValueError unless ``n`` is an even box size >= 2."""
    if n < 2 or n % 2:
        raise ValueError(f"an even box size >= 2 is expected, got {n}")


def check_r_max(r_max: float | None, n: int) -> float:
    """``r_max`` as a float in ``[0, n // 2]`` (None: ``n // 2``)."""
    r = float(n // 2) if r_max is None else float(r_max)
    if not 0 <= r <= n // 2:
        raise ValueError(f"r_max must be in [0, {n // 2}], got {r_max}")
    return r


def as_matrices(matrices: Any) -> np.ndarray:
    """(m, 3, 3) float64 rotations from one (3, 3) or a stack."""
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape == (3, 3):
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (3, 3):
        raise ValueError(f"rotation matrices (m, 3, 3) expected, got {m.shape}")
    return m


def as_shifts(shifts: Any, m: int) -> np.ndarray | None:
    """(m, 2) float64 shifts (dx, dy), or None."""
    if shifts is None:
        return None
    t = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    if len(t) != m:
        raise ValueError(f"one shift (dx, dy) per rotation expected, got {len(t)} for {m}")
    return t
