"""The frequencies and pose tables of one 2D classification iteration.

The 2D projector itself (padded Fourier grid, rotation, back-projection, gridding,
reconstruction) is :mod:`cryosnake.ops.fourier_slice.image`. Conventions are RELION's:
the image is the class rotated by ``psi`` (``A = Rz(psi)`` of
:func:`cryosnake.ops.rotation.euler_to_matrix`) and then shifted by ``t``; RELION's
``rlnOriginX/Y`` is ``-t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.ops.class2d.data import Class2DSettings
from cryosnake.ops.fourier_slice import RotationCells, half_plane, phase_ramps, rotation_cells


@dataclass
class _Geometry:
    """Frequencies of one iteration and the rotation/translation tables."""

    r_max: int
    flat: Any  # (F,) index into the flattened (b, b//2+1) half plane
    fx: np.ndarray  # (F,) integer frequencies (cycles per box)
    fy: np.ndarray
    shells: Any  # (F,) int
    weight: Any  # (F,) 1 on the kx = 0 column, 2 elsewhere (Hermitian mates)
    kx: Any  # (F,) 1/Å
    ky: Any
    ramps: Any  # (T, F) complex64: exp(-2 pi i f.t / b)
    t2: Any  # (T,) |t|^2
    cells: RotationCells  # the rotations' cells on the padded grid


def _geometry(
    box: int, r_max: int, settings: Class2DSettings, pixel_size: float, xp: Any
) -> _Geometry:
    """The iteration's frequencies (shells ``0 .. r_max``, ``r_max <= b/2 - 2``: inside
    the padded grid's interior) and its tables on the device of ``xp``."""
    plane = half_plane(box, r_max)
    t = settings.translations
    n_px = box * pixel_size
    return _Geometry(
        r_max=r_max,
        flat=xp.asarray(plane.flat),
        fx=plane.kx,
        fy=plane.ky,
        shells=xp.asarray(plane.shells),
        weight=xp.asarray(plane.hermitian.astype(np.float32)),
        kx=xp.asarray(plane.kx / n_px),
        ky=xp.asarray(plane.ky / n_px),
        ramps=xp.asarray(phase_ramps(plane, t, box, np, double=True)),
        t2=xp.asarray((t**2).sum(axis=1).astype(np.float32)),
        cells=rotation_cells(plane, settings.psi_angles, box, xp=xp),
    )
