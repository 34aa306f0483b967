"""An independent micrograph simulator, for testing the particle picker on foreign data.

Nothing here comes from :mod:`cryosnake.simulate` or :mod:`cryosnake.ops`: the specimen,
projection, CTF and noise are written afresh (only :mod:`cryosnake.io` is used, to write
files).

Image model
-----------
- Specimen: 50-300 Gaussian pseudo-atoms (centre, sigma, weight) forming one of
  :data:`SHAPES`, scaled so that its longest extent (largest centre-to-centre distance
  plus 3 sigma) is ``diameter``. It depends only on the shape name and the diameter,
  not on the seed, so micrographs of one condition share one specimen (and templates).
- Projection: each particle has a uniformly random 3D rotation about its centre of
  mass; projecting a 3D Gaussian along z gives a 2D Gaussian of the same sigma, which
  is integrated exactly over each pixel (erf), at the sub-pixel true position.
- Junk: ``contamination`` dense round objects (ice crystals, ethane) with a soft edge
  whose radius is modulated by harmonics 2-4, 4-8 noise sigmas dark at the core, and,
  with ``carbon``, a film on one side of a wavy boundary (15-35 % of the image), 3-5
  noise sigmas dark, with a fine granular texture. Both are projected potential too.
- CTF (RELION convention): chi = pi lambda s^2 df(a) - pi/2 Cs lambda^3 s^4,
  CTF = -sqrt(1 - w^2) sin(chi) - w cos(chi), times exp(-B s^2 / 4), applied in Fourier
  space on a canvas padded by the delocalisation. Mean defocus 0.8-2.8 µm, astigmatism
  up to 0.1 µm, B 50-150 Å^2.
- Ice: thickness t = 1 + ice_gradient * (linear ramp, ±0.5, random direction) + 0.1 *
  (smooth noise, sigma size/6); attenuation exp(-0.3 t).
- Intensity: ``exp(-0.3 t) * (1 + CTF ⊛ potential) + noise``, so protein is dark at
  underfocus. The noise is Gaussian with power spectrum
  ``(1 + 2 exp(-(s / s0)^2)) sinc^2(s * pixel_size)``, s0 = 1/50 Å^-1, and sd 0.05.

SNR
---
``snr`` = variance of the noiseless particle signal ``exp(-0.3 t) * (CTF ⊛ particles)``
over the pixels within 0.5 * diameter of the true centres, divided by the per-pixel
variance of the noise realisation. The particle potential is scaled to hit the target
exactly; ice, carbon and contamination do not enter it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft
from scipy.spatial.transform import Rotation
from scipy.special import erf

from cryosnake.io import optics_table, write_mrc, write_star

__all__ = [
    "SHAPES",
    "ForeignMicrograph",
    "ctf_transfer",
    "noise_power_spectrum",
    "project_views",
    "simulate_micrograph",
    "write_micrographs",
]

SHAPES = ("rod", "ring", "dumbbell", "globule", "tetramer")
NOISE_SD = 0.05  # per-pixel noise sd, in units of the unattenuated beam
N_TEMPLATES = 12
CTF_LABELS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfMaxResolution",
)


@dataclass(frozen=True, kw_only=True, eq=False)
class ForeignMicrograph:
    """One simulated micrograph and its truth.

    Attributes
    ----------
    image : (ny, nx) float32
        Recorded intensity (mean about exp(-0.3) of the beam); protein dark.
    pixel_size, diameter
        Å per pixel; the particle's longest extent, Å.
    coordinates : (n, 2) float64
        True particle centres (x = column, y = row; pixel centres at integers).
    junk : (m, 3) float64
        Contamination items (x, y, radius), px; the carbon film is not listed.
    carbon : (ny, nx) bool
        Carbon film mask (all False without carbon).
    defocus_u, defocus_v, defocus_angle
        Å, Å (U >= V), degrees of the U axis from x, counter-clockwise.
    voltage, cs, amplitude_contrast, bfactor
        kV, mm, fraction, Å² (the CTF's envelope; 0 where the generator has none).
    snr
        Measured SNR (see the module docstring).
    templates : (k, b, b) float32
        Noiseless projections of the specimen (protein white, no CTF) centred at b // 2,
        in the units of the particle potential in ``image`` (before CTF and attenuation).
    """

    image: np.ndarray
    pixel_size: float
    diameter: float
    coordinates: np.ndarray
    junk: np.ndarray
    carbon: np.ndarray
    defocus_u: float
    defocus_v: float
    defocus_angle: float
    voltage: float = 300.0  # kV
    cs: float = 2.7  # mm
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0  # Å², the CTF's envelope exp(-B s^2 / 4)
    snr: float
    templates: np.ndarray
    generator: str = "foreign"


def _inside(shape: str, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whether points ``p`` (n, 3) lie in ``shape`` (unit scale, longest extent about 1)."""
    x, y, z = p.T
    rho, phi = np.hypot(x, y), np.arctan2(y, x)
    if shape == "rod":  # cylinder, aspect 3:1
        return (np.abs(x) <= 0.5) & (y**2 + z**2 <= (1 / 6) ** 2)
    if shape == "ring":  # torus with a hole, seven subunits
        tube = 0.12 * (1 + 0.3 * np.cos(7 * phi))
        return (rho - 0.36) ** 2 + (z / 1.4) ** 2 <= tube**2
    if shape == "dumbbell":  # two lobes and a thin neck
        lobes = ((np.abs(x) - 0.27) / 0.22) ** 2 + (y**2 + z**2) / 0.2**2 <= 1
        return lobes | ((np.abs(x) < 0.1) & (y**2 + z**2 < 0.05**2))
    if shape == "globule":  # sphere with a bumpy surface
        u = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
        bumps = sum(
            0.1 * np.cos(k * (u @ rng.normal(size=3)) + rng.uniform(0, 7)) for k in (2, 3, 3, 4)
        )
        return np.linalg.norm(p, axis=1) < 0.4 * (1 + bumps)
    # tetramer: four ellipsoidal subunits at the vertices of a tetrahedron
    out = np.zeros(len(p), dtype=bool)
    for v in np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) * 0.17:
        out |= np.sum(((p - v) / rng.uniform(0.12, 0.17, 3)) ** 2, axis=1) <= 1
    return out


