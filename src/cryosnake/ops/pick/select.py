"""From a localisation map to picks: figure of merit, threshold and rejection.

:func:`_select`, the same for both pickers: candidates are the maxima of the
localisation map at least :data:`SEPARATION` diameter apart (non-maximum suppression),
refined to sub-pixel by parabolas. Their figure of merit is a weighted sum of z-scores
of the picker's maps against the micrograph's background (the pickers' modules say
which maps and which background), and the threshold is the automatic one of
:mod:`cryosnake.ops.pick.null` unless given. A candidate within
:data:`SHOULDER_DISTANCE` diameters of one whose figure of merit is
:data:`SHOULDER_RATIO` times its own is a shoulder of that particle, not a particle.

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
  :data:`~cryosnake.ops.pick.template.TEMPLATE_PROFILE_Z` rather than
  :data:`PROFILE_Z`: at 2 it rejects about 4 % of true particles (their profiles vary
  with their views), and the uniqueness test now catches many of the particle-like
  parts of aggregates it was needed for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from cryosnake.ops.pick.filters import _Work
from cryosnake.ops.pick.null import NullModel, background_stats, fdr_threshold, robust
from cryosnake.ops.pick.peaks import disc, find_peaks, refine_peaks, stamp

__all__ = [
    "BACKGROUND_SCALE",
    "CONTRAST_Z",
    "DENSE_Z",
    "MIN_FREE",
    "MIN_POPULATION",
    "PROFILE_Z",
    "RIVAL_RING",
    "RIVAL_Z",
    "SEPARATION",
    "SHOULDER_DISTANCE",
    "SHOULDER_RATIO",
    "UNSET_PSI",
    "Picks",
]

MIN_FREE = 0.7  # blob picks: this much of the micrograph free of particles: measure it there
SEPARATION = 0.8  # candidates at least this many diameters apart (non-maximum suppression)
SHOULDER_DISTANCE = 1.2  # a candidate this close (diameters) to a much stronger one ...
SHOULDER_RATIO = 3.5  # ... whose figure of merit is this many times its own is a shoulder
CONTRAST_Z = 5.0  # ice/carbon: local-mean outliers, robust sd
BACKGROUND_SCALE = 3.0  # ice/carbon: background smoothing, x r
MIN_POPULATION = 8  # picks needed before outliers are judged against the population
PROFILE_Z = 2.0  # rms robust z of the radial energy profile
DENSE_Z = 8.0  # robust z of the local energy against the population
RIVAL_RING = (0.5, 1.2)  # template picks: ring of rival NCC values, x r
RIVAL_Z = 2.5  # robust z of the rival ratio (ring's highest NCC / the peak's)
UNSET_PSI = -999.0  # RELION's value of an in-plane angle that was not determined


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
