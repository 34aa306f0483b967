"""Beam-induced motion: measurement coarse to fine, local (patch) motion model, corrected sums.

The motion of frame t at detector position r = (x, y) is the global shift of the frame
(:func:`cryosnake.ops.align.align_frames`) plus a smooth local deformation, modelled as
MotionCor2 does (Zheng et al. 2017): for each axis a polynomial in time without a
constant term (zero at the first frame) times a quadratic polynomial in x and y,
fitted by least squares to the shifts of patches of the globally aligned frames.

Convention: ``frame_t(r) ~ reference(r - shift_t(r))``, shifts (x, y) in pixels.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, parallel_map, to_host
from cryosnake.ops.align import (
    align_frames,
    bin_frames,
    correlation_box,
    edge_taper,
    peak_in_window,
)
from cryosnake.ops.dose import critical_exposure, dose_weight_norm
from cryosnake.ops.fourier import fast_size, phase_ramps_1d

__all__ = [
    "LocalMotion",
    "corrected_sums",
    "fit_local_motion",
    "local_motion",
    "measure_motion",
]


@dataclass(frozen=True)
class LocalMotion:
    """Smooth local deformation fitted to patch shifts.

    Attributes
    ----------
    coeffs : (2, n_time * n_space) least-squares coefficients for x and y
    shape : (ny, nx) of the frames
    n_frames : number of frames
    patch_centres : (p, 2) (x, y) pixel centres of the patches
    patch_shifts : (m, p, 2) measured (x, y) residual shifts of the patches
    patch_times : (m,) frame index (fractional for a group of frames) of each row of
        ``patch_shifts``
    common_shifts : (m, 2) (x, y) shift shared by all patches at each of those times
        (their mean), already removed from ``patch_shifts``: a correction of the
        whole-frame alignment measured on the patches (zeros if not measured)
    """

    coeffs: np.ndarray
    shape: tuple[int, int]
    n_frames: int
    patch_centres: np.ndarray
    patch_shifts: np.ndarray
    patch_times: np.ndarray
    common_shifts: np.ndarray

    def global_correction(self) -> np.ndarray:
        """(n_frames, 2) ``common_shifts`` interpolated to every frame, first frame at 0."""
        frames = np.arange(self.n_frames, dtype=np.float64)
        out = np.stack(
            [np.interp(frames, self.patch_times, self.common_shifts[:, k]) for k in range(2)],
            axis=1,
        )
        return out - out[0]

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

    def rescaled(self, factor: int, shape: tuple[int, int]) -> LocalMotion:
        """The model measured on frames binned by ``factor``, in unbinned pixels.

        Binned pixel i covers unbinned pixels [i f, (i + 1) f), so its centre is at
        i f + (f - 1) / 2; shifts scale by f. The model is refitted on the rescaled patch
        measurements, which is exact for this polynomial family.
        """
        centres = self.patch_centres * factor + (factor - 1) / 2.0
        model = fit_local_motion(
            centres,
            self.patch_shifts * factor,
            shape,
            times=self.patch_times,
            n_frames=self.n_frames,
        )
        return dataclasses.replace(model, common_shifts=self.common_shifts * factor)


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
    patch_centres: np.ndarray,
    patch_shifts: np.ndarray,
    shape: tuple[int, int],
    *,
    times: np.ndarray | None = None,
    n_frames: int | None = None,
) -> LocalMotion:
    """Least-squares fit of the smooth model to patch shifts.

    Parameters
    ----------
    patch_centres : (p, 2) (x, y) pixel centres
    patch_shifts : (m, p, 2) (x, y) residual shifts, each patch's known up to a constant
    shape : (ny, nx) of the frames
    times : (m,) frame index of each row of ``patch_shifts`` (fractional for the mean
        time of a group of frames); default 0, 1, ..., m - 1
    n_frames : frames of the movie; default m
    """
    m, p, _ = patch_shifts.shape
    times = np.arange(m, dtype=np.float64) if times is None else np.asarray(times, float)
    n_frames = m if n_frames is None else int(n_frames)
    t = np.repeat(times, p)
    x = np.tile(patch_centres[:, 0], m)
    y = np.tile(patch_centres[:, 1], m)
    a = _basis(t, x, y, shape, n_frames).reshape(m, p, -1)
    b = patch_shifts.reshape(m, p, 2)
    # Each patch's shifts are known up to a constant (they are measured relative to
    # its own first frame, whose noise would offset the whole track): fit with a free
    # offset per patch by removing the per-patch mean over time from data and basis.
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    # Later frames carry less signal (radiation damage) and scatter more: weight each
    # frame by the inverse variance of its residuals from an unweighted first fit.
    weights = np.ones(m)
    for _ in range(2):
        w = np.sqrt(weights)[:, None, None]
        coeffs, *_ = np.linalg.lstsq(
            (a * w).reshape(m * p, -1), (b * w).reshape(m * p, 2), rcond=None
        )
        resid = b - a @ coeffs
        var = (resid**2).sum(axis=2).mean(axis=1)
        floor = max(float(np.median(var)), 1e-6) * 0.1
        weights = 1.0 / np.maximum(var, floor)
    return LocalMotion(
        coeffs.T.copy(), shape, n_frames, patch_centres, patch_shifts, times, np.zeros((m, 2))
    )


def _cut(frame: Any, y0: int, x0: int, out: Any, fill: float, window: Any = None) -> None:
    """``out[:] = frame[y0 : y0 + h, x0 : x0 + w]``, ``fill`` where that lies outside the
    frame; times ``window`` (an (h, w) array) if given, in the same pass."""
    xp = get_array_module(out)
    h, w = out.shape
    ny, nx = frame.shape
    ya, yb = max(y0, 0), min(y0 + h, ny)
    xa, xb = max(x0, 0), min(x0 + w, nx)
    inside = ya < yb and xa < xb
    if not inside or ya > y0 or yb < y0 + h or xa > x0 or xb < x0 + w:
        if window is None:
            out[...] = fill
        else:
            xp.multiply(window, fill, out=out)
    if not inside:
        return
    source = frame[ya:yb, xa:xb]
    target = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
    if window is None:
        target[...] = source
    else:
        xp.multiply(source, window[ya - y0 : yb - y0, xa - x0 : xb - x0], out=target)


def local_motion(
    frames: Any,
    global_shifts: np.ndarray,
    pixel_size: float,
    *,
    patches: tuple[int, int] = (5, 5),
    bfactor: float = 150.0,
    overlap: float = 0.5,
    group: int = 1,
    radius: int = 3,
    max_iterations: int = 10,
    tolerance: float = 0.01,
    progress: Callable[[str], None] | None = None,
) -> LocalMotion:
    """Measure patch shifts of the globally aligned frames and fit the smooth model.

    Each patch of each frame is cut where the global shift has carried it (to the
    nearest pixel; the fraction is applied as a phase ramp), frames are summed in
    groups of ``group`` consecutive frames for signal, and every group is aligned to the
    sum of the others, B-factor filtered, with a sub-pixel peak. The search starts at
    zero (the global model) and looks at most ``radius`` pixels from the current estimate
    per pass.

    Parameters
    ----------
    frames : (n, ny, nx) gain- and defect-corrected frames (binned ones will do: the
        model is then in binned pixels, see :meth:`LocalMotion.rescaled`)
    global_shifts : (n, 2) (x, y) from :func:`cryosnake.ops.align.align_frames`, pixels
        of ``frames``
    pixel_size : Å per pixel of ``frames``
    patches : (rows, columns) of the patch grid
    bfactor : Å², low-pass exp(-B s^2 / 4) of the patch cross-correlations
    overlap : patches are (1 + overlap) times the grid spacing, so neighbours overlap
    group : consecutive frames summed before alignment (more signal per measurement)
    radius, max_iterations, tolerance : search window (pixels) per pass, passes, and
        the largest change (pixels) of any shift at which the passes stop
    """
    xp = get_array_module(frames)
    fft = fft_module(xp)
    n, ny, nx = frames.shape
    rows, cols = patches
    group = max(1, min(int(group), n // 2 if n >= 4 else 1))
    ph = fast_size(min(ny, int(ny / rows * (1 + overlap))), up=False)
    pw = fast_size(min(nx, int(nx / cols * (1 + overlap))), up=False)
    members = [list(range(a, min(a + group, n))) for a in range(0, n, group)]
    times = np.array([np.mean(g) for g in members])
    m = len(members)
    whole = np.rint(global_shifts).astype(int)  # (x, y)
    frac = np.asarray(global_shifts, dtype=np.float64) - whole
    # A group's frames are cut at whole-pixel positions; the group as a whole is then
    # moved back by the mean of their fractions (the spread, under a pixel, blurs a
    # little below the resolution that drives the alignment).
    offsets = np.array([frac[g].mean(axis=0) for g in members])  # (m, 2) (x, y)
    ry, rx = phase_ramps_1d((ph, pw), -offsets[:, ::-1], xp)
    means = [float(frames[t].mean()) for t in range(n)]
    window = edge_taper((ph, pw), xp)
    ky = xp.fft.fftfreq(ph, d=pixel_size).astype(xp.float32)[:, None]
    kx = xp.fft.rfftfreq(pw, d=pixel_size).astype(xp.float32)[None, :]
    filt = xp.exp(-bfactor * (ky**2 + kx**2) / 4.0).astype(xp.float32)
    filt[0, 0] = 0.0
    inner = fft_kwargs(xp, workers=1)  # patches run in parallel, see parallel_map
    buffers = threading.local()

    def one_patch(index: tuple[int, int]) -> tuple[tuple[float, float], np.ndarray]:
        r, c = index
        if not hasattr(buffers, "stack"):
            buffers.stack = xp.empty((m, ph, pw), dtype=xp.float32)
            buffers.cut = xp.empty((ph, pw), dtype=xp.float32)
        stack, cut = buffers.stack, buffers.cut
        cy = (r + 0.5) * ny / rows
        cx = (c + 0.5) * nx / cols
        y0 = int(round(min(max(cy - ph / 2, 0), ny - ph)))
        x0 = int(round(min(max(cx - pw / 2, 0), nx - pw)))
        for j, g in enumerate(members):
            stack[j] = 0.0
            for t in g:
                _cut(frames[t], y0 + whole[t, 1], x0 + whole[t, 0], cut, means[t])
                stack[j] += cut
        stack -= stack.mean(axis=(1, 2), keepdims=True)
        stack *= window
        spectra = fft.rfft2(stack, axes=(-2, -1), **inner)
        spectra *= ry[:, :, None]
        spectra *= rx[:, None, :]
        found = _align_stack(spectra, filt, radius, max_iterations, tolerance, ph / 4, inner)
        return (x0 + (pw - 1) / 2.0, y0 + (ph - 1) / 2.0), found[:, ::-1]  # (x, y)

    grid = [(r, c) for r in range(rows) for c in range(cols)]
    centres, shifts = [], []
    for centre, found in parallel_map(one_patch, grid, xp):
        centres.append(centre)
        shifts.append(found)
        if progress is not None:
            progress(f"patch {len(centres)}/{rows * cols}")
    patch_shifts = np.stack(shifts, axis=1)  # (m, p, 2)
    # What all patches share is whole-frame motion the global alignment missed (it was
    # measured at lower resolution); the smooth model is fitted to the rest.
    common = patch_shifts.mean(axis=1)
    model = fit_local_motion(
        np.asarray(centres), patch_shifts - common[:, None, :], (ny, nx), times=times, n_frames=n
    )
    return dataclasses.replace(model, common_shifts=common)


def _align_stack(
    spectra: Any,
    filt: Any,
    radius: int,
    max_iterations: int,
    tolerance: float,
    limit: float,
    fft_options: dict[str, Any],
) -> np.ndarray:
    """(m, 2) (dy, dx) shifts, mean zero, of each spectrum against the sum of the others.

    ``spectra`` is only read. Shifts are clipped to ``limit`` pixels: a patch without
    signal must not wander off.
    """
    xp = get_array_module(spectra)
    m, ny, _ = spectra.shape
    nx = 2 * (spectra.shape[2] - 1)
    fft = fft_module(xp)
    # conj(S filt) (T - A) is the conjugate of the cross-power spectrum S filt conj(T - A):
    # its inverse transform is the cross-correlation mirrored, read at minus the shift.
    weighted = xp.conj(spectra * filt)
    est = np.zeros((m, 2))
    offsets = np.arange(-radius, radius + 1)
    index = xp.arange(m)
    for _ in range(max_iterations):
        ry, rx = phase_ramps_1d((ny, nx), -est, xp)
        others = spectra * ry[:, :, None]  # the aligned spectra A ...
        others *= rx[:, None, :]
        xp.subtract(others.sum(axis=0)[None], others, out=others)  # ... then T - A
        others *= weighted
        start = np.rint(est).astype(int)
        low = start.min(axis=0) - radius
        width = start.max(axis=0) + radius + 1 - low
        if width.max() <= 4 * radius + 1:  # all windows inside one small box: matrix DFT
            box = to_host(correlation_box(others, low, width, mirrored=True))
            rows = start[:, :1] - low[0] + offsets[None, :]
            cols = start[:, 1:] - low[1] + offsets[None, :]
            windows = box[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]]
        else:
            cc = fft.irfft2(others, s=(ny, nx), axes=(-2, -1), **fft_options)
            rows = xp.asarray((-(start[:, :1] + offsets[None, :])) % ny)
            cols = xp.asarray((-(start[:, 1:] + offsets[None, :])) % nx)
            windows = to_host(cc[index[:, None, None], rows[:, :, None], cols[:, None, :]])
        new = np.empty_like(est)
        for i in range(m):
            dy, dx, _ = peak_in_window(windows[i])
            new[i] = start[i] + (dy, dx)
        new = np.clip(new - new.mean(axis=0), -limit, limit)
        change = float(np.abs(new - est).max())
        est = new
        if change < tolerance:
            break
    return est


ALIGN_PIXEL_SIZE = 2.0  # Å: patches, and the refinement of whole-frame shifts
COARSE_PIXEL_SIZE = 4.0  # Å: the first whole-frame alignment
MIN_PATCH_ANGSTROM = 600.0  # smallest patch side before neighbouring patches overlap


def measure_motion(
    frames: Any,
    pixel_size: float,
    *,
    patches: tuple[int, int] = (5, 5),
    bfactor: float = 150.0,
    bfactor_global: float = 500.0,
) -> tuple[np.ndarray, LocalMotion | None, int]:
    """Whole-frame shifts and the local deformation of a movie, coarse to fine.

    The frames are block-averaged to about 2 Å per pixel once. Whole frames are aligned
    at 4 Å (B-factor ``bfactor_global``, MotionCor2's 500 Å²): cheap, with a wide search.
    Then patches at 2 Å (``bfactor``; at least 600 Å wide, overlapping where the grid
    is finer), each frame on its own, are aligned around those shifts; their common
    part refines the whole-frame shifts (at the resolution of the patches) and the rest
    is fitted with the smooth deformation model. With ``patches == (1, 1)`` one patch
    covers the frame: the refinement alone.

    Returns
    -------
    whole : (n, 2) (x, y) whole-frame shifts, unbinned pixels, first frame at 0
    local : the deformation model in unbinned pixels, None for ``(1, 1)``
    iterations : passes of the coarse alignment
    """
    _, ny, nx = frames.shape
    factor = max(1, int(ALIGN_PIXEL_SIZE / pixel_size + 1e-6))
    level = bin_frames(frames, factor) if factor > 1 else frames
    level_px = pixel_size * factor
    coarse = align_frames(
        level, level_px, bfactor=bfactor_global, align_pixel_size=COARSE_PIXEL_SIZE
    )
    # Patches as wide as the grid spacing, but at least MIN_PATCH_ANGSTROM (signal grows
    # with the area): neighbours then overlap, by up to half a spacing.
    spacing = min(ny / patches[0], nx / patches[1]) * pixel_size
    overlap = min(0.5, max(0.0, MIN_PATCH_ANGSTROM / spacing - 1.0))
    measured = local_motion(
        level, coarse.shifts, level_px, patches=patches, bfactor=bfactor, overlap=overlap,
        tolerance=0.05, max_iterations=3,
    )  # fmt: skip
    whole = (coarse.shifts + measured.global_correction()) * factor
    if patches == (1, 1):
        return whole, None, coarse.iterations
    local = measured.rescaled(factor, (ny, nx)) if factor > 1 else measured
    return whole, local, coarse.iterations


def corrected_sums(
    frames: Any,
    global_shifts: np.ndarray,
    pixel_size: float,
    exposures: np.ndarray,
    *,
    local: LocalMotion | None = None,
    tile: int = 512,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """Motion-corrected sums of a movie, without and with dose weighting.

    The output is assembled from square tiles of ``tile`` pixels. For each tile, every
    frame is cut where its motion (the global shift plus, with ``local``, the local
    shift at the tile centre) has carried the tile's content, to the nearest pixel;
    multiplied by a window that, after the remaining sub-pixel shift, is the tile's
    share of a partition of unity (raised-cosine edges, zero in a margin that keeps the
    circular shift from wrapping); Fourier transformed and moved by that sub-pixel
    shift with a phase ramp. The spectra are summed plain and with the Grant &
    Grigorieff weights q_t(s) / sqrt(sum q^2) times sqrt(n) (so the low frequencies keep
    the plain sum's scale), and the two inverse transforms of each tile are added into
    the output. The weights are applied through a low-rank factorisation
    W[t, s] ~ sum_j U[t, j] B[j, s] (max error 1e-5 of the largest weight), which turns
    the weighted sum over frames into one matrix product per tile.

    Parameters
    ----------
    frames : (n, ny, nx) gain- and defect-corrected frames
    global_shifts : (n, 2) (x, y) pixels, ``frame_t(r) ~ ref(r - shift_t)``
    pixel_size : Å per pixel
    exposures : (n,) accumulated exposure of each frame (middle of the frame), e/Å^2
    local : the local deformation, added to the global shifts
    tile : tile size in pixels: the local shift is taken constant over a tile

    Returns
    -------
    (dose_weighted, unweighted) : two (ny, nx) float32 images
    """
    xp = get_array_module(frames)
    fft = fft_module(xp)
    n, ny, nx = frames.shape
    size = int(min(tile, max(ny, nx)))
    starts_y = list(range(0, ny, size))
    starts_x = list(range(0, nx, size))
    # Total shift of every frame at every tile centre; whole pixels by where the tile
    # is cut, the same for all tiles of a frame, so that the sub-pixel remainders, and
    # with them the windows, vary smoothly from tile to tile.
    centre_y = np.array([(a + min(a + size, ny)) / 2.0 for a in starts_y])
    centre_x = np.array([(a + min(a + size, nx)) / 2.0 for a in starts_x])
    whole = np.rint(global_shifts).astype(int)  # (n, 2) (x, y)
    rest = np.empty((n, len(starts_y), len(starts_x), 2))  # (x, y)
    gy, gx = np.meshgrid(centre_y, centre_x, indexing="ij")
    for t in range(n):
        rest[t] = global_shifts[t] - whole[t]
        if local is not None:
            lx, ly = local.shift_at(np.full(gy.shape, t), gx, gy)
            rest[t, :, :, 0] += lx
            rest[t, :, :, 1] += ly
    zero = int(math.ceil(np.abs(rest).max())) + 2  # margin the windows leave at zero
    box = fast_size(size + 2 * (zero + 8))
    edge = (box - size) // 2 - zero  # half-width of the raised-cosine edges
    margin = edge + zero  # box pixel 0 is output pixel (tile start - margin)
    weights = _dose_factors((box, box), pixel_size, exposures, xp)
    # Beyond the frame, tiles see the frame's mean level (every 8th row is plenty).
    means = np.array([float(frames[t, ::8].mean()) for t in range(n)])
    canvas = xp.zeros((2, len(starts_y) * size + 2 * margin, len(starts_x) * size + 2 * margin))
    canvas = canvas.astype(xp.float32)
    coords = np.arange(box, dtype=np.float64) - margin
    # Frames go through the FFT in chunks of at most ~24 MB (the buffers are reused
    # from the heap), each frame's window and phase ramp built at a time (they stay in
    # the cache while the frame's tile is multiplied by them).
    chunk = max(1, min(n, (24 << 20) // (4 * box * box)))
    chunk = -(-n // -(-n // chunk))  # as even as possible: 40 frames as 14 + 13 + 13
    inner = fft_kwargs(xp, workers=1)  # tiles run in parallel, see parallel_map
    buffers = threading.local()

    def one_tile(index: tuple[int, int]) -> Any:
        iy, ix = index
        ya, xa = starts_y[iy], starts_x[ix]
        if not hasattr(buffers, "stack"):
            buffers.stack = xp.empty((chunk, box, box), dtype=xp.float32)
            buffers.window = xp.empty((box, box), dtype=xp.float32)
            buffers.ramp = xp.empty((box, box // 2 + 1), dtype=xp.complex64)
        stack, window, ramp = buffers.stack, buffers.window, buffers.ramp
        vy = xp.asarray(_window(coords[None, :] - rest[:, iy, ix, 1:2], size, edge))
        vx = xp.asarray(_window(coords[None, :] - rest[:, iy, ix, 0:1], size, edge))
        ry, rx = phase_ramps_1d((box, box), -rest[:, iy, ix, ::-1], xp)
        parts = None
        for c0 in range(0, n, chunk):
            k = min(chunk, n - c0)
            for i, t in enumerate(range(c0, c0 + k)):
                xp.multiply(vy[t][:, None], vx[t][None, :], out=window)
                _cut(frames[t], ya - margin + whole[t, 1], xa - margin + whole[t, 0],
                     stack[i], means[t], window)  # fmt: skip
            spectra = fft.rfft2(stack[:k], axes=(-2, -1), **inner)
            for i, t in enumerate(range(c0, c0 + k)):
                xp.multiply(ry[t][:, None], rx[t][None, :], out=ramp)
                spectra[i] *= ramp
            part = weights.project(spectra, c0)
            if parts is None:
                parts = part
            else:
                parts += part
        return fft.irfft2(weights.sums(parts), s=(box, box), axes=(-2, -1), **inner)

    tiles = [(iy, ix) for iy in range(len(starts_y)) for ix in range(len(starts_x))]
    for (iy, ix), images in zip(tiles, parallel_map(one_tile, tiles, xp), strict=True):
        canvas[:, iy * size : iy * size + box, ix * size : ix * size + box] += images
        if progress is not None and ix == len(starts_x) - 1:
            progress(f"tile row {iy + 1}/{len(starts_y)}")
    out = canvas[:, margin : margin + ny, margin : margin + nx]
    # The windows sum to one except within ``edge`` of the frame's first rows and
    # columns (and last, where the frame ends at a tile boundary): divide by their sum.
    wy = sum(_window(np.arange(ny) - float(a), size, edge) for a in starts_y)
    wx = sum(_window(np.arange(nx) - float(a), size, edge) for a in starts_x)
    out /= xp.asarray(np.outer(wy, wx).astype(np.float32))
    return out[0].copy(), out[1].copy()


def _window(x: np.ndarray, size: int, edge: int) -> np.ndarray:
    """Window of a tile covering [0, size): 1 there, sin^2 rise over [-edge, edge], cos^2
    fall over [size - edge, size + edge], so the windows of tiles ``size`` apart sum to
    one. ``x`` in pixels relative to the tile's start; float32 of the shape of ``x``."""

    def rise(u: np.ndarray) -> np.ndarray:
        return np.sin(0.5 * np.pi * np.clip((u + edge) / (2.0 * edge), 0.0, 1.0)) ** 2

    return (rise(x) * (1.0 - rise(x - size))).astype(np.float32)


class _DoseFactors:
    """Low-rank factors of the dose weights on one rfft2 grid (see corrected_sums)."""

    def __init__(self, coefficients: Any, basis: Any) -> None:
        self.coefficients = coefficients  # (1 + r, n) float32: plain sum, then U^T
        self.basis = basis  # (r, ny, nx//2+1) float32

    def project(self, spectra: Any, start: int = 0) -> Any:
        """(1 + r, ny, nx//2+1) complex: the coefficient sums over frames
        ``start .. start + k`` of (k, ny, nx//2+1) spectra, one matrix product."""
        xp = get_array_module(spectra)
        k, ny, nq = spectra.shape
        real = spectra.view(xp.float32).reshape(k, -1)
        parts = self.coefficients[:, start : start + k] @ real
        return parts.reshape(-1, ny, 2 * nq).view(xp.complex64)

    def sums(self, parts: Any) -> Any:
        """(2, ny, nx//2+1): the dose-weighted and the plain sum from :meth:`project`."""
        xp = get_array_module(parts)
        out = xp.empty((2, *parts.shape[1:]), dtype=xp.complex64)
        out[1] = parts[0]
        out[0] = (parts[1:] * self.basis).sum(axis=0)
        return out


def _dose_factors(
    shape: tuple[int, int], pixel_size: float, exposures: np.ndarray, xp: Any
) -> _DoseFactors:
    """Factor the dose weights W[t, s], scaled by sqrt(n), to rank r at 1e-5 accuracy.

    W depends on the frequency only through |s|: the factorisation is made on a fine
    radial grid (eigenvectors of W W^T) and its frequency factors are interpolated onto
    the rfft2 grid of ``shape``.
    """
    n = len(exposures)
    s_max = math.sqrt(0.5) / pixel_size
    radial = np.linspace(0.0, s_max, 4097)
    norm = dose_weight_norm(radial, exposures) / math.sqrt(n)
    half_inverse_ne = 0.5 / critical_exposure(radial)
    w = np.exp(-np.asarray(exposures, dtype=np.float64)[:, None] * half_inverse_ne) / norm
    _, vectors = np.linalg.eigh(w @ w.T)
    vectors = vectors[:, ::-1]
    scale = float(np.abs(w).max())
    for rank in range(1, n + 1):
        u = vectors[:, :rank]
        factors = u.T @ w
        if np.abs(u @ factors - w).max() <= 1e-5 * scale:
            break
    ky = np.fft.fftfreq(shape[0], d=pixel_size)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size)[None, :]
    s = np.sqrt(ky**2 + kx**2)
    basis = np.stack([np.interp(s.ravel(), radial, f).reshape(s.shape) for f in factors])
    coefficients = np.vstack([np.ones((1, n)), u.T]).astype(np.float32)
    return _DoseFactors(xp.asarray(coefficients), xp.asarray(basis.astype(np.float32)))
