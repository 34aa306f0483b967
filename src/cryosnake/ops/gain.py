"""Gain reference orientation."""

from __future__ import annotations

from typing import Any

from cryosnake.backend import get_array_module

__all__ = ["FLIPS", "orient_gain"]

FLIPS = ("none", "x", "y")


def orient_gain(gain: Any, rotate: int = 0, flip: str = "none") -> Any:
    """Rotate, then flip, a gain reference to match the movie frames.

    Parameters
    ----------
    gain : (ny, nx)
    rotate : number of 90° rotations, applied as ``xp.rot90(gain, rotate)``: from the
        row axis towards the column axis, i.e. counter-clockwise when the first row is
        displayed at the top
    flip : ``"x"`` mirrors the columns (left-right), ``"y"`` the rows (up-down)
    """
    xp = get_array_module(gain)
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
    out = xp.rot90(gain, int(rotate) % 4)
    if flip == "x":
        out = out[:, ::-1]
    elif flip == "y":
        out = out[::-1, :]
    return xp.ascontiguousarray(out)
