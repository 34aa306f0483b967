"""3D Fourier-space projection, back-projection and reconstruction (RELION conventions).

Conventions
-----------
Volumes are (n, n, n) real arrays indexed [z, y, x] and images (n, n) arrays indexed
[y, x], both with the origin at the voxel ``n // 2`` of every axis; ``n`` is even. A
particle with rotation ``A`` (:func:`cryosnake.ops.rotation.euler_to_matrix`) is the
projection ``image(x, y) = sum_z V(A^T (x, y, z))`` (the real-space reference is
:func:`cryosnake.ops.project.project_volume`), shifted by ``t = (dx, dy)`` px:
``image(r) = projection(r - t)``. Image spectra are ``rfft2`` half planes
(n, n//2+1) of the image with its origin moved to index 0 (``rfft2(ifftshift(image))``),
unnormalised, frequencies ``k = (kx, ky)`` in cycles per box.

Central slice theorem
---------------------
Substituting ``u = A^T r`` in the discrete Fourier transform of the projection gives

    I(kx, ky) = sum_u V(u) exp(-2 pi i (A^T k3) . u / n) = V^(A^T k3),  k3 = (kx, ky, 0)

(both transforms are unnormalised sums, so there is no scale factor): the 2D
transform of a projection is the central section of the 3D transform perpendicular to
the viewing direction, and a shift multiplies it by ``exp(-2 pi i k . t / n)``.

Oversampling and interpolation
------------------------------
The section's points ``A^T k3`` fall between the voxels of the 3D transform, which is
therefore computed on a finer grid: the volume is zero-padded to ``P = pad * n``
(``pad`` = 2 by default, as in RELION), whose transform samples the same continuous
transform every ``1 / pad`` cycles per box (frequency ``g`` is at padded index
``pad * g``, with the same values and no scale factor). Values are interpolated
trilinearly from the 8 surrounding padded voxels, indices wrapping modulo ``P`` (the
transform of the padded volume is periodic, so this is exact aliasing, not a boundary
effect).

Only half of the padded transform is stored, in ``rfftn`` layout: an array
(P, P, P//2+1) indexed [qz, qy, qx] with ``qz, qy`` modulo ``P`` (not centred) and
``0 <= qx <= P/2``. A voxel with ``qx`` in the other half is read as the complex
conjugate of its Friedel mate ``-q`` (the volume is real, so ``V^(-q) = conj V^(q)``).

Gridding correction
-------------------
Trilinear interpolation is a convolution of the padded transform with a triangle of
half-width one padded voxel per axis; in real space that multiplies the volume by
``sinc^2(x / P) sinc^2(y / P) sinc^2(z / P)`` (``x`` in voxels from the origin). The
projector divides the volume by this apodisation before the transform
(:func:`pad_volume_spectrum`), and the reconstruction divides the back-projected
volume by it after the inverse transform. The correction is exact on average over the
sub-voxel positions, not at each one: at the padded grid points themselves (the DC
term, for one) the pre-corrected values are read unblurred, which overweights density
far from the origin. Measured against exact projections, with ``pad`` = 2: the DC term
of a particle filling 3/4 of the box is 4 % high, and Gaussian blobs within a third of
the box have 2-3 % r.m.s. error per shell up to 0.8 Nyquist; ``pad`` = 3 halves both
(RELION's projector, linear interpolation with ``pad`` = 2, has the same errors).

Back-projection and reconstruction
----------------------------------
Each image spectrum point ``X(k)`` is splatted with the trilinear weights of
``A^T k3`` into a padded numerator grid, and its data weight ``w(k)`` into a weight
grid (:class:`BackProjector`), so that for a Gaussian model
``X_i = C_i V^(A_i^T k3) + noise`` the caller passes ``C X`` (numerator) and ``C^2``
(weight), each already divided by the noise power when it is known. The half plane
holds each image frequency once for ``kx > 0`` and, on the column ``kx = 0``, both
``k`` and its mate ``-k``: the latter are inserted with half weight each, and the
Hermitian symmetry of the two planes ``qx = 0`` and ``qx = P/2`` of the half grid (the
only ones that contain both a voxel and its mate) is restored before the division, so
that the result is that of inserting every frequency of the full image plane and its
mate, and the volume is real (per-frequency weights are assumed even, ``w(-k) = w(k)``,
as ``CTF^2`` is).

The reconstruction is the Wiener-like (regularised) ratio, per padded voxel,

    V^(q) = num(q) / (weight(q) + tau2^-1(|q| / pad) / pad^3)

followed by the inverse transform, the crop to the central ``n^3`` voxels and the
gridding correction. The regulariser ``1 / tau2`` (RELION's ``1 / (T tau2)``, the
inverse signal power per shell) is expressed per voxel of the unpadded ``n`` grid: the
trilinear splats spread the weight of one ``n``-grid voxel over ``pad^3`` padded ones,
hence the division by ``pad^3``, which keeps ``weight x tau2`` the spectral SNR. Where
the weight and the regulariser are both zero (no data, no prior), the result is zero.

Frequencies kept
----------------
A frequency belongs to shell ``rint(|k|)``. Projection and back-projection use the
shells ``0 .. r_max`` (default ``n // 2``) and never the Nyquist row and column of the
image spectrum (``ky = -n/2`` or ``kx = n/2``), whose sign is ambiguous; they are zero
in the projections. :func:`cryosnake.ops.fsc.fsc` uses the same shells.

Memory and devices
------------------
All functions take NumPy or CuPy arrays and return the same kind (see
:mod:`cryosnake.backend`). Images are processed
``batch`` at a time, fully vectorised (Python loops run over batches and the 8 corners
of the interpolation cells only). A batch of ``b`` images with ``F`` kept frequencies
(about ``pi n^2 / 8`` for ``r_max = n / 2``) takes about ``200 b F`` bytes of
temporaries to project and ``350 b F`` to insert. The padded grids hold ``P^2 (P/2+1)``
voxels: 8 bytes each for the projector's complex64 spectrum, 24 for the
back-projector's complex128 numerator and float64 weight, plus 8 per insertion for the
``bincount`` result and about 60 for :func:`reconstruct` (for ``n`` = 256, ``pad`` = 2:
0.5 GB, 1.6 GB, 0.5 GB and 4 GB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.fourier_slice.grid import (
    BATCH,
    PAD,
    HalfPlane,
    as_matrices,
    as_shifts,
    check_box,
    check_r_max,
    gridding,
    half_plane,
    phase_ramps,
)

__all__ = [
    "BackProjector",
    "Projector",
    "pad_volume_spectrum",
    "padded_shells",
    "project",
    "reconstruct",
]

# The 8 corners of a trilinear cell, as offsets (dz, dy, dx).
_CORNERS = tuple((dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1))


def _padding(grid: Any, n: int) -> int:
    """The oversampling factor of a half grid (P, P, P//2+1) for box ``n``."""
    size = int(grid.shape[0])
    if grid.ndim != 3 or grid.shape != (size, size, size // 2 + 1) or size % n:
        raise ValueError(f"a padded half grid (P, P, P//2+1) with P = pad * {n} is expected")
    return size // n


def _wrapped(n: int, size: int, xp: Any) -> Any:
    """(n,) indices of a centred box of ``n`` voxels in an array of ``size`` whose origin
    is at index 0: voxel ``n // 2`` goes to 0, lower voxels wrap to the end."""
    return xp.asarray((np.arange(n) - n // 2) % size)


def _cells(plane: HalfPlane, matrices: np.ndarray, pad: int, xp: Any) -> tuple[Any, Any]:
    """Trilinear cells of the rotated section ``pad * A^T (kx, ky, 0)`` (padded units).

    Returns the lower corner (3, b, F) int64 as (z, y, x) and the fractional offsets
    (3, b, F) float32, on the device ``xp``.
    """
    a = xp.asarray(matrices)  # (b, 3, 3)
    kx = xp.asarray(plane.kx * pad)[None, :, None]
    ky = xp.asarray(plane.ky * pad)[None, :, None]
    g = kx * a[:, None, 0, :] + ky * a[:, None, 1, :]  # (b, F, 3): (A^T k)_(x, y, z)
    g = xp.moveaxis(g[..., ::-1], -1, 0)  # (3, b, F) in (z, y, x) order
    lower = xp.floor(g)
    return lower.astype(xp.int64), (g - lower).astype(xp.float32)


def _corner(lower: Any, frac: Any, offset: tuple[int, int, int], size: int) -> tuple[Any, Any, Any]:
    """One corner of the cells: flat index into the half grid (P, P, P//2+1), whether
    the stored voxel is the Friedel mate (conjugate), and the trilinear weight."""
    xp = get_array_module(lower)
    half = size // 2 + 1
    z, y, x = (lower[i] + offset[i] for i in range(3))
    w = xp.ones(frac.shape[1:], dtype=xp.float32)
    for i in range(3):
        w = w * (frac[i] if offset[i] else 1.0 - frac[i])
    flip = (x % size) > size // 2
    sign = 1 - 2 * flip.astype(xp.int64)  # -1 where the mate -q is the stored voxel
    z, y, x = (sign * z) % size, (sign * y) % size, (sign * x) % size
    return (z * size + y) * half + x, flip, w


# --------------------------------------------------------------------------- projector


def pad_volume_spectrum(volume: Any, pad: int = PAD) -> Any:
    """Half Fourier transform of a volume on the padded grid, ready for :func:`project`.

    The volume is divided by the gridding apodisation of trilinear interpolation on the
    padded grid, zero-padded to ``P = pad * n`` with its origin (voxel ``n // 2``) moved to
    index 0, and transformed with ``rfftn``.

    Parameters
    ----------
    volume : (n, n, n) float, indexed [z, y, x], origin at ``n // 2`` (NumPy or CuPy)
    pad : oversampling factor (integer >= 1; 2 as in RELION)

    Returns
    -------
    (P, P, P//2+1) complex64 on the input's device, ``rfftn`` layout (not centred):
    index ``[qz % P, qy % P, qx]`` holds the transform at frequency ``q / pad`` cycles per
    box of the ``n`` grid, for ``0 <= qx <= P/2``
    """
    xp = get_array_module(volume)
    fft = fft_module(xp)
    n = int(volume.shape[0])
    check_box(n)
    if volume.shape != (n, n, n):
        raise ValueError(f"a cubic volume is expected, got {volume.shape}")
    if pad < 1:
        raise ValueError(f"pad must be an integer >= 1, got {pad}")
    size = pad * n
    idx = _wrapped(n, size, xp)
    padded = xp.zeros((size, size, size), dtype=xp.float32)
    padded[xp.ix_(idx, idx, idx)] = xp.asarray(volume, dtype=xp.float32) / gridding(n, pad, 3, xp)
    return fft.rfftn(padded, **fft_kwargs(xp)).astype(xp.complex64)


def project(
    padded_spectrum: Any,
    matrices: Any,
    n: int,
    r_max: float | None = None,
    *,
    shifts: Any = None,
    batch: int = BATCH,
) -> Any:
    """Spectra of the projections of a volume at given rotations (and shifts).

    Parameters
    ----------
    padded_spectrum : (P, P, P//2+1) complex, :func:`pad_volume_spectrum` of the volume
    matrices : (m, 3, 3) or (3, 3) rotations ``A`` (NumPy)
    n : box size of the volume and the images (``P`` must be a multiple of it)
    r_max : highest shell kept, in cycles per box (``rint(|k|) <= r_max``); default
        ``n // 2``. Higher shells and the Nyquist row and column are zero.
    shifts : (m, 2) (dx, dy) px, optional: ``image(r) = projection(r - t)``
    batch : images computed at once (memory, see the module docstring)

    Returns
    -------
    (m, n, n//2+1) complex64 on the device of ``padded_spectrum``: ``rfft2`` of the
    projections with their origin (pixel ``n // 2``) at index 0, i.e.
    ``rfft2(ifftshift(project_volume(volume, A)))`` up to interpolation error
    """
    xp = get_array_module(padded_spectrum)
    check_box(n)
    pad = _padding(padded_spectrum, n)
    size = pad * n
    mats = as_matrices(matrices)
    m = len(mats)
    t = as_shifts(shifts, m)
    plane = half_plane(n, check_r_max(r_max, n))
    flat = xp.asarray(plane.flat)
    grid = padded_spectrum.reshape(-1)
    out = xp.zeros((m, n * (n // 2 + 1)), dtype=xp.complex64)
    for start in range(0, m, max(1, batch)):
        stop = min(start + max(1, batch), m)
        lower, frac = _cells(plane, mats[start:stop], pad, xp)
        values = xp.zeros(lower.shape[1:], dtype=xp.complex64)
        for offset in _CORNERS:
            idx, flip, w = _corner(lower, frac, offset, size)
            v = grid[idx]
            values += w * xp.where(flip, xp.conj(v), v)
        if t is not None:
            values *= phase_ramps(plane, t[start:stop], n, xp, double=True)
        out[start:stop, flat] = values
    return out.reshape(m, n, n // 2 + 1)


@dataclass
class Projector:
    """The padded transform of a volume up to a shell, as a full cube, for sampling.

    :func:`project` reads the half grid of :func:`pad_volume_spectrum`, which costs a
    Friedel-mate test and a modulo per corner. Here the transform is unfolded once into
    a full cube of side ``S = 2 h + 1`` about the origin (padded frequencies ``-h .. h``
    per axis, ``h`` just beyond ``pad * (r_max + 1/2)``), so that a point's 8 corners
    are one index plus 8 fixed offsets. The values are those :func:`project` reads
    (same trilinear interpolation, same aliasing), limited to the shells ``<= r_max``;
    the cube takes ``8 S^3`` bytes (140 MB for ``r_max`` = 63, ``pad`` = 2), as RELION's
    projector limits itself to the current resolution.

    n : box size of the volume; pad : oversampling; half_width : ``h``;
    cube : (S^3,) complex64 on the volume's device, index ``((z+h) S + (y+h)) S + (x+h)``
    """

    n: int
    pad: int
    r_max: float
    half_width: int
    cube: Any

    @classmethod
    def from_volume(cls, volume: Any, r_max: float | None = None, pad: int = PAD) -> Projector:
        """Projector of a (n, n, n) volume (NumPy or CuPy) for shells ``<= r_max``."""
        n = int(volume.shape[0])
        return cls.from_spectrum(pad_volume_spectrum(volume, pad), n, r_max)

    @classmethod
    def from_spectrum(cls, padded: Any, n: int, r_max: float | None = None) -> Projector:
        """Projector of a padded half spectrum (:func:`pad_volume_spectrum`)."""
        xp = get_array_module(padded)
        check_box(n)
        pad = _padding(padded, n)
        r = check_r_max(r_max, n)
        size = pad * n
        h = int(math.ceil(pad * (r + 0.5))) + 1
        side = 2 * h + 1
        q = np.arange(-h, h + 1)
        qy, qx = q[:, None], q[None, :]
        xw = np.broadcast_to(qx % size, (side, side))
        mate = xw > size // 2  # stored as the Friedel mate -q
        x = xp.asarray(np.where(mate, size - xw, xw))
        flip = xp.asarray(mate)
        cube = xp.empty((side, side, side), dtype=xp.complex64)
        for i, qz in enumerate(q):
            z = xp.asarray(np.where(mate, -qz, qz) % size)
            y = xp.asarray(np.where(mate, -qy, qy) % size)
            v = padded[z, y, x]
            cube[i] = xp.where(flip, xp.conj(v), v)
        return cls(n=n, pad=pad, r_max=r, half_width=h, cube=cube.reshape(-1))

    def sample(self, matrices: Any, kx: np.ndarray, ky: np.ndarray, batch: int = BATCH) -> Any:
        """(m, F) complex64 on the cube's device: the transform at the rotated frequencies
        ``A^T (kx, ky, 0)`` (cycles per box, NumPy (F,), within ``r_max``), i.e. the
        projections' spectra at those frequencies (origin at index 0, as
        :func:`project`)."""
        xp = get_array_module(self.cube)
        mats = as_matrices(matrices)
        kx = np.asarray(kx, dtype=np.float64).ravel()
        ky = np.asarray(ky, dtype=np.float64).ravel()
        if kx.shape != ky.shape:
            raise ValueError("kx and ky must have one shape")
        if len(kx) and float(np.max(np.hypot(kx, ky))) > self.r_max + 0.5 + 1e-9:
            raise ValueError(f"frequencies beyond r_max = {self.r_max:g}")
        h, side = self.half_width, 2 * self.half_width + 1
        index_type = xp.int32 if side**3 < 2**31 else xp.int64
        kxd = xp.asarray((kx * self.pad).astype(np.float32))[None, :]
        kyd = xp.asarray((ky * self.pad).astype(np.float32))[None, :]
        out = xp.empty((len(mats), len(kx)), dtype=xp.complex64)
        steps = (0, 1, side, side + 1, side * side, side * side + 1, side * side + side)
        for start in range(0, len(mats), max(1, batch)):
            stop = min(start + max(1, batch), len(mats))
            a = xp.asarray(mats[start:stop].astype(np.float32))
            coords = []
            for axis in range(3):  # (A^T k)_axis = kx A[0, axis] + ky A[1, axis]
                coords.append(kxd * a[:, 0, axis : axis + 1] + kyd * a[:, 1, axis : axis + 1])
            lower = [xp.floor(c) for c in coords]
            fx, fy, fz = (c - low for c, low in zip(coords, lower, strict=True))
            ix, iy, iz = (low.astype(index_type) + h for low in lower)
            base = (iz * side + iy) * side + ix
            del coords, lower, ix, iy, iz
            v = [xp.take(self.cube, base + o) for o in steps]
            v.append(xp.take(self.cube, base + (side * side + side + 1)))
            c00 = v[0] + fx * (v[1] - v[0])
            c01 = v[2] + fx * (v[3] - v[2])
            c10 = v[4] + fx * (v[5] - v[4])
            c11 = v[6] + fx * (v[7] - v[6])
            c0 = c00 + fy * (c01 - c00)
            c1 = c10 + fy * (c11 - c10)
            out[start:stop] = c0 + fz * (c1 - c0)
        return out


# ----------------------------------------------------------------------- back-projector


@dataclass
class BackProjector:
    """Accumulators of a 3D reconstruction on the padded half grid.

    n : box size of the images and of the reconstructed volume
    pad : oversampling factor of the grids (``P = pad * n``)
    numerator : (P, P, P//2+1) complex128, sum of the splatted weighted spectra
    weight : (P, P, P//2+1) float64, sum of the splatted data weights

    Both grids are in the ``rfftn`` layout of :func:`pad_volume_spectrum`, without the
    Hermitian completion of their planes ``qx = 0`` and ``qx = P/2`` (done by
    :func:`reconstruct`), so that accumulators of different image sets add up
    (``numerator`` and ``weight`` of two back-projectors may simply be summed).

    Examples
    --------
    >>> bp = BackProjector.zeros(32)  # doctest: +SKIP
    >>> bp.insert(ctf * spectra, matrices, ctf**2)  # doctest: +SKIP
    >>> volume = bp.reconstruct(1e-3)  # doctest: +SKIP
    """

    n: int
    pad: int
    numerator: Any
    weight: Any

    @classmethod
    def zeros(cls, n: int, pad: int = PAD, xp: Any = np) -> BackProjector:
        """Empty accumulators for box ``n`` on the device of the array module ``xp``."""
        check_box(n)
        if pad < 1:
            raise ValueError(f"pad must be an integer >= 1, got {pad}")
        size = pad * n
        shape = (size, size, size // 2 + 1)
        return cls(
            n=n,
            pad=pad,
            numerator=xp.zeros(shape, dtype=xp.complex128),
            weight=xp.zeros(shape, dtype=xp.float64),
        )

    def insert(
        self,
        spectra: Any,
        matrices: Any,
        weights: Any = None,
        *,
        shifts: Any = None,
        r_max: float | None = None,
        batch: int = BATCH,
    ) -> None:
        """Splat weighted image spectra into the accumulators (in place, accumulating).

        Parameters
        ----------
        spectra : (m, n, n//2+1) complex, ``rfft2`` half planes of the images (origin
            at index 0, as :func:`project` returns them), already multiplied by their
            per-frequency weight, e.g. ``C X / sigma2``; on the device of the grids
        matrices : (m, 3, 3) rotations ``A`` of the images (NumPy)
        weights : real per-frequency data weights, broadcastable to (m, n, n//2+1),
            e.g. ``C^2 / sigma2`` per image or one (n, n//2+1) array for all; None: 1
        shifts : (m, 2) (dx, dy) px, optional, the images' shifts (undone before the
            insertion: the spectra are multiplied by ``exp(+2 pi i k . t / n)``)
        r_max : highest shell inserted, cycles per box; default ``n // 2``
        batch : images inserted at once (memory, see the module docstring)
        """
        xp = get_array_module(self.numerator)
        n, size = self.n, self.pad * self.n
        if spectra.ndim != 3 or spectra.shape[1:] != (n, n // 2 + 1):
            raise ValueError(f"spectra (m, {n}, {n // 2 + 1}) expected, got {spectra.shape}")
        mats = as_matrices(matrices)
        m = len(mats)
        if int(spectra.shape[0]) != m:
            raise ValueError(f"{spectra.shape[0]} spectra but {m} rotations")
        t = as_shifts(shifts, m)
        plane = half_plane(n, check_r_max(r_max, n))
        flat, mate = xp.asarray(plane.flat), xp.asarray(plane.mate)
        shape = (size, size, size // 2 + 1)
        for grid, dtype in ((self.numerator, xp.complex128), (self.weight, xp.float64)):
            if grid.shape != shape or grid.dtype != dtype or not grid.flags.c_contiguous:
                raise ValueError(f"accumulators must be C-contiguous {shape} {dtype.__name__}")
        cells = int(self.weight.size)
        data = spectra.reshape(m, -1)
        if weights is not None:
            wts = xp.broadcast_to(xp.asarray(weights), (m, n, n // 2 + 1))
        # The real and imaginary parts of the numerator are updated through a float64
        # view of it (voxel j's parts are elements 2j and 2j + 1).
        num_parts = self.numerator.reshape(-1).view(xp.float64)
        weight_flat = self.weight.reshape(-1)
        for start in range(0, m, max(1, batch)):
            stop = min(start + max(1, batch), m)
            x = data[start:stop][:, flat].astype(xp.complex64) * mate
            if t is not None:
                x = x * xp.conj(phase_ramps(plane, t[start:stop], n, xp, double=True))
            if weights is None:
                dw = xp.broadcast_to(mate, x.shape)
            else:
                dw = wts[start:stop].reshape(stop - start, -1)[:, flat]
                dw = dw.astype(xp.float32) * mate
            lower, frac = _cells(plane, mats[start:stop], pad=self.pad, xp=xp)
            splat = (len(_CORNERS), *x.shape)
            index = xp.empty(splat, dtype=xp.int64)
            re, im, wt = (xp.empty(splat, dtype=xp.float64) for _ in range(3))
            for j, offset in enumerate(_CORNERS):
                # A corner stored as its Friedel mate receives the conjugate.
                index[j], flip, w = _corner(lower, frac, offset, size)
                re[j] = w * x.real
                im[j] = w * xp.where(flip, -x.imag, x.imag)
                wt[j] = w * dw
            del lower, frac
            index = index.ravel()
            num_parts[0::2] += xp.bincount(index, weights=re.ravel(), minlength=cells)
            num_parts[1::2] += xp.bincount(index, weights=im.ravel(), minlength=cells)
            weight_flat += xp.bincount(index, weights=wt.ravel(), minlength=cells)

    def reconstruct(self, regulariser: Any) -> Any:
        """:func:`reconstruct` of the accumulators: (n, n, n) float32 volume."""
        return reconstruct(self.numerator, self.weight, regulariser, self.n)


def _hermitian_planes(grid: Any, conjugate: bool) -> Any:
    """Copy of a half grid whose planes ``qx = 0`` and ``qx = P/2`` are completed to
    Hermitian symmetry: ``g(q) + conj(g(-q))`` (``g(q) + g(-q)`` for real grids)."""
    xp = get_array_module(grid)
    size = int(grid.shape[0])
    out = grid.copy()
    neg = xp.asarray((-np.arange(size)) % size)
    for qx in (0, size // 2):
        plane = grid[:, :, qx]
        mate = plane[neg][:, neg]
        out[:, :, qx] = plane + (xp.conj(mate) if conjugate else mate)
    return out


def padded_shells(size: int, pad: int, limit: int, xp: Any) -> Any:
    """(P, P, P//2+1) int32 shell (``n``-grid units, at most ``limit``) of each voxel of
    a padded half grid of side ``size``."""
    q = np.fft.fftfreq(size) * size / pad
    qx = np.arange(size // 2 + 1) / pad
    zz = xp.asarray((q * q).astype(np.float32))[:, None, None]
    yy = xp.asarray((q * q).astype(np.float32))[None, :, None]
    xx = xp.asarray((qx * qx).astype(np.float32))[None, None, :]
    r = xp.sqrt(zz + yy + xx)
    return xp.minimum(xp.rint(r), limit).astype(xp.int32)


def reconstruct(numerator: Any, weight: Any, regulariser: Any, n: int) -> Any:
    """Regularised reconstruction of a volume from back-projected sums.

    ``V = IFFT[num / (weight + regulariser / pad^3)]``, cropped to the central ``n^3``
    voxels and divided by the gridding apodisation (see the module docstring).

    Parameters
    ----------
    numerator : (P, P, P//2+1) complex, :attr:`BackProjector.numerator`
    weight : (P, P, P//2+1) real, :attr:`BackProjector.weight`
    regulariser : a constant, or (n//2+1,) per shell: ``1 / (T tau2)``, in units of the
        data weight per voxel of the unpadded grid (0: plain ratio where there is
        data). Padded voxels beyond shell ``n // 2`` use the last value.
    n : box size of the volume (``P`` must be a multiple of it)

    Returns
    -------
    (n, n, n) float32 on the device of ``numerator``, indexed [z, y, x], origin at
    ``n // 2``
    """
    xp = get_array_module(numerator, weight)
    fft = fft_module(xp)
    check_box(n)
    pad = _padding(numerator, n)
    if weight.shape != numerator.shape:
        raise ValueError(f"numerator {numerator.shape} and weight {weight.shape} differ")
    size = pad * n
    num = _hermitian_planes(numerator, conjugate=True)
    den = _hermitian_planes(weight, conjugate=False)
    reg = xp.asarray(regulariser, dtype=xp.float64)
    if reg.ndim == 0:
        den += reg / pad**3
    elif reg.shape == (n // 2 + 1,):
        den += (reg / pad**3)[padded_shells(size, pad, n // 2, xp)]
    else:
        raise ValueError(f"regulariser: a constant or {n // 2 + 1} shells expected")
    empty = den <= 0
    den[empty] = 1.0
    num /= den
    num[empty] = 0.0
    del den, empty
    full = fft.irfftn(num, s=(size, size, size), **fft_kwargs(xp))
    idx = _wrapped(n, size, xp)
    volume = full[xp.ix_(idx, idx, idx)] / gridding(n, pad, 3, xp)
    return volume.astype(xp.float32)
