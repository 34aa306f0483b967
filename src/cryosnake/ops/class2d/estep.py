"""One pass of 2D classification over the particles: the E-step and the M-step sums.

- **E-step**: for every particle, the log-likelihood of every pose (classes x
  rotations every ``psi_step`` degrees x integer translations within ``max_shift``)
  plus the log priors (class fractions, a Gaussian prior on the translation of width
  ``sigma_offset``, uniform rotations) is turned into posterior probabilities with a
  max-subtracted softmax. Only the cross term depends on the translation, so for a
  batch of particles all poses come out of one real matrix product of the shifted,
  CTF-weighted, noise-whitened data with the rotated references.

An iteration costs one matrix product per batch for the poses (all translations x classes
x rotations) and two smaller ones for the M-step and the noise spectrum, restricted to
the poses that hold 99.9 % of each particle's probability (RELION's significant
weights); all run on BLAS (NumPy) or cuBLAS (CuPy) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module
from cryosnake.ops.class2d.common import _host
from cryosnake.ops.class2d.data import Class2DSettings, ParticleData
from cryosnake.ops.class2d.project import _Geometry
from cryosnake.ops.ctf import model_ctf

# Poses below one of these fractions of a particle's best are left out of the M-step
# (the largest that keeps 99.9 % of the particle's probability).
SIGNIFICANT = (1e-6, 1e-4, 1e-3, 1e-2)


@dataclass
class _Sums:
    """M-step accumulators of one pass over the particles."""

    num: Any  # (K*R, 2F) float64: real and imaginary parts of the class sums x weight
    den: Any  # (K*R, F) float64
    resid: Any  # (n_shells,) float64: expected residual power per shell
    class_weight: Any  # (K,) float64
    offset2: float = 0.0


def _pass(
    data: ParticleData,
    geom: _Geometry,
    settings: Class2DSettings,
    sigma2: np.ndarray,
    refs: Any | None,
    log_prior: Any | None,
    forced: tuple[np.ndarray, ...] | None,
) -> tuple[_Sums, dict[str, np.ndarray]]:
    """One pass over all particles: E-step (unless ``forced`` = (class, rotation) per
    particle, zero shift, or (class, rotation, translation index)) and M-step
    accumulation.

    refs : (K, R, F) complex rotated references; log_prior : (T, K*R).
    """
    xp = data.xp
    k_cls = settings.n_classes
    n_rot = settings.n_rotations
    kr = k_cls * n_rot
    n_t = int(geom.ramps.shape[0])
    n_f = int(geom.flat.shape[0])
    n_shells = data.box // 2 + 1
    inv_s2 = xp.asarray((1.0 / sigma2).astype(np.float32))[geom.shells]  # (F,)
    wsig = geom.weight * inv_s2
    norm_const = float(xp.sum(0.5 * geom.weight * xp.log(np.pi / inv_s2)))
    if refs is not None:
        z = refs.reshape(kr, n_f)
        zr = xp.concatenate([z.real, z.imag], axis=1).astype(xp.float32)  # (KR, 2F)
        z2 = (z.real**2 + z.imag**2).astype(xp.float32)  # (KR, F)
    sums = _Sums(
        num=xp.zeros((kr, 2 * n_f), dtype=xp.float64),
        den=xp.zeros((kr, n_f), dtype=xp.float64),
        resid=xp.zeros(n_shells, dtype=xp.float64),
        class_weight=xp.zeros(k_cls, dtype=xp.float64),
    )
    n = data.n
    out = {
        "assignment": np.zeros(n, dtype=np.int64),
        "rotation": np.zeros(n, dtype=np.int64),
        "translation": np.zeros(n, dtype=np.int64),
        "max_prob": np.ones(n),
        "loglik": np.zeros(n),
    }
    offset2 = 0.0
    spectra = data.spectra.reshape(n, -1)
    ramp_re = geom.ramps.real.astype(xp.float32)[None]
    ramp_im = geom.ramps.imag.astype(xp.float32)[None]
    for start in range(0, n, settings.batch):
        stop = min(start + settings.batch, n)
        nb = stop - start
        block = spectra[start:stop]
        if get_array_module(block) is not xp:  # streamed: gather on the host, then move
            x = xp.asarray(np.ascontiguousarray(block[:, _host(geom.flat)]))
        else:
            x = block[:, geom.flat]  # (nb, F) complex64
        c = model_ctf(data.ctf[start:stop], geom.kx, geom.ky)  # (nb, F)
        # y = w C conj(X) / sigma2; rows of yr: [Re, -Im] of y x ramp_t, i.e. the
        # weight times [Re, Im] of C X conj(ramp_t) / sigma2 (used by the M-step too).
        wc = wsig * c
        y_re = (wc * x.real)[:, None, :]
        y_im = (-wc * x.imag)[:, None, :]
        yr = xp.empty((nb, n_t, 2 * n_f), dtype=xp.float32)
        re, im = yr[..., :n_f], yr[..., n_f:]
        xp.multiply(y_re, ramp_re, out=re)
        re -= y_im * ramp_im
        xp.multiply(y_re, ramp_im, out=im)
        im += y_im * ramp_re
        xp.negative(im, out=im)
        yr = yr.reshape(nb * n_t, 2 * n_f)
        del re, im, y_re, y_im
        x2 = (x.real**2 + x.imag**2).astype(xp.float32)
        if forced is None:
            assert refs is not None and log_prior is not None
            ll = (yr @ zr.T).reshape(nb, n_t * kr)  # the cross term, in place from here
            norm = ((c * c) * (0.5 * wsig)) @ z2.T  # (nb, KR)
            ll = ll.reshape(nb, n_t, kr)
            ll -= norm[:, None, :]
            ll += log_prior[None]
            ll = ll.reshape(nb, n_t * kr)
            best = xp.argmax(ll, axis=1)
            peak = ll[xp.arange(nb), best]
            ll -= peak[:, None]
            prob = xp.exp(ll, out=ll)  # best pose = 1
            total = prob.sum(axis=1)
            const = -(0.5 * wsig[None] * x2).sum(axis=1) - norm_const
            out["max_prob"][start:stop] = _host(1.0 / total)
            out["loglik"][start:stop] = _host(peak + xp.log(total) + const)
            t_idx, kr_idx = np.divmod(_host(best), kr)
            out["translation"][start:stop] = t_idx
            out["assignment"][start:stop] = kr_idx // n_rot
            out["rotation"][start:stop] = kr_idx % n_rot
            prob = _significant(prob, total)
            prob = prob.reshape(nb * n_t, kr)
        else:
            cls, rot = forced[0], forced[1]
            trans = forced[2][start:stop] if len(forced) > 2 else 0  # (0, 0) comes first
            prob = xp.zeros((nb * n_t, kr), dtype=xp.float32)
            rows = xp.asarray(np.arange(nb) * n_t + trans)
            cols = xp.asarray(cls[start:stop] * n_rot + rot[start:stop])
            prob[rows, cols] = 1.0
            out["assignment"][start:stop] = cls[start:stop]
            out["rotation"][start:stop] = rot[start:stop]
        # M-step sums over the significant poses only: the rows (particle, translation)
        # and columns (class, rotation) that hold any; once the posteriors are sharp
        # this is a few rows per particle instead of all translations.
        rows_on = xp.nonzero(prob.max(axis=1) > 0)[0]
        cols_on = xp.nonzero(prob.max(axis=0) > 0)[0]
        p_act = prob[rows_on][:, cols_on]  # (A, C)
        sums.num[cols_on] += (p_act.T @ yr[rows_on]).astype(xp.float64)
        p_kr = prob.reshape(nb, n_t, kr).sum(axis=1)  # (nb, KR)
        sums.den += (p_kr.T @ ((c * c) * inv_s2)).astype(xp.float64)
        sums.class_weight += p_kr.reshape(nb, k_cls, n_rot).sum(axis=(0, 2)).astype(xp.float64)
        offset2 += float((prob.reshape(nb, n_t, kr).sum(axis=2) * geom.t2[None]).sum())
        # Expected residual power per frequency, for the noise spectrum.
        if refs is not None:
            q = p_act @ zr[cols_on]  # (A, 2F): sum over poses of P x rotated reference
            qc = (q[:, :n_f] + 1j * q[:, n_f:]) * geom.ramps[rows_on % n_t]
            dense = xp.zeros((nb * n_t, n_f), dtype=qc.dtype)
            dense[rows_on] = qc
            model = dense.reshape(nb, n_t, n_f).sum(axis=1)  # (nb, F): sum P ramp Z
            del dense
            model2 = p_kr @ z2  # (nb, F): sum P |Z|^2
            resid = x2 - 2.0 * (xp.conj(x) * c * model).real + (c * c) * model2
            sums.resid += xp.bincount(
                geom.shells, weights=resid.sum(axis=0).astype(xp.float64), minlength=n_shells
            )
        del yr, prob
    sums.offset2 = offset2
    return sums, out


def _significant(prob: Any, total: Any) -> Any:
    """Normalised posteriors (nb, m) from unnormalised ones whose maximum is 1 per row,
    keeping per particle only the poses above the largest threshold of
    :data:`SIGNIFICANT` that still keeps 99.9 % of its probability (RELION keeps the
    largest weights that sum to 99.9 %), in place."""
    xp = get_array_module(prob)
    cut = xp.full(prob.shape[0], SIGNIFICANT[0], dtype=prob.dtype)
    for level in SIGNIFICANT[1:]:  # ascending: the largest that keeps enough wins
        kept = xp.where(prob >= level, prob, 0.0).sum(axis=1)
        cut = xp.where(kept >= 0.999 * total, level, cut)
    prob[prob < cut[:, None]] = 0.0
    prob /= prob.sum(axis=1)[:, None]
    return prob
