"""Reference-free blob picking (after RELION's LoG picker and Laplacian-of-Gaussian
blob detection), on the working image of :mod:`cryosnake.ops.pick.filters`:

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
   ``sigma =`` :data:`~cryosnake.ops.pick.filters.BLOB_SIGMA` ``r``, i.e. a positive
   core of radius ``0.7 r``.
4. Local energy ``E``: the square of the micrograph band-passed between Gaussians
   of ``0.1 r`` and ``0.53 r``, smoothed over ``0.33 r``. Phase contrast puts most of
   a particle's signal at frequencies where its sign alternates; the energy collects it
   whatever its sign.
5. Candidates: maxima of ``L`` at least :data:`~cryosnake.ops.pick.select.SEPARATION`
   diameter apart (non-maximum suppression), refined to sub-pixel by parabolas. Figure
   of merit: ``zL + zE``. With a CTF these are first z-scores against the whitened
   background itself (the median and robust sd of the same maps of white noise). When
   the candidates that pass the threshold on those scores leave at least
   :data:`~cryosnake.ops.pick.select.MIN_FREE` of the micrograph (outside junk) farther
   than ``r`` from them, that free area measures the background directly: the scores
   become robust z-scores (median, 1.4826 MAD) against its pixels. A crowded
   micrograph keeps the spectral background; a sparse one uses its own empty pixels,
   which also see noise the zeros cannot (a low-frequency rise). Without a CTF, robust
   z-scores against background pixels, i.e. pixels outside junk and outside the discs of
   radius ``r`` around provisional particles.
6. With a CTF, each pick moves to its particle's centre of mass (:func:`_mass_centres`):
   the blob detector finds a particle's densest part, which for a ring, a rod, a
   dumbbell or an oligomer is not its centre.
7. A candidate within :data:`~cryosnake.ops.pick.select.SHOULDER_DISTANCE` diameters of
   one whose figure of merit is :data:`~cryosnake.ops.pick.select.SHOULDER_RATIO` times
   its own is a shoulder of that particle (its outer density or a fringe), not a
   particle of its own.

Steps 5 and 7, the automatic threshold and the rejection of edge, ice and aggregate
picks are :func:`cryosnake.ops.pick.select._select`'s; the null model is the blob
figures of merit of white noise (:func:`_blob_null`, :mod:`cryosnake.ops.pick.null`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cryosnake.ops.pick.filters import MicrographCtf, _Work
from cryosnake.ops.pick.null import NullModel, robust
from cryosnake.ops.pick.peaks import find_peaks
from cryosnake.ops.pick.select import SEPARATION, Picks, _select

__all__ = [
    "MASS_RADIUS",
    "WIENER",
    "pick_blobs",
]

WIENER = 1.0  # blob centres: CTF correction CTF / (CTF² + this)
MASS_RADIUS = 1.0  # blob picks: centre of mass within this x r (one mean-shift step)
ENERGY_WEIGHT = 1.0  # figure of merit of blob picks: zL + ENERGY_WEIGHT * zE
NOISE_REALISATIONS = 16  # white-noise images for the null distribution of blob scores


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
