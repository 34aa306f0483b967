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

import functools
import math
import threading
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, parallel_map, to_host
from cryosnake.ops.fourier import fast_size

__all__ = [
    "GlobalAlignment",
    "align_frames",
    "bin_frames",
    "correlation_box",
    "edge_taper",
    "peak_in_window",
]


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


def edge_taper(shape: tuple[int, int], xp: Any, fraction: float = 0.1) -> Any:
    """Separable window: 1 inside, a raised cosine to 0 over ``fraction`` of each edge."""

    def ramp(n: int) -> Any:
        w = xp.ones(n, dtype=xp.float32)
        m = max(1, int(n * fraction))
        edge = 0.5 - 0.5 * xp.cos(xp.pi * (xp.arange(m, dtype=xp.float32) + 0.5) / m)
        w[:m] = edge
        w[n - m :] = edge[::-1]
        return w

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]


def bin_frames(frames: Any, factor: int) -> Any:
    """Block-average frames by an integer ``factor`` in real space.

    Used only to make the small copies on which motion is *measured* (the sums are
    made from the full frames): block averaging costs one pass over the data, where
    Fourier cropping would cost a full-size FFT per frame. Trailing rows and columns
    that do not fill a block are dropped, so binned pixel (i, j) covers original pixels
    [i*f, (i+1)*f) x [j*f, (j+1)*f).

    Parameters
    ----------
    frames : (n, ny, nx) NumPy or CuPy array (a memory map is read frame by frame)
    factor : block size, >= 1

    Returns
    -------
    (n, ny // factor, nx // factor) float32 on the device of ``frames``
    """
    xp = get_array_module(frames)
    n, ny, nx = frames.shape
    f = int(factor)
    if f < 1:
        raise ValueError(f"bin_frames: factor must be >= 1, got {factor}")
    h, w = ny // f, nx // f
    out = xp.empty((n, h, w), dtype=xp.float32)
    buffers = threading.local()

    def one_frame(i: int) -> None:
        if not hasattr(buffers, "rows"):
            buffers.rows = xp.empty((h, w * f), dtype=xp.float32)
        rows = buffers.rows
        frame = xp.asarray(frames[i], dtype=xp.float32)
        # Whole rows first (contiguous adds), then columns, without temporaries.
        xp.copyto(rows, frame[0 : h * f : f, : w * f])
        for dy in range(1, f):
            rows += frame[dy : h * f : f, : w * f]
        xp.copyto(out[i], rows[:, 0::f])
        for dx in range(1, f):
            out[i] += rows[:, dx::f]
        out[i] *= 1.0 / (f * f)

    for _ in parallel_map(one_frame, range(n), xp):
        pass
    return out


