"""Beam-induced motion: detector defects, local (patch) motion model, corrected sums.

The motion of frame t at detector position r = (x, y) is the global shift of the frame
(:func:`cryosnake.ops.align.align_frames`) plus a smooth local deformation, modelled as
MotionCor2 does (Zheng et al. 2017): for each axis a polynomial in time without a
constant term (zero at the first frame) times a quadratic polynomial in x and y,
fitted by least squares to the shifts of patches of the globally aligned frames.

Convention: ``frame_t(r) ~ reference(r - shift_t(r))``, shifts (x, y) in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.align import align_frames
from cryosnake.ops.dose import critical_exposure, dose_weight_norm
from cryosnake.ops.fourier import phase_ramp

__all__ = [
    "LocalMotion",
    "corrected_sums",
    "find_defects",
    "fit_local_motion",
    "local_motion",
    "replace_defects",
]


def find_defects(total: Any, *, threshold: float = 8.0) -> Any:
    """Hot and dead pixels of a detector from the sum of a movie's frames.

    A pixel is a defect when it deviates from the median of its 5x5 neighbourhood by
    more than ``threshold`` robust standard deviations (1.4826 MAD) of all such
    deviations, or when it is zero while its neighbourhood is not.

    Parameters
    ----------
    total : (ny, nx) sum of the gain-corrected frames

    Returns
    -------
    (ny, nx) bool mask, on the device of ``total``
    """
    xp = get_array_module(total)
    if xp is np:
        from scipy import ndimage
    else:  # pragma: no cover - GPU
        from cupyx.scipy import ndimage
    t = xp.asarray(total, dtype=xp.float32)
    local = ndimage.median_filter(t, size=5, mode="reflect")
    resid = t - local
    mad = float(xp.median(xp.abs(resid - xp.median(resid))))
    sigma = 1.4826 * mad if mad > 0 else float(xp.std(resid)) or 1.0
    return (xp.abs(resid) > threshold * sigma) | ((t == 0) & (local > 0))


def replace_defects(frame: Any, mask: Any, fill: Any) -> Any:
    """``frame`` with the pixels of ``mask`` set to ``fill`` (an image or a scalar)."""
    xp = get_array_module(frame)
    return xp.where(mask, fill, frame).astype(xp.float32)


@dataclass(frozen=True)
class LocalMotion:
    """Smooth local deformation fitted to patch shifts.

    Attributes
    ----------
    coeffs : (2, n_time * n_space) least-squares coefficients for x and y
    shape : (ny, nx) of the frames
    n_frames : number of frames
    patch_centres : (p, 2) (x, y) pixel centres of the patches
    patch_shifts : (n_frames, p, 2) measured (x, y) residual shifts of the patches
    """

    coeffs: np.ndarray
    shape: tuple[int, int]
    n_frames: int
    patch_centres: np.ndarray
    patch_shifts: np.ndarray

    def shift_at(self, frame: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Local (x, y) shift of ``frame`` at pixel positions (x, y), in pixels."""
        basis = _basis(frame, x, y, self.shape, self.n_frames)
        return basis @ self.coeffs[0], basis @ self.coeffs[1]

    def mean_shift(self) -> np.ndarray:
        """(n_frames, 2) local (x, y) shift averaged over the whole frame.

        Adding it to the whole-frame (global) shifts makes them the frame-averaged
        motion, the convention of the reported global shifts; the local shifts are
        then deviations from it.
        """
        ny, nx = self.shape
        gy, gx = np.meshgrid(np.linspace(0, ny - 1, 33), np.linspace(0, nx - 1, 33), indexing="ij")
        out = np.empty((self.n_frames, 2))
        for t in range(self.n_frames):
            lx, ly = self.shift_at(np.full(gx.size, t), gx.ravel(), gy.ravel())
            out[t] = lx.mean(), ly.mean()
        return out


TIME_ORDER = 3  # t, t^2, t^3


def _basis(frame: Any, x: Any, y: Any, shape: tuple[int, int], n_frames: int) -> np.ndarray:
    """Design matrix: (t, t^2, t^3) x (1, x, y, x^2, xy, y^2), x, y, t scaled to [0, 1]."""
    ny, nx = shape
    t = np.asarray(frame, dtype=np.float64) / max(n_frames - 1, 1)
    u = np.asarray(x, dtype=np.float64) / max(nx - 1, 1) - 0.5
    v = np.asarray(y, dtype=np.float64) / max(ny - 1, 1) - 0.5
    t, u, v = np.broadcast_arrays(t, u, v)
    space = [np.ones_like(u), u, v, u * u, u * v, v * v]
    cols = [t**k * s for k in range(1, TIME_ORDER + 1) for s in space]
    return np.stack(cols, axis=-1)


