"""2D Fourier-space rotation of images: projection (rotated references) and
back-projection with bilinear interpolation on a padded grid, gridding correction and
the regularised reconstruction of images (the 2D projector of 2D classification).

An image rotated by ``psi`` (``A = Rz(psi)`` of
:func:`cryosnake.ops.rotation.euler_to_matrix`, RELION's convention) has at image
frequency ``f`` the value of the reference's transform at ``g = A^T f``. The reference's
transform is computed once on a grid padded ``pad`` times (the image zero-padded to
``P = pad * n``, its transform centred: frequency ``g`` at index ``P/2 + pad * g``), so
that rotations need no FFT and their bilinear interpolation errors stay small; as in
3D (:mod:`cryosnake.ops.fourier_slice.volume`) the image is divided beforehand by the
apodisation of linear interpolation, and reconstructions after. Each kept frequency
``f`` of the half plane is read, and inserted, together with its mate ``-f`` (at the
mirrored corners, with the same weights): the full padded plane stays Hermitian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.fourier_slice.grid import PAD, HalfPlane, gridding

__all__ = [
    "RotationCells",
    "backproject_images",
    "pad_image_spectra",
    "padded_image_shells",
    "project_images",
    "reconstruct_images",
    "rotation_cells",
]


@dataclass(frozen=True)
class RotationCells:
    """Bilinear cells of the rotated frequencies of a half plane on the padded grid.

    box : image size ``n``; pad : oversampling
    corners : (R, 2, F, 4) int64 flat indices into the (P, P) centred padded plane of
        the 4 corners around ``g`` (``[:, 0]``) and around its mate ``-g`` (``[:, 1]``)
    weights : (R, F, 4) float32 bilinear weights (the same for ``g`` and ``-g``)
    """

    box: int
    pad: int
    corners: Any
    weights: Any


def rotation_cells(
    plane: HalfPlane, psi: np.ndarray, box: int, pad: int = PAD, xp: Any = np
) -> RotationCells:
    """The cells of the reference frequencies ``g = Rz(psi)^T f`` of the plane's
    frequencies ``f`` for in-plane angles ``psi`` (R,) degrees, on the device of ``xp``.
    The plane's shells must stay below ``n/2 - 1`` (inside the padded grid)."""
    size = pad * box
    centre = size // 2
    angles = np.deg2rad(np.asarray(psi, dtype=np.float64))
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    gx = c * plane.kx[None, :] - s * plane.ky[None, :]
    gy = s * plane.kx[None, :] + c * plane.ky[None, :]
    x = pad * gx + centre
    y = pad * gy + centre
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = x - x0, y - y0
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    corners = np.empty((len(angles), 2, len(plane.kx), 4), dtype=np.int64)
    weights = np.empty((len(angles), len(plane.kx), 4), dtype=np.float32)
    for j, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        corners[:, 0, :, j] = (y0i + dy) * size + (x0i + dx)
        # The mate -g sits at 2 centre - (x, y): mirrored corners, the same weights.
        corners[:, 1, :, j] = (2 * centre - (y0i + dy)) * size + (2 * centre - (x0i + dx))
        weights[..., j] = (ax if dx else 1 - ax) * (ay if dy else 1 - ay)
    return RotationCells(box=box, pad=pad, corners=xp.asarray(corners), weights=xp.asarray(weights))


def pad_image_spectra(images: Any, pad: int = PAD) -> Any:
    """(K, n, n) images -> (K, P*P) complex64 centred transforms on the padded grid,
    gridding pre-corrected for bilinear interpolation."""
    xp = get_array_module(images)
    fft = fft_module(xp)
    k, box = int(images.shape[0]), int(images.shape[-1])
    size = pad * box
    lo = size // 2 - box // 2
    padded = xp.zeros((k, size, size), dtype=xp.float32)
    padded[:, lo : lo + box, lo : lo + box] = images / gridding(box, pad, 2, xp)
    spec = fft.fftshift(
        fft.fft2(fft.ifftshift(padded, axes=(-2, -1)), axes=(-2, -1), **fft_kwargs(xp)),
        axes=(-2, -1),
    )
    return spec.reshape(k, size * size).astype(xp.complex64)


def project_images(padded: Any, cells: RotationCells) -> Any:
    """The rotated spectra of padded images (:func:`pad_image_spectra`) at the cells'
    frequencies: (K, R, F) complex64."""
    values = padded[:, cells.corners[:, 0]]  # (K, R, F, 4)
    return (values * cells.weights[None]).sum(axis=-1).astype(padded.dtype)


def backproject_images(num: Any, den: Any, cells: RotationCells) -> tuple[Any, Any]:
    """Insert per-rotation sums (K, R, F) of data ``num`` and weights ``den`` (already
    weighted for the Hermitian mates) into the padded grid, rotated back: returns the
    numerator (K, P*P) complex128 and the weight (K, P*P) float64."""
    xp = get_array_module(num)
    k = int(num.shape[0])
    size = (cells.pad * cells.box) ** 2
    w = cells.weights  # (R, F, 4)
    base = (xp.arange(k, dtype=xp.int64) * size)[:, None, None, None]
    out_re = xp.zeros(k * size, dtype=xp.float64)
    out_im = xp.zeros(k * size, dtype=xp.float64)
    out_w = xp.zeros(k * size, dtype=xp.float64)
    for mate, sign in ((0, 1.0), (1, -1.0)):
        idx = (base + cells.corners[None, :, mate]).ravel()  # (K, R, F, 4)
        vals = num[..., None] * w[None]
        out_re += xp.bincount(idx, weights=vals.real.ravel().astype(xp.float64), minlength=k * size)
        out_im += sign * xp.bincount(
            idx, weights=vals.imag.ravel().astype(xp.float64), minlength=k * size
        )
        dw = (den[..., None] * w[None]).ravel().astype(xp.float64)
        out_w += xp.bincount(idx, weights=dw, minlength=k * size)
    return (out_re + 1j * out_im).reshape(k, size), out_w.reshape(k, size)


def padded_image_shells(box: int, pad: int = PAD, xp: Any = np) -> Any:
    """(P*P,) int64: shell (in units of the ``box`` grid, at most ``box // 2``) of each
    point of the centred padded plane."""
    size = pad * box
    g = (np.arange(size) - size // 2) / pad
    r = np.sqrt(g[:, None] ** 2 + g[None, :] ** 2)
    return xp.asarray(np.minimum(np.rint(r), box // 2).astype(np.int64).ravel())


def reconstruct_images(num: Any, weight: Any, inv_tau2: Any, box: int, pad: int = PAD) -> Any:
    """Images (K, n, n) float32 from padded-grid sums (:func:`backproject_images`):
    ``IFFT[num / (weight + inv_tau2 / pad^2)]``, cropped and gridding-corrected;
    ``inv_tau2`` (K, n//2+1) per shell, in data-weight units of the unpadded grid."""
    xp = get_array_module(num)
    fft = fft_module(xp)
    k = int(num.shape[0])
    size = pad * box
    reg = inv_tau2[:, padded_image_shells(box, pad, xp)] / (pad * pad)
    denom = weight + reg
    spec = (num / xp.where(denom > 0, denom, 1.0)).reshape(k, size, size)
    img = fft.fftshift(
        fft.ifft2(fft.ifftshift(spec, axes=(-2, -1)), axes=(-2, -1), **fft_kwargs(xp)),
        axes=(-2, -1),
    ).real
    lo = size // 2 - box // 2
    out = img[:, lo : lo + box, lo : lo + box] / gridding(box, pad, 2, xp)
    return out.astype(xp.float32)
