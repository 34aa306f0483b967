"""Gold-standard 3D refinement by maximum-likelihood projection matching.

Model of particle image ``i`` (``rfft2`` half plane ``X_i`` of the box ``b``, origin at
pixel ``b // 2``, contrast inverted as ``extract`` writes it)::

    X_i(k) = C_i(k) exp(-2 pi i k.t_i / b) V^(A_i^T k) + N_i(k),   E|N_i(k)|^2 = sigma2(|k|)

with ``C_i = -ctf_2d`` the particle's CTF (:func:`cryosnake.ops.ctf.model_ctf`),
``A_i`` its rotation (RELION's ``euler_to_matrix(rot, tilt, psi)``), ``t_i`` its shift
(``image(r) = projection(r - t)``; RELION's ``rlnOriginX/Y`` is ``-t``) and ``V^`` the
transform of the map (central slice theorem, :mod:`cryosnake.ops.fourier_slice`).

**Gold standard** (Scheres & Chen 2012): the particles are split once into two random
halves (or by ``rlnRandomSubset``), each refined against its own map; the two maps meet
only through the resolution estimate, so their Fourier shell correlation (FSC) measures
the reproducibility of the data, not of the refinement's noise.

An iteration, for each half:

1. **Pose search** on the shells up to ``r_max`` (a few beyond the current resolution):
   every particle takes the pose of highest noise-whitened, CTF-weighted correlation
   ``sum_k w_k Re(conj(X) C P) / sigma2 / sqrt(sum_k w_k |C P|^2 / sigma2)`` (``P`` the
   shifted projection, ``w_k`` 2 for the half plane's columns ``kx > 0``, whose mates are
   implicit, else 1): the matched filter of the Gaussian model, whose maximum over the
   scale of ``P`` is the likelihood's, so that a reference of any scale (a map from
   elsewhere) works. This is a hard assignment, the limit of RELION's marginalisation
   when posteriors are sharp, as they are at high resolution.

   - *Global* (first ``global_iterations``): all orientations of a uniform grid of
     ``global_step`` degrees (Fibonacci directions, in-plane angles every
     ``global_step``; with a point group, those of its asymmetric unit:
     :func:`cryosnake.ops.symmetry.asymmetric_unit`) x all shifts within ``max_shift``
     every pixel. For a batch of particles all poses come from one real matrix
     product: rows are the particles' CTF- and noise-weighted, shifted spectra, columns
     the projections. The shells are those the grid can tell apart
     (:func:`grid_resolution`, as RELION's coarse pass): beyond them a node half a
     step off the true pose correlates no better than any other, so those shells add
     noise to the choice and most of the cost.
   - *Local* afterwards: the 27 rotations ``A dR`` with ``dR`` a rotation by
     ``(-s, 0, s)`` about each axis (``s`` the current angular step) around the best pose,
     x 25 shifts on a 5 x 5 grid of half the shift step around the best shift. The step
     halves every iteration down to the sampling the resolution needs,
     ``resolution / diameter`` radians (a rotation by it moves the rim of the particle
     half a resolution element), at least ``final_step``.
2. **Reconstruction**: the particles' ``C X / sigma2`` and ``C^2 / sigma2`` are inserted
   at their poses into the half's back-projector (Fourier insertion, trilinear on a 2x
   padded grid, gridding-corrected), once per element of the point group
   (``symmetry``).
3. **FSC and filter**: the two half maps, reconstructed with a tiny regulariser and
   masked with a soft sphere of ``mask_diameter``, give the FSC;
   ``SSNR_half = FSC / (1 - FSC)`` sets the Wiener regulariser
   ``1 / (T tau2) = W / (T SSNR_half)`` per shell (``W`` the mean data weight of the
   shell, ``T`` = ``tau2_fudge``), which filters each half map by its own SNR (RELION's
   FSC-based tau2). The masked, filtered half maps are the next references.
4. **Noise**: ``sigma2`` per shell is the mean residual power ``|X - C P|^2`` at the new
   poses.

Projections are sampled from a :class:`cryosnake.ops.fourier_slice.Projector` (the
reference's padded transform unfolded into a cube limited to the searched shells).

**Devices and memory.** Every step runs on the device of the array module ``xp``
(NumPy, or CuPy on a GPU): the projector, the back-projectors and the batches live
there; the state (poses, maps, noise) stays on the host. The particle spectra may live
on the host and then move to the device one batch at a time (a stack of 10^5 particles
of 256 px, 27 GB, fits no GPU), or not be in memory at all: every function here only
slices them (``spectra[a:b]``, :func:`~cryosnake.backend.take_rows`,
``reshape(n, -1)``), so ``spectra`` may be a lazy source that reads and transforms the
images of each batch from their stacks when asked (the ``refine3d`` stage's
:class:`~cryosnake.stages._images.ParticleSpectra` when the stack exceeds half of the
memory budget); only the grids, the batches and per-particle metadata (poses, CTF
parameters) are then held, whatever the particle count. :func:`plan_memory` checks
before the first iteration that the grids of a box fit the device's free memory; each
search and insertion then sizes its batches from the memory free at that moment
(:func:`work_budget`), so a smaller GPU runs more, smaller batches rather than running
out of memory.

Resolution: FSC = 0.143 between the masked half maps (interpolated). Convergence: the
angular step has reached the needed sampling and the resolution has not improved by
1 % for two iterations (or ``max_iterations``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module, take_rows, to_host
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops.ctf import model_ctf
from cryosnake.ops.fsc import fsc, shell_resolution
from cryosnake.ops.pose_search import (
    MemoryPlan,
    angular_errors,
    batch_size,
    fibonacci_rotations,
    gather_rows,
    global_search,
    local_search,
    plan_memory,
    score_terms,
)
from cryosnake.ops.symmetry import symmetry_group

__all__ = [
    "MemoryPlan",
    "RefineSettings",
    "RefineState",
    "angular_errors",
    "fibonacci_rotations",
    "grid_resolution",
    "initial_refine_state",
    "lowpass_volume",
    "needed_step",
    "particle_spectra",
    "plan_memory",
    "reconstruct_halves",
    "refine_iteration",
    "residual_noise",
    "resolution_shell",
    "soft_sphere",
    "spectra_moments",
]

FSC_THRESHOLD = 0.143


@dataclass(frozen=True)
class RefineSettings:
    """Parameters of the refinement (lengths in pixels of the particle box).

    mask_diameter : px, soft spherical mask of the references (the particle diameter)
    max_shift : px, radius of the global translation search
    global_step : degrees, orientation sampling of the global search
    global_iterations : iterations with a global search before local refinement
    final_step : degrees, finest angular step (0: from the resolution only)
    max_iterations : stop after this many iterations
    tau2_fudge : ``T`` of the Wiener filter (> 1 trusts the data more)
    shell_margin : shells beyond the current resolution used in the search
    batch : particles per batch of the local search and of the insertion, at most (the
        global search takes 4x); 0: planned from the device's free memory
    symmetry : point group of the particle (C1, C<n>, D<n>, T, O, I)
    """

    mask_diameter: float
    max_shift: float = 5.0
    global_step: float = 15.0
    global_iterations: int = 2
    final_step: float = 0.0
    max_iterations: int = 12
    tau2_fudge: float = 1.0
    shell_margin: int = 3
    batch: int = 0
    symmetry: str = "C1"

    def __post_init__(self) -> None:
        if self.mask_diameter <= 0:
            raise ValueError("mask_diameter must be > 0")
        if not 0 < self.global_step <= 90:
            raise ValueError("global_step must be in (0, 90] degrees")
        if self.max_shift < 0 or self.final_step < 0 or self.global_iterations < 0:
            raise ValueError("max_shift, final_step and global_iterations must be >= 0")
        if self.max_iterations < 1 or self.batch < 0:
            raise ValueError("max_iterations must be >= 1 and batch >= 0")
        symmetry_group(self.symmetry)  # a ValueError names an unknown group


@dataclass
class RefineState:
    """Everything an iteration needs and produces; a checkpoint is exactly this.

    matrices : (n, 3, 3) rotation of each particle; shifts : (n, 2) (dx, dy) px
    halves : (n,) 0 or 1, the particle's half set
    references : (2, b, b, b) float32, masked filtered half maps (the next references)
    sigma2 : (b//2+1,) noise power per shell (of unnormalised ``rfft2``)
    fsc : (b//2+1,) FSC between the masked half maps
    resolution : Å at FSC 0.143; step : degrees, angular step of the last search
    r_max : shells used by the next search; iteration : iterations done
    history : resolution after each iteration; converged : the stop criterion was met
    """

    matrices: np.ndarray
    shifts: np.ndarray
    halves: np.ndarray
    references: np.ndarray
    sigma2: np.ndarray
    fsc: np.ndarray
    resolution: float
    step: float
    r_max: int
    iteration: int = 0
    history: list[float] = field(default_factory=list)
    converged: bool = False


# ------------------------------------------------------------------------- helpers


def soft_sphere(box: int, diameter: float, edge: float = 5.0) -> np.ndarray:
    """(b, b, b) float32: 1 inside ``diameter`` px, raised-cosine edge of ``edge`` px."""
    g = np.arange(box) - box // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    x = np.clip((r - 0.5 * diameter) / max(edge, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * x))).astype(np.float32)


def lowpass_volume(volume: np.ndarray, pixel_size: float, resolution: float) -> np.ndarray:
    """``volume`` low-passed at ``resolution`` Å (raised cosine over 2 shells)."""
    n = volume.shape[0]
    f = np.fft.fftfreq(n) * n
    fx = np.fft.rfftfreq(n) * n
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    cut = n * pixel_size / resolution
    filt = 0.5 * (1.0 + np.cos(np.pi * np.clip((r - cut) / 2.0 + 0.5, 0.0, 1.0)))
    spec = np.fft.rfftn(np.fft.ifftshift(np.asarray(volume, dtype=np.float64))) * filt
    return np.fft.fftshift(np.fft.irfftn(spec, s=volume.shape, axes=(0, 1, 2))).astype(np.float32)


def particle_spectra(images: Any) -> Any:
    """(n, b, b//2+1) complex64 ``rfft2`` of (n, b, b) images, origin moved to index 0
    (the layout of :func:`cryosnake.ops.fourier_slice.project`)."""
    xp = get_array_module(images)
    shifted = xp.fft.ifftshift(xp.asarray(images, dtype=xp.float32), axes=(-2, -1))
    return xp.fft.rfft2(shifted, axes=(-2, -1)).astype(xp.complex64)


def spectra_moments(spectra: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean power, mean) over the first ``m`` particles of each frequency of
    (n, b, b') spectra (NumPy float64 and complex128 of size b b'), read 64 MiB of
    spectra at a time (the stack may be streamed)."""
    size = int(np.prod(spectra.shape[1:]))
    chunk = max(1, (64 << 20) // (8 * size))
    power = np.zeros(size)
    total = np.zeros(size, dtype=np.complex128)
    for start in range(0, m, chunk):
        sub = to_host(spectra[start : min(start + chunk, m)]).reshape(-1, size)
        power += (sub.real**2 + sub.imag**2).astype(np.float64).sum(axis=0)
        total += sub.astype(np.complex128).sum(axis=0)
    return power / max(m, 1), total / max(m, 1)


# ------------------------------------------------------------------- reconstruction


def insert_particles(
    bp: fs.BackProjector,
    spectra: Any,
    ctf_params: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    sigma2: np.ndarray,
    pixel_size: float,
    batch: int | None = None,
    symmetry: str = "C1",
    weights: np.ndarray | None = None,
) -> None:
    """Insert ``C X / sigma2`` and ``C^2 / sigma2`` of the particles at their poses, once
    per element ``g`` of the point group (pose ``A g``: :mod:`cryosnake.ops.symmetry`),
    on the back-projector's device (``spectra`` on the host or there), each times its
    weight in ``weights`` (None: 1; a class posterior in 3D classification). ``batch``
    None: planned from the free memory."""
    xp = get_array_module(bp.numerator)
    group = symmetry_group(symmetry)
    box = bp.n
    n_plane = box * (box // 2 + 1)
    if batch is None:
        batch = batch_size(420.0 * n_plane, None, xp)
    shells = np.minimum(fs.plane_shells(box), box // 2)
    inv_s2 = xp.asarray((1.0 / np.asarray(sigma2))[shells].astype(np.float32))  # (b, b//2+1)
    n_px = box * pixel_size
    ky = (np.fft.fftfreq(box) * box)[:, None] * np.ones((1, box // 2 + 1))
    kx = np.ones((box, 1)) * np.arange(box // 2 + 1)[None, :]
    kx_d, ky_d = xp.asarray(kx.ravel() / n_px), xp.asarray(ky.ravel() / n_px)
    for start in range(0, len(spectra), batch):
        stop = min(start + batch, len(spectra))
        c = model_ctf(ctf_params[start:stop], kx_d, ky_d).reshape(stop - start, box, box // 2 + 1)
        x = xp.asarray(spectra[start:stop])
        weighted = (c * inv_s2 * x).astype(xp.complex64)
        ctf2 = (c * c * inv_s2).astype(xp.float32)
        del c, x
        if weights is not None:
            w = xp.asarray(weights[start:stop].astype(np.float32))[:, None, None]
            weighted *= w
            ctf2 *= w
        for g in group:
            bp.insert(
                weighted, matrices[start:stop] @ g, ctf2, shifts=shifts[start:stop], batch=batch
            )


def _mean_weight(bp: fs.BackProjector) -> np.ndarray:
    """(b//2+1,) mean data weight per shell in units of the unpadded grid (voxels beyond
    shell ``b // 2``, the cube's corners, left out)."""
    xp = get_array_module(bp.weight)
    n_shells = bp.n // 2 + 1
    # Shell n_shells collects the voxels beyond.
    shells = fs.padded_shells(bp.pad * bp.n, bp.pad, n_shells, xp).ravel()
    total = to_host(xp.bincount(shells, weights=bp.weight.ravel(), minlength=n_shells + 1))
    count = to_host(xp.bincount(shells, minlength=n_shells + 1))
    return total[:n_shells] / np.maximum(count[:n_shells], 1) * bp.pad**3


def wiener_map(bp: fs.BackProjector, ssnr: np.ndarray, fudge: float) -> np.ndarray:
    """Map regularised with ``1 / (T tau2) = W / (T ssnr)`` per shell (NumPy)."""
    mean_w = _mean_weight(bp)
    reg = mean_w / (fudge * np.maximum(ssnr, 1e-3))
    reg = np.maximum(reg, 1e-9 * max(float(mean_w.max()), 1e-30))
    return to_host(bp.reconstruct(reg)).astype(np.float32)


def reconstruct_halves(
    spectra: Any,
    ctf_params: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    halves: np.ndarray,
    sigma2: np.ndarray,
    pixel_size: float,
    mask_diameter: float,
    *,
    tau2_fudge: float = 1.0,
    batch: int | None = None,
    symmetry: str = "C1",
    weights: np.ndarray | None = None,
    xp: Any = np,
) -> dict[str, Any]:
    """Half maps and their FSC from particles at given poses (each inserted times its
    weight in ``weights``, None: 1), reconstructed on ``xp``'s device (``spectra`` on the
    host or there).

    Returns ``fsc`` (FSC of the masked, lightly regularised half maps), ``halves`` (2,
    b, b, b) Wiener-filtered half maps (not masked), ``full`` the filtered map of all
    particles, ``resolution`` (Å at FSC 0.143) and the two back-projectors ``bp``
    (all NumPy but the back-projectors).
    """
    box = int(spectra.shape[1])
    bps = []
    for h in (0, 1):
        sel = np.flatnonzero(halves == h)
        bp = fs.BackProjector.zeros(box, xp=xp)
        insert_particles(
            bp, take_rows(spectra, sel), ctf_params[sel], matrices[sel], shifts[sel], sigma2,
            pixel_size, batch, symmetry, None if weights is None else weights[sel],
        )  # fmt: skip
        bps.append(bp)
    mask = soft_sphere(box, mask_diameter)
    raw = [wiener_map(bp, np.full(box // 2 + 1, 1e6), 1.0) for bp in bps]
    curve = fsc(raw[0] * mask, raw[1] * mask)
    del raw
    f = np.clip(curve, 0.0, 0.999)
    ssnr_half = f / (1.0 - f)
    maps = np.stack([wiener_map(bp, ssnr_half, tau2_fudge) for bp in bps])
    both = fs.BackProjector(
        n=box, pad=bps[0].pad, numerator=bps[0].numerator + bps[1].numerator,
        weight=bps[0].weight + bps[1].weight,
    )  # fmt: skip
    full = wiener_map(both, 2.0 * f / (1.0 - f), tau2_fudge)
    del both
    resolution = shell_resolution(curve, pixel_size, FSC_THRESHOLD)
    return {"fsc": curve, "halves": maps, "full": full, "resolution": resolution, "bp": bps}


def residual_noise(
    spectra: Any,
    ctf_params: np.ndarray,
    refs: np.ndarray,
    groups: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    pixel_size: float,
    xp: Any = np,
    budget: int | None = None,
) -> np.ndarray:
    """(b//2+1,) mean residual power per shell at the given poses, particle ``i``
    against the map ``refs[groups[i]]`` (its half set, or its class)."""
    box = int(spectra.shape[1])
    plane = fs.half_plane(box, box // 2, dc=False)
    terms = score_terms(plane, np.ones(1), box, pixel_size, xp)
    n_shells = box // 2 + 1
    shells = xp.asarray(plane.shells)
    total = np.zeros(n_shells)
    count = np.bincount(plane.shells, minlength=n_shells).astype(np.float64)
    n_f = len(plane.flat)
    batch = batch_size(300.0 * n_f, budget, xp)
    for h in range(len(refs)):
        sel = np.flatnonzero(groups == h)
        if len(sel) == 0:
            continue
        projector = fs.Projector.from_volume(xp.asarray(refs[h]), box // 2)
        part = take_rows(spectra, sel)
        flat = part.reshape(len(sel), -1)
        for start in range(0, len(sel), batch):
            stop = min(start + batch, len(sel))
            idx = sel[start:stop]
            proj = projector.sample(matrices[idx], plane.kx, plane.ky, batch=stop - start)
            proj *= fs.phase_ramps(plane, shifts[idx], box, xp)
            c = model_ctf(ctf_params[idx], terms.kx, terms.ky)
            resid = gather_rows(flat, start, stop, terms) - c * proj
            power = (resid.real**2 + resid.imag**2).sum(axis=0)
            total += to_host(xp.bincount(shells, weights=power, minlength=n_shells))
        del projector
    sigma2 = total / np.maximum(count * len(spectra), 1)
    sigma2[0] = sigma2[1]
    return np.maximum(sigma2, 1e-6 * float(sigma2.max()))


# --------------------------------------------------------------------------- driver


def resolution_shell(resolution: float, box: int, pixel_size: float) -> int:
    """The shell (cycles per box, rounded up) of ``resolution`` Å."""
    return int(math.ceil(box * pixel_size / resolution))


def initial_refine_state(
    spectra: Any,
    reference: np.ndarray,
    pixel_size: float,
    initial_lowpass: float,
    settings: RefineSettings,
    halves: np.ndarray,
) -> RefineState:
    """Both half references = ``reference`` low-passed to ``initial_lowpass`` Å and
    masked; noise = the particles' power spectrum minus that of their mean."""
    box = int(spectra.shape[1])
    n = len(spectra)
    ref = lowpass_volume(reference, pixel_size, initial_lowpass) * soft_sphere(
        box, settings.mask_diameter
    )
    shells = np.minimum(fs.plane_shells(box), box // 2).ravel()
    power, mean = spectra_moments(spectra, min(n, 5000))
    noise = power - (mean.real**2 + mean.imag**2)
    total = np.bincount(shells, weights=noise, minlength=box // 2 + 1)
    sigma2 = total / np.maximum(np.bincount(shells, minlength=box // 2 + 1), 1)
    sigma2 = np.maximum(sigma2, 1e-6 * float(sigma2.max()))
    r_max = min(box // 2 - 1, max(4, resolution_shell(initial_lowpass, box, pixel_size)))
    return RefineState(
        matrices=np.tile(np.eye(3), (n, 1, 1)),
        shifts=np.zeros((n, 2)),
        halves=np.asarray(halves, dtype=np.int64),
        references=np.stack([ref, ref]).astype(np.float32),
        sigma2=sigma2,
        fsc=np.zeros(box // 2 + 1),
        resolution=float(initial_lowpass),
        step=settings.global_step,
        r_max=r_max,
    )


def needed_step(resolution: float, diameter_angstrom: float, final_step: float) -> float:
    """Degrees: the angular step at which the particle's rim moves half a resolution
    element, ``resolution / diameter`` radians (at least ``final_step``)."""
    return max(final_step, math.degrees(resolution / max(diameter_angstrom, 1e-6)))


def grid_resolution(step: float, diameter_angstrom: float) -> float:
    """Å: the finest detail a pose grid of ``step`` degrees resolves on a particle of
    ``diameter_angstrom``: a rotation by one step moves its rim by ``pi D step / 360``
    (half the step on either side of a node), divided by a safety factor of 1.2 (the
    figure of RELION's coarse pass for 3D)."""
    return math.pi * diameter_angstrom * step / 360.0 / 1.2


def refine_iteration(
    spectra: Any,
    ctf_params: np.ndarray,
    pixel_size: float,
    state: RefineState,
    settings: RefineSettings,
    xp: Any = np,
) -> tuple[RefineState, dict[str, Any]]:
    """One iteration (see the module docstring) on ``xp``'s device (``spectra`` on the
    host, streamed batch by batch, or on the device); returns the new state and the
    reconstruction of :func:`reconstruct_halves`."""
    box = int(spectra.shape[1])
    it = state.iteration + 1
    is_global = it <= settings.global_iterations
    target = needed_step(state.resolution, settings.mask_diameter * pixel_size, settings.final_step)
    step = settings.global_step if is_global else max(target, state.step / 2.0)
    radius = 0.5 * settings.mask_diameter
    shift_step = float(np.clip(math.radians(step) * radius / 2.0, 0.1, 1.0))
    matrices = state.matrices.copy()
    shifts = state.shifts.copy()
    r_search = state.r_max
    if is_global:
        coarse = grid_resolution(settings.global_step, settings.mask_diameter * pixel_size)
        r_search = min(state.r_max, max(4, resolution_shell(coarse, box, pixel_size)))
    for h in (0, 1):
        sel = np.flatnonzero(state.halves == h)
        projector = fs.Projector.from_volume(xp.asarray(state.references[h]), r_search)
        part = take_rows(spectra, sel)
        if is_global:
            m, t, _ = global_search(
                part, ctf_params[sel], projector, box, pixel_size, state.sigma2, r_search,
                settings,
            )  # fmt: skip
        else:
            m, t, _ = local_search(
                part, ctf_params[sel], projector, box, pixel_size, state.sigma2, state.r_max,
                state.matrices[sel], state.shifts[sel], step, shift_step, settings,
            )  # fmt: skip
        del projector, part
        matrices[sel], shifts[sel] = m, t
    rec = reconstruct_halves(
        spectra, ctf_params, matrices, shifts, state.halves, state.sigma2, pixel_size,
        settings.mask_diameter, tau2_fudge=settings.tau2_fudge, batch=settings.batch or None,
        symmetry=settings.symmetry, xp=xp,
    )  # fmt: skip
    rec["bp"] = None  # the grids are not needed any more: free the device
    mask = soft_sphere(box, settings.mask_diameter)
    references = np.stack([rec["halves"][0] * mask, rec["halves"][1] * mask])
    sigma2 = residual_noise(
        spectra, ctf_params, references, state.halves, matrices, shifts, pixel_size, xp,
    )  # fmt: skip
    resolution = float(rec["resolution"])
    history = [*state.history, resolution]
    r_max = min(box // 2 - 1, resolution_shell(resolution, box, pixel_size) + settings.shell_margin)
    r_max = max(r_max, state.r_max if is_global else 4)
    stalled = len(history) >= 3 and min(history[-2:]) >= 0.99 * min(history[:-2])
    converged = bool(not is_global and step <= target * 1.0001 and stalled)
    new = replace(
        state,
        matrices=matrices,
        shifts=shifts,
        references=references.astype(np.float32),
        sigma2=sigma2,
        fsc=np.asarray(rec["fsc"]),
        resolution=resolution,
        step=step,
        r_max=int(r_max),
        iteration=it,
        history=history,
        converged=converged,
    )
    return new, rec
