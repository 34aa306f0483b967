"""Image formation: specimen field, CTF, motion, radiation damage, detector.

Model of frame t of a movie (all images in counts per pixel)::

    phase(r)   = sigma_e * (projected potential of particles and junk)(r) + solvent(r)
    psi_t      = F^-1[ CTF * E * D_t * F[phase] ]          (weak-phase image)
    I_t(r)     = dose_px * (1 + 2 psi_t(r)) * exp(-tau(r))   (tau: amplitude loss)
    frame_t(r) ~ Poisson( I_t(r - s_t - d_t(r)) / gain(r) )

with E a B-factor envelope, D_t = exp(-N_t / (2 N_e(s))) the radiation damage after
N_t e/Å^2, s_t the global drift of frame t (s_0 = 0) and d_t(r) a smooth local
deformation (d_0 = 0). ``gain`` is the gain reference that a user multiplies raw
frames with. Truth coordinates therefore live in the frame of the first movie frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft
from scipy import ndimage

from cryosnake.backend import fft_workers
from cryosnake.ops.ctf import ctf_2d, interaction_constant
from cryosnake.ops.dose import damage_attenuation
from cryosnake.ops.fourier import phase_ramp, shift_image
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import matrix_to_euler, random_rotations
from cryosnake.simulate._atoms import PROTEIN_CONTRAST_V, Atoms, _splat, render_projection
from cryosnake.simulate._params import SimulationParams

__all__ = ["Detector", "MovieTruth", "Specimen", "make_detector", "simulate_movie"]

ICE_POTENTIAL_V = 4.5  # crystalline ice over vacuum
ICE_INELASTIC_MFP = 1500.0  # Å, amplitude loss of contaminating ice (incl. Bragg loss)


@dataclass(frozen=True)
class Specimen:
    """What is imaged: Gaussian atoms (exact projections) or a density map.

    ``partial``: the atoms of a second, partial state (the phantom without one domain,
    in the frame of ``atoms``), imaged for the particles whose state is 1.
    """

    atoms: Atoms | None
    volume: np.ndarray | None  # (n, n, n) V, at the micrograph pixel size
    diameter: float  # Å
    partial: Atoms | None = None

    def project(
        self,
        matrix: np.ndarray,
        box: int,
        pixel_size: float,
        offset: tuple[float, float],
        *,
        state: int = 0,
    ) -> np.ndarray:
        """Projected potential (V·Å) in a box, model centre at box//2 + offset (dy, dx).

        ``state``: 0 the whole specimen, 1 the partial state (needs ``partial``).
        """
        if state:
            if self.partial is None:
                raise ValueError("this specimen has no partial state")
            return render_projection(self.partial, matrix, box, pixel_size, offset=offset)
        if self.atoms is not None:
            return render_projection(self.atoms, matrix, box, pixel_size, offset=offset)
        assert self.volume is not None
        n = self.volume.shape[0]
        proj = project_volume(self.volume, matrix, order=1) * pixel_size
        if n < box:
            pad = (box - n) // 2
            proj = np.pad(proj, ((pad, box - n - pad), (pad, box - n - pad)))
        elif n > box:
            start = n // 2 - box // 2
            proj = proj[start : start + box, start : start + box]
        return np.asarray(shift_image(proj, offset), dtype=np.float32)


@dataclass(frozen=True)
class Detector:
    """Per-pixel gain reference (multiply raw frames by it) and hot pixels."""

    gain: np.ndarray  # (ny, nx) float32
    hot_pixels: np.ndarray  # (k, 2) int, (y, x)


@dataclass
class MovieTruth:
    """Ground truth of one simulated movie."""

    stem: str
    defocus_u: float
    defocus_v: float
    defocus_angle: float
    shifts: np.ndarray  # (n_frames, 2) global drift (dx, dy) px, shifts[0] = 0
    local_coeffs: np.ndarray  # (2, 5) polynomial coefficients (x, y components), px
    local_tau: float  # frames
    coordinates: np.ndarray  # (n, 2) particle centres (x, y) px, first-frame frame
    angles: np.ndarray  # (n, 3) rot, tilt, psi, degrees
    junk: list[dict[str, Any]] = field(default_factory=list)
    noiseless: np.ndarray | None = None  # (ny, nx) expected counts of the dose sum
    # (n,) state of each particle: 0 the whole specimen, 1 the partial one (Specimen.partial)
    states: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def local_shift(
        self,
        frame: int | np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        shape: tuple[int, int],
        n_frames: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Local deformation d_t at detector points (x, y): returns (dx, dy) px."""
        return _local_field(self.local_coeffs, self.local_tau, frame, x, y, shape, n_frames)

    def total_shift(
        self, frame: int, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], n_frames: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global plus local shift of frame ``frame`` at detector points (x, y)."""
        dx, dy = self.local_shift(frame, x, y, shape, n_frames)
        return dx + self.shifts[frame, 0], dy + self.shifts[frame, 1]


def _time_profile(frame: Any, tau: float, n_frames: int) -> Any:
    """Local-motion time course: 0 at frame 0, 1 at the last frame, fastest early."""
    last = max(n_frames - 1, 1)
    return (1.0 - np.exp(-np.asarray(frame, dtype=np.float64) / tau)) / (
        1.0 - math.exp(-last / tau)
    )


def _local_field(
    coeffs: np.ndarray,
    tau: float,
    frame: Any,
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    n_frames: int,
) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    xn = (np.asarray(x, dtype=np.float64) - nx / 2) / (nx / 2)
    yn = (np.asarray(y, dtype=np.float64) - ny / 2) / (ny / 2)
    basis = np.stack([xn, yn, xn * xn - 1 / 3, xn * yn, yn * yn - 1 / 3])
    f = _time_profile(frame, tau, n_frames)
    dx = f * np.tensordot(coeffs[0], basis, axes=1)
    dy = f * np.tensordot(coeffs[1], basis, axes=1)
    return dx, dy


def make_detector(params: SimulationParams, rng: np.random.Generator) -> Detector:
    """A gain reference with per-pixel variation, column banding and a gradient."""
    ny, nx = params.shape
    sd = params.gain_sd
    sens = 1.0 + sd * rng.normal(size=(ny, nx))
    sens *= 1.0 + 0.5 * sd * rng.normal(size=(1, nx))  # column-wise readout banding
    yy, xx = np.mgrid[0:ny, 0:nx]
    sens *= 1.0 + 0.5 * sd * (xx / nx - 0.5) + 0.25 * sd * (yy / ny - 0.5) ** 2
    sens = np.clip(sens, 0.5, 1.5)
    n_hot = int(round(params.hot_pixel_fraction * ny * nx))
    hot = np.stack([rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)], axis=1)
    return Detector(gain=(1.0 / sens).astype(np.float32), hot_pixels=hot.astype(np.int64))


def _drift(params: SimulationParams, rng: np.random.Generator) -> np.ndarray:
    """Smooth global drift (n_frames, 2) as (dx, dy) px with shift[0] = 0."""
    t = np.arange(params.n_frames, dtype=np.float64)
    scale = params.drift_scale
    a = rng.uniform(3.0, 10.0) * scale
    tau = rng.uniform(1.5, 5.0)
    th1 = rng.uniform(0, 2 * np.pi)
    b = rng.uniform(0.05, 0.25) * scale
    th2 = th1 + rng.normal(0, 0.8)
    period = rng.uniform(8.0, 20.0)
    phase = rng.uniform(0, 2 * np.pi)
    wobble = 0.3 * scale * (np.sin(2 * np.pi * t / period + phase) - np.sin(phase))
    th3 = rng.uniform(0, 2 * np.pi)
    ramp = a * (1 - np.exp(-t / tau))
    dx = ramp * np.cos(th1) + b * t * np.cos(th2) + wobble * np.cos(th3)
    dy = ramp * np.sin(th1) + b * t * np.sin(th2) + wobble * np.sin(th3)
    return np.stack([dx, dy], axis=1)


def _place(
    n: int,
    radius: float,
    keep_out: list[tuple[float, float, float]],
    shape: tuple[int, int],
    edge: float,
    rng: np.random.Generator,
    min_dist: float,
) -> np.ndarray:
    """Up to ``n`` random centres (x, y), ``min_dist`` apart, clear of ``keep_out`` disks."""
    ny, nx = shape
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < n and tries < 200 * max(n, 1):
        tries += 1
        x = rng.uniform(edge, nx - edge)
        y = rng.uniform(edge, ny - edge)
        if any((x - a) ** 2 + (y - b) ** 2 < (r + radius) ** 2 for a, b, r in keep_out):
            continue
        if any((x - a) ** 2 + (y - b) ** 2 < min_dist**2 for a, b in pts):
            continue
        pts.append((x, y))
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length sigma."""
    white = rng.normal(size=shape)
    f = scipy.fft.rfft2(white, workers=fft_workers())
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    f *= np.exp(-2 * np.pi**2 * sigma_px**2 * (kx**2 + ky**2))
    field_ = scipy.fft.irfft2(f, s=shape, workers=fft_workers())
    return field_ / max(float(field_.std()), 1e-12)