def correlation_box(
    spectra: Any, low: np.ndarray, width: np.ndarray, *, mirrored: bool = False
) -> Any:
    """``irfft2(spectra)`` on a small box of shifts, by matrix DFT.

    For correlation searches near a known answer: two real matrix products (the
    complex spectra seen as interleaved real and imaginary parts) cost a fraction of a
    full inverse FFT. Up to a constant factor,
    ``out[i, a, b] = irfft2(spectra[i])[sign (low[0] + a), sign (low[1] + b)]`` with
    sign = -1 if ``mirrored`` (for the conjugate of a cross-power spectrum), else +1.

    Parameters
    ----------
    spectra : (m, ny, nx//2+1) complex64, rfft2 layout of even-sized images
    low, width : (2,) integer (dy, dx) first shift and number of shifts per axis

    Returns
    -------
    (m, width[0], width[1]) float32 on the device of ``spectra``
    """
    xp = get_array_module(spectra)
    m, ny, nq = spectra.shape
    nx = 2 * (nq - 1)
    sign = -1.0 if mirrored else 1.0
    # Along x: Z = sum_k c_k Y_k exp(sign 2 pi i k dx / nx), c_k = 2 but 1 at 0 and
    # Nyquist (the half spectrum stands for the whole).
    dx = low[1] + np.arange(width[1])
    theta = 2 * math.pi * np.outer(np.arange(nq), dx) / nx  # (nq, wx)
    weight = np.full((nq, 1), 2.0)
    weight[0] = weight[-1] = 1.0
    cos, sin = weight * np.cos(theta), sign * weight * np.sin(theta)
    matrix = np.empty((2 * nq, 2 * width[1]), dtype=np.float32)
    matrix[0::2, : width[1]], matrix[1::2, : width[1]] = cos, -sin  # real part of Z
    matrix[0::2, width[1] :], matrix[1::2, width[1] :] = sin, cos  # imaginary part
    z = spectra.view(xp.float32).reshape(m * ny, 2 * nq) @ xp.asarray(matrix)
    z = z.reshape(m, ny, 2 * width[1])
    # Along y: Re sum_k Z_k exp(sign 2 pi i k dy / ny) = cos . Re Z - sign sin . Im Z.
    dy = low[0] + np.arange(width[0])
    theta = 2 * math.pi * np.outer(dy, np.fft.fftfreq(ny) * ny) / ny  # (wy, ny)
    cos_y = xp.asarray(np.cos(theta).astype(np.float32))
    sin_y = xp.asarray((sign * np.sin(theta)).astype(np.float32))
    return xp.matmul(cos_y, z[:, :, : width[1]]) - xp.matmul(sin_y, z[:, :, width[1] :])


def peak_in_window(window: np.ndarray) -> tuple[float, float, bool]:
    """Sub-pixel (dy, dx) of the maximum of a correlation window, from its centre.

    The integer maximum is refined by a three-point Gaussian fit along each axis. The
    flag is False when the maximum lies on the window's border (the search should be
    re-centred there).
    """
    w = np.asarray(window, dtype=np.float64)
    iy, ix = np.unravel_index(int(np.argmax(w)), w.shape)
    r = w.shape[0] // 2
    inside = 0 < iy < w.shape[0] - 1 and 0 < ix < w.shape[1] - 1
    dy = _refine(w[iy - 1, ix], w[iy, ix], w[iy + 1, ix]) if 0 < iy < w.shape[0] - 1 else 0.0
    dx = _refine(w[iy, ix - 1], w[iy, ix], w[iy, ix + 1]) if 0 < ix < w.shape[1] - 1 else 0.0
    return iy - r + dy, ix - r + dx, inside


def _refine(m: float, c: float, p: float) -> float:
    """Offset of the vertex of a Gaussian (or parabola) through three equally spaced values."""
    if m > 0 and c > 0 and p > 0:  # Gaussian fit on the logarithms
        m, c, p = math.log(m), math.log(c), math.log(p)
    den = m - 2 * c + p
    return 0.0 if den >= 0 else float(np.clip(0.5 * (m - p) / den, -0.5, 0.5))


