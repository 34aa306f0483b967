"""Pose search of projection matching: orientation grids, the noise-whitened, CTF-weighted
correlation of particles with projections, global and local searches, and the memory
budget of their batches (used by :mod:`cryosnake.ops.refine3d` and
:mod:`cryosnake.ops.initial3d`; the model and the score are described in the former).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cryosnake.backend import available_memory, get_array_module, to_host
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops.ctf import model_ctf
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.ops.symmetry import asymmetric_unit

if TYPE_CHECKING:
    from cryosnake.ops.refine3d import RefineSettings

__all__ = [
    "MemoryPlan",
    "ScoreTerms",
    "angular_errors",
    "axis_rotations",
    "batch_size",
    "fibonacci_rotations",
    "gather_rows",
    "global_search",
    "local_search",
    "log_mean_likelihood",
    "plan_memory",
    "score_terms",
    "work_budget",
]

LOCAL_SHIFT_POINTS = 5  # local shift grid: 5 x 5 points
CPU_BUDGET = 1 << 30  # bytes of one batch's temporaries on the CPU
MIN_WORK = 256 << 20  # bytes a refinement needs beyond its grids, at the least
MAX_BATCH = 8192  # particles per batch, at most


def fibonacci_rotations(step: float) -> np.ndarray:
    """(m, 3, 3) rotations sampling SO(3) about every ``step`` degrees: projection
    directions on a Fibonacci sphere (``4 pi / step^2`` of them) x in-plane angles every
    ``step``."""
    s = math.radians(step)
    n_dir = max(2, int(round(4.0 * math.pi / (s * s))))
    i = np.arange(n_dir) + 0.5
    tilt = np.degrees(np.arccos(1.0 - 2.0 * i / n_dir))
    rot = np.degrees(np.mod(math.pi * (1.0 + math.sqrt(5.0)) * i, 2.0 * math.pi))
    n_psi = max(1, int(round(360.0 / step)))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    r = np.repeat(rot, n_psi)
    t = np.repeat(tilt, n_psi)
    p = np.tile(psi, n_dir)
    return euler_to_matrix(r, t, p)


def axis_rotations(step: float) -> np.ndarray:
    """(27, 3, 3): rotations by (-step, 0, step) degrees about x, then y, then z."""
    a = math.radians(step)
    out = []
    for ax in (-a, 0.0, a):
        for ay in (-a, 0.0, a):
            for az in (-a, 0.0, a):
                cx, sx = math.cos(ax), math.sin(ax)
                cy, sy = math.cos(ay), math.sin(ay)
                cz, sz = math.cos(az), math.sin(az)
                rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
                ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
                out.append(rz @ ry @ rx)
    return np.array(out)


def angular_errors(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) degrees: the angle of the rotation taking each true pose to the estimate."""
    rel = np.einsum("nij,nkj->nik", np.asarray(estimated), np.asarray(truth))
    cos = (np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _shift_grid(radius: float, step: float) -> np.ndarray:
    """(T, 2) shifts on a square grid of ``step`` within ``radius``, (0, 0) first."""
    r = int(math.floor(radius / step)) if step > 0 else 0
    g = np.arange(-r, r + 1) * step
    dx, dy = np.meshgrid(g, g)
    t = np.stack([dx.ravel(), dy.ravel()], axis=1)
    t = t[(t**2).sum(axis=1) <= radius**2 + 1e-9]
    return t[np.argsort((t**2).sum(axis=1), kind="stable")]


@dataclass(frozen=True)
class ScoreTerms:
    """The per-frequency terms of the score on the device ``xp``."""

    xp: Any
    flat: np.ndarray  # (F,) host indices into the flattened half plane
    kx: Any  # (F,) 1/Å, device
    ky: Any
    w: Any  # (F,) float32 weight / sigma2, device


def score_terms(
    plane: fs.HalfPlane, sigma2: np.ndarray, box: int, pixel_size: float, xp: Any
) -> ScoreTerms:
    """The score's frequencies (1/Å) and weights (Hermitian weight / sigma2) on ``xp``."""
    inv_s2 = 1.0 / np.asarray(sigma2)[np.minimum(plane.shells, len(sigma2) - 1)]
    n_px = box * pixel_size
    return ScoreTerms(
        xp=xp,
        flat=plane.flat,
        kx=xp.asarray(plane.kx / n_px),
        ky=xp.asarray(plane.ky / n_px),
        w=xp.asarray((plane.hermitian * inv_s2).astype(np.float32)),
    )


def log_mean_likelihood(flat_score: Any) -> Any:
    """(B,) ``log mean_j exp(s_j^2 / 2)`` over the candidate poses ``j`` of (B, J)
    scores: the log-likelihood of each particle marginalised over the poses searched
    (uniform prior), up to a constant of the particle (see
    :mod:`cryosnake.ops.class3d`)."""
    xp = get_array_module(flat_score)
    ll = 0.5 * flat_score.astype(xp.float64) ** 2
    top = ll.max(axis=1)
    return top + xp.log(xp.exp(ll - top[:, None]).mean(axis=1))


def gather_rows(flat_spectra: Any, start: int, stop: int, terms: ScoreTerms) -> Any:
    """(B, F) complex64 on the device: the kept frequencies of particles start:stop
    (gathered on the host first when the stack lives there: less to move)."""
    xp = terms.xp
    block = flat_spectra[start:stop]
    if get_array_module(block) is np:
        return xp.asarray(np.ascontiguousarray(block[:, terms.flat]).astype(np.complex64))
    return block[:, xp.asarray(terms.flat)].astype(xp.complex64)


def work_budget(xp: Any) -> int:
    """Bytes for the temporaries of one batch: half of the free memory, at most
    :data:`CPU_BUDGET` on the CPU (larger batches gain nothing there)."""
    free = available_memory(xp)
    return int(min(CPU_BUDGET, 0.5 * free) if xp is np else 0.6 * free)


def batch_size(per_item: float, budget: int | None, xp: Any, fixed: int = 0) -> int:
    """Items per batch whose temporaries (``per_item`` bytes each, plus ``fixed``) fit
    ``budget`` bytes (None: :func:`work_budget`), between 1 and :data:`MAX_BATCH`."""
    if budget is None:
        budget = work_budget(xp)
    return int(np.clip((budget - fixed) // max(per_item, 1.0), 1, MAX_BATCH))


@dataclass(frozen=True)
class MemoryPlan:
    """What a refinement of box ``box`` needs on a device (bytes).

    grids : the two back-projectors (complex128 numerator and float64 weight on the 2x
        padded half grid), the reconstruction's temporaries and a projector cube
    stack : the particle spectra (complex64 half planes)
    available : free memory of the device when planned
    stack_on_device : whether the spectra are moved to the device once (else streamed
        batch by batch)
    """

    box: int
    grids: int
    stack: int
    available: int
    stack_on_device: bool


def plan_memory(box: int, n_particles: int, xp: Any, available: int | None = None) -> MemoryPlan:
    """Plan a refinement's memory from the box size and the device's free memory.

    Raises ``MemoryError`` with the figures when the grids alone do not fit; the batch
    sizes of the searches and the insertion are then planned at each call from what is
    left (:func:`work_budget`).
    """
    free = available_memory(xp) if available is None else int(available)
    size = fs.PAD * box
    voxels = size * size * (size // 2 + 1)
    side = 2 * (int(math.ceil(fs.PAD * (box // 2 + 0.5))) + 1) + 1
    # 2 back-projectors (24 B/voxel), reconstruct's temporaries (~60 B/voxel), the
    # padded spectrum a projector is built from (8 B/voxel), one projector cube.
    grids = voxels * (2 * 24 + 60 + 8) + 8 * side**3 + 24 * box**3
    stack = n_particles * box * (box // 2 + 1) * 8
    if grids + MIN_WORK > free:
        raise MemoryError(
            f"a box of {box} px needs about {(grids + MIN_WORK) / 2**30:.1f} GiB for its "
            f"Fourier grids, more than the {free / 2**30:.1f} GiB free"
        )
    on_device = xp is not np and stack < 0.5 * (free - grids - MIN_WORK)
    return MemoryPlan(box=box, grids=grids, stack=stack, available=free, stack_on_device=on_device)


# ------------------------------------------------------------------------- search


def global_search(
    spectra: Any,
    ctf_params: np.ndarray,
    projector: fs.Projector,
    box: int,
    pixel_size: float,
    sigma2: np.ndarray,
    r_max: int,
    settings: RefineSettings,
    budget: int | None = None,
    marginal: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best orientation (uniform grid of ``global_step``) and shift (pixel grid within
    ``max_shift``) of each particle, and its score (normalised correlation; with
    ``marginal``, :func:`log_mean_likelihood` over all the poses instead).

    ``projector`` (of the reference, shells up to at least ``r_max``) decides the device;
    ``spectra`` (n, b, b//2+1) may live on the host or on it. Returns NumPy arrays.
    """
    xp = get_array_module(projector.cube)
    plane = fs.half_plane(box, r_max, dc=False)
    terms = score_terms(plane, sigma2, box, pixel_size, xp)
    rotations = asymmetric_unit(
        fibonacci_rotations(settings.global_step), settings.symmetry, 0.5 * settings.global_step
    )
    proj = projector.sample(rotations, plane.kx, plane.ky)  # (P, F)
    pr = xp.concatenate([proj.real, proj.imag], axis=1)  # (P, 2F) float32
    p2 = proj.real**2 + proj.imag**2  # (P, F)
    del proj
    shifts = _shift_grid(settings.max_shift, 1.0)
    ramps = fs.phase_ramps(plane, shifts, box, xp)  # (T, F)
    n_t, n_p, n_f = len(shifts), len(rotations), len(plane.flat)
    n = len(spectra)
    batch = batch_size(n_t * (24.0 * n_f + 8.0 * n_p) + 64.0 * n_f, budget, xp)
    if settings.batch:
        batch = min(batch, settings.batch * 4)
    best_rot = np.zeros(n, dtype=np.int64)
    best_shift = np.zeros(n, dtype=np.int64)
    best_score = np.zeros(n)
    flat = spectra.reshape(n, -1)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        nb = stop - start
        x = gather_rows(flat, start, stop, terms)
        c = model_ctf(ctf_params[start:stop], terms.kx, terms.ky)  # (B, F) float32
        wc = terms.w * c
        d = (wc * xp.conj(x))[:, None, :] * ramps[None]  # (B, T, F)
        rows = xp.concatenate([d.real, -d.imag], axis=2).reshape(-1, 2 * n_f)
        del d
        score = (rows @ pr.T).reshape(nb, n_t, n_p)
        del rows
        norm = (wc * c) @ p2.T  # (B, P)
        score /= xp.sqrt(xp.maximum(norm, 1e-30))[:, None, :]
        flat_score = score.reshape(nb, -1)
        idx = xp.argmax(flat_score, axis=1)
        best = log_mean_likelihood(flat_score) if marginal else flat_score[xp.arange(nb), idx]
        best_score[start:stop] = to_host(best)
        best_shift[start:stop], best_rot[start:stop] = np.divmod(to_host(idx), n_p)
    return rotations[best_rot], shifts[best_shift], best_score


def local_search(
    spectra: Any,
    ctf_params: np.ndarray,
    projector: fs.Projector,
    box: int,
    pixel_size: float,
    sigma2: np.ndarray,
    r_max: int,
    matrices: np.ndarray,
    shifts: np.ndarray,
    step: float,
    shift_step: float,
    settings: RefineSettings,
    budget: int | None = None,
    marginal: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best of the 27 rotations ``A dR`` x 25 shifts around each particle's pose (see
    the module docstring) and its score (with ``marginal``, :func:`log_mean_likelihood`
    over the 675 poses instead); NumPy results, device as :func:`global_search`."""
    xp = get_array_module(projector.cube)
    plane = fs.half_plane(box, r_max, dc=False)
    terms = score_terms(plane, sigma2, box, pixel_size, xp)
    delta = axis_rotations(step)  # (J, 3, 3)
    half = (LOCAL_SHIFT_POINTS - 1) / 2
    g = (np.arange(LOCAL_SHIFT_POINTS) - half) * shift_step
    offsets = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)  # (M, 2)
    # ramp(t + o) = ramp(t) ramp(o): the offsets' ramps as the columns of one real
    # product, Re(q r) = [q.real, -q.imag] . [r.real; r.imag]
    ramp_off = fs.phase_ramps(plane, offsets, box, xp)  # (M, F)
    ramp_cols = xp.concatenate([ramp_off.real, ramp_off.imag], axis=1).T  # (2F, M)
    del ramp_off
    n, n_j, n_m, n_f = len(spectra), len(delta), len(offsets), len(plane.flat)
    per_candidate = 120.0 * n_f  # Projector.sample's temporaries
    batch = batch_size(n_j * (40.0 * n_f + 8.0 * n_m + per_candidate), budget, xp)
    if settings.batch:
        batch = min(batch, settings.batch)
    out_m = matrices.copy()
    out_t = shifts.copy()
    out_s = np.zeros(n)
    flat = spectra.reshape(n, -1)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        nb = stop - start
        cand = np.einsum("bij,qjk->bqik", matrices[start:stop], delta).reshape(-1, 3, 3)
        proj = projector.sample(cand, plane.kx, plane.ky, batch=len(cand)).reshape(nb, n_j, n_f)
        x = gather_rows(flat, start, stop, terms)
        c = model_ctf(ctf_params[start:stop], terms.kx, terms.ky)
        wc = terms.w * c
        base = wc * xp.conj(x) * fs.phase_ramps(plane, shifts[start:stop], box, xp)  # (B, F)
        q = (base[:, None, :] * proj).reshape(nb * n_j, n_f)  # (B J, F)
        rows = xp.concatenate([q.real, -q.imag], axis=1)  # (B J, 2F)
        del q
        cross = (rows @ ramp_cols).reshape(nb, n_j, n_m)  # one product for the batch
        del rows
        p2 = proj.real**2 + proj.imag**2
        norm = (p2 @ (wc * c)[:, :, None])[:, :, 0]  # (B, J)
        # (B, M, J): shifts major, as the poses are numbered
        score = (cross / xp.sqrt(xp.maximum(norm, 1e-30))[:, :, None]).transpose(0, 2, 1)
        flat_score = score.reshape(nb, -1)
        best = xp.argmax(flat_score, axis=1)
        top = log_mean_likelihood(flat_score) if marginal else flat_score[xp.arange(nb), best]
        out_s[start:stop] = to_host(top)
        m_idx, j_idx = np.divmod(to_host(best), n_j)
        out_m[start:stop] = cand.reshape(nb, n_j, 3, 3)[np.arange(nb), j_idx]
        out_t[start:stop] = shifts[start:stop] + offsets[m_idx]
    return out_m, out_t, out_s
