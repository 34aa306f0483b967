"""Particle picking: reference-free blob picking and template matching.

Both pickers work on a Fourier-cropped copy of the micrograph in which the particle
radius ``r`` (half the ``diameter``, the particle's longest extent) spans about
:data:`PIXELS_PER_RADIUS` pixels; every filter below is expressed in units of ``r``, so
the method is the same for any particle size and pixel size. The copy is mirror-padded
by 1.5 ``r`` so that the FFT filters do not wrap around.

Blob picking (after RELION's LoG picker and Laplacian-of-Gaussian blob detection):

1. With a CTF, whiten: divide the spectrum by the square root of the background's
   power, ``N(s) + T CTF(s)^2`` (:func:`cryosnake.ops.noise.noise_power`: the noise
   ``N`` read off the spectrum at the CTF's zeros, where particles give no signal, and
   the specimen's own texture ``T``, ice or carbon, taken flat like ice's from the
   first rings). What stands above that background, a particle's low-resolution mass,
   is then measured in units of it, however crowded the micrograph.
2. Phase-flip the spectrum with the sign of the CTF (without a CTF, invert the contrast:
   at the usual underfocus the CTF is negative at low frequency), so that particles
   are bright.
3. Localisation map ``L``: scale-normalised Laplacian of Gaussian at
   ``sigma =`` :data:`BLOB_SIGMA` ``r``, i.e. a positive core of radius ``0.7 r``.
4. Local energy ``E``: the square of the micrograph band-passed between Gaussians
   of ``0.1 r`` and ``0.53 r``, smoothed over ``0.33 r``. Phase contrast puts most of
   a particle's signal at frequencies where its sign alternates; the energy collects it
   whatever its sign.
5. Candidates: maxima of ``L`` at least :data:`SEPARATION` diameter apart (non-maximum
   suppression), refined to sub-pixel by parabolas. Figure of merit: ``zL + zE``. With a
   CTF these are first z-scores against the whitened background itself (the median and
   robust sd of the same maps of white noise). When the candidates that pass the
   threshold on those scores leave at least :data:`MIN_FREE` of the micrograph (outside
   junk) farther than ``r`` from them, that free area measures the background directly:
   the scores become robust z-scores (median, 1.4826 MAD) against its pixels. A crowded
   micrograph keeps the spectral background; a sparse one uses its own empty pixels,
   which also see noise the zeros cannot (a low-frequency rise). Without a CTF, robust
   z-scores against background pixels, i.e. pixels outside junk and outside the discs of
   radius ``r`` around provisional particles.
6. With a CTF, each pick moves to its particle's centre of mass (:func:`_mass_centres`):
   the blob detector finds a particle's densest part, which for a ring, a rod, a
   dumbbell or an oligomer is not its centre.
7. A candidate within :data:`SHOULDER_DISTANCE` diameters of one whose figure of merit
   is :data:`SHOULDER_RATIO` times its own is a shoulder of that particle (its outer
   density or a fringe), not a particle of its own.

Template picking (after RELION's reference-based autopicking): each template (2D
class average or projection, protein white, centred on ``b // 2``) is rescaled to the
working pixel size, rotated in-plane every ``angle_step`` degrees, multiplied by the
micrograph's CTF (by -1 without one), band-passed (:data:`TEMPLATE_BAND`) and masked
with a disc of radius :data:`TEMPLATE_MASK` ``r``. The normalised cross-correlation
(NCC) with the band-passed micrograph, normalised by the micrograph's local mean and
variance under the same mask, is computed by FFT for every template and rotation; its
maximum is the localisation map. Figure of merit: ``zNCC + 0.5 zE``
(:data:`TEMPLATE_ENERGY_WEIGHT`), robust z-scores as for blobs: the NCC says a pick
has the particle's shape, the energy that it has the signal of one. A pick's position
is then the maximum, within :data:`RECENTRE_RADIUS` ``r`` of the NCC peak, of the plain
cross-correlation with the best template there (sub-pixel by parabolas): the matched
filter is not pulled off the particle, as the NCC is, by the local variance in its
denominator (next to ice the NCC peaks where the mask leaves the ice out).

Automatic threshold, the same for both: the null distribution of the figure of merit
comes from white noise of the micrograph's size passed through the same filters (the
same template bank); a Benjamini-Hochberg procedure then keeps the largest set of best
candidates in which noise would account for at most :data:`FALSE_PICK_RATE` of the
picks. Pure noise and empty ice therefore give no pick, while a micrograph full of
particles is thresholded lower than a single candidate would be. Blob picks with a
CTF are scored against the whitened background, so the threshold follows the
micrograph's own noise and texture (a crowded micrograph does not raise it); template
picks, and blob picks without a CTF, are scored against the micrograph's background
pixels. ``threshold`` overrides it.

Rejection, the same for both:

- Edges: a particle whose centre lies closer than its radius (less one working pixel)
  to the border.
- Ice, carbon and other large contaminants: regions where the micrograph's local mean
  (Gaussian of ``0.5 r``, before phase flipping: amplitude contrast shows there)
  departs from a background by more than :data:`CONTRAST_Z` robust standard
  deviations (grown to the connected pixels beyond half that, dilated by ``r / 4``).
  The background first is the median, then a smoothing over
  :data:`BACKGROUND_SCALE` ``r`` that leaves the regions found so far out, so gradual
  ice-thickness changes are followed and contaminants are not. Picks whose centre
  falls in a region are rejected, and the background statistics leave out the
  regions and a radius around them.
- Aggregates and other particle-sized junk, judged against the population of accepted
  picks (when there are at least :data:`MIN_POPULATION`): the radial profile of the
  local energy around a pick, over the pixels closer to it than to any other pick and
  away from ice, in rings of ``0.2 r`` out to ``1.6 r``. Each ring's value is z-scored
  robustly against all picks; a pick whose root-mean-square z exceeds
  :data:`PROFILE_Z` is not like the others (aggregates are larger and lumpier than a
  particle). A pick whose energy is :data:`DENSE_Z` robust standard deviations above
  the population's is rejected too (dense clumps), and so is a pick within a diameter
  of a rejected one whose profile distance exceeds half of :data:`PROFILE_Z` (the
  other parts of a large aggregate).
- Template picks also have a uniqueness test: a particle is one object, so its NCC has
  one peak, and the NCC around it (in the ring of :data:`RIVAL_RING` ``r``, where
  no other particle's centre fits) stays well below the peak; in an aggregate the
  templates match several particle-like parts side by side. The rival ratio, the
  ring's highest NCC over the peak's, is z-scored robustly against the population, and
  a pick beyond :data:`RIVAL_Z` is rejected. With this test in place the profile test
  of template picks, and the neighbour rule's half of it, is at
  :data:`TEMPLATE_PROFILE_Z` rather than :data:`PROFILE_Z`: at 2 it rejects about 4 %
  of true particles (their profiles vary with their views), and the uniqueness test
  now catches many of the particle-like parts of aggregates it was needed for.

Device: the FFT work (cropping, filtering, correlation) follows the input's array
module; the maps, a few hundred pixels a side, are brought to the host for peak
finding and statistics, and results come back as NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from scipy import ndimage

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, to_host
from cryosnake.ops._pick_stats import (
    FALSE_PICK_RATE,
    NullModel,
    background_stats,
    disc,
    fdr_threshold,
    find_peaks,
    local_maxima,
    refine_peaks,
    robust,
    stamp,
)
from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.fourier import fourier_crop
from cryosnake.ops.noise import NoisePower, noise_power

__all__ = [
    "BACKGROUND_SCALE",
    "BLOB_SIGMA",
    "CONTRAST_Z",
    "DENSE_Z",
    "FALSE_PICK_RATE",
    "MASS_RADIUS",
    "MIN_FREE",
    "MIN_POPULATION",
    "PIXELS_PER_RADIUS",
    "PROFILE_Z",
    "RECENTRE_RADIUS",
    "RIVAL_RING",
    "RIVAL_Z",
    "SEPARATION",
    "SHOULDER_DISTANCE",
    "SHOULDER_RATIO",
    "TEMPLATE_BAND",
    "TEMPLATE_ENERGY_WEIGHT",
    "TEMPLATE_MASK",
    "TEMPLATE_PROFILE_Z",
    "UNSET_PSI",
    "WIENER",
    "MicrographCtf",
    "Picks",
    "pick_blobs",
    "pick_templates",
    "resample_images",
    "working_shape",
]

PIXELS_PER_RADIUS = 12.0  # particle radius in working pixels
BLOB_SIGMA = 0.5  # blob detector: LoG sigma, x r
WIENER = 1.0  # blob centres: CTF correction CTF / (CTF² + this)
MASS_RADIUS = 1.0  # blob picks: centre of mass within this x r (one mean-shift step)
MIN_FREE = 0.7  # blob picks: this much of the micrograph free of particles: measure it there
SEPARATION = 0.8  # candidates at least this many diameters apart (non-maximum suppression)
SHOULDER_DISTANCE = 1.2  # a candidate this close (diameters) to a much stronger one ...
SHOULDER_RATIO = 3.5  # ... whose figure of merit is this many times its own is a shoulder
CONTRAST_Z = 5.0  # ice/carbon: local-mean outliers, robust sd
BACKGROUND_SCALE = 3.0  # ice/carbon: background smoothing, x r
MIN_POPULATION = 8  # picks needed before outliers are judged against the population
PROFILE_Z = 2.0  # rms robust z of the radial energy profile
DENSE_Z = 8.0  # robust z of the local energy against the population
ENERGY_WEIGHT = 1.0  # figure of merit of blob picks: zL + ENERGY_WEIGHT * zE
NOISE_REALISATIONS = 16  # white-noise images for the null distribution of blob scores
TEMPLATE_REALISATIONS = 2  # ... of template scores (each costs a full correlation)
TEMPLATE_ENERGY_WEIGHT = 0.5  # figure of merit of template picks: zNCC + this * zE
TEMPLATE_MASK = 1.3  # template mask radius, x r
TEMPLATE_BAND = (0.07, 1.0)  # template matching: low-pass, high-pass Gaussians, x r
TEMPLATE_PROFILE_Z = 2.5  # PROFILE_Z of template picks (they have the rival test too)
RIVAL_RING = (0.5, 1.2)  # template picks: ring of rival NCC values, x r
RIVAL_Z = 2.5  # robust z of the rival ratio (ring's highest NCC / the peak's)
RECENTRE_RADIUS = 0.3  # template picks: search radius of the matched-filter maximum, x r
UNSET_PSI = -999.0  # RELION's value of an in-plane angle that was not determined


@dataclass(frozen=True)
class MicrographCtf:
    """CTF of a micrograph (RELION conventions: Å, degrees, kV, mm)."""

    defocus_u: float
    defocus_v: float
    angle: float
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift: float = 0.0

    def image(
        self, shape: tuple[int, int], pixel_size: float, *, rfft: bool = True, xp: ModuleType = np
    ) -> Any:
        """This CTF on the FFT grid of an image of ``shape`` (:func:`ctf_2d`)."""
        return ctf_2d(
            shape, pixel_size, self.defocus_u, self.defocus_v, self.angle,
            voltage=self.voltage, cs=self.cs, amplitude_contrast=self.amplitude_contrast,
            phase_shift=self.phase_shift, rfft=rfft, xp=xp,
        )  # fmt: skip


@dataclass(frozen=True)
class Picks:
    """Result of :func:`pick_blobs` or :func:`pick_templates`.

    Attributes
    ----------
    coordinates : (n, 2) float64, (x, y) in micrograph pixels (x = column, y = row,
        pixel centres at integer positions, as the simulator's truth)
    scores : (n,) float64, figure of merit (a sum of robust z-scores against the
        micrograph's background, see the module docstring)
    classes : (n,) int64, template number (1-based) of template picks, 0 for blobs
    psi : (n,) float64, degrees: in-plane angle of the best template (RELION's psi:
        the particle is the template rotated by Rz(psi)); -999 (RELION's "not set")
        for blobs
    threshold : the figure of merit a pick had to exceed
    candidate_scores : (m,) float64, figures of merit of every candidate that was not
        at an edge or on ice (for a histogram against the threshold)
    image : (h, w) float32, the working image (downsampled, phase-flipped, band-passed)
    scale : (sy, sx), micrograph pixels per working pixel
    rejected : counts of candidates above the threshold rejected as edge, ice
        (contrast) or outlier (aggregate)
    """

    coordinates: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    psi: np.ndarray
    threshold: float
    candidate_scores: np.ndarray
    image: np.ndarray
    scale: tuple[float, float]
    rejected: dict[str, int] = field(default_factory=dict)


def working_shape(shape: tuple[int, int], pixel_size: float, diameter: float) -> tuple[int, int]:
    """Even shape of the working image: the radius spans ~PIXELS_PER_RADIUS pixels.

    Micrographs are never upsampled: when the particle is already small in pixels
    the working image is the micrograph (cropped to even sizes).
    """
    factor = max(1.0, 0.5 * diameter / pixel_size / PIXELS_PER_RADIUS)
    ny, nx = shape
    return (max(2, int(ny / factor / 2.0) * 2), max(2, int(nx / factor / 2.0) * 2))


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


# --------------------------------------------------------------------------------------
# shared machinery


class _Work:
    """The working image (padded spectrum), its frequency grid and CTF sign."""

    def __init__(
        self,
        image: Any,
        pixel_size: float,
        diameter: float,
        ctf: MicrographCtf | None,
        *,
        whiten: bool = False,
    ) -> None:
        xp = get_array_module(image)
        self.xp: ModuleType = xp
        self.fft = fft_module(xp)
        self.kw = fft_kwargs(xp)
        img = xp.asarray(image, dtype=xp.float32)
        ny, nx = (int(n) for n in img.shape)
        self.micrograph_shape = (ny, nx)
        my, mx = working_shape((ny, nx), pixel_size, diameter)
        if (my, mx) == (ny // 2 * 2, nx // 2 * 2):  # no downsampling: crop to even sizes
            small = img[:my, :mx]
            self.scale = (1.0, 1.0)
        else:
            small = fourier_crop(img, (my, mx))
            self.scale = (ny / my, nx / mx)
        self.shape = (my, mx)
        self.pixel = (pixel_size * self.scale[0], pixel_size * self.scale[1])
        self.pixel_size = pixel_size
        self.r = 0.5 * diameter  # Å
        self.r_px = self.r / (0.5 * (self.pixel[0] + self.pixel[1]))
        small = small - small.mean()
        spread = max(float(small.std()), 1e-20)
        small = small / spread
        self.pad = int(math.ceil(1.5 * self.r_px))
        padded = xp.pad(small, self.pad, mode="reflect")
        self.padded_shape = (int(padded.shape[0]), int(padded.shape[1]))
        self.spec = self.fft.rfft2(padded, **self.kw)
        py, px = self.padded_shape
        ky = xp.fft.fftfreq(py).astype(xp.float32)[:, None] / self.pixel[0]
        kx = xp.fft.rfftfreq(px).astype(xp.float32)[None, :] / self.pixel[1]
        self.s2 = ky * ky + kx * kx
        if ctf is None:
            self.ctf = None
            self.flip: Any = -1.0
        else:
            self.ctf = ctf.image(self.padded_shape, 0.5 * (self.pixel[0] + self.pixel[1]), xp=xp)
            self.flip = xp.where(self.ctf < 0, -1.0, 1.0).astype(xp.float32)
        self.crop = (slice(self.pad, self.pad + my), slice(self.pad, self.pad + mx))
        self._band: Any = None
        self.noise: NoisePower | None = None
        self.detect = self.spec  # the spectrum the detectors see (whitened: see whiten)
        self.gain: Any = None  # the whitening filter
        if whiten and self.ctf is not None:
            self.noise = noise_power(img, pixel_size, ctf)
        if self.noise is not None and self.ctf is not None:
            # background variance per working pixel at each frequency: that of the
            # micrograph times the Fourier crop's averaging (my mx / ny nx), over the
            # normalisation
            factor = (my * mx) / (ny * nx) / (spread * spread)
            c2 = self.ctf * self.ctf
            variance = self.noise(xp.sqrt(self.s2)) + self.noise.texture * c2
            variance = variance * factor
            floor = 1e-6 * float(variance.max())
            self.gain = (1.0 / xp.sqrt(xp.maximum(variance, floor))).astype(xp.float32)
            self.detect = self.spec * self.gain

    def gauss(self, sigma: float) -> Any:
        """Transfer function of a Gaussian blur of ``sigma`` Å."""
        return self.xp.exp(-2.0 * math.pi**2 * sigma * sigma * self.s2)

    def log(self, sigma: float) -> Any:
        """Scale-normalised negative Laplacian of Gaussian: bright blobs respond > 0."""
        return (2.0 * math.pi * sigma) ** 2 * self.s2 * self.gauss(sigma)

    def blob_filter(self) -> Any:
        """The blob detector: scale-normalised LoG at sigma = :data:`BLOB_SIGMA` r."""
        return self.log(BLOB_SIGMA * self.r)

    def real(self, spectrum: Any) -> Any:
        """Inverse FFT on the padded grid (device array)."""
        return self.fft.irfft2(spectrum, s=self.padded_shape, **self.kw)

    def host(self, padded: Any) -> np.ndarray:
        """The unpadded part of a padded map, on the host, float64."""
        return np.asarray(to_host(padded[self.crop]), dtype=np.float64)

    def band_filter(self, low: float = 0.1, high: float = 0.53) -> Any:
        """Band-pass between Gaussians of ``low`` r and ``high`` r (default: the detail
        inside a particle)."""
        return self.gauss(low * self.r) * (1.0 - self.gauss(high * self.r))

    def band(self) -> Any:
        """The phase-flipped, band-passed micrograph (padded, device)."""
        if self._band is None:
            self._band = self.real(self.detect * self.flip * self.band_filter())
        return self._band

    def energy(self, sigma: float) -> np.ndarray:
        """Local energy: the band-passed image squared, smoothed over ``sigma`` Å."""
        b = self.band()
        return self.host(self.real(self.fft.rfft2(b * b, **self.kw) * self.gauss(sigma)))

    def view(self) -> np.ndarray:
        """Phase-flipped micrograph low-passed at 0.1 r (for plots), float32."""
        f = self.spec * self.flip * self.gauss(0.1 * self.r) * (1.0 - self.gauss(2.0 * self.r))
        return self.host(self.real(f)).astype(np.float32)


def _mass_centres(work: _Work, peaks: np.ndarray) -> np.ndarray:
    """Centres of mass (row, col) of the particles at ``peaks``: one mean-shift step on
    the CTF-corrected density (CTF / (CTF² + :data:`WIENER`), low-passed at 0.15 r,
    background beyond 2 r removed, positive part), the centroid within
    :data:`MASS_RADIUS` ``r`` of each peak. A blob detector finds the densest part of a
    particle; the centre of a ring, a rod or a dumbbell is the centre of its mass (more
    steps drift with the noise and the neighbours of compact particles). Needs
    ``work.ctf``."""
    ctf = work.ctf
    if ctf is None:
        raise ValueError("_mass_centres: the micrograph has no CTF")
    f = work.detect * ctf / (ctf * ctf + WIENER)
    f = f * work.gauss(0.15 * work.r) * (1.0 - work.gauss(2.0 * work.r))
    density = np.maximum(work.host(work.real(f)), 0.0)
    radius = MASS_RADIUS * work.r_px
    h = int(math.ceil(radius))
    padded = np.pad(density, h)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    window = (yy * yy + xx * xx) <= radius * radius
    out = peaks.astype(np.float64).reshape(-1, 2).copy()
    ny, nx = density.shape
    for n, (i, j) in enumerate(peaks):
        w = np.where(window, padded[i : i + 2 * h + 1, j : j + 2 * h + 1], 0.0)
        total = float(w.sum())
        if total > 0:
            out[n, 0] = min(max(i + float((w * yy).sum()) / total, 0.0), ny - 1.0)
            out[n, 1] = min(max(j + float((w * xx).sum()) / total, 0.0), nx - 1.0)
    return out


def _contrast_outliers(local_mean: np.ndarray, r_px: float) -> np.ndarray:
    """Ice, carbon and other large contaminants: regions of outlying local mean.

    The background is first the median, then the local mean smoothed over
    ``BACKGROUND_SCALE r`` by a normalised convolution that leaves the regions found so
    far out (three more passes), so that it follows gradual thickness changes but not
    the contaminants. A region is a
    connected set of pixels more than ``CONTRAST_Z / 2`` robust sd from the background
    that holds at least one pixel beyond ``CONTRAST_Z``; regions are dilated by r / 4.
    """
    sigma = BACKGROUND_SCALE * r_px
    valid = np.ones(local_mean.shape, dtype=bool)
    region = np.zeros(local_mean.shape, dtype=bool)
    for step in range(4):
        if step == 0:  # first pass: against the median, so that large regions stand out
            background = np.full_like(local_mean, np.median(local_mean))
        else:
            weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma)
            smooth = ndimage.gaussian_filter(np.where(valid, local_mean, 0.0), sigma)
            background = smooth / np.maximum(weight, 1e-6)
        deviation = local_mean - background
        med, sd = robust(deviation[valid] if valid.any() else deviation)
        z = np.abs(deviation - med) / sd
        extended, n = ndimage.label(z > 0.5 * CONTRAST_Z)
        if n == 0:
            region[:] = False
            if step == 0:
                continue
            break
        has_core = ndimage.maximum(z > CONTRAST_Z, extended, index=np.arange(1, n + 1))
        region = np.isin(extended, np.flatnonzero(np.asarray(has_core)) + 1)
        if not region.any():
            if step == 0:
                continue
            break
        valid = ~ndimage.binary_dilation(region, structure=disc(0.5 * r_px))
        if valid.mean() < 0.2:  # mostly contaminated: keep what we have
            break
    if region.any():
        region = ndimage.binary_dilation(region, structure=disc(0.25 * r_px))
    return np.asarray(region)


def _profile_distance(
    energy: np.ndarray,
    centres: np.ndarray,
    owners: np.ndarray,
    junk: np.ndarray,
    r_px: float,
) -> np.ndarray:
    """Root-mean-square robust z of each centre's radial energy profile.

    The profile is the mean energy in rings of 0.2 r out to 1.6 r over the pixels
    closer to the centre than to any of ``owners`` and at least ``r`` from junk; each
    ring is z-scored against all ``centres``.
    """
    ny, nx = energy.shape
    markers = np.zeros((ny, nx), np.int32)
    for k, (i, j) in enumerate(owners):
        markers[i, j] = k + 1
    for k, (i, j) in enumerate(centres):
        if markers[i, j] == 0:
            markers[i, j] = len(owners) + k + 1
    _, (iy, ix) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    owner = markers[iy, ix]
    near_junk = ndimage.binary_dilation(junk, structure=disc(r_px)) if junk.any() else junk
    owner[near_junk] = -1
    background = float(np.median(energy[~near_junk])) if (~near_junk).any() else 0.0
    edges = np.arange(0.0, 1.6 + 1e-9, 0.2)
    h = int(math.ceil(1.6 * r_px))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    ring = np.digitize(np.hypot(yy, xx) / r_px, edges) - 1
    nb = len(edges) - 1
    profiles = np.full((len(centres), nb), np.nan)
    for k, (i, j) in enumerate(centres):
        y0, y1 = max(0, i - h), min(ny, i + h + 1)
        x0, x1 = max(0, j - h), min(nx, j + h + 1)
        sub_e = energy[y0:y1, x0:x1] - background
        sub_r = ring[y0 - (i - h) : y1 - (i - h), x0 - (j - h) : x1 - (j - h)]
        sel = (owner[y0:y1, x0:x1] == markers[i, j]) & (sub_r >= 0) & (sub_r < nb)
        sums = np.bincount(sub_r[sel], weights=sub_e[sel], minlength=nb)[:nb]
        counts = np.bincount(sub_r[sel], minlength=nb)[:nb]
        with np.errstate(invalid="ignore", divide="ignore"):
            profiles[k] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    med = np.nanmedian(profiles, axis=0)
    mad = 1.4826 * np.nanmedian(np.abs(profiles - med), axis=0)
    z = (profiles - med) / np.where(mad > 0, mad, np.inf)
    z = np.where(np.isfinite(z), z, 0.0)
    return np.asarray(np.sqrt((z * z).mean(axis=1)))


def _rival_z(ncc: np.ndarray, centres: np.ndarray, r_px: float) -> np.ndarray:
    """Robust z, against all ``centres``, of each one's rival ratio: the highest NCC in
    the ring of :data:`RIVAL_RING` ``r`` around it over the NCC at the centre."""
    lo, hi = RIVAL_RING
    h = int(math.ceil(hi * r_px))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    distance = np.hypot(yy, xx) / r_px
    ring = (distance > lo) & (distance < hi)
    padded = np.pad(ncc, h, mode="constant", constant_values=-np.inf)
    ratio = np.empty(len(centres))
    for k, (i, j) in enumerate(centres):
        sub = padded[i : i + 2 * h + 1, j : j + 2 * h + 1]
        ratio[k] = float(sub[ring].max()) / max(float(ncc[i, j]), 1e-20)
    med, sd = robust(ratio)
    return np.asarray((ratio - med) / sd)


def _shoulders(peaks: np.ndarray, score: np.ndarray, ok: np.ndarray, r_px: float) -> np.ndarray:
    """Candidates on the flank of a much stronger one: within :data:`SHOULDER_DISTANCE`
    diameters of a kept candidate whose figure of merit is :data:`SHOULDER_RATIO` times
    theirs or more (a particle's outer structure or CTF fringe beside it, not a
    particle: two particles that touch score alike)."""
    out = np.zeros(len(peaks), dtype=bool)
    idx = np.flatnonzero(ok & (score > 0))
    if len(idx) < 2:
        return out
    d = np.hypot(*(peaks[idx][:, None, :] - peaks[idx][None]).transpose(2, 0, 1))
    near = d < 2.0 * SHOULDER_DISTANCE * r_px
    stronger = score[idx][None, :] >= SHOULDER_RATIO * score[idx][:, None]
    out[idx[(near & stronger).any(axis=1)]] = True
    return out


def _select(
    work: _Work,
    locate: np.ndarray,
    score_maps: list[np.ndarray],
    weights: list[float],
    null: NullModel,
    user_threshold: float | None,
    energy: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    profile_z: float = PROFILE_Z,
    rival: np.ndarray | None = None,
    recentre: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Picks:
    """Peaks of ``locate`` -> figure of merit -> threshold -> edge, ice, outliers.

    ``energy`` is the local-energy map whose population outliers are dense clumps;
    ``profile_z`` the threshold of the profile test. Template picking passes its NCC map
    as ``rival`` (the uniqueness test) and ``recentre``, which maps peaks (row, col) to
    refined working-pixel positions; a pick it moves into the edge band is an edge pick.
    """
    r_px = work.r_px
    local_mean = work.host(work.real(work.spec * work.gauss(0.5 * work.r)))
    junk = _contrast_outliers(local_mean, r_px)
    peaks = find_peaks(locate, 2.0 * SEPARATION * r_px, max(0.0, r_px - 2.0))
    near_junk = ndimage.binary_dilation(junk, structure=disc(r_px)) if junk.any() else junk
    rows, cols = peaks[:, 0], peaks[:, 1]

    def figure_of_merit(stats: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        zs = [(m[rows, cols] - med) / sd for m, (med, sd) in zip(score_maps, stats, strict=False)]
        z_energy = (energy[rows, cols] - stats[-1][0]) / stats[-1][1]
        total = np.sum([w * z for w, z in zip(weights, zs, strict=False)], axis=0)
        return np.asarray(total, dtype=np.float64).reshape(-1), z_energy

    maps = [*score_maps, energy]
    if null.map_stats is not None and work.noise is not None:
        # against the measured background (whitened maps); where that leaves most of the
        # micrograph free of particles, the free pixels measure the background directly
        score, z_energy = figure_of_merit(null.map_stats)
        strong = peaks[(score > fdr_threshold(score, null)) & ~near_junk[rows, cols]]
        free = ~near_junk
        stamp(free, strong, r_px)
        if free.sum() >= MIN_FREE * max(int((~near_junk).sum()), 1):
            score, z_energy = figure_of_merit([robust(m[free]) for m in maps])
    else:
        stats = background_stats(maps, locate, peaks, ~near_junk, r_px)
        score, z_energy = figure_of_merit(stats)

    refined = refine_peaks(locate, peaks)
    coords = np.stack([refined[:, 1] * work.scale[1], refined[:, 0] * work.scale[0]], axis=1)
    coords = coords.reshape(-1, 2)
    ny, nx = work.micrograph_shape
    limit = work.r / work.pixel_size - max(work.scale)
    edge = (coords[:, 0] < limit) | (coords[:, 1] < limit)
    edge |= (coords[:, 0] > nx - 1 - limit) | (coords[:, 1] > ny - 1 - limit)
    on_junk = junk[rows, cols] if len(peaks) else np.zeros(0, bool)
    eligible = ~edge & ~on_junk
    if user_threshold is None:
        thr = fdr_threshold(score[eligible], null)
    else:
        thr = float(user_threshold)
    above = score > thr
    ok = above & ~edge & ~on_junk
    if recentre is not None and ok.any():
        moved = recentre(peaks[ok])
        idx = np.flatnonzero(ok)
        coords[idx] = np.stack([moved[:, 1] * work.scale[1], moved[:, 0] * work.scale[0]], axis=1)
        x, y = coords[idx, 0], coords[idx, 1]
        edge[idx] = (x < limit) | (y < limit) | (x > nx - 1 - limit) | (y > ny - 1 - limit)
        ok &= ~edge

    outlier = np.zeros(len(peaks), dtype=bool)
    if ok.sum() >= MIN_POPULATION:
        fine = work.energy(0.1 * work.r)
        owners = peaks[(score > 0.6 * thr) & ~on_junk]
        distance = _profile_distance(fine, peaks[ok], owners, junk, r_px)
        outlier[np.flatnonzero(ok)] = distance > profile_z
        if rival is not None:
            outlier[np.flatnonzero(ok)] |= _rival_z(rival, peaks[ok], r_px) > RIVAL_Z
        dense_z = z_energy[ok]
        med, sd = robust(dense_z)
        outlier[np.flatnonzero(ok)] |= (dense_z - med) / sd > DENSE_Z
        if outlier.any():
            # the other parts of an aggregate: picks within a diameter of a rejected one
            # whose profile is itself off the population's by half as much
            idx = np.flatnonzero(ok)
            bad = peaks[outlier]
            near = np.hypot(*(peaks[idx][:, None, :] - bad[None]).transpose(2, 0, 1)).min(1)
            outlier[idx[(near < 2.0 * r_px) & (distance > 0.5 * profile_z)]] = True
    shoulder = _shoulders(peaks, score, ok & ~outlier, r_px)
    keep = ok & ~outlier & ~shoulder
    classes = np.zeros(len(peaks), np.int64) if extra is None else extra[0][rows, cols]
    psi = np.full(len(peaks), UNSET_PSI) if extra is None else extra[1][rows, cols]
    return Picks(
        coordinates=coords[keep],
        scores=score[keep],
        classes=np.asarray(classes[keep], dtype=np.int64),
        psi=np.asarray(psi[keep], dtype=np.float64),
        threshold=float(thr),
        candidate_scores=score[eligible],
        image=work.view(),
        scale=work.scale,
        rejected={
            "edge": int((above & edge).sum()),
            "contrast": int((above & ~edge & on_junk).sum()),
            "outlier": int(outlier.sum()),
        },
    )


# --------------------------------------------------------------------------------------
# blob picking


def _blob_maps(work: _Work) -> tuple[Any, Any]:
    """LoG (localisation) and local energy maps on the padded grid (device)."""
    lmap = work.real(work.detect * work.flip * work.blob_filter())
    band = work.band()
    emap = work.real(work.fft.rfft2(band * band, **work.kw) * work.gauss(0.33 * work.r))
    return lmap, emap


_BLOB_NULL: dict[tuple[Any, ...], NullModel] = {}


def _blob_null(work: _Work) -> NullModel:
    """Blob figures of merit of the peaks of white noise (NOISE_REALISATIONS images)."""
    key = (work.padded_shape, round(work.pixel[0], 5), round(work.pixel[1], 5), round(work.r, 4))
    if key in _BLOB_NULL:
        return _BLOB_NULL[key]
    xp, fft, kw = work.xp, work.fft, work.kw
    rng = np.random.default_rng(20260)
    scores, stats = [], []
    for _ in range(NOISE_REALISATIONS):
        noise = xp.asarray(rng.standard_normal(work.padded_shape).astype(np.float32))
        spec = fft.rfft2(noise, **kw)
        lmap = work.host(work.real(spec * work.blob_filter()))
        band = work.real(spec * work.band_filter())
        emap = work.host(work.real(fft.rfft2(band * band, **kw) * work.gauss(0.33 * work.r)))
        peaks = find_peaks(lmap, 2.0 * SEPARATION * work.r_px, work.r_px)
        (ml, sl), (me, se) = robust(lmap), robust(emap)
        stats.append((ml, sl, me, se))
        rows, cols = peaks[:, 0], peaks[:, 1]
        scores.append((lmap[rows, cols] - ml) / sl + ENERGY_WEIGHT * (emap[rows, cols] - me) / se)
    ml, sl, me, se = (float(v) for v in np.median(np.array(stats), axis=0))
    # the energy map is the third map of _select's statistics (locate, energy, energy)
    null = NullModel(np.concatenate(scores), NOISE_REALISATIONS, [(ml, sl), (me, se), (me, se)])
    _BLOB_NULL[key] = null
    return null


def pick_blobs(
    micrograph: Any,
    pixel_size: float,
    diameter: float,
    *,
    ctf: MicrographCtf | None = None,
    threshold: float | None = None,
) -> Picks:
    """Reference-free picking of particles of ``diameter`` Å (see the module docstring).

    Parameters
    ----------
    micrograph : (ny, nx) float, NumPy or CuPy
    pixel_size : Å per pixel
    diameter : Å, the particle's longest extent
    ctf : the micrograph's CTF (phase flipping); None inverts the contrast instead
    threshold : figure of merit to exceed (None: the automatic noise floor)
    """
    work = _Work(micrograph, pixel_size, diameter, ctf, whiten=ctf is not None)
    lmap, emap = _blob_maps(work)
    locate, energy = work.host(lmap), work.host(emap)
    return _select(
        work,
        locate,
        [locate, energy],
        [1.0, ENERGY_WEIGHT],
        _blob_null(work),
        threshold,
        energy,
        recentre=None if ctf is None else (lambda peaks: _mass_centres(work, peaks)),
    )


# --------------------------------------------------------------------------------------
# template picking


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