def _specimen(shape: str, diameter: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-atoms of ``shape`` on a jittered lattice (about 220 of them).

    Returns centres (n, 3) Å about the centre of mass, sigmas (n,) Å and weights (n,),
    scaled so that the largest centre-to-centre distance plus 3 sigma is ``diameter``.
    Depends only on ``shape`` and ``diameter``.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    h = 0.06
    for _ in range(4):  # lattice spacing for about 220 pseudo-atoms
        rng = np.random.default_rng([7919, SHAPES.index(shape)])
        axis = np.arange(-0.6, 0.6 + h / 2, h)
        p = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        p = p + rng.uniform(-0.5 * h, 0.5 * h, p.shape)  # one per cell: no lattice peaks
        p, used = p[_inside(shape, p, rng)], h
        h *= (len(p) / 220) ** (1 / 3)
    n = len(p)
    sigma = used * rng.uniform(0.55, 0.75, n)
    weight = rng.uniform(0.5, 1.5, n)
    p -= np.average(p, axis=0, weights=weight)
    extent = np.max(np.linalg.norm(p[:, None] - p[None], axis=2)) + 3 * sigma.max()
    scale = diameter / extent
    return p * scale, sigma * scale, weight


def _render(
    xy: np.ndarray, sigma: np.ndarray, weight: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Sum of 2D Gaussians integrated over pixels: centres ``xy`` (n, 2) and ``sigma``
    (n,) in px, ``weight`` (n,) the integral of each; returns ``shape`` (rows, cols)."""

    def axis(c: np.ndarray, m: int) -> np.ndarray:
        edges = np.arange(m + 1) - 0.5
        e = erf((edges[None, :] - c[:, None]) / (np.sqrt(2) * sigma[:, None]))
        return 0.5 * np.diff(e, axis=1)

    gx, gy = axis(xy[:, 0], shape[1]), axis(xy[:, 1], shape[0])
    return (gy * weight[:, None]).T @ gx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (filter sd ``sigma`` px, in Fourier space),
    normalised to mean 0, sd 1."""
    f = fft.rfft2(rng.normal(size=shape))
    ky, kx = fft.fftfreq(shape[0])[:, None], fft.rfftfreq(shape[1])[None, :]
    out = fft.irfft2(f * np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2)), s=shape)
    return (out - out.mean()) / out.std()


