"""Template picking (after RELION's reference-based autopicking).

Each template (2D class average or projection, protein white, centred on ``b // 2``) is
rescaled to the working pixel size (:func:`resample_images`), rotated in-plane every
``angle_step`` degrees, multiplied by the micrograph's CTF (by -1 without one),
band-passed (:data:`TEMPLATE_BAND`) and masked with a disc of radius
:data:`TEMPLATE_MASK` ``r``. The normalised cross-correlation (NCC) with the
band-passed micrograph, normalised by the micrograph's local mean and variance under the
same mask, is computed by FFT for every template and rotation; its maximum is the
localisation map. Figure of merit: ``zNCC + 0.5 zE`` (:data:`TEMPLATE_ENERGY_WEIGHT`),
robust z-scores as for blobs: the NCC says a pick has the particle's shape, the energy
that it has the signal of one. A pick's position is then the maximum, within
:data:`RECENTRE_RADIUS` ``r`` of the NCC peak, of the plain cross-correlation with the
best template there (sub-pixel by parabolas): the matched filter is not pulled off the
particle, as the NCC is, by the local variance in its denominator (next to ice the NCC
peaks where the mask leaves the ice out).

The automatic threshold and the rejection of edge, ice and aggregate picks, with the
uniqueness (rival) test of template picks and the profile test at
:data:`TEMPLATE_PROFILE_Z`, are :func:`cryosnake.ops.pick.select._select`'s; the null
model is the template figures of merit of white noise through the same bank
(:func:`_template_null`, :mod:`cryosnake.ops.pick.null`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, to_host
from cryosnake.ops.pick.filters import MicrographCtf, _Work
from cryosnake.ops.pick.null import NullModel, robust
from cryosnake.ops.pick.peaks import find_peaks, local_maxima
from cryosnake.ops.pick.select import SEPARATION, Picks, _select

__all__ = [
    "RECENTRE_RADIUS",
    "TEMPLATE_BAND",
    "TEMPLATE_ENERGY_WEIGHT",
    "TEMPLATE_MASK",
    "TEMPLATE_PROFILE_Z",
    "pick_templates",
    "resample_images",
]

TEMPLATE_REALISATIONS = 2  # white-noise images for the template null (each costs a correlation)
TEMPLATE_ENERGY_WEIGHT = 0.5  # figure of merit of template picks: zNCC + this * zE
TEMPLATE_MASK = 1.3  # template mask radius, x r
TEMPLATE_BAND = (0.07, 1.0)  # template matching: low-pass, high-pass Gaussians, x r
TEMPLATE_PROFILE_Z = 2.5  # PROFILE_Z of template picks (they have the rival test too)
RECENTRE_RADIUS = 0.3  # template picks: search radius of the matched-filter maximum, x r


def resample_images(images: Any, factor: float) -> Any:
    """Resample a stack of square images by Fourier cropping or zero-padding.

    Parameters
    ----------
    images : (n, b, b) real
    factor : new size / old size (< 1 shrinks: coarser pixels)

    Returns
    -------
    (n, m, m) float32 with m = round(b * factor / 2) * 2 (at least 2); the centre pixel
    ``b // 2`` maps onto ``m // 2``.
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    stack = xp.asarray(images, dtype=xp.float32)
    b = stack.shape[-1]
    m = max(2, int(round(b * factor / 2.0)) * 2)
    if m == b:
        return stack.copy()
    f = fft.fftshift(fft.fft2(fft.ifftshift(stack, axes=(-2, -1)), **kw), axes=(-2, -1))
    if m < b:
        a = b // 2 - m // 2
        g = f[:, a : a + m, a : a + m]
    else:
        g = xp.zeros((stack.shape[0], m, m), dtype=f.dtype)
        a = m // 2 - b // 2
        g[:, a : a + b, a : a + b] = f
    out = fft.fftshift(fft.ifft2(fft.ifftshift(g, axes=(-2, -1)), **kw), axes=(-2, -1))
    return (out.real * (m * m / (b * b))).astype(xp.float32)


