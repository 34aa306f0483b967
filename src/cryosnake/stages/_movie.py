"""Movie input shared by the per-movie stages: gain reference and header checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from cryosnake.errors import CryosnakeError
from cryosnake.io import Movie, read_mrc
from cryosnake.ops.gain import FLIPS, find_gain_orientation, orient_gain
from cryosnake.stages._common import SchemaDefault

__all__ = [
    "PIXEL_SIZE_TOLERANCE",
    "add_eer_arg",
    "add_gain_args",
    "check_header_pixel_size",
    "check_pixel_size",
    "load_gain",
    "oriented_gain",
    "read_gain",
]

PIXEL_SIZE_TOLERANCE = 0.01  # relative


def add_gain_args(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--gain``, ``--gain-rotate`` and ``--gain-flip`` (with ``auto`` if allowed)."""
    rotations = ["0", "1", "2", "3"] + (["auto"] if auto else [])
    flips = list(FLIPS) + (["auto"] if auto else [])
    parser.add_argument("--gain", help="gain reference (MRC); raw frames are multiplied by it")
    parser.add_argument(
        "--gain-rotate",
        default="0",
        choices=rotations,
        help="90° rotations of the gain (numpy.rot90), before --gain-flip"
        + ("; auto: find rotation and flip from the movie" if auto else ""),
    )
    parser.add_argument(
        "--gain-flip",
        default="none",
        choices=flips,
        help="mirror the gain: x = left-right, y = up-down"
        + ("; auto: as --gain-rotate auto" if auto else ""),
    )


def add_eer_arg(parser: argparse.ArgumentParser) -> None:
    """``--eer-group``: EER frames summed into one movie frame (fraction)."""
    parser.add_argument(
        "--eer-group",
        type=int,
        default=SchemaDefault("input.eer_group"),
        metavar="N",
        help="EER movies only: EER frames summed into one fraction (default %(default)s); "
        "--dose-per-frame is then the dose per fraction",
    )


def read_gain(path: str) -> np.ndarray:
    """A gain reference as stored: one 2D float32 image of finite, non-negative values."""
    gain, _ = read_mrc(path)
    if gain.ndim == 3 and gain.shape[0] == 1:
        gain = gain[0]
    if gain.ndim != 2:
        raise CryosnakeError(f"{path}: a gain reference must be one 2D image, got {gain.shape}")
    gain = np.asarray(gain, dtype=np.float32)
    if not np.all(np.isfinite(gain)) or (gain < 0).any():
        raise CryosnakeError(f"{path}: gain holds negative or non-finite values")
    return gain


def oriented_gain(
    gain: np.ndarray, path: str, rotate: int, flip: str, frame_shape: tuple[int, int]
) -> np.ndarray:
    """``gain`` rotated and flipped; an error naming ``path`` if it does not fit the frames."""
    out = orient_gain(gain, rotate, flip)
    if out.shape != tuple(frame_shape):
        raise CryosnakeError(
            f"{path}: gain is {out.shape[1]} x {out.shape[0]} px after rotation/flip, "
            f"frames are {frame_shape[1]} x {frame_shape[0]} px (check --gain-rotate)"
        )
    return out


def check_header_pixel_size(movie: Movie, path: str, pixel_size: float) -> None:
    """An error naming ``path`` if its header pixel size disagrees with ``pixel_size``."""
    check_pixel_size(movie.pixel_size, path, pixel_size)


def check_pixel_size(header: float, path: str, pixel_size: float) -> None:
    """An error naming ``path`` if ``header`` (> 0: known) differs from ``pixel_size``."""
    if header > 0 and abs(header - pixel_size) > PIXEL_SIZE_TOLERANCE * pixel_size:
        raise CryosnakeError(
            f"{path}: header pixel size {header:.4f} Å differs from the given "
            f"{pixel_size:.4f} Å (fix acquisition.pixel_size, or pass "
            "--ignore-header-pixel-size if the header is wrong)"
        )


def load_gain(
    path: str,
    rotate: str | int,
    flip: str,
    frame_shape: tuple[int, int],
    raw_sum: Callable[[], np.ndarray],
    stored: np.ndarray | None = None,
) -> tuple[np.ndarray, int, str]:
    """Read, orient and check a gain reference.

    With ``rotate`` or ``flip`` equal to ``"auto"`` the orientation is found from
    ``raw_sum()``, the sum of the raw frames (only called then). ``stored``: the gain
    as :func:`read_gain` returned it, when the caller has read it already.

    Returns
    -------
    (gain, rotate, flip) : the oriented gain and the orientation used
    """
    if stored is None:
        stored = read_gain(path)
    if "auto" in (str(rotate), flip):
        try:
            rotate, flip, _ = find_gain_orientation(raw_sum(), stored)
        except ValueError as err:
            raise CryosnakeError(f"{path}: {err}") from err
    gain = oriented_gain(stored, path, int(rotate), flip, frame_shape)
    return gain, int(rotate), flip