def _wavelength(kilovolts: float) -> float:
    """Relativistic electron wavelength, Å."""
    volts = kilovolts * 1e3
    return float(12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts)))


def _ctf(
    n: int | tuple[int, int], pixel_size: float, df: tuple[float, float, float],
    voltage: float, cs: float, w: float, bfactor: float,
) -> np.ndarray:  # fmt: skip
    """CTF times envelope on the rfft2 grid of an (n, n) or (ny, nx) image; ``df`` =
    (U Å, V Å, angle °)."""
    ny, nx = (n, n) if isinstance(n, int) else n
    lam = _wavelength(voltage)
    sy = fft.fftfreq(ny, pixel_size)[:, None]
    sx = fft.rfftfreq(nx, pixel_size)[None, :]
    s2 = sx**2 + sy**2
    a = np.arctan2(sy, sx)
    dfu, dfv, ang = df
    defocus = 0.5 * (dfu + dfv + (dfu - dfv) * np.cos(2 * (a - np.deg2rad(ang))))
    chi = np.pi * lam * s2 * defocus - 0.5 * np.pi * cs * 1e7 * lam**3 * s2**2
    ctf = -np.sqrt(1 - w**2) * np.sin(chi) - w * np.cos(chi)
    return ctf * np.exp(-bfactor * s2 / 4)


def noise_power_spectrum(s: np.ndarray, pixel_size: float) -> np.ndarray:
    """The noise's power at spatial frequency ``s`` (1/Å) relative to white noise:
    three times as much below s0 = 1/50 Å^-1, and the sinc^2 of pixel integration."""
    return (1 + 2 * np.exp(-((s * 50.0) ** 2))) * np.sinc(s * pixel_size) ** 2


def ctf_transfer(shape: tuple[int, int], pixel_size: float, m: ForeignMicrograph) -> np.ndarray:
    """The CTF of micrograph ``m`` (its defocus, voltage, Cs, amplitude contrast and
    envelope) on the rfft2 grid of an image of ``shape`` at ``pixel_size``."""
    df = (m.defocus_u, m.defocus_v, m.defocus_angle)
    return _ctf(shape, pixel_size, df, m.voltage, m.cs, m.amplitude_contrast, m.bfactor)


