"""Reference-free 2D classification by maximum likelihood (Scheres 2012, RELION).

Model of particle image ``i`` (Fourier transform ``X_i`` on the working box ``b``)::

    X_i(f) = C_i(f) * exp(-2 pi i f.t / b) * A_k(R_psi^T f) + N_i(f),
    E|N_i(f)|^2 = sigma2(|f|)

with ``A_k`` the Fourier transform of class ``k``, ``R_psi`` an in-plane rotation,
``t`` a translation, ``C_i`` the particle's CTF and ``sigma2`` the noise power per
radial shell. The hidden variables (class, rotation, translation) are marginalised by
expectation-maximisation:

- **E-step**: for every particle, the log-likelihood of every pose (classes x
  rotations every ``psi_step`` degrees x integer translations within ``max_shift``)
  plus the log priors (class fractions, a Gaussian prior on the translation of width
  ``sigma_offset``, uniform rotations) is turned into posterior probabilities with a
  max-subtracted softmax. Only the cross term depends on the translation, so for a
  batch of particles all poses come out of one real matrix product of the shifted,
  CTF-weighted, noise-whitened data with the rotated references.
- **M-step**: each class is the Wiener-filter-like average
  ``A = sum P C X e^{+2 pi i f.t} / sigma2 / (sum P C^2 / sigma2 + 1 / (T tau2))``,
  accumulated per rotation and inserted, rotated back, into a 2x padded Fourier grid
  with linear interpolation (RELION's back-projector; ``T`` = ``tau2_fudge``, ``tau2``
  the class's power spectrum, i.e. the signal part of the SNR), gridding-corrected,
  centred on its centre of mass and masked with a soft circle of ``mask_diameter``.
  The noise spectrum is the posterior-expected residual power per shell, the class
  fractions are the posterior sums, ``sigma_offset`` the posterior r.m.s. shift.
- **Resolution**: a class's SSNR per shell is ``tau2 * mean(sum P C^2 / sigma2)``; its
  resolution is the first shell where the SSNR drops below 1. Like RELION's
  ``current_size``, only shells up to a few beyond the best class resolution take part
  in the next iteration, which makes early iterations cheap and anneals the search.
- **Start**: every particle is given a random class and a random rotation; the first
  M-step (CTF-corrected averages) then gives slightly different blurred disks, from
  which the classes separate. Until ``reseed_until``, a class left (almost) empty is
  re-seeded by splitting the largest one.
- **Masks**: the references are masked with the particle diameter; the images only by
  the box (:func:`prepare_particles`), so that the class averages before masking
  (``Class2DState.unmasked``, and the averages of particle subsets of
  :func:`subset_averages`) show what surrounds the particles, which
  :func:`class_scores` uses to tell particles from junk.

Rotations are computed in Fourier space on the padded grid (no per-rotation FFT). An
iteration costs one matrix product per batch for the poses (all translations x classes
x rotations) and two smaller ones for the M-step and the noise spectrum, restricted to
the poses that hold 99.9 % of each particle's probability (RELION's significant
weights); all run on BLAS (NumPy) or cuBLAS (CuPy) alike. Conventions are RELION's: the
image is the class rotated by ``psi`` (``A = Rz(psi)`` of
:func:`cryosnake.ops.rotation.euler_to_matrix`) and then shifted by ``t``; RELION's
``rlnOriginX/Y`` is ``-t``.

Contrast: images are RELION-normalised and inverted (particles white); the CTF of the
model is therefore ``-ctf_2d`` (positive at low frequency), and class averages are white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module
from cryosnake.ops.ctf import wavelength

__all__ = [
    "CTF_COLUMNS",
    "Class2DSettings",
    "Class2DState",
    "ParticleData",
    "class_scores",
    "em_iteration",
    "initial_state",
    "model_ctf",
    "prepare_particles",
    "prepare_spectra",
    "resize_images",
    "soft_circle",
    "subset_averages",
]

PAD = 2  # oversampling of the Fourier grid that rotations interpolate on
# Poses below one of these fractions of a particle's best are left out of the M-step
# (the largest that keeps 99.9 % of the particle's probability).
SIGNIFICANT = (1e-6, 1e-4, 1e-3, 1e-2)
MASK_EDGE = 5.0  # px at the original sampling: width of the image mask's soft edge (RELION)
RESEED_FRACTION = 0.1  # a class with fewer than this / K of the particles is re-seeded
RESEED_AMPLITUDE = 0.3  # relative amplitude of the perturbations that split a class
MASS_TOLERANCE = 1.25  # class masses within this factor of the particles' score full marks
MASS_SPREAD = 3.0  # mass tolerance: at least this many robust sd of the particles' log mass
MASS_SSNR_HALF = 5.0  # the mass criterion counts half at this SSNR of shells 0-1
SUBSETS = 4  # class2d scores: subsets per class (noise-free energies, jackknife errors)
CONTAINMENT_Z = 1.0  # containment: judged at its estimate + this many standard errors
# Per-particle CTF parameters, in this order, as rows of ParticleData.ctf.
CTF_COLUMNS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


@dataclass(frozen=True)
class Class2DSettings:
    """Parameters of the classification (lengths in working-box pixels).

    n_classes : number of classes K
    mask_diameter : px, diameter of the soft circular mask (the particle diameter)
    psi_step : degrees between in-plane rotations
    max_shift : px, translations searched within this radius (integer grid)
    tau2_fudge : regularisation T (RELION's default for 2D is 2): > 1 trusts the data more
    batch : particles per E-step batch (memory ~ batch x translations x frequencies)
    initial_resolution : Å, shells used in the first iteration (0: 30 Å)
    shell_increment : shells beyond the best class resolution used in the next iteration
    mask_edge : px, width of the raised-cosine edge of the mask
    reseed_until : last iteration after which empty classes are re-seeded (0: never)
    """

    n_classes: int
    mask_diameter: float
    psi_step: float = 5.0
    max_shift: float = 3.0
    tau2_fudge: float = 2.0
    batch: int = 128
    initial_resolution: float = 0.0
    shell_increment: int = 3
    mask_edge: float = 3.0
    reseed_until: int = 0

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError("n_classes must be >= 1")
        if not 0 < self.psi_step <= 180:
            raise ValueError("psi_step must be in (0, 180] degrees")
        if self.max_shift < 0 or self.mask_diameter <= 0:
            raise ValueError("max_shift must be >= 0 and mask_diameter > 0")
        if self.batch < 1:
            raise ValueError("batch must be >= 1")

    @property
    def n_rotations(self) -> int:
        return max(1, int(round(360.0 / self.psi_step)))

    @property
    def psi_angles(self) -> np.ndarray:
        """(R,) degrees."""
        return np.arange(self.n_rotations) * (360.0 / self.n_rotations)

    @property
    def translations(self) -> np.ndarray:
        """(T, 2) integer (dx, dy) px within ``max_shift``, (0, 0) first."""
        r = int(math.floor(self.max_shift))
        grid = np.arange(-r, r + 1)
        dx, dy = np.meshgrid(grid, grid)
        t = np.stack([dx.ravel(), dy.ravel()], axis=1)
        t = t[(t**2).sum(axis=1) <= self.max_shift**2 + 1e-9]
        order = np.lexsort(((t**2).sum(axis=1),))
        return t[order].astype(np.float64)


@dataclass
class ParticleData:
    """Particles prepared for classification.

    spectra : (n, b, b//2+1) complex64, ``rfft2`` of the masked images resampled to the
        working box ``b``, origin at the box centre (``b // 2``); NumPy or CuPy
    ctf : (n, 7) float64 NumPy, per-particle columns :data:`CTF_COLUMNS`
    pixel_size : Å per working-box pixel
    """

    spectra: Any
    ctf: np.ndarray
    pixel_size: float

    @property
    def n(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def box(self) -> int:
        return int(self.spectra.shape[1])


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


# --------------------------------------------------------------------------- helpers


def soft_circle(box: int, diameter: float, edge: float, xp: Any = np) -> Any:
    """(box, box) float32 mask: 1 within ``diameter / 2`` of ``box // 2``, a raised-cosine
    fall to 0 over ``edge`` px beyond it."""
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64) - box // 2
    r = np.sqrt(xx * xx + yy * yy)
    radius = diameter / 2.0
    if edge <= 0:
        mask = (r <= radius).astype(np.float64)
    else:
        t = np.clip((r - radius) / edge, 0.0, 1.0)
        mask = 0.5 * (1.0 + np.cos(np.pi * t))
    return xp.asarray(mask.astype(np.float32))


def _shell_index(box: int) -> np.ndarray:
    """(b, b//2+1) int: radial shell of each rfft2 frequency (corners beyond Nyquist in
    the last shell, b // 2)."""
    ky = np.fft.fftfreq(box) * box
    kx = np.arange(box // 2 + 1)
    shell = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int64)
    return np.minimum(shell, box // 2)


def _resolution_shells(ssnr: np.ndarray) -> np.ndarray:
    """(K,) int: for each class, the last shell before its SSNR first drops below 1
    (0 when it is below 1 from shell 1 on)."""
    out = np.empty(len(ssnr), dtype=np.int64)
    for k, s in enumerate(ssnr):
        below = np.nonzero(s[1:] < 1.0)[0]
        out[k] = int(below[0]) if len(below) else len(s) - 1
    return out


def _resolution(ssnr: np.ndarray, box: int, pixel_size: float) -> np.ndarray:
    shells = _resolution_shells(ssnr)
    return box * pixel_size / np.maximum(shells, 1)


def _shell_average(values: Any, shells: Any, n_shells: int) -> Any:
    """Mean of ``values`` (..., m) per shell index ``shells`` (m,) -> (..., n_shells)."""
    xp = get_array_module(values)
    flat = values.reshape(-1, values.shape[-1])
    counts = xp.bincount(shells, minlength=n_shells).astype(xp.float64)
    out = xp.stack([xp.bincount(shells, weights=row, minlength=n_shells) for row in flat])
    out = out / xp.maximum(counts, 1.0)[None, :]
    return out.reshape((*values.shape[:-1], n_shells))


def resize_images(images: Any, box: int) -> Any:
    """Resample (n, B, B) images to (n, box, box) by Fourier cropping or padding.

    Pixel values are preserved (a band-limited resampling), and the box centre
    ``B // 2`` maps to ``box // 2``. Returns float32 on the input's device.
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    a = xp.asarray(images, dtype=xp.float32)
    n_in = a.shape[-1]
    if n_in == box:
        return a
    spec = fft.rfft2(fft.ifftshift(a, axes=(-2, -1)), axes=(-2, -1), **kw)
    out = _resize_spectra(spec, n_in, box) * ((box / n_in) ** 2)
    res = fft.irfft2(out, s=(box, box), axes=(-2, -1), **kw)
    return fft.fftshift(res, axes=(-2, -1)).astype(xp.float32)


def _resize_spectra(spec: Any, n_in: int, n_out: int) -> Any:
    """Crop or zero-pad rfft2 spectra (..., n_in, n_in//2+1) of even boxes to
    (..., n_out, n_out//2+1); the Nyquist row and column of the smaller box are zero."""
    xp = get_array_module(spec)
    h = min(n_in, n_out) // 2
    ky = np.arange(-(h - 1), h)
    rows_in, rows_out = xp.asarray(ky % n_in), xp.asarray(ky % n_out)
    cols = xp.asarray(np.arange(h))
    out = xp.zeros((*spec.shape[:-2], n_out, n_out // 2 + 1), dtype=xp.complex64)
    out[..., rows_out[:, None], cols[None, :]] = spec[..., rows_in[:, None], cols[None, :]]
    return out


def prepare_spectra(images: Any, pixel_size: float, box: int, mask_diameter: float) -> Any:
    """Mask images with a soft circle and resample them to the working box, in Fourier
    space.

    Parameters
    ----------
    images : (n, B, B) float, RELION-normalised and contrast-inverted (NumPy or CuPy)
    pixel_size : Å per pixel of ``images``
    box : working box b (even, <= B)
    mask_diameter : Å, diameter of the soft mask (edge :data:`MASK_EDGE` px)

    Returns
    -------
    (n, b, b//2+1) complex64 on the input's device: ``rfft2`` with the origin at the box
    centre, scaled so that pixel values are those of the band-limited, resampled images
    """
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    big = int(images.shape[-1])
    if images.ndim != 3 or images.shape[-2] != big or big % 2 or box % 2 or box > big:
        raise ValueError(f"square even boxes expected with box <= {big}, got {images.shape}")
    mask = soft_circle(big, mask_diameter / pixel_size, MASK_EDGE, xp)
    part = xp.asarray(images, dtype=xp.float32) * mask
    spec = fft.rfft2(fft.ifftshift(part, axes=(-2, -1)), axes=(-2, -1), **kw)
    if box != big:
        spec = _resize_spectra(spec, big, box) * ((box / big) ** 2)
    return spec.astype(xp.complex64)


def prepare_particles(
    images: Any,
    pixel_size: float,
    box: int,
    ctf: np.ndarray,
    *,
    mask_diameter: float = 0.0,
    chunk: int = 512,
) -> ParticleData:
    """:func:`prepare_spectra` on a whole stack, with the particles' CTF parameters.

    ``mask_diameter`` 0 (default) masks with the largest soft circle inside the box:
    the references are masked with the particle diameter, the images only by the box,
    so that the class averages before masking show what surrounds the particles.
    ``ctf`` is (n, 7) NumPy with columns :data:`CTF_COLUMNS`.
    """
    xp = get_array_module(images)
    n, big = int(images.shape[0]), int(images.shape[-1])
    if mask_diameter <= 0:
        mask_diameter = (big - 2 * MASK_EDGE) * pixel_size
    spectra = xp.empty((n, box, box // 2 + 1), dtype=xp.complex64)
    for start in range(0, n, chunk):
        spectra[start : start + chunk] = prepare_spectra(
            images[start : start + chunk], pixel_size, box, mask_diameter
        )
    ctf_arr = np.asarray(ctf, dtype=np.float64).reshape(n, len(CTF_COLUMNS))
    return ParticleData(spectra=spectra, ctf=ctf_arr, pixel_size=pixel_size * big / box)


def model_ctf(params: np.ndarray, kx: Any, ky: Any) -> Any:
    """Model CTF of a batch at frequencies (kx, ky) (F,) 1/Å: ``-ctf_2d`` (inverted
    contrast), the formula of :mod:`cryosnake.ops.ctf` vectorised over particles.

    params : (nb, 7) NumPy (:data:`CTF_COLUMNS`). Returns (nb, F) float32 on kx's device.
    """
    xp = get_array_module(kx)
    p = xp.asarray(params, dtype=xp.float64)
    dfu, dfv = p[:, 0:1], p[:, 1:2]
    angle = xp.deg2rad(p[:, 2:3])
    phase = xp.deg2rad(p[:, 3:4])
    lam = xp.asarray(np.array([[wavelength(v)] for v in params[:, 4]], dtype=np.float64))
    cs = p[:, 5:6] * 1e7
    w = p[:, 6:7]
    s2 = (kx * kx + ky * ky)[None, :]
    az = xp.arctan2(ky, kx)[None, :]
    df = 0.5 * (dfu + dfv + (dfu - dfv) * xp.cos(2.0 * (az - angle)))
    chi = math.pi * lam * s2 * df - 0.5 * math.pi * cs * lam**3 * s2 * s2 - phase
    ctf = xp.sqrt(1.0 - w * w) * xp.sin(chi) + w * xp.cos(chi)
    return ctf.astype(xp.float32)


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


def _centre(images: Any, mask: Any, limit: float) -> Any:
    """Shift each image so that the centre of mass of its positive, masked density lies
    at the box centre (at most ``limit`` px)."""
    xp = get_array_module(images)
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    box = int(images.shape[-1])
    dens = xp.maximum(images * mask, 0.0)
    total = dens.sum(axis=(1, 2))
    g = xp.arange(box, dtype=xp.float32) - box // 2
    cx = (dens * g[None, None, :]).sum(axis=(1, 2)) / xp.maximum(total, 1e-30)
    cy = (dens * g[None, :, None]).sum(axis=(1, 2)) / xp.maximum(total, 1e-30)
    norm = xp.sqrt(cx * cx + cy * cy)
    scale = xp.where(norm > limit, limit / xp.maximum(norm, 1e-30), 1.0)
    cx, cy = cx * scale, cy * scale
    ky = xp.asarray(np.fft.fftfreq(box).astype(np.float32))[None, :, None]
    kx = xp.asarray(np.fft.rfftfreq(box).astype(np.float32))[None, None, :]
    ramp = xp.exp(2j * np.pi * (kx * cx[:, None, None] + ky * cy[:, None, None]))
    spec = fft.rfft2(images, axes=(-2, -1), **kw) * ramp.astype(xp.complex64)
    return fft.irfft2(spec, s=(box, box), axes=(-2, -1), **kw).astype(xp.float32)


# --------------------------------------------------------------------------- EM


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
    xp = get_array_module(data.spectra)
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
        x = spectra[start:stop][:, geom.flat]  # (nb, F) complex64
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


def _host(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    return np.asarray(a.get()) if hasattr(a, "get") else np.asarray(a)


def _maximise(
    data: ParticleData,
    geom: _Geometry,
    settings: Class2DSettings,
    sums: _Sums,
    inv_tau2: Any,
) -> tuple[Any, Any, Any]:
    """Class images (masked, unmasked) and the padded-grid weights from the sums."""
    xp = get_array_module(data.spectra)
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
    pnum, pweight = _backproject(num, den, geom, box)
    unmasked = _reconstruct(pnum, pweight, inv_tau2, box)
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
    shells = _padded_shells(box, xp)
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
    xp = get_array_module(data.spectra)
    box, n, k_cls = data.box, data.n, settings.n_classes
    n_shells = box // 2 + 1
    shells = xp.asarray(_shell_index(box).ravel())
    pick = rng.choice(n, size=min(n, 5000), replace=False)
    sub = data.spectra[xp.asarray(np.sort(pick))].reshape(len(pick), -1)
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
    xp = get_array_module(data.spectra)
    box, n = data.box, data.n
    k_cls, n_rot = settings.n_classes, settings.n_rotations
    geom = _geometry(box, state.r_max, settings, data.pixel_size, xp)
    refs = _project(_padded_spectra(state.classes), geom).reshape(k_cls, n_rot, -1)
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
    xp = get_array_module(data.spectra)
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
    pnum, pweight = _backproject(num, den, geom, box)
    inv_tau2 = 1.0 / (settings.tau2_fudge * np.maximum(np.repeat(state.tau2, parts, axis=0), 1e-30))
    inv_tau2[:, state.tau2_shells + 1 :] = 0.0
    images = _reconstruct(pnum, pweight, xp.asarray(inv_tau2), box)
    return images.reshape(k_cls, parts, box, box)


def _perturbation(tau2: np.ndarray, box: int, rng: np.random.Generator, xp: Any) -> Any:
    """(b, b) Gaussian random image with power spectrum ``RESEED_AMPLITUDE^2 x tau2``."""
    shells = _shell_index(box)
    white = np.fft.rfft2(rng.standard_normal((box, box)))  # E|W|^2 = b^2
    spec = white * (RESEED_AMPLITUDE * np.sqrt(np.maximum(tau2, 0.0))[shells] / box)
    eps = np.fft.fftshift(np.fft.irfft2(spec, s=(box, box)))
    return xp.asarray(eps.astype(np.float32))


def class_scores(
    halves: Any,
    ssnr: np.ndarray,
    pixel_size: float,
    diameter: float,
    counts: np.ndarray,
) -> dict[str, np.ndarray]:
    """How particle-like each class average is: a score in [0, 1] (``select2d``).

    ``score = containment x signal x mass_agreement``, each factor near 1 for a class
    of good particles. All three are measured on the two half averages of each class
    (:func:`half_averages`), low-passed to ``diameter / 8``:

    - ``containment``: the fraction of the class's low-resolution signal energy that lies
      inside the circle of ``diameter``, with the energy estimated without noise bias as
      the product of the two halves (their noise is independent), clipped to [0, 1]. A
      particle is confined to its diameter; aggregates, ice and carbon edges,
      off-centre picks and the average of empty boxes spread over the box. (The energy
      of one average, ``a * a``, would add the average's noise, which is uniform over
      the box and grows as the class gets fewer particles, so that small classes of
      good particles would look spread out.)
    - ``signal = 1 - exp(-ssnr_low)``, with ``ssnr_low`` the class's mean spectral SNR
      in the shells up to ``diameter / 5``: a class without signal scores near 0.
    - ``mass_agreement``: ``a = min(1, r * MASS_TOLERANCE, MASS_TOLERANCE / r)`` with
      ``r`` the class's ``mass`` (the integral of its density inside the circle) over
      the reference mass: every projection of one particle integrates to the same mass
      whatever the view, so a class much heavier (aggregates, several particles) or
      lighter (fragments) than the particles is junk. The reference is the
      particle-weighted median mass of the classes whose containment x signal is at
      least 0.9 (it assumes one particle species dominates those). The mass lives in
      the lowest frequencies, where the CTF passes little (about the amplitude
      contrast) and the class average is mostly its prior, so it is trusted in
      proportion to the SSNR there: ``mass_agreement = 1 - w (1 - a)`` with
      ``w = ssnr_mass / (ssnr_mass + MASS_SSNR_HALF)`` and ``ssnr_mass`` the mean SSNR
      of shells 1 and 2.

    Parameters
    ----------
    halves : (K, 2, b, b) half averages before masking (:func:`half_averages`)
    ssnr : (K, b//2+1) spectral SNR per shell (:attr:`Class2DState.ssnr`)
    pixel_size : Å per pixel of ``halves``
    diameter : Å, the particle (mask) diameter
    counts : (K,) particles per class (weights of the reference mass)

    Returns
    -------
    dict of (K,) NumPy float arrays: ``containment``, ``ssnr_low``, ``mass``,
    ``mass_ratio``, ``mass_weight``, ``score``
    """
    xp = get_array_module(halves)
    box = int(halves.shape[-1])
    fft = fft_module(xp)
    kw = fft_kwargs(xp)
    ky = xp.asarray(np.fft.fftfreq(box).astype(np.float32))[:, None]
    kx = xp.asarray(np.fft.rfftfreq(box).astype(np.float32))[None, :]
    s2 = (kx * kx + ky * ky) / pixel_size**2
    lowpass = xp.exp(-math.log(2.0) * s2 * (diameter / 8.0) ** 2)  # half at diameter / 8
    spec = fft.rfft2(xp.asarray(halves, dtype=xp.float32), axes=(-2, -1), **kw)
    smooth = fft.irfft2(spec * lowpass, s=(box, box), axes=(-2, -1), **kw).astype(xp.float64)
    inside = soft_circle(box, diameter / pixel_size, 0.0, xp)
    parts = int(smooth.shape[1])
    # Signal energy (total, within the circle) of every pair of subsets.
    total = np.zeros((len(smooth), parts, parts))
    within = np.zeros((len(smooth), parts, parts))
    for i in range(parts):
        for j in range(i + 1, parts):
            energy = smooth[:, i] * smooth[:, j]
            total[:, i, j] = _host(energy.sum(axis=(1, 2)))
            within[:, i, j] = _host((energy * inside).sum(axis=(1, 2)))

    def _fraction(keep: np.ndarray) -> np.ndarray:
        t = total[:, keep][:, :, keep].sum(axis=(1, 2))
        w = within[:, keep][:, :, keep].sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(t > 0, w / t, 0.0)

    estimate = _fraction(np.ones(parts, dtype=bool))
    # Jackknife over the subsets: the standard error of the estimate.
    leave_out = np.stack([_fraction(np.arange(parts) != i) for i in range(parts)], axis=1)
    error = np.sqrt(
        (parts - 1) / parts * ((leave_out - leave_out.mean(axis=1)[:, None]) ** 2).sum(axis=1)
    )
    containment = np.clip(estimate + CONTAINMENT_Z * error, 0.0, 1.0)
    containment = np.where(total.sum(axis=(1, 2)) > 0, containment, 0.0)
    mass = _host((smooth.mean(axis=1) * inside).sum(axis=(1, 2))).astype(np.float64)
    ssnr = np.asarray(ssnr, dtype=np.float64)
    shells = max(1, min(box // 2, int(box * pixel_size / (diameter / 5.0))))
    ssnr_low = ssnr[:, 1 : shells + 1].mean(axis=1)
    ssnr_mass = ssnr[:, 0:2].mean(axis=1)
    mass_weight = ssnr_mass / (ssnr_mass + MASS_SSNR_HALF)
    shape_score = containment * (1.0 - np.exp(-2.0 * ssnr_low))
    weights = np.asarray(counts, dtype=np.float64)
    pool = (shape_score >= 0.9) & (weights > 0) & (mass > 0)
    if not pool.any():
        pool = (weights > 0) & (mass > 0)
    if pool.any():
        order = np.argsort(mass[pool])
        cumulative = np.cumsum(weights[pool][order])
        reference = float(mass[pool][order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    else:
        reference = float("nan")
    ratio = mass / reference if reference > 0 else np.full(len(mass), np.nan)
    # The masses of the particle-like classes scatter (noise, the CTF's weak low
    # frequencies, crowded neighbours in the normalisation area): the tolerance widens to
    # MASS_SPREAD robust standard deviations of their log mass when that is larger.
    tolerance = MASS_TOLERANCE
    if pool.sum() >= 3 and reference > 0:
        logs = np.log(mass[pool] / reference)
        order = np.argsort(np.abs(logs))
        cumulative = np.cumsum(weights[pool][order])
        mad = float(np.abs(logs)[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
        tolerance = max(MASS_TOLERANCE, math.exp(MASS_SPREAD * 1.4826 * mad))
    with np.errstate(divide="ignore", invalid="ignore"):
        agreement = np.minimum(1.0, np.minimum(ratio * tolerance, tolerance / ratio))
    agreement = np.where(np.isfinite(agreement) & (ratio > 0), agreement, 0.0)
    agreement = 1.0 - mass_weight * (1.0 - agreement)
    return {
        "containment": containment,
        "containment_estimate": np.clip(estimate, 0.0, 1.0),
        "containment_error": error,
        "ssnr_low": ssnr_low,
        "mass": mass,
        "mass_ratio": np.nan_to_num(ratio, nan=0.0),
        "mass_weight": mass_weight,
        "score": np.where(weights > 0, shape_score * agreement, 0.0),
    }
