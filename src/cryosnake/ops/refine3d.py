"""Gold-standard 3D refinement by maximum-likelihood projection matching.

Model of particle image ``i`` (``rfft2`` half plane ``X_i`` of the box ``b``, origin at
pixel ``b // 2``, contrast inverted as ``extract`` writes it)::

    X_i(k) = C_i(k) exp(-2 pi i k.t_i / b) V^(A_i^T k) + N_i(k),   E|N_i(k)|^2 = sigma2(|k|)

with ``C_i = -ctf_2d`` the particle's CTF (:func:`cryosnake.ops.class2d.model_ctf`),
``A_i`` its rotation (RELION's ``euler_to_matrix(rot, tilt, psi)``), ``t_i`` its shift
(``image(r) = projection(r - t)``; RELION's ``rlnOriginX/Y`` is ``-t``) and ``V^`` the
transform of the map (central slice theorem, :mod:`cryosnake.ops.reconstruct`).

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
     ``global_step``) x all shifts within ``max_shift`` every pixel. For a batch of
     particles all poses come from one real matrix product: rows are the particles' CTF-
     and noise-weighted, shifted spectra, columns the projections.
   - *Local* afterwards: the 27 rotations ``A dR`` with ``dR`` a rotation by
     ``(-s, 0, s)`` about each axis (``s`` the current angular step) around the best pose,
     x 25 shifts on a 5 x 5 grid of half the shift step around the best shift. The step
     halves every iteration down to the sampling the resolution needs,
     ``resolution / diameter`` radians (a rotation by it moves the rim of the particle
     half a resolution element), at least ``final_step``.
2. **Reconstruction**: the particles' ``C X / sigma2`` and ``C^2 / sigma2`` are inserted
   at their poses into the half's back-projector (Fourier insertion, trilinear on a 2x
   padded grid, gridding-corrected), once per element of the point group
   (``symmetry``; the pose search covers all of SO(3), so the maps' symmetry comes from
   the insertion alone).
3. **FSC and filter**: the two half maps, reconstructed with a tiny regulariser and
   masked with a soft sphere of ``mask_diameter``, give the FSC;
   ``SSNR_half = FSC / (1 - FSC)`` sets the Wiener regulariser
   ``1 / (T tau2) = W / (T SSNR_half)`` per shell (``W`` the mean data weight of the
   shell, ``T`` = ``tau2_fudge``), which filters each half map by its own SNR (RELION's
   FSC-based tau2). The masked, filtered half maps are the next references.
4. **Noise**: ``sigma2`` per shell is the mean residual power ``|X - C P|^2`` at the new
   poses.

Resolution: FSC = 0.143 between the masked half maps (interpolated). Convergence: the
angular step has reached the needed sampling and the resolution has not improved by
1 % for two iterations (or ``max_iterations``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module
from cryosnake.ops import reconstruct as rc
from cryosnake.ops.class2d import model_ctf
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.ops.symmetry import symmetry_group

__all__ = [
    "RefineSettings",
    "RefineState",
    "angular_errors",
    "fibonacci_rotations",
    "initial_refine_state",
    "lowpass_volume",
    "needed_step",
    "particle_spectra",
    "reconstruct_halves",
    "refine_iteration",
    "soft_sphere",
]

FSC_THRESHOLD = 0.143
LOCAL_SHIFT_POINTS = 5  # local shift grid: 5 x 5 points
SCORE_BUDGET = 32 << 20  # floats in one batch's score matrix (global search)


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
    batch : particles per batch of the local search and of the insertion
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
    batch: int = 64
    symmetry: str = "C1"

    def __post_init__(self) -> None:
        if self.mask_diameter <= 0:
            raise ValueError("mask_diameter must be > 0")
        if not 0 < self.global_step <= 90:
            raise ValueError("global_step must be in (0, 90] degrees")
        if self.max_shift < 0 or self.final_step < 0 or self.global_iterations < 0:
            raise ValueError("max_shift, final_step and global_iterations must be >= 0")
        if self.max_iterations < 1 or self.batch < 1:
            raise ValueError("max_iterations and batch must be >= 1")
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
    (the layout of :func:`cryosnake.ops.reconstruct.project`)."""
    xp = get_array_module(images)
    shifted = xp.fft.ifftshift(xp.asarray(images, dtype=xp.float32), axes=(-2, -1))
    return xp.fft.rfft2(shifted, axes=(-2, -1)).astype(xp.complex64)


