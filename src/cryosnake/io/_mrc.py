"""MRC/MRCS images, stacks, volumes and movies through :mod:`mrcfile`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import mrcfile
import numpy as np

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path, require_file

__all__ = ["read_mrc", "read_mrc_header", "write_mrc"]

PathLike = str | os.PathLike[str]
# Modes we read: int8, int16, float32, uint16, float16. Complex (3, 4) and packed
# 4-bit (101) data are not images we can process.
_READABLE_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_WRITABLE_DTYPES = (np.int8, np.int16, np.uint16, np.float32, np.float16)


def _open(path: Path, mmap: bool) -> mrcfile.mrcfile.MrcFile:
    require_file(path)
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            return opener(path, mode="r", permissive=False)
    except (ValueError, RuntimeWarning, OSError, EOFError) as err:
        raise FileFormatError(f"{path}: not a valid MRC file ({_short(err)})") from err


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 160 else text[:157] + "..."


def _check_mode(path: Path, mrc: mrcfile.mrcfile.MrcFile) -> None:
    mode = int(mrc.header.mode)
    if mode not in _READABLE_MODES:
        kind = {3: "complex int16", 4: "complex float32", 101: "packed 4-bit"}.get(mode, "unknown")
        raise FileFormatError(
            f"{path}: unsupported MRC mode {mode} ({kind}); expected one of "
            + ", ".join(f"{m} ({n})" for m, n in _READABLE_MODES.items())
        )


def _voxel_size(mrc: mrcfile.mrcfile.MrcFile) -> float:
    vs = mrc.voxel_size
    return float(vs.x)


def read_mrc_header(path: PathLike) -> dict[str, object]:
    """Shape ``(nz, ny, nx)``, dtype, mode and voxel size (Å) without reading the data."""
    p = Path(path)
    with _open(p, mmap=True) as mrc:
        _check_mode(p, mrc)
        return {
            "shape": tuple(int(s) for s in mrc.data.shape),
            "dtype": str(mrc.data.dtype),
            "mode": int(mrc.header.mode),
            "voxel_size": _voxel_size(mrc),
            "is_stack": bool(mrc.is_image_stack()),
        }


def read_mrc(path: PathLike, *, mmap: bool = False) -> tuple[np.ndarray, float]:
    """Read an MRC/MRCS file.

    Parameters
    ----------
    path
        File to read.
    mmap
        Return a read-only memory map instead of loading the data (for large movies).

    Returns
    -------
    data : (ny, nx) or (nz, ny, nx) array in the file's dtype
    voxel_size : float, Å (0.0 when the header does not say)

    Raises
    ------
    FileFormatError
        Missing, truncated or corrupt file, or an unsupported mode.
    """
    p = Path(path)
    mrc = _open(p, mmap=mmap)
    try:
        _check_mode(p, mrc)
        voxel = _voxel_size(mrc)
        data = mrc.data if mmap else np.array(mrc.data)
    except BaseException:
        mrc.close()  # also the memory map: do not keep the file open on an error
        raise
    finally:
        if not mmap:
            mrc.close()
    if data is None:
        raise FileFormatError(f"{p}: MRC file holds no data")
    return data, voxel


def write_mrc(
    path: PathLike,
    data: np.ndarray,
    voxel_size: float,
    *,
    kind: Literal["auto", "image", "stack", "volume"] = "auto",
) -> Path:
    """Write an array atomically as MRC with the voxel size in the header.

    Parameters
    ----------
    path
        Output path; ``.mrcs`` marks an image stack.
    data : (ny, nx) or (nz, ny, nx)
        int8, int16, uint16, float16 or float32 (float64 is stored as float32).
    voxel_size
        Å per pixel (> 0).
    kind
        ``stack`` (particle stacks, movies) or ``volume`` for 3D data; ``auto`` means
        stack for ``.mrcs`` and volume otherwise.
    """
    p = Path(path)
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype not in _WRITABLE_DTYPES:
        raise FileFormatError(f"{p}: cannot write dtype {arr.dtype} to MRC")
    if arr.ndim not in (2, 3):
        raise FileFormatError(f"{p}: MRC data must be 2D or 3D, got shape {arr.shape}")
    if not voxel_size > 0:
        raise FileFormatError(f"{p}: voxel size must be positive, got {voxel_size}")
    arr = np.ascontiguousarray(arr)
    with atomic_path(p) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        if arr.ndim == 3:
            as_stack = kind == "stack" or (kind == "auto" and p.suffix.lower() == ".mrcs")
            if as_stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
        mrc.voxel_size = float(voxel_size)
        mrc.update_header_stats()
    return p