def _place(rng: np.random.Generator, allowed: np.ndarray, n: int, distance: float) -> np.ndarray:
    """Up to ``n`` (x, y) centres on ``allowed`` pixels, pairwise >= ``distance`` px
    apart (random sequential addition over a pool of candidates)."""
    ny, nx = allowed.shape
    pool = rng.uniform([-0.5, -0.5], [nx - 0.5, ny - 0.5], size=(60000, 2))
    ix = np.clip(np.round(pool).astype(int), 0, [nx - 1, ny - 1])
    pool = pool[allowed[ix[:, 1], ix[:, 0]]]
    out: list[np.ndarray] = []
    while len(out) < n and len(pool):
        out.append(pool[0])
        pool = pool[np.hypot(*(pool - pool[0]).T) >= distance]
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def simulate_micrograph(
    seed: int,
    *,
    snr: float = 0.02,
    shape_name: str = "rod",
    diameter: float = 160.0,
    pixel_size: float = 1.5,
    size: int = 1024,
    n_particles: int | None = None,
    ice_gradient: float = 0.3,
    carbon: bool = False,
    contamination: int = 3,
) -> ForeignMicrograph:
    """A ``size`` x ``size`` micrograph of ``shape_name`` particles (see the module docstring).

    Parameters
    ----------
    seed
        Everything (defocus, positions, rotations, junk, noise, templates) follows from it.
    snr
        Target SNR (particle signal variance inside the particle discs / noise variance).
    diameter, pixel_size
        Longest extent of the specimen, Å; Å per pixel.
    n_particles
        Particles to place (fewer if they do not fit); default 25 % of the area free of
        carbon and contamination. Centres are >= 1.05 diameters apart, >= 0.5 diameter
        from the image edges, off carbon and outside contamination.
    ice_gradient
        Thickness change across the image of the linear ramp (relative to 1).
    carbon, contamination
        Whether to add a carbon film; how many contamination items.
    """
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    r_ctf, r_ice, r_carbon, r_junk, r_place, r_rot, r_noise, r_tmpl = streams
    d_px = diameter / pixel_size
    voltage, cs, w = 300.0, 2.7, 0.1
    mean_df, astig = r_ctf.uniform(8000, 28000), r_ctf.uniform(0, 1000)
    df = (mean_df + astig / 2, mean_df - astig / 2, float(r_ctf.uniform(0, 180)))
    bfactor = r_ctf.uniform(50, 150)
    lam = _wavelength(voltage)
    s_nyq = 0.5 / pixel_size
    deloc = lam * (df[0] * s_nyq + cs * 1e7 * lam**2 * s_nyq**3) / pixel_size
    pad = int(np.ceil(deloc)) + 16
    n_canvas = fft.next_fast_len(size + 2 * pad, real=True)
    pad = (n_canvas - size) // 2
    cy, cx = np.ogrid[0:n_canvas, 0:n_canvas]  # canvas indices; image coordinates are - pad
    cy, cx = cy - float(pad), cx - float(pad)
    inside = (slice(pad, pad + size), slice(pad, pad + size))

    # ice: thickness ramp + smooth variation -> attenuation
    theta = r_ice.uniform(0, 2 * np.pi)
    mid = (size - 1) / 2
    u = (cx[:, inside[1]] - mid) * np.cos(theta) + (cy[inside[0]] - mid) * np.sin(theta)
    thickness = 1 + ice_gradient * 0.5 * u / np.abs(u).max()
    thickness += 0.1 * _smooth_noise(r_ice, (size, size), size / 6)
    attenuation = np.exp(-0.3 * thickness)
    att_mean = float(attenuation.mean())

    # carbon film beyond a wavy boundary, on the whole canvas
    other = np.zeros((n_canvas, n_canvas))
    carbon_mask = np.zeros((size, size), dtype=bool)
    far_from_carbon = np.ones((size, size), dtype=bool)
    if carbon:
        phi = r_carbon.uniform(0, 2 * np.pi)
        along = cx * -np.sin(phi) + cy * np.cos(phi)
        g = cx * np.cos(phi) + cy * np.sin(phi)
        amplitude, period = size * r_carbon.uniform(0.03, 0.08), size * r_carbon.uniform(0.5, 2)
        g -= amplitude * np.sin(2 * np.pi * along / period + r_carbon.uniform(0, 2 * np.pi))
        edge = np.quantile(g[inside], 1 - r_carbon.uniform(0.15, 0.35))
        carbon_mask = g[inside] > edge
        far_from_carbon = g[inside] < edge - 0.8 * d_px  # |grad g| <= ~1.4
        film = 0.5 * (1 + np.tanh((g - edge) / 1.5))
        texture = _smooth_noise(r_carbon, other.shape, 1.0)
        dark = r_carbon.uniform(3, 5) * NOISE_SD / (w * att_mean)
        other += dark * film * (1 + 0.05 * texture)

    # contamination: dense soft-edged blobs
    junk = np.zeros((contamination, 3))
    gap, clearance = np.full(other.shape, np.inf), np.full(other.shape, np.inf)
    for i in range(contamination):
        radius = min(r_junk.uniform(1, 3) * d_px, 0.15 * size)
        for _ in range(50):  # avoid overlapping items where possible
            x0, y0 = r_junk.uniform(0, size - 1, 2)
            if np.all(np.hypot(junk[:i, 0] - x0, junk[:i, 1] - y0) > junk[:i, 2] + radius):
                break
        amps, phases = r_junk.uniform(0, 0.07, 3), r_junk.uniform(0, 2 * np.pi, 3)
        outer = radius * (1 + amps.sum())
        reach = outer + max(0.55 * d_px, 0.2 * radius + 10) + 2
        rows = slice(max(0, int(y0 + pad - reach)), min(n_canvas, int(y0 + pad + reach) + 2))
        cols = slice(max(0, int(x0 + pad - reach)), min(n_canvas, int(x0 + pad + reach) + 2))
        dy, dx = cy[rows] - y0, cx[:, cols] - x0
        r, ang = np.hypot(dx, dy), np.arctan2(dy, dx)
        harmonics = zip((2, 3, 4), amps, phases, strict=True)
        rim = radius * (1 + sum(a * np.cos(k * ang + p) for k, a, p in harmonics))
        soft = 0.5 * (1 + np.tanh((rim - r) / (0.04 * radius + 2)))
        dome = np.sqrt(np.clip(1 - (r / rim) ** 2, 0, 1))
        att = attenuation[int(round(y0)), int(round(x0))]
        dark = r_junk.uniform(4, 8) * NOISE_SD / (w * att)
        other[rows, cols] += dark * soft * (0.6 + 0.4 * dome)
        gap[rows, cols] = np.minimum(gap[rows, cols], r - rim)  # > 0 outside the item
        clearance[rows, cols] = np.minimum(clearance[rows, cols], r - outer)
        junk[i] = x0, y0, radius

    # particles
    free_area = float(((gap[inside] >= 0) & ~carbon_mask).sum())
    if n_particles is None:
        n_particles = int(round(0.25 * free_area / (np.pi * (d_px / 2) ** 2)))
    margin = 0.5 * d_px
    grid = np.arange(size)
    edge_ok = (grid >= margin) & (grid <= size - 1 - margin)
    allowed = (
        edge_ok[:, None] & edge_ok[None, :] & (clearance[inside] >= 0.55 * d_px) & far_from_carbon
    )
    coordinates = _place(r_place, allowed, n_particles, 1.05 * d_px)
    atoms, sigma, weight = _specimen(shape_name, diameter)
    half = int(np.ceil((np.linalg.norm(atoms, axis=1).max() + 4 * sigma.max()) / pixel_size)) + 1
    rotations = Rotation.random(max(len(coordinates), 1), rng=r_rot)
    particles = np.zeros_like(other)
    n_box = 2 * half + 1
    for (x, y), rot in zip(coordinates, rotations, strict=False):
        ix, iy = int(round(x)) + pad - half, int(round(y)) + pad - half
        xy = rot.apply(atoms)[:, :2] / pixel_size + np.array([x + pad - ix, y + pad - iy])
        particles[iy : iy + n_box, ix : ix + n_box] += _render(
            xy, sigma / pixel_size, weight, (n_box, n_box)
        )

    # CTF, signal scaling to the target SNR, noise
    ctf = _ctf(n_canvas, pixel_size, df, voltage, cs, w, bfactor)
    signal = attenuation * fft.irfft2(fft.rfft2(particles) * ctf, s=particles.shape)[inside]
    background = attenuation * (1 + fft.irfft2(fft.rfft2(other) * ctf, s=other.shape)[inside])
    sy, sx = fft.fftfreq(size, pixel_size)[:, None], fft.rfftfreq(size, pixel_size)[None, :]
    s = np.hypot(sx, sy)
    power = noise_power_spectrum(s, pixel_size)
    noise = fft.irfft2(
        fft.rfft2(r_noise.normal(size=(size, size))) * np.sqrt(power), s=(size, size)
    )
    noise *= NOISE_SD / noise.std()
    disc = np.zeros((size, size), dtype=bool)
    for x, y in coordinates:
        r0, c0 = int(y - margin), int(x - margin)
        r1, c1 = min(size, int(y + margin) + 2), min(size, int(x + margin) + 2)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        disc[r0:r1, c0:c1] |= np.hypot(rr - y, cc - x) <= margin
    scale, measured = 0.0, 0.0
    if disc.any():
        scale = float(np.sqrt(snr * noise.var() / signal[disc].var()))
        measured = float((scale * signal[disc]).var() / noise.var())
    image = (background + scale * signal + noise).astype(np.float32)

    # templates: same specimen, own orientations, protein white, no CTF
    b = 2 * int(round(0.65 * d_px))
    views = Rotation.random(N_TEMPLATES, rng=r_tmpl)
    views = [rot.apply(atoms)[:, :2] / pixel_size + b // 2 for rot in views]
    templates = np.stack([_render(xy, sigma / pixel_size, weight, (b, b)) for xy in views])
    return ForeignMicrograph(
        image=image,
        pixel_size=float(pixel_size),
        diameter=float(diameter),
        coordinates=coordinates,
        junk=junk,
        carbon=carbon_mask,
        defocus_u=float(df[0]),
        defocus_v=float(df[1]),
        defocus_angle=float(df[2]),
        voltage=voltage,
        cs=cs,
        amplitude_contrast=w,
        bfactor=float(bfactor),
        snr=measured,
        templates=(templates * (scale or 1.0)).astype(np.float32),
    )


def project_views(
    shape_name: str, diameter: float, pixel_size: float, box: int, count: int, seed: int
) -> np.ndarray:
    """``count`` noiseless projections of the specimen in uniformly random orientations.

    The same specimen and projection as :func:`simulate_micrograph` (protein white, no
    CTF, centre of mass at pixel ``box // 2``), in the units of the pseudo-atoms'
    weights (not scaled to an SNR). Returns (count, box, box) float32.
    """
    atoms, sigma, weight = _specimen(shape_name, diameter)
    rotations = Rotation.random(count, rng=np.random.default_rng(seed))
    out = np.empty((count, box, box), dtype=np.float32)
    for i, rot in enumerate(rotations):
        xy = rot.apply(atoms)[:, :2] / pixel_size + box // 2
        out[i] = _render(xy, sigma / pixel_size, weight, (box, box))
    return out


def write_micrographs(micrographs: list[ForeignMicrograph], folder: Path) -> Path:
    """Write ``mic_NNN.mrc``, a RELION 3.1 ``micrographs_ctf.star`` and ``truth.star``.

    ``truth.star`` holds ``data_particles`` (rlnMicrographName, rlnCoordinateX/Y, px)
    and ``data_junk`` (rlnMicrographName, x, y, radius, px). All micrographs must share
    the pixel size and optics. Returns the path of ``micrographs_ctf.star``.
    """
    if not micrographs:
        raise ValueError("no micrographs to write")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m0 = micrographs[0]
    optics = (m0.pixel_size, m0.voltage, m0.cs, m0.amplitude_contrast)
    rows, particles, junk = [], [], []
    for i, m in enumerate(micrographs):
        if (m.pixel_size, m.voltage, m.cs, m.amplitude_contrast) != optics:
            raise ValueError("all micrographs must share pixel size and optics")
        name = f"mic_{i:03d}.mrc"
        write_mrc(folder / name, m.image, m.pixel_size)
        ctf = (m.defocus_u, m.defocus_v, m.defocus_angle, 0.0, max(3.0, 2.2 * m.pixel_size))
        rows.append(
            {
                "rlnMicrographName": name,
                "rlnOpticsGroup": 1,
                **dict(zip(CTF_LABELS, ctf, strict=True)),
            }
        )
        particles += [
            {"rlnMicrographName": name, "rlnCoordinateX": x, "rlnCoordinateY": y}
            for x, y in m.coordinates
        ]
        junk += [{"rlnMicrographName": name, "x": x, "y": y, "radius": r} for x, y, r in m.junk]
    table = optics_table(
        pixel_size=optics[0], voltage=optics[1], cs=optics[2], amplitude_contrast=optics[3]
    )
    star = write_star(
        folder / "micrographs_ctf.star", {"optics": table, "micrographs": pd.DataFrame(rows)}
    )
    write_star(
        folder / "truth.star",
        {
            "particles": pd.DataFrame(
                particles, columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]
            ),
            "junk": pd.DataFrame(junk, columns=["rlnMicrographName", "x", "y", "radius"]),
        },
    )
    return star
