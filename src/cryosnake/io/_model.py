"""Atomic models (PDB, mmCIF) through gemmi."""

from __future__ import annotations

import os

import numpy as np

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import require_file

__all__ = ["read_atomic_model"]


def read_atomic_model(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heavy atoms of the first model of a PDB or mmCIF file (hydrogens, waters dropped).

    Returns
    -------
    xyz : (n, 3) float64, Å, in the file's frame
    atomic_number : (n,) int64
    b_iso : (n,) float64, Å²
    """
    import gemmi

    p = require_file(path)
    try:
        structure = gemmi.read_structure(str(p))
        structure.remove_hydrogens()
        structure.remove_waters()
    except Exception as err:
        raise FileFormatError(f"{p}: cannot read atomic model ({err})") from err
    if len(structure) == 0:
        raise FileFormatError(f"{p}: atomic model has no model")
    xyz, z, b = [], [], []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                z.append(atom.element.atomic_number)
                b.append(atom.b_iso)
    if not xyz:
        raise FileFormatError(f"{p}: atomic model has no atoms")
    return (
        np.asarray(xyz, dtype=np.float64),
        np.asarray(z, dtype=np.int64),
        np.asarray(b, dtype=np.float64),
    )
