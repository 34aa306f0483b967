"""The 2D projector of 2D classification: its 2x padded Fourier grid, the rotation and
translation tables of an iteration, projection (rotated references), back-projection
with linear interpolation, gridding correction and reconstruction of class images.

Rotations are computed in Fourier space on the padded grid (no per-rotation FFT).
Conventions are RELION's: the image is the class rotated by ``psi`` (``A = Rz(psi)`` of
:func:`cryosnake.ops.rotation.euler_to_matrix`) and then shifted by ``t``; RELION's
``rlnOriginX/Y`` is ``-t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.class2d.data import Class2DSettings

PAD = 2  # oversampling of the Fourier grid that rotations interpolate on


# --------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    """Frequencies of one iteration and the rotation/translation tables."""

    r_max: int
    flat: Any  # (F,) index into the flattened (b, b//2+1) half plane
    fx: np.ndarray  # (F,) integer frequencies (cycles per box)
    fy: np.ndarray
    shells: Any  # (F,) int
    weight: Any  # (F,) 1 on the kx = 0 column, 2 elsewhere (Hermitian mates)
    kx: Any  # (F,) 1/Å
    ky: Any
    ramps: Any  # (T, F) complex64: exp(-2 pi i f.t / b)
    t2: Any  # (T,) |t|^2
    corners: Any  # (R, 2, F, 4) int flat indices into the padded grid (g and its mate -g)
    corner_w: Any  # (R, F, 4) float32 bilinear weights


def _geometry(
    box: int, r_max: int, settings: Class2DSettings, pixel_size: float, xp: Any
) -> _Geometry:
    ky_all = np.fft.fftfreq(box) * box
    kx_all = np.arange(box // 2 + 1, dtype=np.float64)
    fy2, fx2 = np.meshgrid(ky_all, kx_all, indexing="ij")
    radius = np.sqrt(fx2**2 + fy2**2)
    keep = radius <= r_max + 0.5  # r_max <= b/2 - 2: inside the padded grid's interior
    flat = np.nonzero(keep.ravel())[0]
    fx, fy = fx2.ravel()[flat], fy2.ravel()[flat]
    shells = np.rint(radius.ravel()[flat]).astype(np.int64)
    weight = np.where(fx == 0, 1.0, 2.0)
    t = settings.translations
    phase = -2.0 * np.pi * (t[:, 0:1] * fx[None, :] + t[:, 1:2] * fy[None, :]) / box
    ramps = np.exp(1j * phase).astype(np.complex64)
    pad = PAD * box
    centre = pad // 2
    psi = np.deg2rad(settings.psi_angles)
    c, s = np.cos(psi)[:, None], np.sin(psi)[:, None]
    # Reference frequency g = A^T f for the image frequency f, A = Rz(psi) (RELION).
    gx = c * fx[None, :] - s * fy[None, :]
    gy = s * fx[None, :] + c * fy[None, :]
    x = PAD * gx + centre
    y = PAD * gy + centre
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = x - x0, y - y0
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    corners = np.empty((len(psi), 2, len(fx), 4), dtype=np.int64)
    weights = np.empty((len(psi), len(fx), 4), dtype=np.float32)
    for j, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        corners[:, 0, :, j] = (y0i + dy) * pad + (x0i + dx)
        # The mate -g sits at 2 centre - (x, y): mirrored corners, the same weights.
        corners[:, 1, :, j] = (2 * centre - (y0i + dy)) * pad + (2 * centre - (x0i + dx))
        weights[..., j] = (ax if dx else 1 - ax) * (ay if dy else 1 - ay)
    n_px = box * pixel_size
    return _Geometry(
        r_max=r_max,
        flat=xp.asarray(flat),
        fx=fx,
        fy=fy,
        shells=xp.asarray(shells),
        weight=xp.asarray(weight.astype(np.float32)),
        kx=xp.asarray(fx / n_px),
        ky=xp.asarray(fy / n_px),
        ramps=xp.asarray(ramps),
        t2=xp.asarray((t**2).sum(axis=1).astype(np.float32)),
        corners=xp.asarray(corners),
        corner_w=xp.asarray(weights),
    )


# ------------------------------------------------------------------ projector/back-projector


def _gridding(box: int, xp: Any) -> Any:
    """(b, b) sinc^2 apodisation of linear interpolation on the padded Fourier grid."""
    x = (np.arange(box) - box // 2) / (PAD * box)
    s = np.sinc(x) ** 2
    return xp.asarray((s[:, None] * s[None, :]).astype(np.float32))


def _padded_spectra(classes: Any) -> Any:
    """(K, b, b) class images -> (K, P*P) complex64 centred Fourier transforms on the
    padded grid, gridding pre-corrected for linear interpolation."""
    xp = get_array_module(classes)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    k, box = int(classes.shape[0]), int(classes.shape[-1])
    pad = PAD * box
    lo = pad // 2 - box // 2
    padded = xp.zeros((k, pad, pad), dtype=xp.float32)
    padded[:, lo : lo + box, lo : lo + box] = classes / _gridding(box, xp)
    spec = fft.fftshift(
        fft.fft2(fft.ifftshift(padded, axes=(-2, -1)), axes=(-2, -1), **kw), axes=(-2, -1)
    )
    return spec.reshape(k, pad * pad).astype(xp.complex64)


def _project(padded: Any, geom: _Geometry) -> Any:
    """Rotated class spectra on the iteration's frequencies: (K, R, F) complex64."""
    idx = geom.corners[:, 0]  # (R, F, 4)
    values = padded[:, idx]  # (K, R, F, 4)
    return (values * geom.corner_w[None]).sum(axis=-1).astype(padded.dtype)


