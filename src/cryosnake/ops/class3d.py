"""3D classification: maximum-likelihood multi-reference refinement of K classes.

The image model is refine3d's (:mod:`cryosnake.ops.refine3d`): particle ``i`` is the
CTF-modulated, shifted projection of one of K maps ``V_k`` plus Gaussian noise of power
``sigma2`` per shell, now with an unknown class ``k`` of prior probability ``pi_k``.

An iteration:

1. **Pose search against each class** (global on a uniform grid for the first
   ``global_iterations``, then local around the particle's pose in that class, with the
   angular step halving as in refine3d): every particle gets its best pose in every
   class and the noise-whitened, CTF-weighted correlation ``s_ik`` there. Each particle
   keeps one pose per class, so a class of another shape (a partial complex, junk)
   aligns on its own terms. Searching only the classes a particle is likely to join,
   and scoring the others at the pose of its class, would be K times cheaper but was
   measured to hold particles in their first class (700 particles of two states: 77 %
   sorted right after 8 iterations, against 99 %): a pose borrowed from another class
   is not the best in this one, so this class scores low.

   The search (and so the comparison of the classes) uses the shells up to the
   resolution of the worst-resolved class that holds at least ``MIN_SHARE / K`` of the
   particles, and no further: beyond it only the better-resolved maps (those of the
   larger classes) hold signal, and they would win the particles of the others by that
   extra detail alone (measured: with 3 more shells, as refine3d searches, 700
   particles of two states drifted to shares 1/3 and 2/3, 84 % sorted right; without,
   99 %).
2. **Class posteriors (E-step)**: with the scale of the projection fitted per particle
   (as refine3d's score does, so maps of any scale compare), the log-likelihood of
   class ``k`` at a pose of score ``s`` is ``s^2 / 2`` plus a constant of the particle
   (the sum over the half plane with the Hermitian weights counts every independent
   Fourier component twice). Marginalised over the poses searched (uniform prior:
   :func:`cryosnake.ops.pose_search.log_mean_likelihood`, RELION's sum over poses
   restricted to the grid searched), it gives ``L_ik`` and
   ``p_ik = pi_k exp(L_ik) / sum_j pi_j exp(L_ij)``. (Measured on 2000 particles of two
   states: 88.9 % sorted right, against 88.3 % with the best pose's likelihood alone.)
3. **M-step**: ``pi_k`` = mean posterior; each class map is reconstructed from every
   particle with ``p_ik`` >= :data:`MIN_POSTERIOR`, each inserted at its class-``k`` pose
   times ``p_ik`` (:func:`cryosnake.ops.refine3d.reconstruct_halves` with weights). The
   FSC between the class's two half sets (the particles' fixed random halves) sets the
   class's Wiener filter with ``tau2_fudge`` (RELION's ``T``, 4 by default in 3D
   classification: classes are filtered less, so that they can tell apart) and the
   class's resolution (FSC 0.143; not gold standard: both halves were aligned to one
   map). The filtered, masked maps are the next references; a class that got fewer
   than 2 particles' weight in a half keeps its map.
4. **Noise**: ``sigma2`` per shell is the mean residual power of each particle against
   its most probable class, at that class's pose.

**Start.** From K given maps, the classes start from them (low-passed and masked). From
one map, the first iteration aligns every particle to it once and then assigns the
particles to the K classes at random (seeded), as RELION does, so that the K maps start
from the same structure and differ by the noise of their particles; the E-steps that
follow let them drift apart wherever the data are heterogeneous.

Stops when fewer than ``min_change`` of the particles changed class in the last two
iterations and the angular step has reached the sampling the resolution needs, or after
``max_iterations``.

Devices and memory are as refine3d's: the searches and reconstructions run on ``xp``'s
device, one class at a time, with batches planned from the free memory; the spectra may
be streamed; the state (K poses per particle, the K maps) stays on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cryosnake.backend import take_rows
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import refine3d as r3
from cryosnake.ops.pose_search import global_search, local_search

__all__ = [
    "ClassSettings",
    "ClassState",
    "class_iteration",
    "class_posteriors",
    "initial_class_state",
]

MIN_POSTERIOR = 1e-3  # smaller class posteriors are not inserted
MIN_SHARE = 0.25  # classes under MIN_SHARE / K of the particles do not limit the shells


@dataclass(frozen=True)
class ClassSettings:
    """Parameters of a 3D classification.

    classes : K
    search : the pose search, mask, symmetry and batches (refine3d's settings;
        ``search.tau2_fudge`` is the classes' ``T``, ``search.max_iterations`` the
        iterations at most; ``global_iterations`` >= ``max_iterations``: global search
        throughout)
    min_change : stop once fewer than this fraction of the particles changed class in
        each of the last two iterations (and the angular step is fine enough)
    seed : of the random assignment when the classes start from one map
    """

    classes: int
    search: r3.RefineSettings
    min_change: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ValueError("classes must be >= 1")
        if not 0 <= self.min_change < 1:
            raise ValueError("min_change must be in [0, 1)")


@dataclass
class ClassState:
    """Everything an iteration needs and produces; a checkpoint is exactly this.

    matrices : (K, n, 3, 3) each particle's rotation in each class; shifts : (K, n, 2) px
    posteriors : (n, K) class probabilities; halves : (n,) 0 or 1
    references : (K, b, b, b) float32 masked, filtered class maps (the next references)
    fractions : (K,) class distribution (mean posterior)
    sigma2 : (b//2+1,) noise power per shell; fsc : (K, b//2+1) FSC of each class's halves
    resolutions : (K,) Å at FSC 0.143 (inf: not reconstructed yet)
    step : degrees, last angular step; r_max : shells of the next search
    iteration : iterations done; changes : fraction of particles that changed class in
    each iteration; converged : the stop criterion was met
    """

    matrices: np.ndarray
    shifts: np.ndarray
    posteriors: np.ndarray
    halves: np.ndarray
    references: np.ndarray
    fractions: np.ndarray
    sigma2: np.ndarray
    fsc: np.ndarray
    resolutions: np.ndarray
    step: float
    r_max: int
    iteration: int = 0
    changes: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def classes(self) -> np.ndarray:
        """(n,) the most probable class of each particle (0-based)."""
        return np.asarray(np.argmax(self.posteriors, axis=1))

    @property
    def resolution(self) -> float:
        """Å: the best class's resolution."""
        return float(np.min(self.resolutions))


def initial_class_state(
    spectra: Any,
    references: list[np.ndarray],
    pixel_size: float,
    initial_lowpass: float,
    settings: ClassSettings,
    halves: np.ndarray,
) -> ClassState:
    """K references: the given maps (one per class), or ``settings.classes`` copies of
    one, low-passed to ``initial_lowpass`` Å and masked; noise and search shells as
    refine3d starts them."""
    k = settings.classes
    if len(references) not in (1, k):
        raise ValueError(f"{len(references)} references for {k} classes: give 1 or {k}")
    first = r3.initial_refine_state(
        spectra, references[0], pixel_size, initial_lowpass, settings.search, halves
    )
    maps = [first.references[0]]
    for ref in references[1:]:
        box = ref.shape[0]
        maps.append(
            r3.lowpass_volume(ref, pixel_size, initial_lowpass)
            * r3.soft_sphere(box, settings.search.mask_diameter)
        )
    if len(maps) == 1:
        maps = maps * k
    n = len(spectra)
    box = int(spectra.shape[1])
    return ClassState(
        matrices=np.tile(np.eye(3), (k, n, 1, 1)),
        shifts=np.zeros((k, n, 2)),
        posteriors=np.full((n, k), 1.0 / k),
        halves=first.halves,
        references=np.stack(maps).astype(np.float32),
        fractions=np.full(k, 1.0 / k),
        sigma2=first.sigma2,
        fsc=np.zeros((k, box // 2 + 1)),
        resolutions=np.full(k, np.inf),
        step=first.step,
        r_max=first.r_max,
    )


def class_posteriors(log_likelihood: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(n, K) posteriors from (n, K) log-likelihoods and (K,) priors (see the module
    docstring); a class of prior 0 gets posterior 0."""
    with np.errstate(divide="ignore"):
        log_p = np.asarray(log_likelihood, dtype=np.float64) + np.log(fractions)[None, :]
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def _search(
    spectra: Any,
    ctf_params: np.ndarray,
    pixel_size: float,
    state: ClassState,
    settings: ClassSettings,
    step: float,
    shift_step: float,
    is_global: bool,
    xp: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best pose of every particle in every class and its log-likelihood marginalised
    over the poses searched: (K, n, 3, 3), (K, n, 2), (n, K). Identical maps are
    searched once."""
    box = int(spectra.shape[1])
    search = settings.search
    r_search = state.r_max
    if is_global:
        coarse = r3.grid_resolution(search.global_step, search.mask_diameter * pixel_size)
        r_search = min(state.r_max, max(4, r3.resolution_shell(coarse, box, pixel_size)))
    k, n = state.matrices.shape[:2]
    matrices, shifts = state.matrices.copy(), state.shifts.copy()
    scores = np.zeros((n, k))
    done: list[int] = []
    for c in range(k):
        same = [j for j in done if np.array_equal(state.references[j], state.references[c])]
        if same and is_global:
            j = same[0]
            matrices[c], shifts[c], scores[:, c] = matrices[j], shifts[j], scores[:, j]
            continue
        projector = fs.Projector.from_volume(xp.asarray(state.references[c]), r_search)
        if is_global:
            m, t, s = global_search(
                spectra, ctf_params, projector, box, pixel_size, state.sigma2, r_search, search,
                marginal=True,
            )  # fmt: skip
        else:
            m, t, s = local_search(
                spectra, ctf_params, projector, box, pixel_size, state.sigma2, state.r_max,
                state.matrices[c], state.shifts[c], step, shift_step, search,
                marginal=True,
            )  # fmt: skip
        del projector
        matrices[c], shifts[c], scores[:, c] = m, t, s
        done.append(c)
    return matrices, shifts, scores


def class_iteration(
    spectra: Any,
    ctf_params: np.ndarray,
    pixel_size: float,
    state: ClassState,
    settings: ClassSettings,
    xp: Any = np,
) -> tuple[ClassState, list[dict[str, Any] | None]]:
    """One iteration (see the module docstring) on ``xp``'s device; returns the new
    state and each class's reconstruction (:func:`cryosnake.ops.refine3d.reconstruct_halves`
    without its back-projectors; None for a class that kept its map)."""
    search = settings.search
    box = int(spectra.shape[1])
    n = len(spectra)
    k = settings.classes
    it = state.iteration + 1
    is_global = it <= search.global_iterations
    target = r3.needed_step(
        state.resolution if np.isfinite(state.resolution) else 2.0 * box * pixel_size,
        search.mask_diameter * pixel_size,
        search.final_step,
    )
    step = search.global_step if is_global else max(target, state.step / 2.0)
    shift_step = float(np.clip(math.radians(step) * search.mask_diameter / 4.0, 0.1, 1.0))
    matrices, shifts, log_likelihood = _search(
        spectra, ctf_params, pixel_size, state, settings, step, shift_step, is_global, xp
    )
    one_map = k > 1 and all(
        np.array_equal(state.references[0], state.references[c]) for c in range(1, k)
    )
    if one_map and state.iteration == 0:
        # Start from one map: a random (seeded) assignment breaks the symmetry.
        assigned = np.random.default_rng(settings.seed).integers(0, k, n)
        posteriors = np.eye(k)[assigned]
    else:
        posteriors = class_posteriors(log_likelihood, state.fractions)
    fractions = posteriors.mean(axis=0)
    mask = r3.soft_sphere(box, search.mask_diameter)
    references = state.references.copy()
    fsc_curves = state.fsc.copy()
    resolutions = state.resolutions.copy()
    recs: list[dict[str, Any] | None] = []
    for c in range(k):
        sel = np.flatnonzero(posteriors[:, c] >= MIN_POSTERIOR)
        w = posteriors[sel, c]
        halves = state.halves[sel]
        if min(w[halves == 0].sum(), w[halves == 1].sum()) < 2.0:
            recs.append(None)
            continue
        rec = r3.reconstruct_halves(
            take_rows(spectra, sel), ctf_params[sel], matrices[c][sel], shifts[c][sel], halves,
            state.sigma2, pixel_size, search.mask_diameter, tau2_fudge=search.tau2_fudge,
            batch=search.batch or None, symmetry=search.symmetry, weights=w, xp=xp,
        )  # fmt: skip
        rec["bp"] = None
        references[c] = rec["full"] * mask
        fsc_curves[c] = rec["fsc"]
        resolutions[c] = float(rec["resolution"])
        recs.append(rec)
    best = np.argmax(posteriors, axis=1)
    sigma2 = r3.residual_noise(
        spectra, ctf_params, references, best, matrices[best, np.arange(n)],
        shifts[best, np.arange(n)], pixel_size, xp,
    )  # fmt: skip
    previous = state.classes
    change = 1.0 if state.iteration == 0 else float(np.mean(best != previous))
    changes = [*state.changes, change]
    # The classes are compared on the shells where all of them hold signal, up to the
    # worst-resolved class's resolution (classes with a share under MIN_SHARE / K not
    # counted), and no further: there a better-resolved map, the larger class's, would
    # win every particle by its extra detail alone and take the particles of the others.
    counted = np.isfinite(resolutions) & (fractions >= MIN_SHARE / k)
    r_max = state.r_max
    if counted.any():
        worst = float(resolutions[counted].max())
        r_max = min(box // 2 - 1, r3.resolution_shell(worst, box, pixel_size))
        r_max = max(r_max, state.r_max if is_global else 4)
    settled = len(changes) >= 2 and max(changes[-2:]) < settings.min_change
    converged = bool(not is_global and step <= target * 1.0001 and settled)
    new = replace(
        state,
        matrices=matrices,
        shifts=shifts,
        posteriors=posteriors,
        references=references.astype(np.float32),
        fractions=fractions,
        sigma2=sigma2,
        fsc=fsc_curves,
        resolutions=resolutions,
        step=step,
        r_max=int(r_max),
        iteration=it,
        changes=changes,
        converged=converged,
    )
    return new, recs