def _cropped_spectra(frames: Any, crop: tuple[int, int]) -> Any:
    """rfft2 of every frame, keeping the central ``crop`` (ny, nx) frequencies."""
    xp = get_array_module(frames)
    fft = fft_module(xp)
    kw = fft_kwargs(xp, workers=1)  # frames in parallel, see parallel_map
    n, ny, nx = frames.shape
    cy, cx = crop
    out = xp.empty((n, cy, cx // 2 + 1), dtype=xp.complex64)
    window = edge_taper((ny, nx), xp)

    def one_frame(i: int) -> None:  # frame by frame: a movie's spectra may not fit
        frame = xp.asarray(frames[i], dtype=xp.float32)
        # Without the taper the frame edges, fixed on the detector, correlate at zero
        # shift in every frame and pull the alignment towards no motion.
        f = fft.rfft2((frame - frame.mean()) * window, **kw)
        out[i, : cy // 2] = f[: cy // 2, : cx // 2 + 1]
        out[i, cy // 2 :] = f[ny - cy // 2 :, : cx // 2 + 1]

    for _ in parallel_map(one_frame, range(n), xp):
        pass
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

    c = w[iy, ix]
    dy = _refine(w[iy - 1, ix], c, w[iy + 1, ix]) if 0 < iy < w.shape[0] - 1 else 0.0
    dx = _refine(w[iy, ix - 1], c, w[iy, ix + 1]) if 0 < ix < w.shape[1] - 1 else 0.0
    return iy - r + dy, ix - r + dx


def _frame_peak(
    i: int,
    *,
    spectra: Any,
    aligned: Any,
    total: Any,
    filt: Any,
    crop: tuple[int, int],
    start: np.ndarray | None,
    max_shift: float,
    fft_options: dict[str, Any],
) -> tuple[float, float]:
    """(dy, dx) of frame ``i`` against the sum of the other aligned frames.

    With ``start`` None the whole correlation map is searched (inverse FFT, peaks
    within ``max_shift``), else +-3 px around ``start[i]``, by matrix DFT.
    """
    xp = get_array_module(spectra)
    cross = spectra[i] * xp.conj(total - aligned[i]) * filt
    if start is None:
        cc = fft_module(xp).irfft2(cross, s=crop, **fft_options)
        return _peak_offset(cc, max_shift)
    box = correlation_box(cross[None], start[i] - 3, np.array([7, 7]))
    dy, dx, _ = peak_in_window(to_host(box)[0])
    return start[i, 0] + dy, start[i, 1] + dx


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
    align_pixel_size : Å per pixel at which to align; default max(pixel_size, 2 Å),
        enough for the signal that drives alignment. Reached by block averaging by
        int(align_pixel_size / pixel_size), then Fourier cropping the rest.
    max_shift_angst : largest shift of a frame from the others that is searched, Å
    max_iterations, tolerance : stop after this many passes, or when no shift changed
        by more than ``tolerance`` unbinned pixels in a pass

    Returns
    -------
    GlobalAlignment with ``shifts`` (n, 2) (x, y), ``frame_i(r) ~ frame_0(r - shift_i)``.
    """
    xp = get_array_module(frames)
    one = fft_kwargs(xp, workers=1)  # frames in parallel, see parallel_map
    target = max(pixel_size, 2.0) if align_pixel_size is None else align_pixel_size
    binning = max(1, int(target / pixel_size + 1e-6))
    if binning > 1:  # most of the way by block averaging, the rest by Fourier cropping
        frames = bin_frames(frames, binning)
    n, ny, nx = frames.shape
    factor = min(1.0, pixel_size * binning / target)
    crop = (
        fast_size(max(32, int(ny * factor)), up=False),
        fast_size(max(32, int(nx * factor)), up=False),
    )
    crop = (min(crop[0], ny // 2 * 2), min(crop[1], nx // 2 * 2))
    # unbinned px per aligned px
    scale_y, scale_x = binning * ny / crop[0], binning * nx / crop[1]
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
    for iteration in range(1, max_iterations + 1):
        aligned = xp.empty_like(spectra)
        for i, (dy, dx) in enumerate(shifts):
            xp.multiply(spectra[i], ramp(-dy, -dx), out=aligned[i])
        total = aligned.sum(axis=0)
        peak = functools.partial(
            _frame_peak,
            spectra=spectra,
            aligned=aligned,
            total=total,
            filt=filt,
            crop=crop,
            # The first pass searches whole correlation maps, later ones near the last
            # answer.
            start=None if iteration == 1 else np.rint(shifts).astype(int),
            max_shift=max_shift_px,
            fft_options=one,
        )
        new = np.array(list(parallel_map(peak, range(n), xp)))
        new -= new.mean(axis=0)
        change = np.abs((new - shifts) * (scale_y, scale_x)).max()
        shifts = new
        if change < tolerance:
            converged = True
            break
    out = (shifts - shifts[0]) * (scale_y, scale_x)
    return GlobalAlignment(out[:, ::-1].copy(), iteration, converged)
