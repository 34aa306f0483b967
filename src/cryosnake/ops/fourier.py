"""Fourier-space helpers: sub-pixel shifts, cropping, rescaling, upsampled registration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module

__all__ = [
    "fast_size",
    "fourier_crop",
    "phase_ramp",
    "phase_ramps_1d",
    "register_translation",
    "resample_size",
    "rescale_images",
    "shift_image",
]


def fast_size(n: int, *, up: bool = True) -> int:
    """The nearest even size of the form 2^a 3^b 5^c (c <= 1) at or above (or, with
    ``up=False``, below) ``n``.

    FFTs of such sizes run fastest with pocketfft and cuFFT; pure powers of two above
    256 are avoided, as their batched transforms suffer from cache-set conflicts (576 px
    tiles transform faster per pixel than 512 px ones here).
    """
    n = max(int(n), 2)
    candidates = sorted(
        2**a * 3**b * 5**c
        for a in range(1, 40)
        for b in range(0, 25)
        for c in (0, 1)
        if 2**a * 3**b * 5**c <= 4 * n and (b > 0 or c > 0 or a <= 8)
    )
    if up:
        return next(x for x in candidates if x >= n)
    return max(x for x in candidates if x <= n)


def phase_ramp(shape: tuple[int, int], shift: tuple[float, float], xp: Any = np) -> Any:
    """Multiplier on the ``rfft2`` grid that shifts an image by ``shift = (dy, dx)`` pixels.

    ``irfft2(rfft2(img) * phase_ramp(...))(r) = img(r - shift)`` (periodic boundary).
    Returns (ny, nx//2+1) complex64.
    """
    ry, rx = phase_ramps_1d(shape, np.asarray([shift], dtype=np.float64), xp)
    return ry[0][:, None] * rx[0][None, :]


def phase_ramps_1d(shape: tuple[int, int], shifts: np.ndarray, xp: Any = np) -> tuple[Any, Any]:
    """The two factors of the phase ramps of many shifts on one ``rfft2`` grid.

    ``ry[i][:, None] * rx[i][None, :]`` is ``phase_ramp(shape, shifts[i])``; keeping the
    factors apart lets a stack of spectra be shifted with two broadcast products.

    Parameters
    ----------
    shape : (ny, nx) of the images
    shifts : (m, 2) (dy, dx) pixels, a NumPy array

    Returns
    -------
    ry : (m, ny) complex64, rx : (m, nx//2+1) complex64, on the device ``xp``
    """
    ny, nx = shape
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    ky = np.fft.fftfreq(ny)
    kx = np.fft.rfftfreq(nx)
    ry = np.exp(-2j * math.pi * shifts[:, :1] * ky[None, :])
    rx = np.exp(-2j * math.pi * shifts[:, 1:] * kx[None, :])
    if nx % 2 == 0:  # the Nyquist column cannot carry a sub-pixel phase; keep it real
        rx[:, -1] = rx[:, -1].real
    if ny % 2 == 0:
        ry[:, ny // 2] = ry[:, ny // 2].real
    return xp.asarray(ry.astype(np.complex64)), xp.asarray(rx.astype(np.complex64))


def shift_image(image: Any, shift: tuple[float, float]) -> Any:
    """Shift a 2D image by ``shift = (dy, dx)`` pixels with a Fourier phase ramp.

    Returns ``image(r - shift)`` (periodic boundary), float32, same device as input.
    """
    xp = get_array_module(image)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    f = fft.rfft2(xp.asarray(image, dtype=xp.float32), **kw)
    f *= phase_ramp(image.shape, shift, xp)
    return fft.irfft2(f, s=image.shape, **kw).astype(xp.float32)


def fourier_crop(array: Any, shape: tuple[int, ...]) -> Any:
    """Band-limit and resample an array to a smaller ``shape`` by cropping its spectrum.

    Works for 2D and 3D real arrays. Point values are preserved (the result samples the
    band-limited input at the coarser grid, whose sample 0 coincides with input sample
    0), so an image rendered on a 2x finer grid and cropped is an anti-aliased image at
    the target sampling. Nyquist planes of the output are zeroed.
    """
    xp = get_array_module(array)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    a = xp.asarray(array, dtype=xp.float32)
    if a.ndim != len(shape):
        raise ValueError(f"fourier_crop: {a.ndim}D array, {len(shape)}D target shape")
    if any(t > s for t, s in zip(shape, a.shape, strict=True)):
        raise ValueError(f"fourier_crop: target {shape} larger than input {a.shape}")
    f = fft.fftn(a, **kw)
    index = []
    for n_out, n_in in zip(shape, a.shape, strict=True):
        idx = np.concatenate([np.arange(0, (n_out + 1) // 2), np.arange(n_in - n_out // 2, n_in)])
        index.append(idx)
    f = f[np.ix_(*index)]
    for axis, n_out in enumerate(shape):
        if n_out % 2 == 0:
            sl = [slice(None)] * a.ndim
            sl[axis] = slice(n_out // 2, n_out // 2 + 1)
            f[tuple(sl)] = 0
    scale = float(np.prod(shape)) / float(np.prod(a.shape))
    out = fft.ifftn(f, **kw).real * scale
    return out.astype(xp.float32)


def _spectrum_rows(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(output, input) indices of the frequencies that an FFT of ``n_in`` samples and
    one of ``n_out`` share, in FFT order (the Nyquist frequency of an even smaller
    size left out: it cannot be told from its negative)."""
    n = min(n_out, n_in)
    low = np.arange(0, (n + 1) // 2)
    high = np.arange(1, n // 2 + (n % 2))  # -1 ... -(n // 2 - 1) or -(n // 2)
    return np.concatenate([low, n_out - high]), np.concatenate([low, n_in - high])


def resample_size(box: int, ratio: float, tolerance: float = 1e-4) -> tuple[int, int]:
    """(L, L'): the smallest size L >= ``box`` (up to 4 ``box``) at which ``ratio`` * L
    is within ``tolerance`` (relative) of an integer L'; the closest in that range when
    none is."""
    sizes = np.arange(box, 4 * box + 1)
    scaled = sizes * ratio
    error = np.abs(np.round(scaled) - scaled) / scaled
    good = np.flatnonzero(error <= tolerance)
    i = int(good[0]) if len(good) else int(np.argmin(error))
    return int(sizes[i]), int(round(scaled[i]))


def rescale_images(images: Any, pixel_size: float, new_pixel_size: float, box: int) -> Any:
    """(m, b, b) images of ``pixel_size`` Å/px resampled in Fourier space to
    ``new_pixel_size`` and cut or zero-padded to (m, ``box``, ``box``) about their
    centre (pixel b // 2 goes to ``box`` // 2).

    Each image, zero-padded to L px (:func:`resample_size`: L p / p' an integer L', to
    1e-4), has its spectrum cropped or zero-padded to L' px: the same band-limited image
    sampled at p L / L' = p' (to 1e-4). How RELION brings particles of optics groups of
    other pixel or box sizes to one grid.
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    a = xp.asarray(images, dtype=xp.float32)
    m, b = a.shape[0], a.shape[-1]
    ratio = float(pixel_size) / float(new_pixel_size)
    if abs(ratio - 1.0) > 1e-6:
        size, new = resample_size(b, ratio)
        padded = xp.zeros((m, size, size), dtype=xp.float32)
        lo = size // 2 - b // 2
        padded[:, lo : lo + b, lo : lo + b] = a
        f = fft.fft2(xp.fft.ifftshift(padded, axes=(-2, -1)), **kw)
        g = xp.zeros((m, new, new), dtype=f.dtype)
        out_rows, in_rows = _spectrum_rows(new, size)
        g[:, out_rows[:, None], out_rows[None, :]] = f[:, in_rows[:, None], in_rows[None, :]]
        a = xp.fft.fftshift(fft.ifft2(g, **kw).real, axes=(-2, -1)) * (new / size) ** 2
        b = new
    out = xp.zeros((m, box, box), dtype=xp.float32)
    n = min(b, box)
    src, dst = b // 2 - n // 2, box // 2 - n // 2
    out[:, dst : dst + n, dst : dst + n] = a[:, src : src + n, src : src + n]
    return out


def _upsampled_dft(data: Any, region: int, upsample: float, offset: tuple[float, float]) -> Any:
    """Matrix-multiply DFT of ``data`` (a full 2D spectrum) on a ``region``² grid
    upsampled by ``upsample`` around ``offset`` (in upsampled pixels)."""
    xp = get_array_module(data)
    ny, nx = data.shape
    kx = xp.fft.ifftshift(xp.arange(nx)) - nx // 2
    ky = xp.fft.ifftshift(xp.arange(ny)) - ny // 2
    r = xp.arange(region) - offset[1]
    col_kernel = xp.exp((-2j * math.pi / (nx * upsample)) * r[:, None] * kx[None, :])
    r = xp.arange(region) - offset[0]
    row_kernel = xp.exp((-2j * math.pi / (ny * upsample)) * r[:, None] * ky[None, :])
    return row_kernel @ data @ col_kernel.T


def register_translation(
    reference: Any, image: Any, *, upsample: int = 20, max_shift: float | None = None
) -> tuple[float, float]:
    """Sub-pixel translation between two images by cross-correlation.

    The integer peak of the cross-correlation is refined by a locally upsampled DFT
    (Guizar-Sicairos, Thurman & Fienup 2008) to 1/``upsample`` pixel.

    Parameters
    ----------
    reference, image : (ny, nx)
    upsample : refinement factor (accuracy 1/upsample pixel)
    max_shift : search only integer peaks with |shift| <= max_shift pixels (None: anywhere);
        the sub-pixel refinement may move the result up to ~1 px further

    Returns
    -------
    (dy, dx) such that ``image(r) ~ reference(r - (dy, dx))``.
    """
    xp = get_array_module(reference, image)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    ref = xp.asarray(reference, dtype=xp.float32)
    img = xp.asarray(image, dtype=xp.float32)
    cross = fft.fft2(img, **kw) * xp.conj(fft.fft2(ref, **kw))
    cc = fft.ifft2(cross, **kw).real
    ny, nx = cc.shape
    if max_shift is not None:
        yy = xp.fft.fftfreq(ny) * ny
        xx = xp.fft.fftfreq(nx) * nx
        outside = (yy[:, None] ** 2 + xx[None, :] ** 2) > max_shift**2
        cc = xp.where(outside, -xp.inf, cc)
    peak = int(xp.argmax(cc))
    py, px = divmod(peak, nx)
    shift = np.array([py, px], dtype=np.float64)
    shift[0] -= ny if py > ny // 2 else 0
    shift[1] -= nx if px > nx // 2 else 0
    if upsample > 1:
        region = int(math.ceil(upsample * 1.5))
        centre = region // 2
        offset = (centre - shift[0] * upsample, centre - shift[1] * upsample)
        up = _upsampled_dft(xp.conj(cross), region, upsample, offset).conj()
        up = xp.abs(up)
        upk = int(xp.argmax(up))
        uy, ux = divmod(upk, region)
        shift = shift + (np.array([uy, ux], dtype=np.float64) - centre) / upsample
    return float(shift[0]), float(shift[1])