def simulate_movie(
    params: SimulationParams,
    index: int,
    specimen: Specimen,
    detector: Detector,
    rng: np.random.Generator,
    *,
    noise: bool = True,
) -> tuple[MovieTruth, Iterator[np.ndarray]]:
    """Simulate movie ``index``.

    Returns the ground truth (with the noiseless dose-summed micrograph) and an iterator
    over frames. With ``noise`` the frames are raw uint16 counts (Poisson, gain, hot
    pixels); without, they are the expected gain-corrected counts (float32), which the
    self-consistency tests use. With ``params.partial_fraction`` > 0, each particle is
    the partial state of the specimen with that probability (``MovieTruth.states``).
    """
    if params.partial_fraction > 0 and specimen.partial is None:
        raise ValueError("partial_fraction > 0 needs a specimen with a partial state")
    ny, nx = params.shape
    px = params.pixel_size
    dose_px = params.dose_per_frame * px * px
    sigma_e = interaction_constant(params.voltage)

    # --- acquisition truth -------------------------------------------------------
    mean_df = rng.uniform(params.defocus_min, params.defocus_max)
    astig = rng.uniform(0.0, params.astigmatism_max)
    angle = rng.uniform(0.0, 180.0)
    df_u, df_v = mean_df + astig / 2, mean_df - astig / 2
    shifts = _drift(params, rng)
    local_coeffs = rng.normal(0.0, params.local_motion / math.sqrt(5.0), size=(2, 5))
    local_tau = rng.uniform(2.0, 6.0)

    # --- field geometry: the detector plus a margin that covers all motion ----------
    max_motion = float(np.abs(shifts).max()) + 3.0 * params.local_motion + 16.0
    margin = int(math.ceil(max_motion))
    fy = scipy.fft.next_fast_len(ny + 2 * margin, real=True)
    fx = scipy.fft.next_fast_len(nx + 2 * margin, real=True)
    oy, ox = (fy - ny) // 2, (fx - nx) // 2  # detector pixel (0, 0) in field pixels
    projected = np.zeros((fy, fx), dtype=np.float64)  # V·Å
    tau = np.zeros((fy, fx), dtype=np.float64)

    # --- junk: aggregates and crystalline-ice contamination -----------------------
    diameter_px = specimen.diameter / px
    junk: list[dict[str, Any]] = []
    keep_out: list[tuple[float, float, float]] = []
    if params.junk:
        n_agg = rng.poisson(params.aggregates_per_micrograph)
        n_ice = rng.poisson(params.ice_blobs_per_micrograph)
        for kind, count in (("aggregate", n_agg), ("ice", n_ice)):
            for _ in range(count):
                r_px = diameter_px * (
                    rng.uniform(0.5, 1.0) if kind == "aggregate" else rng.uniform(0.6, 1.5)
                )
                centre = _place(1, r_px, keep_out, params.shape, r_px * 0.3, rng, 0.0)
                if len(centre) == 0:
                    continue
                cx, cy = centre[0]
                keep_out.append((cx, cy, r_px))
                junk.append({"type": kind, "x": cx, "y": cy, "diameter": 2 * r_px * px})
                if kind == "aggregate":
                    _add_aggregate(projected, cx + ox, cy + oy, r_px, px, rng)
                else:
                    _add_ice(projected, tau, cx + ox, cy + oy, r_px, px)

    # --- particles --------------------------------------------------------------
    coords = _place(
        params.particles_per_micrograph,
        diameter_px / 2,
        keep_out,
        params.shape,
        diameter_px / 2 + 2,
        rng,
        diameter_px * 1.02,
    )
    mats = random_rotations(len(coords), rng)
    # Drawn only for a two-state specimen, so that the random stream (and every dataset
    # made without one) stays as it was.
    if params.partial_fraction > 0:
        states = (rng.random(len(coords)) < params.partial_fraction).astype(np.int64)
    else:
        states = np.zeros(len(coords), dtype=np.int64)
    box = int(math.ceil(diameter_px * 1.15 / 2)) * 2 + 4
    for (x, y), mat, state in zip(coords, mats, states, strict=True):
        cx, cy = int(round(x)), int(round(y))
        proj = specimen.project(mat, box, px, (y - cy, x - cx), state=int(state))
        y0, x0 = cy + oy - box // 2, cx + ox - box // 2
        projected[y0 : y0 + box, x0 : x0 + box] += proj
    rot, tilt, psi = matrix_to_euler(mats)
    angles = np.stack([rot, tilt, psi], axis=1).reshape(-1, 3)

    # --- solvent and ice thickness --------------------------------------------------
    phase = sigma_e * projected
    if params.solvent_noise > 0:
        phase += params.solvent_noise * _smooth_noise((fy, fx), 0.7 / px, rng)
    if params.ice_thickness_variation > 0:
        tau += params.ice_thickness_variation * (
            1.0 + 0.5 * _smooth_noise((fy, fx), 0.15 * min(ny, nx), rng)
        )
    del projected

    # --- optics ---------------------------------------------------------------------
    workers = fft_workers()
    spectrum = scipy.fft.rfft2(phase, workers=workers).astype(np.complex64)
    del phase
    ctf = ctf_2d(
        (fy, fx),
        px,
        df_u,
        df_v,
        angle,
        voltage=params.voltage,
        cs=params.cs,
        amplitude_contrast=params.amplitude_contrast,
        phase_shift=params.phase_shift,
        bfactor=params.envelope_bfactor,
    )
    spectrum *= ctf
    del ctf
    transmission = np.exp(-tau).astype(np.float32)
    has_tau = bool(np.ptp(transmission) > 0)
    trans_spec = scipy.fft.rfft2(transmission, workers=workers) if has_tau else None
    kx = np.fft.rfftfreq(fx)[None, :] / px
    ky = np.fft.fftfreq(fy)[:, None] / px
    s = np.sqrt(kx * kx + ky * ky).astype(np.float32)

    det = (slice(oy, oy + ny), slice(ox, ox + nx))
    psi0 = scipy.fft.irfft2(spectrum, s=(fy, fx), workers=workers)
    noiseless = (params.n_frames * dose_px * (1.0 + 2.0 * psi0) * transmission)[det]
    del psi0

    truth = MovieTruth(
        stem=params.movie_stem(index),
        defocus_u=df_u,
        defocus_v=df_v,
        defocus_angle=angle,
        shifts=shifts,
        local_coeffs=local_coeffs,
        local_tau=local_tau,
        coordinates=coords,
        angles=angles,
        junk=junk,
        noiseless=noiseless.astype(np.float32),
        states=states,
    )

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    sens = (1.0 / detector.gain).astype(np.float64)

    def frames() -> Iterator[np.ndarray]:
        for t in range(params.n_frames):
            dx_t, dy_t = shifts[t]
            ramp = phase_ramp((fy, fx), (dy_t, dx_t))
            spec_t = spectrum * ramp
            if params.radiation_damage:
                exposure = (t + 0.5) * params.dose_per_frame
                spec_t *= damage_attenuation(s, exposure).astype(np.float32)
            psi_t = scipy.fft.irfft2(spec_t, s=(fy, fx), workers=workers)
            image = 1.0 + 2.0 * psi_t
            if trans_spec is not None:
                image *= scipy.fft.irfft2(trans_spec * ramp, s=(fy, fx), workers=workers)
            else:
                image *= transmission
            # Local deformation: frame_t(r) = I(r - s_t - d_t(r)); s_t already applied.
            ldx, ldy = _local_field(local_coeffs, local_tau, t, xx, yy, (ny, nx), params.n_frames)
            if t > 0 and params.local_motion > 0:
                warped = ndimage.map_coordinates(
                    image, [yy + oy - ldy, xx + ox - ldx], order=3, mode="nearest"
                )
            else:
                warped = image[det]
            expected = dose_px * np.clip(warped, 0.0, None)
            if not noise:
                yield expected.astype(np.float32)
                continue
            lam = expected * sens
            if len(detector.hot_pixels):
                hy, hx = detector.hot_pixels[:, 0], detector.hot_pixels[:, 1]
                lam[hy, hx] = 50.0 * dose_px + 20.0
            counts = rng.poisson(lam)
            yield np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)

    return truth, frames()