def fit_local_motion(
    patch_centres: np.ndarray, patch_shifts: np.ndarray, shape: tuple[int, int]
) -> LocalMotion:
    """Least-squares fit of the smooth model to patch shifts.

    Parameters
    ----------
    patch_centres : (p, 2) (x, y) pixel centres
    patch_shifts : (n_frames, p, 2) (x, y) residual shifts, zero at frame 0
    shape : (ny, nx) of the frames
    """
    n_frames, p, _ = patch_shifts.shape
    t = np.repeat(np.arange(n_frames), p)
    x = np.tile(patch_centres[:, 0], n_frames)
    y = np.tile(patch_centres[:, 1], n_frames)
    a = _basis(t, x, y, shape, n_frames).reshape(n_frames, p, -1)
    b = patch_shifts.reshape(n_frames, p, 2)
    # Each patch's shifts are known up to a constant (they are measured relative to
    # its own first frame, whose noise would offset the whole track): fit with a free
    # offset per patch by removing the per-patch mean over time from data and basis.
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    # Later frames carry less signal (radiation damage) and scatter more: weight each
    # frame by the inverse variance of its residuals from an unweighted first fit.
    weights = np.ones(n_frames)
    for _ in range(2):
        w = np.sqrt(weights)[:, None, None]
        coeffs, *_ = np.linalg.lstsq(
            (a * w).reshape(n_frames * p, -1), (b * w).reshape(n_frames * p, 2), rcond=None
        )
        resid = b - a @ coeffs
        var = (resid**2).sum(axis=2).mean(axis=1)
        floor = max(float(np.median(var)), 1e-6) * 0.1
        weights = 1.0 / np.maximum(var, floor)
    return LocalMotion(coeffs.T.copy(), shape, n_frames, patch_centres, patch_shifts)


def _shift_frames(frames: Any, shifts: np.ndarray) -> Any:
    """Frames moved back by their (x, y) shifts with Fourier phase ramps."""
    xp = get_array_module(frames)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    shape = frames.shape[1:]
    out = xp.empty(frames.shape, dtype=xp.float32)
    for i in range(frames.shape[0]):
        f = fft.rfft2(xp.asarray(frames[i], dtype=xp.float32), **kw)
        f *= phase_ramp(shape, (-shifts[i, 1], -shifts[i, 0]), xp)
        out[i] = fft.irfft2(f, s=shape, **kw)
    return out


