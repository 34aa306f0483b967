"""Particle images for 2D classification: masks, resampling to the working box, the
particles' Fourier transforms, and re-centring of class averages.

Masks: the references are masked with the particle diameter; the images only by the
box (:func:`prepare_particles`), so that the class averages before masking
(:attr:`~cryosnake.ops.class2d.engine.Class2DState.unmasked`, and the averages of
particle subsets of :func:`~cryosnake.ops.class2d.engine.subset_averages`) show what
surrounds the particles, which :func:`~cryosnake.ops.class2d.scores.class_scores` uses
to tell particles from junk.

Contrast: images are RELION-normalised and inverted (particles white); the CTF of the
model is therefore ``-ctf_2d`` (positive at low frequency,
:func:`cryosnake.ops.ctf.model_ctf`), and class averages are white.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.class2d.data import ParticleData
from cryosnake.ops.ctf import CTF_COLUMNS

__all__ = [
    "MASK_EDGE",
    "prepare_particles",
    "prepare_spectra",
    "resize_images",
    "soft_circle",
]

MASK_EDGE = 5.0  # px at the original sampling: width of the image mask's soft edge (RELION)


def soft_circle(box: int, diameter: float, edge: float, xp: Any = np) -> Any:
    """(box, box) float32 mask: 1 within ``diameter / 2`` of ``box // 2``, a raised-cosine
    fall to 0 over ``edge`` px beyond it."""
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64) - box // 2
    r = np.sqrt(xx * xx + yy * yy)
    radius = diameter / 2.0
    if edge <= 0:
        mask = (r <= radius).astype(np.float64)
    else:
        t = np.clip((r - radius) / edge, 0.0, 1.0)
        mask = 0.5 * (1.0 + np.cos(np.pi * t))
    return xp.asarray(mask.astype(np.float32))


def resize_images(images: Any, box: int) -> Any:
    """Resample (n, B, B) images to (n, box, box) by Fourier cropping or padding.

    Pixel values are preserved (a band-limited resampling), and the box centre
    ``B // 2`` maps to ``box // 2``. Returns float32 on the input's device.
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    a = xp.asarray(images, dtype=xp.float32)
    n_in = a.shape[-1]
    if n_in == box:
        return a
    spec = fft.rfft2(fft.ifftshift(a, axes=(-2, -1)), axes=(-2, -1), **kw)
    out = _resize_spectra(spec, n_in, box) * ((box / n_in) ** 2)
    res = fft.irfft2(out, s=(box, box), axes=(-2, -1), **kw)
    return fft.fftshift(res, axes=(-2, -1)).astype(xp.float32)


def _resize_spectra(spec: Any, n_in: int, n_out: int) -> Any:
    """Crop or zero-pad rfft2 spectra (..., n_in, n_in//2+1) of even boxes to
    (..., n_out, n_out//2+1); the Nyquist row and column of the smaller box are zero."""
    xp = get_array_module(spec)
    h = min(n_in, n_out) // 2
    ky = np.arange(-(h - 1), h)
    rows_in, rows_out = xp.asarray(ky % n_in), xp.asarray(ky % n_out)
    cols = xp.asarray(np.arange(h))
    out = xp.zeros((*spec.shape[:-2], n_out, n_out // 2 + 1), dtype=xp.complex64)
    out[..., rows_out[:, None], cols[None, :]] = spec[..., rows_in[:, None], cols[None, :]]
    return out


def prepare_spectra(images: Any, pixel_size: float, box: int, mask_diameter: float) -> Any:
    """Mask images with a soft circle and resample them to the working box, in Fourier
    space.

    Parameters
    ----------
    images : (n, B, B) float, RELION-normalised and contrast-inverted (NumPy or CuPy)
    pixel_size : Å per pixel of ``images``
    box : working box b (even, <= B)
    mask_diameter : Å, diameter of the soft mask (edge :data:`MASK_EDGE` px)

    Returns
    -------
    (n, b, b//2+1) complex64 on the input's device: ``rfft2`` with the origin at the box
    centre, scaled so that pixel values are those of the band-limited, resampled images
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    big = int(images.shape[-1])
    if images.ndim != 3 or images.shape[-2] != big or big % 2 or box % 2 or box > big:
        raise ValueError(f"square even boxes expected with box <= {big}, got {images.shape}")
    mask = soft_circle(big, mask_diameter / pixel_size, MASK_EDGE, xp)
    part = xp.asarray(images, dtype=xp.float32) * mask
    spec = fft.rfft2(fft.ifftshift(part, axes=(-2, -1)), axes=(-2, -1), **kw)
    if box != big:
        spec = _resize_spectra(spec, big, box) * ((box / big) ** 2)
    return spec.astype(xp.complex64)


def prepare_particles(
    images: Any,
    pixel_size: float,
    box: int,
    ctf: np.ndarray,
    *,
    mask_diameter: float = 0.0,
    chunk: int = 512,
) -> ParticleData:
    """:func:`prepare_spectra` on a whole stack, with the particles' CTF parameters.

    ``mask_diameter`` 0 (default) masks with the largest soft circle inside the box:
    the references are masked with the particle diameter, the images only by the box,
    so that the class averages before masking show what surrounds the particles.
    ``ctf`` is (n, 7) NumPy with columns :data:`cryosnake.ops.ctf.CTF_COLUMNS`.
    """
    xp = get_array_module(images)
    n, big = int(images.shape[0]), int(images.shape[-1])
    if mask_diameter <= 0:
        mask_diameter = (big - 2 * MASK_EDGE) * pixel_size
    spectra = xp.empty((n, box, box // 2 + 1), dtype=xp.complex64)
    for start in range(0, n, chunk):
        spectra[start : start + chunk] = prepare_spectra(
            images[start : start + chunk], pixel_size, box, mask_diameter
        )
    ctf_arr = np.asarray(ctf, dtype=np.float64).reshape(n, len(CTF_COLUMNS))
    return ParticleData(spectra=spectra, ctf=ctf_arr, pixel_size=pixel_size * big / box)


def _centre(images: Any, mask: Any, limit: float) -> Any:
    """Shift each image so that the centre of mass of its positive, masked density lies
    at the box centre (at most ``limit`` px)."""
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    box = int(images.shape[-1])
    dens = xp.maximum(images * mask, 0.0)
    total = dens.sum(axis=(1, 2))
    g = xp.arange(box, dtype=xp.float32) - box // 2
    cx = (dens * g[None, None, :]).sum(axis=(1, 2)) / xp.maximum(total, 1e-30)
    cy = (dens * g[None, :, None]).sum(axis=(1, 2)) / xp.maximum(total, 1e-30)
    norm = xp.sqrt(cx * cx + cy * cy)
    scale = xp.where(norm > limit, limit / xp.maximum(norm, 1e-30), 1.0)
    cx, cy = cx * scale, cy * scale
    ky = xp.asarray(np.fft.fftfreq(box).astype(np.float32))[None, :, None]
    kx = xp.asarray(np.fft.rfftfreq(box).astype(np.float32))[None, None, :]
    ramp = xp.exp(2j * np.pi * (kx * cx[:, None, None] + ky * cy[:, None, None]))
    spec = fft.rfft2(images, axes=(-2, -1), **kw) * ramp.astype(xp.complex64)
    return fft.irfft2(spec, s=(box, box), axes=(-2, -1), **kw).astype(xp.float32)