def _add_aggregate(
    projected: np.ndarray, cx: float, cy: float, r_px: float, px: float, rng: np.random.Generator
) -> None:
    """A clump of dense protein-like blobs (projected potential, V·Å)."""
    k = int(rng.integers(8, 25))
    ang = rng.uniform(0, 2 * np.pi, k)
    rad = r_px * 0.7 * np.sqrt(rng.uniform(0, 1, k))
    sig_a = rng.uniform(8.0, 20.0, k)  # Å
    pos = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], axis=1)
    weight_a = 2.0 * PROTEIN_CONTRAST_V * (4 / 3) * np.pi * (1.5 * sig_a) ** 3  # V·Å^3
    projected += _splat(pos, weight_a / px**2, sig_a / px, projected.shape)


def _add_ice(
    projected: np.ndarray, tau: np.ndarray, cx: float, cy: float, r_px: float, px: float
) -> None:
    """A crystalline-ice ball: strong phase and amplitude contrast, soft edge."""
    ny, nx = projected.shape
    half = int(math.ceil(r_px * 1.3)) + 4
    y0, y1 = max(0, int(cy) - half), min(ny, int(cy) + half)
    x0, x1 = max(0, int(cx) - half), min(nx, int(cx) + half)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    thickness = 2.0 * np.sqrt(np.clip(r_px**2 - d2, 0, None)) * px  # Å
    thickness = ndimage.gaussian_filter(thickness, 2.0)
    projected[y0:y1, x0:x1] += ICE_POTENTIAL_V * thickness
    tau[y0:y1, x0:x1] += thickness / ICE_INELASTIC_MFP