def local_motion(
    frames: Any,
    global_shifts: np.ndarray,
    pixel_size: float,
    *,
    patches: tuple[int, int] = (5, 5),
    bfactor: float = 150.0,
    overlap: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> LocalMotion:
    """Measure patch shifts of the globally aligned frames and fit the smooth model.

    Parameters
    ----------
    frames : (n, ny, nx) gain- and defect-corrected frames
    global_shifts : (n, 2) (x, y) from :func:`cryosnake.ops.align.align_frames`
    pixel_size : Å per pixel
    patches : (rows, columns) of the patch grid
    bfactor : Å², low-pass exp(-B s^2 / 4) of the patch cross-correlations
    overlap : patches are (1 + overlap) times the grid spacing, so neighbours overlap
    """
    _, ny, nx = frames.shape
    rows, cols = patches
    aligned = _shift_frames(frames, global_shifts)
    # Patches centred on a regular grid, larger than the grid spacing (overlapping)
    # for more signal per patch.
    ph = min(ny, int(ny / rows * (1 + overlap))) // 2 * 2
    pw = min(nx, int(nx / cols * (1 + overlap))) // 2 * 2
    centres, shifts = [], []
    for r in range(rows):
        for c in range(cols):
            cy = (r + 0.5) * ny / rows
            cx = (c + 0.5) * nx / cols
            y0 = int(round(min(max(cy - ph / 2, 0), ny - ph)))
            x0 = int(round(min(max(cx - pw / 2, 0), nx - pw)))
            tile = aligned[:, y0 : y0 + ph, x0 : x0 + pw]
            result = align_frames(
                tile, pixel_size, bfactor=bfactor, max_shift_angst=20.0 * pixel_size
            )
            centres.append((x0 + (pw - 1) / 2.0, y0 + (ph - 1) / 2.0))
            shifts.append(result.shifts)
            if progress is not None:
                progress(f"patch {r * cols + c + 1}/{rows * cols}")
    patch_shifts = np.stack(shifts, axis=1)  # (n, p, 2)
    return fit_local_motion(np.asarray(centres), patch_shifts, (ny, nx))


def corrected_sums(
    frames: Any,
    global_shifts: np.ndarray,
    pixel_size: float,
    exposures: np.ndarray,
    *,
    local: LocalMotion | None = None,
    tile: int = 512,
) -> tuple[Any, Any]:
    """Motion-corrected sums of a movie, without and with dose weighting.

    Each frame is moved back by its global shift (Fourier phase ramp) and, with
    ``local``, by the local deformation (phase ramps on overlapping windowed tiles of
    ``tile`` pixels, see :func:`_undo_local`);
    then it is added to the plain sum and, weighted by q_t(s) / sqrt(sum q^2) times
    sqrt(n) (so the low frequencies keep the plain sum's scale), to the dose-weighted
    sum.

    Parameters
    ----------
    frames : (n, ny, nx) gain- and defect-corrected frames
    global_shifts : (n, 2) (x, y) pixels
    pixel_size : Å per pixel
    exposures : (n,) accumulated exposure of each frame (middle of the frame), e/Å^2

    Returns
    -------
    (dose_weighted, unweighted) : two (ny, nx) float32 images
    """
    xp = get_array_module(frames)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    n, ny, nx = frames.shape
    ky = xp.fft.fftfreq(ny, d=pixel_size)[:, None]
    kx = xp.fft.rfftfreq(nx, d=pixel_size)[None, :]
    s = xp.sqrt(ky**2 + kx**2)
    norm = dose_weight_norm(s, exposures) / math.sqrt(n)
    half_inverse_ne = (0.5 / critical_exposure(s)).astype(xp.float32)
    plain = xp.zeros((ny, nx // 2 + 1), dtype=xp.complex64)
    weighted = xp.zeros_like(plain)
    for t in range(n):
        f = fft.rfft2(xp.asarray(frames[t], dtype=xp.float32), **kw)
        f *= phase_ramp((ny, nx), (-global_shifts[t, 1], -global_shifts[t, 0]), xp)
        if local is not None:
            frame = fft.irfft2(f, s=(ny, nx), **kw).astype(xp.float32)
            f = fft.rfft2(_undo_local(frame, local, t, tile), **kw)
        plain += f
        # damage_attenuation(s, exposure) = exp(-exposure / (2 N_e(s)))
        weight = (xp.exp(-float(exposures[t]) * half_inverse_ne) / norm).astype(xp.float32)
        weighted += f * weight
    return (
        fft.irfft2(weighted, s=(ny, nx), **kw).astype(xp.float32),
        fft.irfft2(plain, s=(ny, nx), **kw).astype(xp.float32),
    )


def _undo_local(frame: Any, local: LocalMotion, t: int, tile: int) -> Any:
    """Move each region of ``frame`` back by the local shift of frame ``t`` there.

    The frame is cut into tiles overlapping by half, each multiplied by a sin^2 window
    (the windows of neighbours sum to one), shifted by the local shift at its centre
    with a Fourier phase ramp and added back. Local shifts are small (a few pixels)
    and smooth, so the shift is constant over a tile to well below 0.01 px and the
    circular wrap of a tile falls where its window is ~0.
    """
    xp = get_array_module(frame)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    ny, nx = frame.shape
    size = int(min(tile, ny, nx)) // 2 * 2
    step = size // 2
    # Pad by half a tile (reflecting) so that every pixel is covered by full windows.
    padded = xp.pad(frame, ((step, step + size), (step, step + size)), mode="reflect")
    out = xp.zeros_like(padded)
    ramp1 = xp.sin(xp.pi * (xp.arange(size, dtype=xp.float32) + 0.5) / size) ** 2
    window = ramp1[:, None] * ramp1[None, :]
    # Pixel p of the padded frame lies in the tiles starting at p // step * step and
    # one step earlier, so starts up to (step + ny - 1) // step * step cover
    # [step, step + ny) with two windows everywhere.
    starts_y = range(0, ny + step, step)
    starts_x = range(0, nx + step, step)
    cy = np.array([y0 + size / 2 - step for y0 in starts_y])
    cx = np.array([x0 + size / 2 - step for x0 in starts_x])
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    lx, ly = local.shift_at(np.full(gy.shape, t), gx, gy)
    for i, y0 in enumerate(starts_y):
        for j, x0 in enumerate(starts_x):
            piece = padded[y0 : y0 + size, x0 : x0 + size] * window
            g = fft.rfft2(piece, **kw)
            g *= phase_ramp((size, size), (-ly[i, j], -lx[i, j]), xp)
            out[y0 : y0 + size, x0 : x0 + size] += fft.irfft2(g, s=(size, size), **kw)
    return out[step : step + ny, step : step + nx].astype(xp.float32)
