"""Test micrographs made by ASPIRE, for benchmarking the particle picker on foreign data.

ASPIRE (0.14; imported inside the functions, so this module imports without it) gives:

- the specimen: one of its Gaussian-blob volumes (``AsymmetricVolume``, C4
  ``CnSymmetricVolume``, D2 ``DnSymmetricVolume``, ``TSymmetricVolume``,
  ``OSymmetricVolume``), made once per shape on a 64³ grid with a fixed seed. We
  soft-threshold it at 5 % of its maximum, put its centre of mass at the box centre and
  resample it so that its longest extent (largest distance between voxels above the
  threshold, plus one voxel) is ``diameter`` Å; the extent measured on the resampled
  volume is the ``diameter`` returned. Box: 1.3 diameters.
- projection, CTF and placement: ``MicrographSimulation`` (random orientations, random
  amplitudes in [2/3, 3/2], integer centres >= 1.05 diameters apart and >= 0.5 diameter
  inside the edges) with one ``CTFFilter`` per micrograph: 300 kV, Cs 2.7 mm, amplitude
  contrast 0.1, mean defocus 1.0-2.5 µm, astigmatism <= 500 Å. ASPIRE's CTF equals
  RELION's (CTF = -sqrt(1 - w²) sin χ - w cos χ, χ = πλΔf s² - π/2 Cs λ³ s⁴, U axis at
  ``defocus_ang`` radians from the columns towards the rows), so protein is dark at
  underfocus and the values are recorded as they are (angle in degrees).
  ``MicrographSimulation.centers`` are (row, column) with the box centre ``L // 2`` on
  the pixel: the truth is (x, y) = (column, row).
- noise: its ``WhiteNoiseAdder``, sd 0.05 of the unattenuated beam;
- templates: ``Volume.project`` of 12 random views (protein white, no CTF), centred at
  ``b // 2``, in the units of the particle potential in the image.

We add (ASPIRE models none of it), drawn before ASPIRE places the particles:

- ice: thickness t = 1 + ice_gradient * (linear ramp in a random direction, ±0.5);
  image = exp(-0.3 t) * (1 - junk - carbon + particles) + noise;
- contamination: dark round blobs of radius 1-3 diameters, rim modulated by harmonics
  2-4, soft edge, 4-8 noise sd dark; carbon (optional): a film beyond a wavy boundary
  over 15-35 % of the image, 3-5 noise sd dark, granular texture. Both are intensity
  losses (no CTF). ASPIRE is asked for more particles in proportion to the area they
  exclude; those within 0.55 diameter of them, and any beyond ``particles_per_micrograph``,
  get amplitude 0 in ASPIRE's simulation (neither drawn nor listed).

SNR: the variance of the noiseless particle signal exp(-0.3 t) * (CTF ⊛ projections)
over the pixels within 0.5 diameter of the true centres, over the per-pixel variance of
ASPIRE's noise realisation. The signal is scaled to hit the target exactly.

Run under ``.venv-bench`` (nothing is downloaded)::

    import sys; sys.path.insert(0, "benchmarks")
    from _aspire_micrographs import aspire_micrographs
    mics = aspire_micrographs(1, 3, snr=0.02, volume="t", diameter=150, pixel_size=1.5)
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

if TYPE_CHECKING:
    from foreign_sim import ForeignMicrograph

__all__ = ["VOLUMES", "aspire_micrographs"]

VOLUMES = ("asymmetric", "c4", "d2", "t", "o")
NOISE_SD = 0.05  # per-pixel noise sd, in units of the unattenuated beam
N_TEMPLATES = 12
VOLTAGE, CS, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1
_L0 = 64  # grid of ASPIRE's blob volumes (resampled afterwards)
_THRESHOLD = 0.05  # fraction of the maximum that bounds the specimen


def _extent(vol: np.ndarray) -> float:
    """Longest extent, voxels: largest distance between positive voxels, plus one."""
    idx = np.argwhere(vol > 0).astype(np.float64)
    hull = idx[ConvexHull(idx).vertices]
    return float(np.sqrt(((hull[:, None] - hull[None]) ** 2).sum(-1)).max()) + 1.0


@functools.lru_cache(maxsize=8)
def _blob_volume(name: str) -> np.ndarray:
    """ASPIRE's Gaussian-blob volume ``name`` (64³, fixed seed), soft-thresholded."""
    from aspire.volume import (
        AsymmetricVolume,
        CnSymmetricVolume,
        DnSymmetricVolume,
        OSymmetricVolume,
        TSymmetricVolume,
    )

    kinds = {"c4": (CnSymmetricVolume, {"order": 4}), "d2": (DnSymmetricVolume, {"order": 2})}
    kinds |= {"asymmetric": (AsymmetricVolume, {}), "t": (TSymmetricVolume, {})}
    kind, extra = kinds.get(name, (OSymmetricVolume, {}))
    synthetic = kind(L=_L0, C=1, seed=VOLUMES.index(name), **extra)
    vol = synthetic.generate().asnumpy()[0].astype(np.float64)
    return np.clip(vol - _THRESHOLD * vol.max(), 0.0, None)


