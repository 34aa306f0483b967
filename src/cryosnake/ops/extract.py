"""Particle extraction: boxes cut from a micrograph, re-centred, binned and normalised.

Follows RELION's ``relion_preprocess --extract`` with two choices of our own:

- Sub-pixel centring. A coordinate ``(x, y)`` (micrograph pixels, x = column, y = row,
  pixel centres at integers) is split into the nearest integer and a remainder in
  [-0.5, 0.5). The integer box is cut around the former; the remainder is removed with
  a Fourier phase ramp, so the particle centre lands exactly on the box centre
  ``(box // 2, box // 2)`` and ``rlnOriginXAngst/YAngst`` stay 0. (RELION rounds the
  coordinate and drops the remainder: up to 0.7 px of error.)
- The ramp, the optional Fourier crop and the inverse transform are one batched
  ``rfft2``/``irfft2`` pair per chunk of particles; the result equals
  :func:`~cryosnake.ops.fourier.fourier_crop` of :func:`~cryosnake.ops.fourier.shift_image`
  of each box (periodic boundary within the box, Nyquist zeroed when cropping).

Boxes that cross the micrograph edge are not extracted (RELION's behaviour); callers
get a mask of the particles kept. Normalisation is RELION's: the pixels outside a
circle of ``background_diameter`` pixels about the box centre get mean 0 and standard
deviation 1; then the contrast is inverted, so that particles are white.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.fourier import fast_size, phase_ramps_1d

__all__ = [
    "BACKGROUND_FRACTION",
    "BOX_PER_DIAMETER",
    "CHUNK",
    "FLAT",
    "box_corners",
    "cut_boxes",
    "default_box",
    "extract_particles",
    "normalise_background",
    "recentre_and_crop",
]

BOX_PER_DIAMETER = 1.8  # automatic box: about 1.8 x the particle diameter
BACKGROUND_FRACTION = 0.75  # RELION's default background circle: 75 % of the box
FLAT = 1e-6  # background sd below this fraction of the image's largest value: flat
CHUNK = 128  # particles per batched FFT (bounds the memory to ~CHUNK boxes of spectra)


def default_box(diameter_px: float) -> int:
    """An even, FFT-friendly box of about ``BOX_PER_DIAMETER`` x the particle diameter.

    Parameters
    ----------
    diameter_px : particle diameter, micrograph pixels

    Returns
    -------
    box : int, even, >= BOX_PER_DIAMETER * diameter_px (the next size of
        :func:`~cryosnake.ops.fourier.fast_size`)
    """
    if not diameter_px > 0:
        raise ValueError(f"default_box: diameter must be > 0 px, got {diameter_px}")
    return fast_size(int(math.ceil(BOX_PER_DIAMETER * diameter_px)))


def box_corners(
    coordinates: np.ndarray, box: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer box corners, sub-pixel remainders and the boxes inside the micrograph.

    Parameters
    ----------
    coordinates : (n, 2) float, particle centres (x, y) in micrograph pixels (x = column)
    box : box size, px
    shape : (ny, nx) of the micrograph

    Returns
    -------
    corners : (n, 2) int64, (row, column) of each box's first pixel
    shifts : (n, 2) float64, (dy, dx) px that move each particle onto the box centre
        (minus the remainder of its coordinate after rounding), in (-0.5, 0.5]
    inside : (n,) bool, True where the whole box lies inside the micrograph
    """
    xy = np.asarray(coordinates, dtype=np.float64).reshape(-1, 2)
    yx = xy[:, ::-1]
    nearest = np.floor(yx + 0.5)
    shifts = nearest - yx  # image(r - shift) puts the centre at nearest -> box // 2
    corners = nearest.astype(np.int64) - box // 2
    ny, nx = shape
    inside = (
        (corners[:, 0] >= 0)
        & (corners[:, 1] >= 0)
        & (corners[:, 0] + box <= ny)
        & (corners[:, 1] + box <= nx)
    )
    return corners, shifts, inside


def cut_boxes(micrograph: Any, corners: np.ndarray, box: int) -> Any:
    """Gather boxes from a micrograph (every box must lie inside it).

    Parameters
    ----------
    micrograph : (ny, nx) array, NumPy or CuPy
    corners : (n, 2) int, (row, column) of the first pixel of each box (host array)
    box : box size, px

    Returns
    -------
    (n, box, box) float32 on the micrograph's device
    """
    xp = get_array_module(micrograph)
    offsets = np.arange(box, dtype=np.int64)
    rows = xp.asarray(np.asarray(corners[:, 0:1], dtype=np.int64) + offsets[None, :])
    cols = xp.asarray(np.asarray(corners[:, 1:2], dtype=np.int64) + offsets[None, :])
    image = xp.asarray(micrograph, dtype=xp.float32)
    return image[rows[:, :, None], cols[:, None, :]]