@dataclass(frozen=True)
class _Plane:
    flat: np.ndarray  # (F,) indices into the flattened (b, b//2+1) half plane
    kx: np.ndarray  # (F,) cycles per box
    ky: np.ndarray
    shells: np.ndarray  # (F,) int
    weight: np.ndarray  # (F,) 1 on kx = 0, else 2


def _plane(box: int, r_max: float) -> _Plane:
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    fy, fx = np.meshgrid(ky, kx, indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    keep = (np.rint(radius) <= r_max) & (fy != -box // 2) & (fx != box // 2)
    keep.ravel()[0] = False  # DC: the images are normalised to zero mean
    flat = np.flatnonzero(keep.ravel())
    return _Plane(
        flat=flat,
        kx=fx.ravel()[flat],
        ky=fy.ravel()[flat],
        shells=np.rint(radius.ravel()[flat]).astype(np.int64),
        weight=np.where(fx.ravel()[flat] == 0, 1.0, 2.0),
    )


def _ramps(plane: _Plane, shifts: np.ndarray, box: int) -> np.ndarray:
    """(..., F) complex64 exp(-2 pi i k.t / b) for shifts (..., 2) (dx, dy)."""
    phase = -2.0 * np.pi * (shifts[..., 0:1] * plane.kx + shifts[..., 1:2] * plane.ky) / box
    return np.exp(1j * phase).astype(np.complex64)


def _shift_grid(radius: float, step: float) -> np.ndarray:
    """(T, 2) shifts on a square grid of ``step`` within ``radius``, (0, 0) first."""
    r = int(math.floor(radius / step)) if step > 0 else 0
    g = np.arange(-r, r + 1) * step
    dx, dy = np.meshgrid(g, g)
    t = np.stack([dx.ravel(), dy.ravel()], axis=1)
    t = t[(t**2).sum(axis=1) <= radius**2 + 1e-9]
    return t[np.argsort((t**2).sum(axis=1), kind="stable")]


def _ctf(ctf_params: np.ndarray, plane: _Plane, box: int, pixel_size: float) -> np.ndarray:
    n_px = box * pixel_size
    return np.asarray(model_ctf(ctf_params, plane.kx / n_px, plane.ky / n_px), np.float64)


# ------------------------------------------------------------------------- search


def global_search(
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    padded: Any,
    box: int,
    pixel_size: float,
    sigma2: np.ndarray,
    r_max: int,
    settings: RefineSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best orientation (uniform grid of ``global_step``) and shift (pixel grid within
    ``max_shift``) of each particle, and its score (normalised correlation)."""
    plane = _plane(box, r_max)
    rotations = fibonacci_rotations(settings.global_step)
    proj = np.asarray(rc.project(padded, rotations, box, r_max)).reshape(len(rotations), -1)
    proj = proj[:, plane.flat]  # (P, F)
    inv_s2 = 1.0 / sigma2[np.minimum(plane.shells, len(sigma2) - 1)]
    w = plane.weight * inv_s2
    pr = np.concatenate([proj.real, proj.imag], axis=1).astype(np.float32)  # (P, 2F)
    p2 = (proj.real**2 + proj.imag**2).astype(np.float32)  # (P, F)
    shifts = _shift_grid(settings.max_shift, 1.0)
    ramps = _ramps(plane, shifts, box)  # (T, F)
    n_t, n_p, n_f = len(shifts), len(rotations), len(plane.flat)
    batch = int(max(1, min(settings.batch * 4, SCORE_BUDGET // max(n_t * n_p, 1))))
    n = len(spectra)
    best_rot = np.zeros(n, dtype=np.int64)
    best_shift = np.zeros(n, dtype=np.int64)
    best_score = np.zeros(n)
    flat = spectra.reshape(n, -1)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        x = flat[start:stop][:, plane.flat].astype(np.complex64)
        c = _ctf(ctf_params[start:stop], plane, box, pixel_size)
        d = (w * c)[:, None, :] * np.conj(x)[:, None, :] * ramps[None]  # (B, T, F)
        rows = np.concatenate([d.real, -d.imag], axis=2).astype(np.float32)
        score = (rows.reshape(-1, 2 * n_f) @ pr.T).reshape(stop - start, n_t, n_p)
        norm = (w * c * c).astype(np.float32) @ p2.T  # (B, P)
        score /= np.sqrt(np.maximum(norm, 1e-30))[:, None, :]
        flat_score = score.reshape(stop - start, -1)
        idx = np.argmax(flat_score, axis=1)
        best_score[start:stop] = flat_score[np.arange(stop - start), idx]
        best_shift[start:stop], best_rot[start:stop] = np.divmod(idx, n_p)
    return rotations[best_rot], shifts[best_shift], best_score


def local_search(
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    padded: Any,
    box: int,
    pixel_size: float,
    sigma2: np.ndarray,
    r_max: int,
    matrices: np.ndarray,
    shifts: np.ndarray,
    step: float,
    shift_step: float,
    settings: RefineSettings,
) -> tuple[np.ndarray, np.ndarray]:
    plane = _plane(box, r_max)
    delta = axis_rotations(step)  # (J, 3, 3)
    half = (LOCAL_SHIFT_POINTS - 1) / 2
    g = (np.arange(LOCAL_SHIFT_POINTS) - half) * shift_step
    offsets = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)  # (M, 2)
    inv_s2 = 1.0 / sigma2[np.minimum(plane.shells, len(sigma2) - 1)]
    w = plane.weight * inv_s2
    n, n_j = len(spectra), len(delta)
    out_m = matrices.copy()
    out_t = shifts.copy()
    flat = spectra.reshape(n, -1)
    for start in range(0, n, settings.batch):
        stop = min(start + settings.batch, n)
        nb = stop - start
        cand = np.einsum("bij,qjk->bqik", matrices[start:stop], delta).reshape(-1, 3, 3)
        proj = np.asarray(rc.project(padded, cand, box, r_max)).reshape(nb, n_j, -1)
        proj = proj[:, :, plane.flat]  # (B, J, F)
        t = shifts[start:stop, None, :] + offsets[None]  # (B, M, 2)
        x = flat[start:stop][:, plane.flat]
        c = _ctf(ctf_params[start:stop], plane, box, pixel_size)
        d = (w * c)[:, None, :] * np.conj(x)[:, None, :] * _ramps(plane, t, box)  # (B, M, F)
        cross = np.einsum("bmf,bjf->bmj", d, proj).real
        norm = np.einsum("bf,bjf->bj", w * c * c, proj.real**2 + proj.imag**2)
        score = cross / np.sqrt(np.maximum(norm, 1e-30))[:, None, :]
        idx = np.argmax(score.reshape(nb, -1), axis=1)
        m_idx, j_idx = np.divmod(idx, n_j)
        out_m[start:stop] = cand.reshape(nb, n_j, 3, 3)[np.arange(nb), j_idx]
        out_t[start:stop] = t[np.arange(nb), m_idx]
    return out_m, out_t


# ------------------------------------------------------------------- reconstruction


def _shell_grid(box: int) -> np.ndarray:
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    return np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int64)


def insert_particles(
    bp: rc.BackProjector,
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    sigma2: np.ndarray,
    pixel_size: float,
    batch: int,
    symmetry: str = "C1",
) -> None:
    """Insert ``C X / sigma2`` and ``C^2 / sigma2`` of the particles at their poses, once
    per element ``g`` of the point group (pose ``A g``: :mod:`cryosnake.ops.symmetry`)."""
    group = symmetry_group(symmetry)
    box = bp.n
    shells = np.minimum(_shell_grid(box), box // 2)
    inv_s2 = (1.0 / sigma2)[shells]  # (b, b//2+1)
    n_px = box * pixel_size
    ky = (np.fft.fftfreq(box) * box)[:, None] * np.ones((1, box // 2 + 1))
    kx = np.ones((box, 1)) * np.arange(box // 2 + 1)[None, :]
    for start in range(0, len(spectra), batch):
        stop = min(start + batch, len(spectra))
        c = np.asarray(model_ctf(ctf_params[start:stop], kx.ravel() / n_px, ky.ravel() / n_px))
        c = c.reshape(stop - start, box, box // 2 + 1)
        weighted = (c * inv_s2 * spectra[start:stop]).astype(np.complex64)
        weights = (c * c * inv_s2).astype(np.float32)
        for g in group:
            bp.insert(
                weighted, matrices[start:stop] @ g, weights, shifts=shifts[start:stop], batch=batch
            )


def _mean_weight(bp: rc.BackProjector) -> np.ndarray:
    """(b//2+1,) mean data weight per shell in units of the unpadded grid."""
    size = bp.pad * bp.n
    q = np.fft.fftfreq(size) * size
    qx = np.arange(size // 2 + 1)
    r = np.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + qx[None, None, :] ** 2)
    shells = np.rint(r / bp.pad).astype(np.int64)
    keep = shells <= bp.n // 2
    weight = np.asarray(bp.weight)
    total = np.bincount(shells[keep], weights=weight[keep], minlength=bp.n // 2 + 1)
    count = np.bincount(shells[keep], minlength=bp.n // 2 + 1)
    return total / np.maximum(count, 1) * bp.pad**3


def wiener_map(bp: rc.BackProjector, ssnr: np.ndarray, fudge: float) -> np.ndarray:
    """Map regularised with ``1 / (T tau2) = W / (T ssnr)`` per shell."""
    mean_w = _mean_weight(bp)
    reg = mean_w / (fudge * np.maximum(ssnr, 1e-3))
    reg = np.maximum(reg, 1e-9 * max(float(mean_w.max()), 1e-30))
    return np.asarray(bp.reconstruct(reg), dtype=np.float32)


def reconstruct_halves(
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    halves: np.ndarray,
    sigma2: np.ndarray,
    pixel_size: float,
    mask_diameter: float,
    *,
    tau2_fudge: float = 1.0,
    batch: int = 64,
    symmetry: str = "C1",
) -> dict[str, Any]:
    """Half maps and their FSC from particles at given poses.

    Returns ``fsc`` (FSC of the masked, lightly regularised half maps), ``halves`` (2,
    b, b, b) Wiener-filtered half maps (not masked), ``full`` the filtered map of all
    particles, ``resolution`` (Å at FSC 0.143) and the two back-projectors ``bp``.
    """
    box = int(spectra.shape[1])
    bps = []
    for h in (0, 1):
        sel = np.flatnonzero(halves == h)
        bp = rc.BackProjector.zeros(box)
        insert_particles(
            bp, spectra[sel], ctf_params[sel], matrices[sel], shifts[sel], sigma2, pixel_size,
            batch, symmetry,
        )  # fmt: skip
        bps.append(bp)
    mask = soft_sphere(box, mask_diameter)
    raw = [wiener_map(bp, np.full(box // 2 + 1, 1e6), 1.0) for bp in bps]
    fsc = rc.fsc(raw[0] * mask, raw[1] * mask)
    f = np.clip(fsc, 0.0, 0.999)
    ssnr_half = f / (1.0 - f)
    maps = np.stack([wiener_map(bp, ssnr_half, tau2_fudge) for bp in bps])
    both = rc.BackProjector(
        n=box, pad=bps[0].pad, numerator=bps[0].numerator + bps[1].numerator,
        weight=bps[0].weight + bps[1].weight,
    )  # fmt: skip
    full = wiener_map(both, 2.0 * f / (1.0 - f), tau2_fudge)
    resolution = rc.shell_resolution(fsc, pixel_size, FSC_THRESHOLD)
    return {"fsc": fsc, "halves": maps, "full": full, "resolution": resolution, "bp": bps}


def _noise(
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    refs: np.ndarray,
    halves: np.ndarray,
    matrices: np.ndarray,
    shifts: np.ndarray,
    pixel_size: float,
    batch: int,
) -> np.ndarray:
    """(b//2+1,) mean residual power per shell at the given poses."""
    box = int(spectra.shape[1])
    plane = _plane(box, box // 2)
    n_shells = box // 2 + 1
    total = np.zeros(n_shells)
    count = np.bincount(plane.shells, minlength=n_shells).astype(np.float64)
    flat = spectra.reshape(len(spectra), -1)
    for h in (0, 1):
        padded = rc.pad_volume_spectrum(refs[h])
        sel = np.flatnonzero(halves == h)
        for start in range(0, len(sel), batch):
            idx = sel[start : start + batch]
            proj = np.asarray(rc.project(padded, matrices[idx], box, shifts=shifts[idx]))
            proj = proj.reshape(len(idx), -1)[:, plane.flat]
            c = _ctf(ctf_params[idx], plane, box, pixel_size)
            resid = flat[idx][:, plane.flat] - c * proj
            power = (resid.real**2 + resid.imag**2).sum(axis=0)
            total += np.bincount(plane.shells, weights=power, minlength=n_shells)
    sigma2 = total / np.maximum(count * len(spectra), 1)
    sigma2[0] = sigma2[1]
    return np.maximum(sigma2, 1e-6 * float(sigma2.max()))


# --------------------------------------------------------------------------- driver


def _shell(resolution: float, box: int, pixel_size: float) -> int:
    return int(math.ceil(box * pixel_size / resolution))


def initial_refine_state(
    spectra: np.ndarray,
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
    shells = np.minimum(_shell_grid(box), box // 2).ravel()
    sub = spectra[: min(n, 5000)].reshape(min(n, 5000), -1)
    power = (sub.real**2 + sub.imag**2).astype(np.float64).mean(axis=0)
    mean = sub.astype(np.complex128).mean(axis=0)
    noise = power - (mean.real**2 + mean.imag**2)
    total = np.bincount(shells, weights=noise, minlength=box // 2 + 1)
    sigma2 = total / np.maximum(np.bincount(shells, minlength=box // 2 + 1), 1)
    sigma2 = np.maximum(sigma2, 1e-6 * float(sigma2.max()))
    r_max = min(box // 2 - 1, max(4, _shell(initial_lowpass, box, pixel_size)))
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


def refine_iteration(
    spectra: np.ndarray,
    ctf_params: np.ndarray,
    pixel_size: float,
    state: RefineState,
    settings: RefineSettings,
) -> tuple[RefineState, dict[str, Any]]:
    """One iteration (see the module docstring); returns the new state and the
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
    for h in (0, 1):
        sel = np.flatnonzero(state.halves == h)
        padded = rc.pad_volume_spectrum(state.references[h])
        if is_global:
            m, t, _ = global_search(
                spectra[sel], ctf_params[sel], padded, box, pixel_size, state.sigma2,
                state.r_max, settings,
            )  # fmt: skip
        else:
            m, t = local_search(
                spectra[sel], ctf_params[sel], padded, box, pixel_size, state.sigma2,
                state.r_max, state.matrices[sel], state.shifts[sel], step, shift_step, settings,
            )  # fmt: skip
        matrices[sel], shifts[sel] = m, t
    rec = reconstruct_halves(
        spectra, ctf_params, matrices, shifts, state.halves, state.sigma2, pixel_size,
        settings.mask_diameter, tau2_fudge=settings.tau2_fudge, batch=settings.batch,
        symmetry=settings.symmetry,
    )  # fmt: skip
    mask = soft_sphere(box, settings.mask_diameter)
    references = np.stack([rec["halves"][0] * mask, rec["halves"][1] * mask])
    sigma2 = _noise(
        spectra, ctf_params, references, state.halves, matrices, shifts, pixel_size,
        settings.batch,
    )  # fmt: skip
    resolution = float(rec["resolution"])
    history = [*state.history, resolution]
    r_max = min(box // 2 - 1, _shell(resolution, box, pixel_size) + settings.shell_margin)
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