def _backproject(num: Any, den: Any, geom: _Geometry, box: int) -> tuple[Any, Any]:
    """Insert per-rotation sums (K, R, F) (already weighted for the Hermitian mates) into
    the padded grid: returns numerator (K, P*P) complex128 and weight (K, P*P) float64."""
    xp = get_array_module(num)
    k = int(num.shape[0])
    size = (PAD * box) ** 2
    w = geom.corner_w  # (R, F, 4)
    base = (xp.arange(k, dtype=xp.int64) * size)[:, None, None, None]
    out_re = xp.zeros(k * size, dtype=xp.float64)
    out_im = xp.zeros(k * size, dtype=xp.float64)
    out_w = xp.zeros(k * size, dtype=xp.float64)
    for mate, sign in ((0, 1.0), (1, -1.0)):
        idx = (base + geom.corners[None, :, mate]).ravel()  # (K, R, F, 4)
        vals = num[..., None] * w[None]
        out_re += xp.bincount(idx, weights=vals.real.ravel().astype(xp.float64), minlength=k * size)
        out_im += sign * xp.bincount(
            idx, weights=vals.imag.ravel().astype(xp.float64), minlength=k * size
        )
        dw = (den[..., None] * w[None]).ravel().astype(xp.float64)
        out_w += xp.bincount(idx, weights=dw, minlength=k * size)
    return (out_re + 1j * out_im).reshape(k, size), out_w.reshape(k, size)


def _padded_shells(box: int, xp: Any) -> Any:
    """(P*P,) int: shell (in working-box units) of each padded-grid point."""
    pad = PAD * box
    g = (np.arange(pad) - pad // 2) / PAD
    r = np.sqrt(g[:, None] ** 2 + g[None, :] ** 2)
    return xp.asarray(np.minimum(np.rint(r), box // 2).astype(np.int64).ravel())


def _reconstruct(num: Any, weight: Any, inv_tau2: Any, box: int) -> Any:
    """Class images (K, b, b) float32 from padded-grid sums; ``inv_tau2`` (K, b//2+1)."""
    xp = get_array_module(num)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    k = int(num.shape[0])
    pad = PAD * box
    shells = _padded_shells(box, xp)
    reg = inv_tau2[:, shells] / (PAD * PAD)
    denom = weight + reg
    spec = (num / xp.where(denom > 0, denom, 1.0)).reshape(k, pad, pad)
    img = fft.fftshift(
        fft.ifft2(fft.ifftshift(spec, axes=(-2, -1)), axes=(-2, -1), **kw), axes=(-2, -1)
    ).real
    lo = pad // 2 - box // 2
    out = img[:, lo : lo + box, lo : lo + box] / _gridding(box, xp)
    return out.astype(xp.float32)
