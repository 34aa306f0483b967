"""Particle STAR files in the forms RELION and cryoSPARC exports write, read as RELION 3.1+.

Accepted forms:

- **RELION 3.1 to 5**: a ``data_optics`` table (``rlnOpticsGroup``,
  ``rlnImagePixelSize``, ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``) and ``data_particles``, each particle naming its optics
  group; origins ``rlnOriginXAngst/YAngst`` in Å.
- **RELION 3.0** (and cryoSPARC files converted by pyem's ``csparc2star``): one block,
  unnamed (``data_``), ``data_images`` or ``data_particles``, without an optics table;
  the acquisition values on every particle; the pixel size from
  ``rlnDetectorPixelSize`` (µm) × 10^4 / ``rlnMagnification``, or
  ``rlnImagePixelSize``, or given (``pixel_size``, which then overrides them);
  origins ``rlnOriginX/Y`` in pixels.

What :func:`read_particles` returns is RELION 3.1 in every case, ready to be written
back with the stage's own labels. A file without an optics table gets one group per
distinct (voltage, Cs, amplitude contrast, pixel size), named ``opticsGroup1``...; the
particles get ``rlnOpticsGroup`` and origins in Å (``rlnOriginXAngst = rlnOriginX ×
pixel size``, the same direction: RELION's own conversion); the per-particle
acquisition labels, ``rlnMagnification``, ``rlnDetectorPixelSize`` and the pixel
origins are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import FileFormatError
from cryosnake.io.star import read_star

__all__ = ["ACQUISITION", "NOT_MODELLED", "read_particles"]

ACQUISITION = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
CTF_LABELS = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
BLOCKS = ("particles", "images", "")  # in the order looked for
PIXEL_LABELS = ("rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification")
# Labels of RELION's optics refinement that the image model here leaves out: read,
# written back unchanged, and named in the stages' logs.
NOT_MODELLED = {
    "rlnBeamTiltX": "beam tilt",
    "rlnOddZernike": "odd Zernike terms",
    "rlnEvenZernike": "even Zernike terms",
    "rlnMagMat00": "anisotropic magnification",
    "rlnCtfBfactor": "CTF B-factors",
    "rlnCtfScalefactor": "CTF scale factors",
}


def read_particles(
    path: str | os.PathLike[str], pixel_size: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(optics, particles, values) of a particles STAR file in any accepted form (see
    the module docstring), as RELION 3.1: ``optics`` one row per group, ``particles``
    with ``rlnOpticsGroup`` and origins in Å, ``values`` each particle's
    :data:`ACQUISITION` values and ``rlnImagePixelSize``.

    ``pixel_size`` (Å/px): the images' pixel size for a file without an optics table
    (overriding the one it states); with an optics table it must agree with it.

    Raises
    ------
    FileFormatError
        One line naming the file and the block or label that is missing or wrong.
    """
    path = Path(path)
    blocks = read_star(path)
    name = next((b for b in BLOCKS if b in blocks and "rlnImageName" in blocks[b]), None)
    if name is None:
        found = ", ".join(f"data_{b}" for b in blocks)
        raise FileFormatError(f"{path}: no particles block with rlnImageName (found: {found})")
    block = f"data_{name}"
    particles = blocks[name].reset_index(drop=True)
    if len(particles) == 0:
        raise FileFormatError(f"{path}: {block} is empty")
    missing = [c for c in CTF_LABELS if c not in particles.columns]
    if missing:
        raise FileFormatError(f"{path}: {block} lacks label(s) {', '.join(missing)}")
    optics = blocks.get("optics")
    if optics is None:
        optics, particles = _convert(path, block, particles, pixel_size)
    else:
        _check_optics(path, optics, pixel_size)
        optics = optics.reset_index(drop=True)
        if "rlnOpticsGroup" not in particles.columns:
            if len(optics) != 1:
                raise FileFormatError(f"{path}: {block} lacks label rlnOpticsGroup")
            particles["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
    premultiplied = optics.get("rlnCtfDataAreCtfPremultiplied", pd.Series([0]))
    if (premultiplied.astype(int) != 0).any():
        raise FileFormatError(
            f"{path}: data_optics: rlnCtfDataAreCtfPremultiplied is 1 (images already "
            "multiplied by their CTF, as RELION's pseudo-subtomograms are); give images "
            "without the CTF applied"
        )
    group = particles["rlnOpticsGroup"].astype(int).to_numpy()
    table = optics.set_index(optics["rlnOpticsGroup"].astype(int))
    unknown = sorted(set(group.tolist()) - set(table.index.tolist()))
    if unknown:
        raise FileFormatError(
            f"{path}: particles refer to optics group(s) {unknown} not in data_optics"
        )
    values = table.loc[group, [*ACQUISITION, "rlnImagePixelSize"]].astype(float)
    return optics, particles, values.reset_index(drop=True)


def _check_optics(path: Path, optics: pd.DataFrame, pixel_size: float | None) -> None:
    labels = ("rlnOpticsGroup", *ACQUISITION, "rlnImagePixelSize")
    for label in labels:
        if label not in optics.columns:
            raise FileFormatError(f"{path}: data_optics lacks label {label}")
    if (optics["rlnImagePixelSize"].astype(float) <= 0).any():
        raise FileFormatError(f"{path}: data_optics: rlnImagePixelSize must be positive")
    if pixel_size is not None:
        stated = optics["rlnImagePixelSize"].astype(float)
        if (abs(stated - pixel_size) > 1e-3 * pixel_size).any():
            raise FileFormatError(
                f"{path}: --pixel-size {pixel_size:g} differs from data_optics "
                f"rlnImagePixelSize {sorted(set(stated))}"
            )


def _pixel_sizes(
    path: Path, block: str, particles: pd.DataFrame, pixel_size: float | None
) -> np.ndarray:
    n = len(particles)
    if pixel_size is not None:
        if not pixel_size > 0:
            raise FileFormatError(f"--pixel-size must be positive, got {pixel_size:g}")
        return np.full(n, float(pixel_size))
    if "rlnImagePixelSize" in particles.columns:
        sizes = particles["rlnImagePixelSize"].astype(float).to_numpy()
    elif "rlnDetectorPixelSize" in particles.columns and "rlnMagnification" in particles.columns:
        magnification = particles["rlnMagnification"].astype(float).to_numpy()
        if (magnification <= 0).any():
            raise FileFormatError(f"{path}: {block}: rlnMagnification must be positive")
        sizes = particles["rlnDetectorPixelSize"].astype(float).to_numpy() * 1e4 / magnification
    else:
        raise FileFormatError(
            f"{path}: {block} states no pixel size (rlnImagePixelSize, or "
            "rlnDetectorPixelSize and rlnMagnification); give --pixel-size"
        )
    if not (sizes > 0).all():
        raise FileFormatError(f"{path}: {block}: the pixel size must be positive")
    return np.round(sizes, 6)


def _convert(
    path: Path, block: str, particles: pd.DataFrame, pixel_size: float | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0 (or optics on every particle) to RELION 3.1: (optics, particles)."""
    missing = [c for c in ACQUISITION if c not in particles.columns]
    if missing:
        raise FileFormatError(
            f"{path}: no data_optics block, and {block} lacks label(s) {', '.join(missing)}"
        )
    sizes = _pixel_sizes(path, block, particles, pixel_size)
    keys = pd.DataFrame({label: particles[label].astype(float) for label in ACQUISITION}).assign(
        rlnImagePixelSize=sizes
    )
    optics = keys.drop_duplicates().reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    optics.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    optics["rlnImageDimensionality"] = 2
    group = keys.merge(optics, on=[*ACQUISITION, "rlnImagePixelSize"], how="left")
    out = particles.copy()
    for axis in ("X", "Y"):
        if f"rlnOrigin{axis}" in out.columns and f"rlnOrigin{axis}Angst" not in out.columns:
            out[f"rlnOrigin{axis}Angst"] = out[f"rlnOrigin{axis}"].astype(float) * sizes
    dropped = [*ACQUISITION, *PIXEL_LABELS, "rlnOriginX", "rlnOriginY", "rlnOpticsGroup"]
    out = out.drop(columns=[c for c in dropped if c in out.columns])
    out["rlnOpticsGroup"] = group["rlnOpticsGroup"].to_numpy(dtype=np.int64)
    return optics, out