def _rotate_stack(images: np.ndarray, psi: float) -> np.ndarray:
    """In-plane rotation by Rz(psi) (RELION): the point (x, y) of an image, relative to
    the centre ``b // 2``, moves to (x cos psi + y sin psi, -x sin psi + y cos psi)."""
    b = images.shape[-1]
    c = b // 2
    t = math.radians(psi)
    yy, xx = np.mgrid[0:b, 0:b].astype(np.float64) - c
    # out(p) = in(R^-1 p), R = [[cos, sin], [-sin, cos]] acting on (x, y)
    src_x = math.cos(t) * xx - math.sin(t) * yy + c
    src_y = math.sin(t) * xx + math.cos(t) * yy + c
    out = np.empty_like(images)
    for k in range(images.shape[0]):
        out[k] = ndimage.map_coordinates(images[k], [src_y, src_x], order=1, mode="constant")
    return out


class _TemplateBank:
    """Rotated, CTF-modulated, band-passed, masked and normalised templates (spectra)."""

    def __init__(self, work: _Work, templates: np.ndarray, angle_step: float) -> None:
        xp = work.xp
        self.work = work
        b = templates.shape[-1]
        c = b // 2
        yy, xx = np.mgrid[0:b, 0:b] - c
        outside = (yy * yy + xx * xx) > (0.45 * b) ** 2
        stack = np.asarray(templates, dtype=np.float32).copy()
        for k in range(len(stack)):  # background (outside the particle) at 0
            if outside.any():
                stack[k] -= stack[k][outside].mean()
        self.angles = np.arange(0.0, 360.0, angle_step)
        self.n_templates = len(stack)
        py, px = work.padded_shape
        radius = min(TEMPLATE_MASK * work.r_px, 0.5 * b - 1.0)
        yy, xx = np.mgrid[0:py, 0:px]
        yy = np.minimum(yy, py - yy)
        xx = np.minimum(xx, px - xx)
        mask = ((yy * yy + xx * xx) <= radius * radius).astype(np.float32)
        self.n_mask = float(mask.sum())
        self.mask = xp.asarray(mask)
        self.mask_spec = work.fft.rfft2(self.mask, **work.kw)
        modulation = work.band_filter(*TEMPLATE_BAND) * (work.ctf if work.ctf is not None else -1.0)
        self.spectra: list[Any] = []
        self.labels: list[tuple[int, float]] = []
        for psi in self.angles:
            rotated = _rotate_stack(stack, float(psi))
            for k in range(len(rotated)):
                full = np.zeros((py, px), np.float32)
                full[:b, :b] = rotated[k]
                full = np.roll(full, (-c, -c), axis=(0, 1))  # template centre at (0, 0)
                t = work.real(work.fft.rfft2(xp.asarray(full), **work.kw) * modulation)
                t = t * self.mask
                t = t - self.mask * (t.sum() / self.n_mask)
                norm = float(xp.sqrt((t * t).sum()))
                if norm <= 0:
                    continue
                self.spectra.append(xp.conj(work.fft.rfft2(t / norm, **work.kw)))
                self.labels.append((k + 1, float(psi)))

    def correlate(self, spec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Best NCC over the bank at each position of the image with spectrum ``spec``
        (band-limited by the bank). Returns NCC and the index of the best template in
        :attr:`spectra` (host maps)."""
        work, xp = self.work, self.work.xp
        image = work.real(spec * work.band_filter(*TEMPLATE_BAND))
        f_img = work.fft.rfft2(image, **work.kw)
        mean = work.real(f_img * xp.conj(self.mask_spec)) / self.n_mask
        mean2 = work.real(work.fft.rfft2(image * image, **work.kw) * xp.conj(self.mask_spec))
        var = xp.maximum(mean2 / self.n_mask - mean * mean, 1e-20)
        denom = xp.sqrt(var * self.n_mask)
        best = xp.full(work.padded_shape, -xp.inf, dtype=xp.float32)
        index = xp.zeros(work.padded_shape, dtype=xp.int32)
        for k, t_spec in enumerate(self.spectra):
            ncc = (work.real(f_img * t_spec) / denom).astype(xp.float32)
            better = ncc > best
            best = xp.where(better, ncc, best)
            index = xp.where(better, k, index)
        return work.host(best), np.asarray(to_host(index[work.crop]), dtype=np.int64)

    def labelled(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Template number (1-based) and psi maps of a map of bank indices."""
        labels = np.asarray(self.labels, dtype=np.float64).reshape(-1, 2)
        return labels[index, 0].astype(np.int64), labels[index, 1]

    def recentre(self, spec: Any, peaks: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Positions (row, col, sub-pixel) of the maxima of the plain cross-correlation
        of the image with spectrum ``spec`` and the best template at each of ``peaks``,
        within :data:`RECENTRE_RADIUS` ``r`` of the peak."""
        work = self.work
        f_img = spec * work.band_filter(*TEMPLATE_BAND)
        out = peaks.astype(np.float64).reshape(-1, 2)
        maps: dict[int, np.ndarray] = {}
        for n, (i, j) in enumerate(peaks):
            k = int(index[i, j])
            if k not in maps:
                maps[k] = work.host(work.real(f_img * self.spectra[k]))
            out[n] = local_maxima(maps[k], peaks[n : n + 1], RECENTRE_RADIUS * work.r_px)[0]
        return out


_TEMPLATE_NULL: dict[tuple[Any, ...], NullModel] = {}


def _template_null(work: _Work, bank: _TemplateBank, key: tuple[Any, ...]) -> NullModel:
    """Template figures of merit at the peaks of white noise (TEMPLATE_REALISATIONS
    images through the same bank)."""
    if key in _TEMPLATE_NULL:
        return _TEMPLATE_NULL[key]
    rng = np.random.default_rng(20261)
    scores = []
    for _ in range(TEMPLATE_REALISATIONS):
        noise = work.xp.asarray(rng.standard_normal(work.padded_shape).astype(np.float32))
        spec = work.fft.rfft2(noise, **work.kw)
        ncc, _ = bank.correlate(spec)
        peaks = find_peaks(ncc, 2.0 * SEPARATION * work.r_px, work.r_px)
        rows, cols = peaks[:, 0], peaks[:, 1]
        band = work.real(spec * work.band_filter())
        emap = work.real(work.fft.rfft2(band * band, **work.kw) * work.gauss(0.33 * work.r))
        emap = work.host(emap)
        (mn, sn), (me, se) = robust(ncc), robust(emap)
        z_ncc, z_energy = (ncc[rows, cols] - mn) / sn, (emap[rows, cols] - me) / se
        scores.append(z_ncc + TEMPLATE_ENERGY_WEIGHT * z_energy)
    null = NullModel(np.concatenate(scores), TEMPLATE_REALISATIONS)
    _TEMPLATE_NULL[key] = null
    return null


def pick_templates(
    micrograph: Any,
    pixel_size: float,
    diameter: float,
    templates: np.ndarray,
    template_pixel_size: float,
    *,
    ctf: MicrographCtf | None = None,
    threshold: float | None = None,
    angle_step: float = 10.0,
) -> Picks:
    """Template matching with CTF-modulated, rotated templates (see the module docstring).

    Parameters
    ----------
    micrograph : (ny, nx) float, NumPy or CuPy
    pixel_size : Å per micrograph pixel
    diameter : Å, the particle's longest extent
    templates : (n, b, b) float, protein white (RELION class averages, projections),
        centred on ``b // 2``; a host array
    template_pixel_size : Å per template pixel
    ctf : the micrograph's CTF (None: contrast inversion only)
    threshold : figure of merit to exceed (None: the automatic noise floor)
    angle_step : degrees between in-plane rotations
    """
    stack = np.asarray(to_host(templates), dtype=np.float32)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"templates: expected (n, b, b) square images, got {stack.shape}")
    if not angle_step > 0:
        raise ValueError(f"angle_step: must be > 0, got {angle_step}")
    work = _Work(micrograph, pixel_size, diameter, ctf)
    factor = template_pixel_size / (0.5 * (work.pixel[0] + work.pixel[1]))
    small = np.asarray(resample_images(stack, factor))
    bank = _TemplateBank(work, small, angle_step)
    if not bank.spectra:
        raise ValueError("templates: every template is blank")
    ncc, index = bank.correlate(work.spec)
    classes, psi = bank.labelled(index)
    key = (work.shape, round(work.r, 4), small.tobytes().__hash__(), angle_step, ctf)
    null = _template_null(work, bank, key)
    energy = work.energy(0.33 * work.r)
    weights = [1.0, TEMPLATE_ENERGY_WEIGHT]
    return _select(
        work,
        ncc,
        [ncc, energy],
        weights,
        null,
        threshold,
        energy,
        (classes, psi),
        profile_z=TEMPLATE_PROFILE_Z,
        rival=ncc,
        recentre=lambda peaks: bank.recentre(work.spec, peaks, index),
    )
