"""Inputs of 2D classification: its settings and the particles prepared for it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module

__all__ = [
    "Class2DSettings",
    "ParticleData",
]


@dataclass(frozen=True)
class Class2DSettings:
    """Parameters of the classification (lengths in working-box pixels).

    n_classes : number of classes K
    mask_diameter : px, diameter of the soft circular mask (the particle diameter)
    psi_step : degrees between in-plane rotations
    max_shift : px, translations searched within this radius (integer grid)
    tau2_fudge : regularisation T (RELION's default for 2D is 2): > 1 trusts the data more
    batch : particles per E-step batch (memory ~ batch x translations x frequencies)
    initial_resolution : Å, shells used in the first iteration (0: 30 Å)
    shell_increment : shells beyond the best class resolution used in the next iteration
    mask_edge : px, width of the raised-cosine edge of the mask
    reseed_until : last iteration after which empty classes are re-seeded (0: never)
    """

    n_classes: int
    mask_diameter: float
    psi_step: float = 5.0
    max_shift: float = 3.0
    tau2_fudge: float = 2.0
    batch: int = 128
    initial_resolution: float = 0.0
    shell_increment: int = 3
    mask_edge: float = 3.0
    reseed_until: int = 0

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError("n_classes must be >= 1")
        if not 0 < self.psi_step <= 180:
            raise ValueError("psi_step must be in (0, 180] degrees")
        if self.max_shift < 0 or self.mask_diameter <= 0:
            raise ValueError("max_shift must be >= 0 and mask_diameter > 0")
        if self.batch < 1:
            raise ValueError("batch must be >= 1")

    @property
    def n_rotations(self) -> int:
        return max(1, int(round(360.0 / self.psi_step)))

    @property
    def psi_angles(self) -> np.ndarray:
        """(R,) degrees."""
        return np.arange(self.n_rotations) * (360.0 / self.n_rotations)

    @property
    def translations(self) -> np.ndarray:
        """(T, 2) integer (dx, dy) px within ``max_shift``, (0, 0) first."""
        r = int(math.floor(self.max_shift))
        grid = np.arange(-r, r + 1)
        dx, dy = np.meshgrid(grid, grid)
        t = np.stack([dx.ravel(), dy.ravel()], axis=1)
        t = t[(t**2).sum(axis=1) <= self.max_shift**2 + 1e-9]
        order = np.lexsort(((t**2).sum(axis=1),))
        return t[order].astype(np.float64)


@dataclass
class ParticleData:
    """Particles prepared for classification.

    spectra : (n, b, b//2+1) complex64, ``rfft2`` of the masked images resampled to the
        working box ``b``, origin at the box centre (``b // 2``); NumPy or CuPy, or a lazy
        source of them that gives NumPy arrays when sliced (streamed particles:
        :class:`cryosnake.stages._images.ParticleSpectra`; the E-step reads them batch by
        batch and moves each batch to the device)
    ctf : (n, 7) float64 NumPy, per-particle columns :data:`cryosnake.ops.ctf.CTF_COLUMNS`
    pixel_size : Å per working-box pixel
    device : the array module to compute with (:mod:`numpy` or :mod:`cupy`); None: that
        of ``spectra``
    """

    spectra: Any
    ctf: np.ndarray
    pixel_size: float
    device: Any = None

    @property
    def xp(self) -> Any:
        """The array module of the computation."""
        return self.device if self.device is not None else get_array_module(self.spectra)

    @property
    def n(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def box(self) -> int:
        return int(self.spectra.shape[1])
