"""Ab initio 3D reconstruction without a reference, and the alignment of two maps.

**Ab initio** (:func:`ab_initio`): stochastic hard expectation-maximisation on
mini-batches, in the spirit of cryoSPARC's stochastic gradient descent (Punjani et al.
2017), at low resolution:

1. The particles are Fourier-cropped to a working box whose Nyquist is about a third of
   the final resolution (:func:`working_box`).
2. Start: the particles inserted at random orientations (a featureless blob of about the
   right size and power), low-passed to the start resolution and masked with a soft
   sphere of the particle diameter.
3. Each iteration draws a mini-batch of particles, gives each the orientation (uniform
   grid of ``step`` degrees) and shift of best noise-whitened, CTF-weighted correlation
   with the current map's projections (:mod:`cryosnake.ops.refine3d`), and
   reconstructs the batch at those poses (CTF-weighted Fourier insertion, Wiener
   regularised). The map moves towards it: ``V <- (1 - eta) V + eta R_batch``, the
   stochastic-gradient step of the least-squares objective with learning rate ``eta``
   (0.5 at first, then decaying as ``1 / sqrt(t)`` to 0.1); it is then masked, kept
   non-negative (particles are white: density is positive) and low-passed to the
   iteration's resolution, which goes from ``start_resolution`` to ``resolution``
   over the iterations. Random batches break the symmetry of the start and avoid the
   local optima of a full-data EM from a blob. Steps 2-3 run ``attempts`` times from
   independent starts; the map to which 1000 particles fit best (mean normalised
   correlation of their best poses) is kept, as a wrong map fits the data worse.
4. :data:`FINAL_PASSES` passes over all particles then align each to the map and
   reconstruct them (full-data hard EM from the start the mini-batches found).

The result has the handedness of the data or its mirror image: projections cannot tell
them apart. Refinement (``refine3d``) starts from it.

**Alignment of maps** (:func:`align_volumes`): the rotation, mirror and shift that best
superimpose one map on another, for comparing an ab initio map with the truth: global
search over a uniform rotation grid for the map and its mirror (correlation over all
shifts by FFT at each rotation, low-passed), then local refinement on finer grids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cryosnake.backend import take_rows, to_host
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import pose_search as ps
from cryosnake.ops import refine3d as r3
from cryosnake.ops.rotation import random_rotations
from cryosnake.ops.symmetry import symmetry_group

__all__ = [
    "CHECKPOINT_EVERY",
    "FINAL_PASSES",
    "AbInitioSettings",
    "AbInitioState",
    "ab_initio",
    "align_volumes",
    "crop_spectra",
    "pad_volume",
    "rotate_volume",
    "working_box",
]

FINAL_PASSES = 3  # full-data passes after the mini-batches
JUDGE_PARTICLES = 1000  # particles whose fit picks the best attempt


@dataclass(frozen=True)
class AbInitioSettings:
    """Parameters (lengths in Å unless said otherwise).

    diameter : particle diameter (mask)
    resolution : final resolution of the ab initio map
    start_resolution : resolution of the first iterations
    iterations : mini-batch iterations
    batch : particles per mini-batch
    step : degrees, orientation sampling
    max_shift : translation search radius
    seed : random generator seed (start, batches)
    attempts : independent runs of steps 2-3; the map the particles fit best is kept
    symmetry : point group (C1, C<n>, D<n>, T, O, I), imposed by the insertion
    """

    diameter: float
    resolution: float = 20.0
    start_resolution: float = 40.0
    iterations: int = 40
    batch: int = 300
    step: float = 15.0
    max_shift: float = 15.0
    seed: int = 0
    attempts: int = 3
    symmetry: str = "C1"

    def __post_init__(self) -> None:
        if self.diameter <= 0 or self.resolution <= 0 or self.start_resolution <= 0:
            raise ValueError("diameter and resolutions must be > 0")
        if self.iterations < 1 or self.batch < 2 or self.attempts < 1:
            raise ValueError("iterations and attempts must be >= 1 and batch >= 2")
        symmetry_group(self.symmetry)  # a ValueError names an unknown group


def working_box(box: int, pixel_size: float, resolution: float) -> int:
    """Even working box whose Nyquist is about ``resolution / 3`` Å (at most ``box``)."""
    target = 2.0 * box * pixel_size / (resolution / 1.5)
    w = int(math.ceil(target / 2.0)) * 2
    return int(min(box, max(24, w)))


def crop_spectra(spectra: Any, w: int) -> Any:
    """(n, w, w//2+1): the low frequencies of (n, b, b//2+1) half-plane spectra
    (origin at index 0), i.e. the images Fourier-cropped to ``w`` px. Of a lazy source
    (one with ``map_rows``, :class:`~cryosnake.stages._images.ParticleSpectra`), a lazy
    source of the cropped spectra."""
    b = int(spectra.shape[1])
    if not isinstance(spectra, np.ndarray) and hasattr(spectra, "map_rows"):
        if w >= b:
            return spectra
        return spectra.map_rows(lambda s: crop_spectra(s, w), (w, w // 2 + 1))
    if w >= b:
        return np.asarray(spectra)
    rows = np.r_[0 : w // 2, b - w // 2 : b]
    out = np.asarray(spectra)[:, rows, : w // 2 + 1].copy()
    out[:, w // 2, :] = 0.0  # the new Nyquist row and column are ambiguous
    out[:, :, w // 2] = 0.0
    return out


def pad_volume(volume: np.ndarray, box: int) -> np.ndarray:
    """Fourier-pad an (w, w, w) map to (box, box, box) (the same map, finer sampling)."""
    w = volume.shape[0]
    if box == w:
        return np.asarray(volume, dtype=np.float32)
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(np.asarray(volume, np.float64))))
    out = np.zeros((box, box, box), dtype=complex)
    lo = box // 2 - w // 2
    out[lo : lo + w, lo : lo + w, lo : lo + w] = spec
    vol = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(out))).real
    return (vol * (box / w) ** 3).astype(np.float32)


def _noise_spectrum(spectra: Any) -> np.ndarray:
    w = int(spectra.shape[1])
    ky = np.fft.fftfreq(w) * w
    kx = np.arange(w // 2 + 1)
    shells = np.minimum(np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)), w // 2)
    shells = shells.astype(np.int64).ravel()
    power, mean = r3.spectra_moments(spectra, len(spectra))
    total = np.bincount(shells, weights=power - np.abs(mean) ** 2, minlength=w // 2 + 1)
    sigma2 = total / np.maximum(np.bincount(shells, minlength=w // 2 + 1), 1)
    return np.maximum(sigma2, 1e-6 * float(sigma2.max()))


def _reconstruct(
    spectra: Any,
    ctf: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    sigma2: np.ndarray,
    pixel_size: float,
    snr: float,
    symmetry: str,
    xp: Any,
) -> np.ndarray:
    w = int(spectra.shape[1])
    bp = fs.BackProjector.zeros(w, xp=xp)
    r3.insert_particles(bp, spectra, ctf, matrices, shifts, sigma2, pixel_size, None, symmetry)
    return r3.wiener_map(bp, np.full(w // 2 + 1, snr), 1.0)


def _projector(volume: np.ndarray, r_max: int, xp: Any) -> fs.Projector:
    return fs.Projector.from_volume(xp.asarray(volume, dtype=xp.float32), r_max)


@dataclass
class AbInitioState:
    """Where :func:`ab_initio` stands, enough to go on exactly as if never stopped.

    ``attempt``: attempts finished; ``t``: mini-batches done in the current attempt
    (``volume`` its map, None before its start); ``best_volume`` / ``best_fit``: the
    best finished attempt; ``passes``: final passes done (``volume`` then the map of the
    last pass, ``matrices`` / ``shifts`` its poses); ``rng``: the generator's state;
    ``judge``: the particles that judge the attempts. Maps are NumPy arrays.
    """

    attempt: int
    t: int
    passes: int
    best_fit: float
    rng: dict[str, Any]
    judge: np.ndarray
    volume: np.ndarray | None = None
    best_volume: np.ndarray | None = None
    matrices: np.ndarray | None = None
    shifts: np.ndarray | None = None


# Mini-batches between two checkpoints within an attempt (each attempt's end is one too).
CHECKPOINT_EVERY = 10


def _start(
    data: Any, ctf: np.ndarray, px: float, sigma2: np.ndarray, mask: Any,
    settings: AbInitioSettings, rng: np.random.Generator, xp: Any,
) -> Any:  # fmt: skip
    """Step 2: the particles of a random subset inserted at random orientations."""
    n = int(data.shape[0])
    sub = rng.choice(n, size=min(n, 2000), replace=False)
    start = _reconstruct(
        take_rows(data, sub), ctf[sub], random_rotations(len(sub), rng), np.zeros((len(sub), 2)),
        sigma2, px, 1.0, settings.symmetry, xp,
    )  # fmt: skip
    return r3.lowpass_volume(np.maximum(start * mask, 0.0), px, settings.start_resolution)


def _descend(
    data: Any,
    ctf: np.ndarray,
    px: float,
    sigma2: np.ndarray,
    mask: Any,
    settings: AbInitioSettings,
    search: r3.RefineSettings,
    rng: np.random.Generator,
    state: AbInitioState,
    progress: Callable[[str], None] | None,
    save: Callable[[AbInitioState], None] | None,
    xp: Any,
) -> Any:
    """Step 3 of attempt ``state.attempt`` from mini-batch ``state.t + 1``: its map."""
    n, w = int(data.shape[0]), int(data.shape[1])
    volume = to_host(state.volume)  # the map stays on the host between mini-batches
    batch = min(settings.batch, n)
    for t in range(state.t + 1, settings.iterations + 1):
        frac = (t - 1) / max(settings.iterations - 1, 1)
        res = settings.start_resolution + frac * (settings.resolution - settings.start_resolution)
        r_max = max(3, int(math.ceil(w * px / res)))
        pick = rng.choice(n, size=batch, replace=False)
        batch_data = xp.asarray(take_rows(data, pick)[:])  # read once if streamed
        m, s, _ = ps.global_search(
            batch_data, ctf[pick], _projector(volume, r_max, xp), w, px, sigma2, r_max, search
        )
        recon = _reconstruct(batch_data, ctf[pick], m, s, sigma2, px, 1.0, settings.symmetry, xp)
        eta = max(0.1, 0.5 / math.sqrt(t))
        volume = (1.0 - eta) * volume + eta * recon
        volume = r3.lowpass_volume(np.maximum(volume * mask, 0.0), px, res)
        if progress is not None and (t % 10 == 0 or t == settings.iterations):
            progress(
                f"attempt {state.attempt + 1}/{settings.attempts}: mini-batch "
                f"{t}/{settings.iterations} at {res:.1f} Å"
            )
        if save is not None and t % CHECKPOINT_EVERY == 0 and t < settings.iterations:
            state.t, state.volume, state.rng = t, to_host(volume), dict(rng.bit_generator.state)
            save(state)
    return volume


def ab_initio(
    spectra: Any,
    ctf: np.ndarray,
    pixel_size: float,
    settings: AbInitioSettings,
    progress: Callable[[str], None] | None = None,
    xp: Any = np,
    resume: AbInitioState | None = None,
    save: Callable[[AbInitioState], None] | None = None,
) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """Ab initio map from particle spectra (see the module docstring), computed on the
    device of the array module ``xp`` (the cropped spectra are moved there once).

    Parameters
    ----------
    spectra : (n, b, b//2+1) complex, :func:`cryosnake.ops.refine3d.particle_spectra`:
        an array, or a lazy source of them (streamed particles, read batch by batch:
        :mod:`cryosnake.ops.refine3d`, "Devices and memory")
    ctf : (n, 7) CTF parameters (:data:`cryosnake.ops.ctf.CTF_COLUMNS`)
    pixel_size : Å per pixel of the particles
    progress : called with a line of progress now and then
    xp : :mod:`numpy` or :mod:`cupy`
    resume : a state that ``save`` was given: go on from there, to the result an
        uninterrupted run gives
    save : called with the state every :data:`CHECKPOINT_EVERY` mini-batches, after
        every attempt and after every final pass (a checkpoint)

    Returns
    -------
    (w, w, w) float32 map on the working box, its pixel size, and the final poses
    (``matrices`` (n, 3, 3), ``shifts`` (n, 2) in pixels of the particles' box)
    """
    n, b = int(spectra.shape[0]), int(spectra.shape[1])
    w = working_box(b, pixel_size, settings.resolution)
    px = pixel_size * b / w
    cropped = crop_spectra(spectra, w)
    sigma2 = _noise_spectrum(cropped)
    # A lazy source (streamed particles) stays one: its batches move to xp when read.
    data = xp.asarray(cropped) if isinstance(cropped, np.ndarray) else cropped
    rng = np.random.default_rng(settings.seed)
    mask = r3.soft_sphere(w, settings.diameter / px, edge=3.0)
    diameter_px = settings.diameter / px
    search = r3.RefineSettings(
        mask_diameter=diameter_px,
        max_shift=settings.max_shift / px,
        global_step=settings.step,
        symmetry=settings.symmetry,
    )
    r_max = max(3, int(math.ceil(w * px / settings.resolution)))
    if resume is None:
        judge = rng.choice(n, size=min(n, JUDGE_PARTICLES), replace=False)
        state = AbInitioState(attempt=0, t=0, passes=0, best_fit=-np.inf, rng={}, judge=judge)
    else:
        state = resume
        rng.bit_generator.state = state.rng
    while state.attempt < settings.attempts:
        if state.t == 0:
            state.volume = to_host(_start(data, ctf, px, sigma2, mask, settings, rng, xp))
        volume = _descend(
            data, ctf, px, sigma2, mask, settings, search, rng, state, progress, save, xp
        )
        # The attempt whose map the particles fit best (mean normalised correlation).
        judge = state.judge
        _, _, score = ps.global_search(
            take_rows(data, judge), ctf[judge], _projector(volume, r_max, xp), w, px, sigma2, r_max,
            search,
        )  # fmt: skip
        fit = float(np.mean(score))
        if progress is not None:
            progress(f"attempt {state.attempt + 1}: mean correlation of the particles {fit:.5f}")
        if fit > state.best_fit:
            state.best_volume, state.best_fit = to_host(volume), fit
        state.attempt, state.t, state.volume = state.attempt + 1, 0, None
        state.rng = dict(rng.bit_generator.state)
        if save is not None:
            save(state)
    assert state.best_volume is not None
    volume = state.best_volume if state.passes == 0 else state.volume
    m, s = state.matrices, state.shifts
    for k in range(state.passes, FINAL_PASSES):
        if progress is not None:
            progress(f"full pass {k + 1}/{FINAL_PASSES} over {n} particles")
        m, s, _ = ps.global_search(
            data, ctf, _projector(xp.asarray(volume), r_max, xp), w, px, sigma2, r_max, search
        )
        final = _reconstruct(data, ctf, m, s, sigma2, px, 1.0, settings.symmetry, xp)
        volume = r3.lowpass_volume(np.maximum(final * mask, 0.0), px, settings.resolution)
        state.passes, state.volume = k + 1, to_host(volume)
        state.matrices, state.shifts = to_host(m), to_host(s)
        if save is not None:
            save(state)
    assert m is not None and s is not None
    return (
        to_host(volume).astype(np.float32),
        px,
        {"matrices": to_host(m), "shifts": to_host(s) * (b / w)},
    )


# ------------------------------------------------------------------ map alignment


def rotate_volume(
    volume: np.ndarray, matrix: np.ndarray, shift: np.ndarray | None = None
) -> np.ndarray:
    """``out(r) = volume(A^T (r - shift))`` about the centre voxel ``n // 2``: the map
    rotated by ``A`` (coordinates (x, y, z), trilinear), then shifted (voxels)."""
    n = volume.shape[0]
    c = np.full(3, n // 2, dtype=np.float64)
    a = np.asarray(matrix, dtype=np.float64)
    t = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64)
    # array axes are (z, y, x): reverse the coordinate order
    perm = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float64)
    m = perm @ a.T @ perm
    offset = c - m @ (c + perm @ t)
    return ndimage.affine_transform(volume, m, offset=offset, order=1, mode="constant")


def _best_shift(volume: np.ndarray, ref_spec: np.ndarray) -> tuple[float, np.ndarray]:
    corr = np.fft.irfftn(np.fft.rfftn(volume) * np.conj(ref_spec), s=volume.shape, axes=(0, 1, 2))
    idx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    n = volume.shape[0]
    shift_zyx = np.array([(i + n // 2) % n - n // 2 for i in idx], dtype=np.float64)
    return float(corr[idx]), -shift_zyx[::-1]  # (x, y, z) voxels moving -> reference


def align_volumes(
    moving: np.ndarray,
    reference: np.ndarray,
    pixel_size: float,
    *,
    resolution: float = 20.0,
    step: float = 20.0,
) -> tuple[np.ndarray, dict[str, object]]:
    """``moving`` rotated, mirrored if that fits better, and shifted onto ``reference``.

    Returns the aligned map and ``{"matrix", "mirror", "shift", "correlation"}``.
    """
    a = r3.lowpass_volume(np.asarray(moving, np.float64), pixel_size, resolution)
    ref = r3.lowpass_volume(np.asarray(reference, np.float64), pixel_size, resolution)
    ref = (ref - ref.mean()) / max(float(ref.std()), 1e-30)
    ref_spec = np.fft.rfftn(ref)

    def score(vol: np.ndarray, matrix: np.ndarray) -> tuple[float, np.ndarray]:
        rotated = rotate_volume(vol, matrix)
        rotated = (rotated - rotated.mean()) / max(float(rotated.std()), 1e-30)
        value, shift = _best_shift(rotated, ref_spec)
        return value / rotated.size, shift

    best: tuple[float, np.ndarray, bool, np.ndarray] = (-np.inf, np.eye(3), False, np.zeros(3))
    for mirror in (False, True):
        vol = a[::-1].copy() if mirror else a
        for matrix in ps.fibonacci_rotations(step):
            value, shift = score(vol, matrix)
            if value > best[0]:
                best = (value, matrix, mirror, shift)
    value, matrix, mirror, shift = best
    vol = a[::-1].copy() if mirror else a
    s = step / 2.0
    for _ in range(4):
        for delta in ps.axis_rotations(s):
            cand = delta @ matrix
            v, sh = score(vol, cand)
            if v > value:
                value, matrix, shift = v, cand, sh
        s /= 2.0
    source = np.asarray(moving, np.float64)
    source = source[::-1].copy() if mirror else source
    aligned = rotate_volume(source, matrix)
    aligned = ndimage.shift(aligned, shift[::-1], order=1, mode="constant")
    return aligned.astype(np.float32), {
        "matrix": matrix,
        "mirror": mirror,
        "shift": shift,
        "correlation": value,
    }
