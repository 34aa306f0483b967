"""The EM iterations of reference-free 2D classification (Scheres 2012, RELION) and
their state.

Model of particle image ``i`` (Fourier transform ``X_i`` on the working box ``b``)::

    X_i(f) = C_i(f) * exp(-2 pi i f.t / b) * A_k(R_psi^T f) + N_i(f),
    E|N_i(f)|^2 = sigma2(|f|)

with ``A_k`` the Fourier transform of class ``k``, ``R_psi`` an in-plane rotation,
``t`` a translation, ``C_i`` the particle's CTF and ``sigma2`` the noise power per
radial shell. The hidden variables (class, rotation, translation) are marginalised by
expectation-maximisation:

- **E-step**: posterior probabilities of every pose, in one pass over the particles
  (:mod:`cryosnake.ops.class2d.estep`).
- **M-step**: each class is the Wiener-filter-like average
  ``A = sum P C X e^{+2 pi i f.t} / sigma2 / (sum P C^2 / sigma2 + 1 / (T tau2))``,
  accumulated per rotation and inserted, rotated back, into a 2x padded Fourier grid
  with linear interpolation (RELION's back-projector, :mod:`cryosnake.ops.fourier_slice.image`;
  ``T`` = ``tau2_fudge``, ``tau2`` the class's power spectrum, i.e. the signal part of
  the SNR), gridding-corrected, centred on its centre of mass and masked with a soft
  circle of ``mask_diameter``. The noise spectrum is the posterior-expected residual
  power per shell, the class fractions are the posterior sums, ``sigma_offset`` the
  posterior r.m.s. shift.
- **Resolution**: a class's SSNR per shell is ``tau2 * mean(sum P C^2 / sigma2)``; its
  resolution is the first shell where the SSNR drops below 1. Like RELION's
  ``current_size``, only shells up to a few beyond the best class resolution take part
  in the next iteration, which makes early iterations cheap and anneals the search.
- **Start**: every particle is given a random class and a random rotation; the first
  M-step (CTF-corrected averages) then gives slightly different blurred disks, from
  which the classes separate. Until ``reseed_until``, a class left (almost) empty is
  re-seeded by splitting the largest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, take_rows
from cryosnake.ops.class2d.common import (
    _host,
    _resolution,
    _resolution_shells,
    _shell_average,
    _shell_index,
)
from cryosnake.ops.class2d.data import Class2DSettings, ParticleData
from cryosnake.ops.class2d.estep import _pass, _Sums
from cryosnake.ops.class2d.images import _centre, soft_circle
from cryosnake.ops.class2d.project import _Geometry, _geometry
from cryosnake.ops.fourier_slice import (
    PAD,
    backproject_images,
    pad_image_spectra,
    padded_image_shells,
    project_images,
    reconstruct_images,
)

__all__ = [
    "Class2DState",
    "em_iteration",
    "initial_state",
    "subset_averages",
]

RESEED_FRACTION = 0.1  # a class with fewer than this / K of the particles is re-seeded
RESEED_AMPLITUDE = 0.3  # relative amplitude of the perturbations that split a class
SUBSETS = 4  # class2d scores: subsets per class (noise-free energies, jackknife errors)


@dataclass
class Class2DState:
    """Everything an iteration needs and produces; a checkpoint is exactly this.

    classes : (K, b, b) float32 (device of the data), masked class averages
    unmasked : (K, b, b) float32 (device of the data), the same before masking
    sigma2 : (b//2+1,) noise power per shell (E|N(f)|^2 of unnormalised FFTs)
    tau2 : (K, b//2+1) class power spectra (the prior of the next M-step)
    ssnr : (K, b//2+1) spectral SNR of each class average
    fractions : (K,) class distribution
    sigma_offset : px, width of the translation prior
    r_max : highest shell the next iteration uses
    tau2_shells : highest shell ``tau2`` was estimated on (beyond it: no prior yet)
    iteration : iterations done (0 after :func:`initial_state`)
    Per particle (NumPy, from the last E-step): ``assignment`` (class index, -1 before
    the first E-step), ``psi`` (degrees), ``shift`` (n, 2) (dx, dy) working px with
    image(r) = class(R^-1 (r - shift)), ``max_prob``, ``loglik``.
    Convergence: ``log_likelihood`` (sum over particles), ``changes`` (fraction of
    particles whose class changed), ``converged``; ``history`` (log-likelihood per
    iteration), ``reseeded`` (classes re-seeded by the last iteration).
    """

    classes: Any
    unmasked: Any
    sigma2: np.ndarray
    tau2: np.ndarray
    ssnr: np.ndarray
    fractions: np.ndarray
    sigma_offset: float
    r_max: int
    tau2_shells: int
    iteration: int
    assignment: np.ndarray
    psi: np.ndarray
    shift: np.ndarray
    max_prob: np.ndarray
    loglik: np.ndarray
    log_likelihood: float = float("nan")
    changes: float = 1.0
    converged: bool = False
    history: list[float] = field(default_factory=list)
    reseeded: list[int] = field(default_factory=list)

    def resolution(self, pixel_size: float) -> np.ndarray:
        """(K,) Å: the first shell where a class's SSNR falls below 1."""
        return _resolution(self.ssnr, self.classes.shape[-1], pixel_size)


def _maximise(
    data: ParticleData,
    geom: _Geometry,
    settings: Class2DSettings,
    sums: _Sums,
    inv_tau2: Any,
) -> tuple[Any, Any, Any]:
    """Class images (masked, unmasked) and the padded-grid weights from the sums."""
    xp = data.xp
    k_cls, n_rot = settings.n_classes, settings.n_rotations
    n_f = int(geom.flat.shape[0])
    box = data.box
    # Each half-plane point stands for itself and its mate: insert both, half weight each
    # (the weight 1 of the kx = 0 column, whose mates are in the half plane too, is
    # already in the sums through the weight of the data term).
    num = (sums.num[:, :n_f] + 1j * sums.num[:, n_f:]) * 0.5
    den = sums.den * (0.5 * geom.weight)[None].astype(xp.float64)
    num = num.reshape(k_cls, n_rot, n_f)
    den = den.reshape(k_cls, n_rot, n_f)
    pnum, pweight = backproject_images(num, den, geom.cells)
    unmasked = reconstruct_images(pnum, pweight, inv_tau2, box)
    mask = soft_circle(box, settings.mask_diameter, settings.mask_edge, xp)
    unmasked = _centre(unmasked, mask, settings.mask_diameter / 4.0)
    return unmasked * mask, unmasked, pweight


def _spectrum(images: Any) -> Any:
    """(K, b//2+1) mean |F|^2 per shell of (K, b, b) images (centred FFT)."""
    xp = get_array_module(images)
    fft = fft_module(xp)
    box = int(images.shape[-1])
    spec = fft.rfft2(fft.ifftshift(images, axes=(-2, -1)), axes=(-2, -1), **fft_kwargs(xp))
    power = (spec.real**2 + spec.imag**2).reshape(len(images), -1).astype(xp.float64)
    shells = xp.asarray(_shell_index(box).ravel())
    return _shell_average(power, shells, box // 2 + 1)


def _ssnr(pweight: Any, tau2: Any, box: int) -> Any:
    """(K, b//2+1) spectral SNR: tau2 x shell mean of the padded-grid data weight."""
    xp = get_array_module(pweight)
    shells = padded_image_shells(box, PAD, xp)
    mean_w = _shell_average(pweight, shells, box // 2 + 1) * (PAD * PAD)
    return mean_w * tau2


def _r_max_limit(box: int) -> int:
    return box // 2 - 2


def _shell_of(resolution: float, box: int, pixel_size: float) -> int:
    return int(math.ceil(box * pixel_size / resolution))


def initial_state(
    data: ParticleData, settings: Class2DSettings, rng: np.random.Generator
) -> Class2DState:
    """Reference-free start: random classes and rotations, one M-step.

    The noise spectrum starts as the particles' power spectrum minus that of their
    mean; the classes are the CTF-corrected averages of random subsets with random
    rotations, low-passed to ``initial_resolution``.
    """
    xp = data.xp
    box, n, k_cls = data.box, data.n, settings.n_classes
    n_shells = box // 2 + 1
    shells = xp.asarray(_shell_index(box).ravel())
    pick = rng.choice(n, size=min(n, 5000), replace=False)
    sub = xp.asarray(take_rows(data.spectra, np.sort(pick))[:]).reshape(len(pick), -1)
    power = (sub.real**2 + sub.imag**2).astype(xp.float64).mean(axis=0)
    mean = sub.astype(xp.complex128).mean(axis=0)
    noise = power - (mean.real**2 + mean.imag**2)
    sigma2 = _host(_shell_average(noise[None], shells, n_shells)[0])
    sigma2 = np.maximum(sigma2, 1e-6 * float(sigma2.max()))
    res0 = settings.initial_resolution or 30.0
    r0 = min(_r_max_limit(box), max(4, _shell_of(res0, box, data.pixel_size)))
    geom = _geometry(box, r0, settings, data.pixel_size, xp)
    cls = rng.integers(0, k_cls, size=n)
    rot = rng.integers(0, settings.n_rotations, size=n)
    sums, _ = _pass(data, geom, settings, sigma2, None, None, (cls, rot))
    # No signal prior yet: a small, uniform regulariser (1e-3 of the mean data weight).
    mean_den = float(xp.mean(sums.den)) * 0.5
    inv_tau2 = xp.full((k_cls, n_shells), 1e-3 * mean_den + 1e-12, dtype=xp.float64)
    classes, unmasked, pweight = _maximise(data, geom, settings, sums, inv_tau2)
    tau2 = _spectrum(classes)
    fractions = _host(sums.class_weight) / n
    return Class2DState(
        classes=classes,
        unmasked=unmasked,
        sigma2=sigma2,
        tau2=_host(tau2),
        ssnr=_host(_ssnr(pweight, tau2, box)),
        fractions=np.maximum(fractions, 1e-6),
        sigma_offset=max(settings.max_shift / 2.0, 1.0),
        r_max=r0,
        tau2_shells=r0,
        iteration=0,
        assignment=np.full(n, -1, dtype=np.int64),
        psi=np.zeros(n),
        shift=np.zeros((n, 2)),
        max_prob=np.zeros(n),
        loglik=np.zeros(n),
    )


def em_iteration(
    data: ParticleData,
    state: Class2DState,
    settings: Class2DSettings,
    rng: np.random.Generator | None = None,
) -> Class2DState:
    """One E-step and M-step; returns the new state (the input is not modified).

    Up to iteration ``settings.reseed_until``, a class that ends up with less than
    :data:`RESEED_FRACTION` / K of the particles is re-seeded by splitting the largest
    class: the two get opposite random perturbations with the large class's power
    spectrum (30 % in amplitude), so that the next E-step divides its particles. This
    uses ``rng`` (a fresh seeded generator when None).
    """
    xp = data.xp
    box, n = data.box, data.n
    k_cls, n_rot = settings.n_classes, settings.n_rotations
    geom = _geometry(box, state.r_max, settings, data.pixel_size, xp)
    refs = project_images(pad_image_spectra(state.classes), geom.cells).reshape(k_cls, n_rot, -1)
    log_t = -0.5 * _host(geom.t2).astype(np.float64) / state.sigma_offset**2
    log_t -= np.log(np.exp(log_t - log_t.max()).sum()) + log_t.max()
    log_class = np.log(np.maximum(state.fractions, 1e-12)) - math.log(n_rot)
    log_prior = log_t[:, None] + np.repeat(log_class, n_rot)[None, :]
    sums, per = _pass(
        data, geom, settings, state.sigma2, refs, xp.asarray(log_prior.astype(np.float32)), None
    )
    # Noise spectrum: expected residual power per frequency, shells in use only.
    counts = np.bincount(_host(geom.shells), minlength=box // 2 + 1)
    sigma2 = state.sigma2.copy()
    used = counts > 0
    sigma2[used] = _host(sums.resid)[used] / (counts[used] * n)
    sigma2 = np.maximum(sigma2, 1e-6 * float(sigma2.max()))
    # Shells beyond those the prior was estimated on have no prior yet (RELION: no
    # regularisation where tau2 is unknown); shells whose signal died stay at zero.
    inv_tau2_h = 1.0 / (settings.tau2_fudge * np.maximum(state.tau2, 1e-30))
    inv_tau2_h[:, state.tau2_shells + 1 :] = 0.0
    inv_tau2 = xp.asarray(inv_tau2_h)
    classes, unmasked, pweight = _maximise(data, geom, settings, sums, inv_tau2)
    tau2 = _spectrum(classes)
    ssnr = _host(_ssnr(pweight, tau2, box))
    fractions = np.maximum(_host(sums.class_weight) / n, 1e-6)
    fractions /= fractions.sum()
    sigma_offset = math.sqrt(sums.offset2 / (2.0 * n)) if settings.max_shift >= 1 else 1.0
    sigma_offset = float(np.clip(sigma_offset, 1.0, max(settings.max_shift, 1.0)))
    # Next resolution: a few shells beyond the best class (never fewer than now).
    best_shell = int(_resolution_shells(ssnr).max())
    r_max = int(min(_r_max_limit(box), max(state.r_max, best_shell + settings.shell_increment)))
    reseeded: list[int] = []
    if state.iteration + 1 <= settings.reseed_until:
        rng = rng if rng is not None else np.random.default_rng(state.iteration)
        mask = soft_circle(box, settings.mask_diameter, settings.mask_edge, xp)
        tau2_h = _host(tau2).copy()
        for empty in np.nonzero(fractions < RESEED_FRACTION / k_cls)[0]:
            big = int(np.argmax(fractions))
            if fractions[big] < 2 * RESEED_FRACTION / k_cls:
                break
            eps = _perturbation(tau2_h[big], box, rng, xp)
            classes[empty] = (unmasked[big] + eps) * mask
            classes[big] = (unmasked[big] - eps) * mask
            unmasked[empty] = unmasked[big] + eps
            unmasked[big] = unmasked[big] - eps
            fractions[empty] = fractions[big] = fractions[big] / 2
            tau2_h[empty] = tau2_h[big]
            ssnr[empty] = ssnr[big]
            reseeded.append(int(empty))
        tau2 = tau2_h
    assignment = per["assignment"]
    changes = float(np.mean(assignment != state.assignment))
    log_likelihood = float(per["loglik"].sum())
    psi = settings.psi_angles[per["rotation"]]
    shift = settings.translations[per["translation"]]
    converged = bool(
        state.iteration >= 1
        and not reseeded
        and not state.reseeded
        and changes < 0.01
        and r_max == state.r_max
        and geom.r_max == state.r_max
        and np.isfinite(state.log_likelihood)
        and abs(log_likelihood - state.log_likelihood) <= 1e-4 * abs(log_likelihood)
    )
    return replace(
        state,
        classes=classes,
        unmasked=unmasked,
        sigma2=sigma2,
        tau2=_host(tau2),
        ssnr=ssnr,
        fractions=fractions,
        sigma_offset=sigma_offset,
        r_max=r_max,
        tau2_shells=geom.r_max,
        iteration=state.iteration + 1,
        assignment=assignment,
        psi=psi,
        shift=shift,
        max_prob=per["max_prob"],
        loglik=per["loglik"],
        log_likelihood=log_likelihood,
        changes=changes,
        converged=converged,
        history=[*state.history, log_likelihood],
        reseeded=reseeded,
    )


def subset_averages(
    data: ParticleData, state: Class2DState, settings: Class2DSettings, parts: int = SUBSETS
) -> Any:
    """(K, parts, b, b) unmasked class averages of ``parts`` disjoint subsets per class.

    Particle ``i`` goes to subset ``i mod parts`` at its best pose of the last E-step
    (``state``: assignment, psi, shift); each subset is reconstructed like a class (same
    prior ``tau2``, shells up to ``state.r_max``), without re-centring. The noise of two
    subsets is independent, so ``sum(a_i * a_j)`` over a region estimates the signal
    energy there without the noise bias of ``sum(a * a)``; empty subsets are zeros.
    """
    xp = data.xp
    box, n, k_cls = data.box, data.n, settings.n_classes
    if n == 0 or (state.assignment < 0).any():
        raise ValueError("half_averages needs the poses of an E-step for every particle")
    step = 360.0 / settings.n_rotations
    rot = np.rint(np.asarray(state.psi) / step).astype(np.int64) % settings.n_rotations
    grid = settings.translations
    trans = np.argmin(
        ((np.asarray(state.shift)[:, None, :] - grid[None, :, :]) ** 2).sum(axis=2), axis=1
    )
    halves = replace(settings, n_classes=parts * k_cls)
    cls = parts * state.assignment + (np.arange(n) % parts)
    geom = _geometry(box, state.r_max, halves, data.pixel_size, xp)
    sums, _ = _pass(data, geom, halves, state.sigma2, None, None, (cls, rot, trans))
    n_f = int(geom.flat.shape[0])
    num = ((sums.num[:, :n_f] + 1j * sums.num[:, n_f:]) * 0.5).reshape(parts * k_cls, -1, n_f)
    den = (sums.den * (0.5 * geom.weight)[None].astype(xp.float64)).reshape(parts * k_cls, -1, n_f)
    pnum, pweight = backproject_images(num, den, geom.cells)
    inv_tau2 = 1.0 / (settings.tau2_fudge * np.maximum(np.repeat(state.tau2, parts, axis=0), 1e-30))
    inv_tau2[:, state.tau2_shells + 1 :] = 0.0
    images = reconstruct_images(pnum, pweight, xp.asarray(inv_tau2), box)
    return images.reshape(k_cls, parts, box, box)


def _perturbation(tau2: np.ndarray, box: int, rng: np.random.Generator, xp: Any) -> Any:
    """(b, b) Gaussian random image with power spectrum ``RESEED_AMPLITUDE^2 x tau2``."""
    shells = _shell_index(box)
    white = np.fft.rfft2(rng.standard_normal((box, box)))  # E|W|^2 = b^2
    spec = white * (RESEED_AMPLITUDE * np.sqrt(np.maximum(tau2, 0.0))[shells] / box)
    eps = np.fft.fftshift(np.fft.irfft2(spec, s=(box, box)))
    return xp.asarray(eps.astype(np.float32))
