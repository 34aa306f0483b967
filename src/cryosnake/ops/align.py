"""Whole-frame alignment of movie frames (MotionCor2's global step, Zheng et al. 2017).

Each frame is aligned to the sum of all the other, already aligned, frames by a
B-factor filtered cross-correlation with a sub-pixel peak, and the whole set is
iterated until no shift moves by more than ``tolerance`` pixels. Aligning to the sum
of the *others* keeps a frame's own noise out of its reference. The work is done on
Fourier-cropped spectra (``align_pixel_size``), where the signal that drives the
alignment lives; shifts are returned in unbinned pixels.

Convention (ARCHITECTURE.md): ``frame_i(r) ~ reference(r - shift_i)``, shifts as
(x, y) = (columns, rows), relative to the first frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module

__all__ = ["GlobalAlignment", "align_frames"]


class GlobalAlignment:
    """Result of :func:`align_frames`.

    Attributes
    ----------
    shifts : (n, 2) float64, (x, y) in unbinned pixels, ``shifts[0] == 0``
    iterations : number of passes over the frames
    converged : whether the last pass moved no frame by more than the tolerance
    """

    def __init__(self, shifts: np.ndarray, iterations: int, converged: bool) -> None:
        self.shifts = shifts
        self.iterations = iterations
        self.converged = converged


def _edge_taper(shape: tuple[int, int], xp: Any, fraction: float = 0.1) -> Any:
    """Separable window: 1 inside, a raised cosine to 0 over ``fraction`` of each edge."""

    def ramp(n: int) -> Any:
        w = xp.ones(n, dtype=xp.float32)
        m = max(1, int(n * fraction))
        edge = 0.5 - 0.5 * xp.cos(xp.pi * (xp.arange(m, dtype=xp.float32) + 0.5) / m)
        w[:m] = edge
        w[n - m :] = edge[::-1]
        return w

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]


def _cropped_spectra(frames: Any, crop: tuple[int, int]) -> Any:
    """rfft2 of every frame, keeping the central ``crop`` (ny, nx) frequencies."""
    xp = get_array_module(frames)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    n, ny, nx = frames.shape
    cy, cx = crop
    out = xp.empty((n, cy, cx // 2 + 1), dtype=xp.complex64)
    window = _edge_taper((ny, nx), xp)
    for i in range(n):  # frame by frame: a movie's full spectrum may not fit in memory
        frame = xp.asarray(frames[i], dtype=xp.float32)
        # Without the taper the frame edges, fixed on the detector, correlate at zero
        # shift in every frame and pull the alignment towards no motion.
        f = fft.rfft2((frame - frame.mean()) * window, **kw)
        out[i, : cy // 2] = f[: cy // 2, : cx // 2 + 1]
        out[i, cy // 2 :] = f[ny - cy // 2 :, : cx // 2 + 1]
    return out


def _peak_offset(cc: Any, max_shift: float) -> tuple[float, float]:
    """Sub-pixel (dy, dx) of the highest cross-correlation within ``max_shift`` pixels.

    ``cc`` is the real cross-correlation map with zero shift at [0, 0]. The peak is
    refined by a three-point Gaussian fit along each axis (exact for a Gaussian peak,
    which the B-factor filter makes the correlation peak close to).
    """
    xp = get_array_module(cc)
    ny, nx = cc.shape
    r = int(min(max_shift, ny // 2 - 2, nx // 2 - 2))
    y = np.arange(-r, r + 1)
    # Only the (2r+1)^2 neighbourhood of zero shift, gathered across the wrap-around.
    window = cc[xp.asarray(y % ny)[:, None], xp.asarray(y % nx)[None, :]]
    outside = (y[:, None] ** 2 + y[None, :] ** 2) > max_shift**2
    if outside.any():
        window = xp.where(xp.asarray(outside), -xp.inf, window)
    w = np.asarray(window.get() if hasattr(window, "get") else window, dtype=np.float64)
    iy, ix = np.unravel_index(int(np.argmax(w)), w.shape)

    def refine(m: float, c: float, p: float) -> float:
        if m > 0 and c > 0 and p > 0:  # Gaussian fit on the logarithms
            m, c, p = math.log(m), math.log(c), math.log(p)
        den = m - 2 * c + p
        return 0.0 if den >= 0 else float(np.clip(0.5 * (m - p) / den, -0.5, 0.5))

    c = w[iy, ix]
    dy = refine(w[iy - 1, ix], c, w[iy + 1, ix]) if 0 < iy < w.shape[0] - 1 else 0.0
    dx = refine(w[iy, ix - 1], c, w[iy, ix + 1]) if 0 < ix < w.shape[1] - 1 else 0.0
    return iy - r + dy, ix - r + dx


def align_frames(
    frames: Any,
    pixel_size: float,
    *,
    bfactor: float = 150.0,
    align_pixel_size: float | None = None,
    max_shift_angst: float = 200.0,
    max_iterations: int = 15,
    tolerance: float = 0.01,
) -> GlobalAlignment:
    """Align the frames of a movie to each other (whole-frame translations).

    Parameters
    ----------
    frames : (n, ny, nx) gain-corrected frames, NumPy or CuPy (a memory-mapped array
        is read frame by frame)
    pixel_size : Å per pixel of ``frames``
    bfactor : Å², low-pass exp(-B s^2 / 4) applied to the cross-correlation
    align_pixel_size : Å per pixel at which to align (Fourier cropping); default
        max(pixel_size, 2 Å), enough for the signal that drives alignment
    max_shift_angst : largest shift of a frame from the others that is searched, Å
    max_iterations, tolerance : stop after this many passes, or when no shift changed
        by more than ``tolerance`` unbinned pixels in a pass

    Returns
    -------
    GlobalAlignment with ``shifts`` (n, 2) (x, y), ``frame_i(r) ~ frame_0(r - shift_i)``.
    """
    xp = get_array_module(frames)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    n, ny, nx = frames.shape
    target = max(pixel_size, 2.0) if align_pixel_size is None else align_pixel_size
    factor = min(1.0, pixel_size / target)
    crop = (max(32, int(ny * factor) // 2 * 2), max(32, int(nx * factor) // 2 * 2))
    crop = (min(crop[0], ny // 2 * 2), min(crop[1], nx // 2 * 2))
    scale_y, scale_x = ny / crop[0], nx / crop[1]  # unbinned px per aligned px
    spectra = _cropped_spectra(frames, crop)

    # Frequencies (cycles per aligned pixel) and the B-factor filter.
    ky = xp.fft.fftfreq(crop[0]).astype(xp.float32)[:, None]
    kx = xp.fft.rfftfreq(crop[1]).astype(xp.float32)[None, :]
    s2 = (ky / (pixel_size * scale_y)) ** 2 + (kx / (pixel_size * scale_x)) ** 2
    filt = xp.exp(-bfactor * s2 / 4.0).astype(xp.float32)
    filt[0, 0] = 0.0  # the mean carries no shift information
    max_shift_px = max_shift_angst / (pixel_size * max(scale_y, scale_x))

    def ramp(dy: float, dx: float) -> Any:
        # Multiplying by this moves content by (+dy, +dx) aligned pixels; separable,
        # so two 1D exponentials and one outer product.
        ry = xp.exp(-2j * math.pi * ky[:, 0] * dy).astype(xp.complex64)
        rx = xp.exp(-2j * math.pi * kx[0, :] * dx).astype(xp.complex64)
        return ry[:, None] * rx[None, :]

    shifts = np.zeros((n, 2))  # (dy, dx) aligned pixels, frame_i(r) ~ ref(r - shift)
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007
        aligned = xp.empty_like(spectra)
        for i, (dy, dx) in enumerate(shifts):
            xp.multiply(spectra[i], ramp(-dy, -dx), out=aligned[i])
        total = aligned.sum(axis=0)
        new = np.empty_like(shifts)
        for i in range(n):
            ref = total - aligned[i]
            cross = spectra[i] * xp.conj(ref) * filt
            cc = fft.irfft2(cross, s=crop, **kw)
            new[i] = _peak_offset(cc, max_shift_px)
        new -= new.mean(axis=0)
        change = np.abs((new - shifts) * (scale_y, scale_x)).max()
        shifts = new
        if change < tolerance:
            converged = True
            break
    out = (shifts - shifts[0]) * (scale_y, scale_x)
    return GlobalAlignment(out[:, ::-1].copy(), iteration, converged)