@functools.lru_cache(maxsize=16)
def _specimen(name: str, diameter: float, pixel_size: float) -> tuple[np.ndarray, float]:
    """The volume of ``name`` at ``pixel_size`` (box 1.3 diameters, centre of mass at
    ``L // 2``) and its measured longest extent, Å."""
    if name not in VOLUMES:
        raise ValueError(f"unknown volume {name!r}; choose from {VOLUMES}")
    vol0 = _blob_volume(name)
    com = np.array([(vol0 * g).sum() / vol0.sum() for g in np.indices(vol0.shape)])
    step = _extent(vol0) * pixel_size / diameter  # input voxels per output voxel
    box = max(16, 2 * int(round(0.65 * diameter / pixel_size)))
    grid = np.indices((box,) * 3, dtype=np.float64) - box // 2
    for _ in range(2):  # the second pass corrects the extent for the sampling
        vol = ndimage.map_coordinates(vol0, grid * step + com[:, None, None, None], order=3)
        vol = np.clip(vol, 0.0, None)
        vol[vol < 1e-3 * vol.max()] = 0.0  # spline ripples beyond the thresholded support
        extent = _extent(vol) * pixel_size
        step *= extent / diameter
    return (vol / vol.max()).astype(np.float32), extent


def _foreign_micrograph() -> type[ForeignMicrograph]:
    """``tests/foreign_sim.py``'s record, imported as the benchmark imports it."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from foreign_sim import ForeignMicrograph

    return ForeignMicrograph


def _scene(
    rng: np.random.Generator, size: int, d_px: float, ice_gradient: float, contamination: int,
    carbon: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """What we add to one micrograph: attenuation exp(-0.3 t), intensity loss (junk and
    carbon, before attenuation), carbon mask, junk (m, 3) and where centres may lie."""
    y, x = np.ogrid[0:size, 0:size]
    theta, mid = rng.uniform(0, 2 * np.pi), (size - 1) / 2
    u = (x - mid) * np.cos(theta) + (y - mid) * np.sin(theta)
    attenuation = np.exp(-0.3 * (1 + ice_gradient * 0.5 * u / np.abs(u).max()))
    loss, allowed = np.zeros((size, size)), np.ones((size, size), dtype=bool)
    carbon_mask = np.zeros((size, size), dtype=bool)
    if carbon:  # a film beyond a wavy boundary over 15-35 % of the image
        phi = rng.uniform(0, 2 * np.pi)
        along = -x * np.sin(phi) + y * np.cos(phi)
        amplitude, period = size * rng.uniform(0.03, 0.08), size * rng.uniform(0.5, 2.0)
        wave = amplitude * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        g = x * np.cos(phi) + y * np.sin(phi) - wave
        edge = np.quantile(g, 1 - rng.uniform(0.15, 0.35))
        carbon_mask = g > edge
        texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0, mode="wrap")
        texture = (texture - texture.mean()) / texture.std()
        dark = rng.uniform(3, 5) * NOISE_SD / float(attenuation.mean())
        loss += dark * 0.5 * (1 + np.tanh((g - edge) / 1.5)) * (1 + 0.3 * texture)
        allowed &= ndimage.distance_transform_edt(~carbon_mask) >= 0.55 * d_px
    junk = np.zeros((contamination, 3))
    for i in range(contamination):  # soft dark blobs, rim modulated by harmonics 2-4
        radius = min(rng.uniform(1, 3) * d_px, 0.15 * size)
        for _ in range(50):  # off carbon and off the other items where possible
            x0, y0 = rng.uniform(0, size - 1, 2)
            apart = np.hypot(junk[:i, 0] - x0, junk[:i, 1] - y0) > junk[:i, 2] + radius
            if not carbon_mask[int(y0), int(x0)] and apart.all():
                break
        amps, phases = rng.uniform(0, 0.07, 3), rng.uniform(0, 2 * np.pi, 3)
        outer = radius * (1 + amps.sum())
        r, ang = np.hypot(x - x0, y - y0), np.arctan2(y - y0, x - x0)
        harmonics = zip((2, 3, 4), amps, phases, strict=True)
        rim = radius * (1 + sum(a * np.cos(k * ang + p) for k, a, p in harmonics))
        soft = 0.5 * (1 + np.tanh((rim - r) / (0.04 * radius + 2)))
        dome = np.sqrt(np.clip(1 - (r / rim) ** 2, 0, 1))
        dark = rng.uniform(4, 8) * NOISE_SD / float(attenuation[int(y0), int(x0)])
        loss += dark * soft * (0.6 + 0.4 * dome)
        allowed &= r >= outer + 0.55 * d_px
        junk[i] = x0, y0, radius
    return attenuation, loss, carbon_mask, junk, allowed


def aspire_micrographs(
    seed: int,
    count: int,
    *,
    snr: float = 0.02,
    volume: str = "asymmetric",
    diameter: float = 150.0,
    pixel_size: float = 1.5,
    size: int = 1024,
    particles_per_micrograph: int = 40,
    ice_gradient: float = 0.3,
    contamination: int = 2,
    carbon: bool = False,
) -> list[ForeignMicrograph]:
    """``count`` ASPIRE micrographs of ``volume`` particles (see the module docstring).

    Parameters
    ----------
    seed
        Everything but the specimen (which depends on ``volume``, ``diameter`` and
        ``pixel_size`` only) follows from it: defocus, placement, orientations,
        amplitudes, ice, junk, carbon, noise and template views.
    count
        Number of micrographs.
    snr
        Target SNR (particle signal variance inside the particle discs / noise variance).
    volume
        One of :data:`VOLUMES`: ASPIRE's asymmetric, C4, D2, T or O blob volume.
    diameter, pixel_size
        Wanted longest extent of the specimen, Å (the measured one is returned); Å/px.
    size
        Micrograph side, px.
    particles_per_micrograph
        Particles per micrograph (fewer if ASPIRE cannot place them).
    ice_gradient
        Thickness change across the image of the linear ramp (relative to 1).
    contamination, carbon
        How many contamination items; whether to add a carbon film.

    Returns
    -------
    list of ForeignMicrograph
        ``generator="aspire"``; the ``ForeignMicrograph`` of ``tests/foreign_sim.py``.
    """
    from aspire.image import Image
    from aspire.noise import WhiteNoiseAdder
    from aspire.operators import CTFFilter
    from aspire.source import MicrographSimulation
    from aspire.utils import Rotation
    from aspire.volume import Volume

    record = _foreign_micrograph()
    vol, extent = _specimen(volume, float(diameter), float(pixel_size))
    d_px = extent / pixel_size
    r_ctf, r_scene, r_thin, r_seeds = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    place_seed, noise_seed, view_seed = (int(s) for s in r_seeds.integers(0, 2**31, 3))
    defocus = []
    for _ in range(count):
        mean_df, astig = r_ctf.uniform(10000, 25000), r_ctf.uniform(0, 500)
        defocus.append((mean_df + astig / 2, mean_df - astig / 2, float(r_ctf.uniform(0, 180))))
    filters = [
        CTFFilter(VOLTAGE, u, v, np.deg2rad(a), CS, AMPLITUDE_CONTRAST, 0) for u, v, a in defocus
    ]
    scenes = [
        _scene(r_scene, size, d_px, ice_gradient, contamination, carbon) for _ in range(count)
    ]
    # ASPIRE places centres uniformly: ask for more, so that about n fall where allowed
    edge = int(np.ceil(0.5 * d_px))
    free = min(float(sc[4][edge:-edge, edge:-edge].mean()) for sc in scenes)
    n_wanted = int(particles_per_micrograph)
    jammed = 0.5 * (size - 2 * edge) ** 2 / (np.pi * (0.525 * d_px) ** 2)  # RSA: ~0.55
    n = min(int(np.ceil(n_wanted / max(free, 0.25))), max(1, int(jammed)))
    specimen = Volume(vol, pixel_size=pixel_size)
    while True:
        try:
            sim = MicrographSimulation(
                specimen,
                micrograph_size=size,
                micrograph_count=count,
                particles_per_micrograph=n,
                pixel_size=pixel_size,
                seed=place_seed,
                ctf_filters=filters,
                boundary=edge,
                interparticle_distance=int(np.ceil(1.05 * d_px)),
            )
            break
        except RuntimeError:  # ASPIRE could not place them all
            if n <= 1:
                raise
            n = max(1, int(0.85 * n))
    views = specimen.project(Rotation.generate_random_rotations(N_TEMPLATES, seed=view_seed))
    views_np = views.asnumpy().astype(np.float64)

    out: list[ForeignMicrograph] = []
    for m, (attenuation, loss, carbon_mask, junk, allowed) in enumerate(scenes):
        rows, cols = sim.centers[m].T  # ASPIRE: (row, column)
        keep = allowed[rows, cols]
        kept = np.flatnonzero(keep)
        keep[r_thin.permutation(kept)[: max(0, len(kept) - n_wanted)]] = False  # thin to n
        # the others get amplitude 0 in ASPIRE's simulation: neither drawn nor listed
        sim.simulation.sim_amplitudes[sim.get_particle_indices(m)[~keep]] = 0.0
        xy = np.stack([cols[keep], rows[keep]], axis=1).astype(np.float64)
        signal = attenuation * sim.clean_images[m].asnumpy()[0].astype(np.float64)
        zeros = Image(np.zeros((1, size, size), dtype=np.float32), pixel_size=pixel_size)
        adder = WhiteNoiseAdder(var=NOISE_SD**2, seed=noise_seed)
        noise = adder.forward(zeros, indices=[m]).asnumpy()[0].astype(np.float64)
        disc = np.zeros((size, size), dtype=bool)
        for cx, cy in xy.astype(int):
            r0, c0 = max(0, cy - edge), max(0, cx - edge)
            rr, cc = np.ogrid[r0 : cy + edge + 1, c0 : cx + edge + 1]
            disc[rr, cc] |= np.hypot(rr - cy, cc - cx) <= d_px / 2
        scale, measured = 0.0, 0.0
        if disc.any():
            scale = float(np.sqrt(snr * noise.var() / signal[disc].var()))
            measured = float((scale * signal[disc]).var() / noise.var())
        image = attenuation * (1 - loss) + scale * signal + noise
        u_df, v_df, angle = defocus[m]
        out.append(
            record(
                image=image.astype(np.float32),
                pixel_size=float(pixel_size),
                diameter=float(extent),
                coordinates=xy,
                junk=junk,
                carbon=carbon_mask,
                defocus_u=float(u_df),
                defocus_v=float(v_df),
                defocus_angle=float(angle),
                voltage=VOLTAGE,
                cs=CS,
                amplitude_contrast=AMPLITUDE_CONTRAST,
                snr=measured,
                templates=(views_np * (scale or 1.0)).astype(np.float32),
                generator="aspire",
            )
        )
    return out