def recentre_and_crop(boxes: Any, shifts: np.ndarray, size: int | None = None) -> Any:
    """Shift each box by a sub-pixel amount and Fourier-crop it, in one batched FFT.

    ``out[i] = fourier_crop(shift_image(boxes[i], shifts[i]), (size, size))``, without
    the crop (and its zeroed Nyquist planes) when ``size`` equals the box.

    Parameters
    ----------
    boxes : (n, box, box) float, NumPy or CuPy; ``box`` even
    shifts : (n, 2) (dy, dx) px, host array; ``out(r) = box(r - shift)``
    size : output box (even, <= box); None keeps the box size

    Returns
    -------
    (n, size, size) float32 on the device of ``boxes``; the pixel size grows by
    ``box / size`` and point values are kept (sample 0 stays at sample 0, so the box
    centre ``box // 2`` maps onto ``size // 2``).
    """
    xp = get_array_module(boxes)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    stack = xp.asarray(boxes, dtype=xp.float32)
    n, ny, nx = stack.shape
    if ny != nx or ny % 2:
        raise ValueError(f"recentre_and_crop: square boxes of even size expected, got {ny}x{nx}")
    out_size = ny if size is None else int(size)
    if out_size % 2 or not 2 <= out_size <= ny:
        raise ValueError(f"recentre_and_crop: size must be even and <= {ny}, got {size}")
    if n == 0:
        return xp.zeros((0, out_size, out_size), dtype=xp.float32)
    spectra = fft.rfft2(stack, axes=(-2, -1), **kw)
    ry, rx = phase_ramps_1d((ny, nx), np.asarray(shifts, dtype=np.float64).reshape(-1, 2), xp)
    spectra *= ry[:, :, None]
    spectra *= rx[:, None, :]
    if out_size < ny:
        half = out_size // 2
        rows = np.concatenate([np.arange(0, half), np.arange(ny - half, ny)])
        spectra = spectra[:, xp.asarray(rows), : half + 1]
        spectra[:, half, :] = 0  # Nyquist row and column, as fourier_crop
        spectra[:, :, half] = 0
    out = fft.irfft2(spectra, s=(out_size, out_size), axes=(-2, -1), **kw)
    if out_size < ny:
        out *= (out_size * out_size) / float(ny * nx)
    return out.astype(xp.float32, copy=False)


def normalise_background(stack: Any, diameter: float) -> Any:
    """RELION normalisation: background (outside a circle) to mean 0, sd 1.

    Parameters
    ----------
    stack : (n, b, b) float, NumPy or CuPy
    diameter : px, of the circle about the box centre ``(b // 2, b // 2)`` whose outside
        (distance > diameter / 2) is the background

    Returns
    -------
    (n, b, b) float32, ``(image - mean_bg) / sd_bg`` per image (an image whose
    background is flat, sd <= ``FLAT`` x its largest absolute value, is only shifted)
    """
    xp = get_array_module(stack)
    images = xp.asarray(stack, dtype=xp.float32)
    b = images.shape[-1]
    if images.shape[0] == 0:
        return images
    grid = np.arange(b, dtype=np.float64) - b // 2
    outside = (grid[:, None] ** 2 + grid[None, :] ** 2) > (0.5 * diameter) ** 2
    if not outside.any():
        raise ValueError(f"normalise_background: a {diameter:.1f} px circle leaves no background")
    index = xp.asarray(np.flatnonzero(outside))  # integer, not boolean, indexing: CuPy too
    values = images.reshape(images.shape[0], -1)[:, index].astype(xp.float64)  # (n, m)
    mean = values.mean(axis=1)
    sd = values.std(axis=1)
    # A background flat to float32 rounding (synthetic data) is not scaled up.
    scale = xp.abs(images).reshape(images.shape[0], -1).max(axis=1).astype(xp.float64)
    sd = xp.where(sd > FLAT * scale, sd, 1.0)
    out = (images - mean[:, None, None].astype(xp.float32)) / sd[:, None, None].astype(xp.float32)
    return out.astype(xp.float32, copy=False)


def extract_particles(
    micrograph: Any,
    coordinates: np.ndarray,
    box: int,
    *,
    size: int | None = None,
    background_diameter: float | None = None,
    invert: bool = True,
    chunk: int = CHUNK,
) -> tuple[Any, np.ndarray]:
    """Extract, re-centre, bin, normalise and invert particles (RELION convention).

    Parameters
    ----------
    micrograph : (ny, nx) float, NumPy or CuPy
    coordinates : (n, 2) float, particle centres (x, y) in micrograph pixels (host array)
    box : box cut from the micrograph, px (even)
    size : final box after Fourier cropping (even, <= box); None: ``box``
    background_diameter : px of the final box; the background is outside this circle
        (default ``BACKGROUND_FRACTION * size``)
    invert : multiply by -1 after normalisation (particles white on a dark micrograph)
    chunk : particles per batched FFT

    Returns
    -------
    stack : (k, size, size) float32 on the micrograph's device, the particles whose box
        lies inside the micrograph, in input order, centred on ``(size // 2, size // 2)``
    kept : (n,) bool host array, which coordinates were extracted (False: the box
        crosses the micrograph edge; RELION skips these too)
    """
    xp = get_array_module(micrograph)
    if box % 2 or box < 2:
        raise ValueError(f"extract_particles: box must be even and >= 2, got {box}")
    out_size = box if size is None else int(size)
    diameter = (
        BACKGROUND_FRACTION * out_size if background_diameter is None else background_diameter
    )
    image = xp.asarray(micrograph, dtype=xp.float32)
    if image.ndim != 2:
        raise ValueError(f"extract_particles: 2D micrograph expected, got shape {image.shape}")
    corners, shifts, kept = box_corners(coordinates, box, (image.shape[0], image.shape[1]))
    corners, shifts = corners[kept], shifts[kept]
    parts = []
    for start in range(0, len(corners), max(int(chunk), 1)):
        stop = start + max(int(chunk), 1)
        boxes = cut_boxes(image, corners[start:stop], box)
        boxes = recentre_and_crop(boxes, shifts[start:stop], out_size)
        boxes = normalise_background(boxes, diameter)
        if invert:
            boxes *= -1.0
        parts.append(boxes)
    if not parts:
        return xp.zeros((0, out_size, out_size), dtype=xp.float32), kept
    stack = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
    return stack, kept
