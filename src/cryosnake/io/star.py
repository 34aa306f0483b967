"""STAR files in RELION 3.1+ layout through :mod:`starfile`.

Blocks are :class:`pandas.DataFrame` objects whose columns are RELION labels without
the leading underscore (``rlnDefocusU``), exactly as :func:`starfile.read` returns them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import starfile

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path, require_file

__all__ = ["optics_table", "read_star", "read_star_block", "write_star"]

PathLike = str | os.PathLike[str]


def read_star(path: PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file as ``{block name: DataFrame}``.

    Single-row ("simple") blocks come back as one-row DataFrames too, so callers never
    need to tell the two kinds apart.
    """
    p = require_file(path)
    try:
        blocks = starfile.read(p, always_dict=True, parse_as_string=[])
    except Exception as err:
        raise FileFormatError(f"{p}: not a valid STAR file ({err})") from err
    if not blocks:
        raise FileFormatError(f"{p}: STAR file holds no data block")
    out: dict[str, pd.DataFrame] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            out[name] = block
        else:  # a simple block comes back as a dict of label -> value
            out[name] = pd.DataFrame([dict(block)])
    return out


def read_star_block(path: PathLike, block: str, *, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one block and check that it has the ``required`` labels."""
    p = Path(path)
    blocks = read_star(p)
    if block not in blocks:
        raise FileFormatError(
            f"{p}: no data_{block} block (found: {', '.join(sorted(blocks)) or 'none'})"
        )
    df = blocks[block]
    missing = [label for label in required if label not in df.columns]
    if missing:
        raise FileFormatError(f"{p}: data_{block} lacks label(s) {', '.join(missing)}")
    return df


def write_star(path: PathLike, blocks: Mapping[str, pd.DataFrame]) -> Path:
    """Write data blocks (``{name: DataFrame}``) atomically, in loop form."""
    p = Path(path)
    if not blocks:
        raise FileFormatError(f"{p}: refusing to write a STAR file with no block")
    for name, df in blocks.items():
        bad = [c for c in df.columns if not str(c) or str(c).startswith("_")]
        if bad:
            raise FileFormatError(f"{p}: block {name!r} has invalid label(s) {bad}")
    with atomic_path(p) as tmp:
        starfile.write(dict(blocks), tmp, overwrite=True, float_format="%.6f")
    return p


def optics_table(
    *,
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    image_size: int | None = None,
    group_name: str = "opticsGroup1",
    image_pixel_size: float | None = None,
) -> pd.DataFrame:
    """A one-group RELION 3.1 ``data_optics`` table.

    ``rlnMicrographPixelSize`` describes micrographs; particle STARs also need
    ``rlnImagePixelSize`` and ``rlnImageSize`` (``image_pixel_size``, ``image_size``).
    """
    row: dict[str, object] = {
        "rlnOpticsGroupName": group_name,
        "rlnOpticsGroup": 1,
        "rlnMicrographOriginalPixelSize": float(pixel_size),
        "rlnVoltage": float(voltage),
        "rlnSphericalAberration": float(cs),
        "rlnAmplitudeContrast": float(amplitude_contrast),
        "rlnMicrographPixelSize": float(pixel_size),
    }
    if image_pixel_size is not None:
        row["rlnImagePixelSize"] = float(image_pixel_size)
    if image_size is not None:
        row["rlnImageSize"] = int(image_size)
        row["rlnImageDimensionality"] = 2
    return pd.DataFrame([row])
