"""Helpers shared by the 2D classification modules: radial shells of the ``rfft2``
half plane, per-shell averages, the resolution where a class's SSNR drops below 1, and
copies of device arrays to the host."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryosnake.backend import get_array_module


def _shell_index(box: int) -> np.ndarray:
    """(b, b//2+1) int: radial shell of each rfft2 frequency (corners beyond Nyquist in
    the last shell, b // 2)."""
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    shell = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int64)
    return np.minimum(shell, box // 2)


def _resolution_shells(ssnr: np.ndarray) -> np.ndarray:
    """(K,) int: for each class, the last shell before its SSNR first drops below 1
    (0 when it is below 1 from shell 1 on)."""
    out = np.empty(len(ssnr), dtype=np.int64)
    for k, s in enumerate(ssnr):
        below = np.nonzero(s[1:] < 1.0)[0]
        out[k] = int(below[0]) if len(below) else len(s) - 1
    return out


def _resolution(ssnr: np.ndarray, box: int, pixel_size: float) -> np.ndarray:
    shells = _resolution_shells(ssnr)
    return box * pixel_size / np.maximum(shells, 1)


def _shell_average(values: Any, shells: Any, n_shells: int) -> Any:
    """Mean of ``values`` (..., m) per shell index ``shells`` (m,) -> (..., n_shells)."""
    xp = get_array_module(values)
    flat = values.reshape(-1, values.shape[-1])
    counts = xp.bincount(shells, minlength=n_shells).astype(xp.float64)
    out = xp.stack([xp.bincount(shells, weights=row, minlength=n_shells) for row in flat])
    out = out / xp.maximum(counts, 1.0)[None, :]
    return out.reshape((*values.shape[:-1], n_shells))


def _host(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    return np.asarray(a.get()) if hasattr(a, "get") else np.asarray(a)
