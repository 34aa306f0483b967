"""A two-state particle stack made by ASPIRE, for benchmarking 3D classification on
foreign data.

ASPIRE (0.14; imported inside the functions, so this module imports without it) gives:

- the specimen, state 0: one of its Gaussian-blob volumes (``AsymmetricVolume``, 64³,
  ``K`` = 64 blobs, seed ``seed``). We soft-threshold it at 5 % of its maximum, put its
  centre of mass at the box centre ``box // 2`` and resample it (cubic splines) so that
  its longest extent (largest distance between voxels above the threshold, plus one
  voxel) is ``diameter`` Å at ``pixel_size``.
- state 1 (a partial complex): state 0 times ``1 - m``, ``m`` a soft sphere (1 inside
  radius r, raised-cosine edge of 3 px) centred on a dense voxel 0.2-0.35 diameter from
  the centre; r is bisected so that the removed fraction of the mass is ``removed``
  (the measured fraction is returned as ``removed_mass``).
- the particles: one ``Simulation`` of both volumes (a ``Volume`` of two, ASPIRE draws
  the 1-based states, returned 0-based), float32, random rotations, amplitudes 1,
  offsets uniform in a disc of radius 2 px, one ``CTFFilter`` per 40 particles (300 kV,
  Cs 2.7 mm, amplitude contrast 0.1, mean defocus uniform 1.0-2.5 µm, astigmatism
  uniform 0-500 Å, angle uniform). ASPIRE's CTF equals RELION's (see
  ``_aspire_micrographs``): the values are recorded as they are, the angle in degrees.
- the noise: its ``WhiteNoiseAdder`` (applied to the clean images as ``Simulation``
  does), variance = (per-image variance over the whole box of the noiseless
  CTF-modulated images, averaged over the particles) / ``snr_stack``. The returned
  ``snr_stack`` is that signal variance over the variance of the noise realisation.

Then, as ``cryosnake extract`` writes particles: contrast inverted (protein white) and
each image normalised to mean 0, sd 1 outside the disc of diameter ``diameter /
pixel_size`` px centred at ``box // 2``.

Conventions (found by ``_check``: cryosnake reconstructions of ``Simulation`` images
against the volumes): cryosnake's rotation is the transpose of ASPIRE's
``Simulation.rotations``; the volume arrays are the same (axes not reversed); ASPIRE's
``offsets`` are minus cryosnake's (dx, dy) shifts.

Run under ``.venv-bench`` (nothing is downloaded)::

    import sys; sys.path.insert(0, "benchmarks")
    from _aspire_states import aspire_two_states
    data = aspire_two_states(20000, snr_stack=0.3)

``.venv-bench/bin/python benchmarks/_aspire_states.py`` runs the convention check.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

__all__ = ["aspire_two_states"]

VOLTAGE, CS, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1
GROUP = 40  # particles per CTF filter
MAX_SHIFT = 2.0  # px
CHUNK = 1000  # images generated at once
_L0 = 64  # grid of ASPIRE's blob volume (resampled afterwards)
_THRESHOLD = 0.05  # fraction of the maximum that bounds the specimen
_EDGE = 3.0  # px, raised-cosine edge of the removed sphere


def _extent(vol: np.ndarray) -> float:
    """Longest extent, voxels: largest distance between positive voxels, plus one."""
    idx = np.argwhere(vol > 0).astype(np.float64)
    hull = idx[ConvexHull(idx).vertices]
    return float(np.sqrt(((hull[:, None] - hull[None]) ** 2).sum(-1)).max()) + 1.0


@functools.lru_cache(maxsize=4)
def _state0(box: int, diameter_px: float, seed: int) -> np.ndarray:
    """ASPIRE's blob volume resampled to ``box`` (extent ``diameter_px``, centre of mass
    at ``box // 2``), maximum 1."""
    from aspire.volume import AsymmetricVolume

    vol0 = AsymmetricVolume(L=_L0, C=1, K=64, seed=seed).generate().asnumpy()[0]
    vol0 = np.clip(vol0.astype(np.float64) - _THRESHOLD * vol0.max(), 0.0, None)
    com = np.array([(vol0 * g).sum() / vol0.sum() for g in np.indices(vol0.shape)])
    step = _extent(vol0) / diameter_px  # input voxels per output voxel
    grid = np.indices((box,) * 3, dtype=np.float64) - box // 2
    for _ in range(2):  # the second pass corrects the extent for the sampling
        vol = ndimage.map_coordinates(vol0, grid * step + com[:, None, None, None], order=3)
        vol = np.clip(vol, 0.0, None)
        vol[vol < 1e-3 * vol.max()] = 0.0  # spline ripples beyond the thresholded support
        step *= _extent(vol) / diameter_px
    return vol / vol.max()


def _remove_domain(
    vol: np.ndarray, diameter_px: float, removed: float, rng: np.random.Generator
) -> np.ndarray:
    """``vol`` times (1 - soft sphere) about a dense off-centre voxel, the radius bisected
    so that the fraction ``removed`` of the mass goes."""
    box = vol.shape[0]
    g = np.indices(vol.shape, dtype=np.float64) - box // 2
    r0 = np.sqrt((g**2).sum(0))
    near = (r0 >= 0.2 * diameter_px) & (r0 <= 0.35 * diameter_px) & (vol > 0.3 * vol.max())
    cand = np.argwhere(near)
    weights = vol[near] / vol[near].sum()
    centre = cand[rng.choice(len(cand), p=weights)].astype(np.float64)
    dist = np.sqrt(((np.indices(vol.shape) - centre[:, None, None, None]) ** 2).sum(0))
    total = vol.sum()

    def cut(radius: float) -> np.ndarray:
        x = np.clip((dist - radius) / _EDGE, 0.0, 1.0)
        return vol * (1.0 - 0.5 * (1.0 + np.cos(np.pi * x)))

    lo, hi = 0.0, float(box)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 1.0 - cut(mid).sum() / total < removed else (lo, mid)
    return cut(0.5 * (lo + hi))


def _offsets(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) shifts uniform in the disc of radius ``MAX_SHIFT`` px."""
    radius = MAX_SHIFT * np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack([radius * np.cos(phi), radius * np.sin(phi)], axis=1)


def _simulation(
    n: int, volumes: np.ndarray, pixel_size: float, seed: int, *, ctf: bool = True,
    shifts: bool = True, astigmatism: float = 500.0,
) -> tuple[Any, np.ndarray]:  # fmt: skip
    """ASPIRE ``Simulation`` of ``volumes`` (no noise) and the (n, 7) CTF table
    (astigmatism uniform up to ``astigmatism`` Å)."""
    from aspire.operators import CTFFilter
    from aspire.source import Simulation
    from aspire.volume import Volume

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    n_groups = -(-n // GROUP)
    mean_df = rng.uniform(10000.0, 25000.0, n_groups)
    astig = rng.uniform(0.0, astigmatism, n_groups)
    angle = rng.uniform(0.0, 180.0, n_groups)
    table = np.stack(
        [mean_df + astig / 2, mean_df - astig / 2, angle, np.zeros(n_groups)]
        + [np.full(n_groups, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)],
        axis=1,
    )
    filters = [
        CTFFilter(VOLTAGE, u, v, np.deg2rad(a), CS, AMPLITUDE_CONTRAST, 0)
        for u, v, a in table[:, :3]
    ]
    offsets = _offsets(n, rng) if shifts else np.zeros((n, 2))
    sim = Simulation(
        n=n,
        vols=Volume(volumes.astype(np.float32), pixel_size=pixel_size),
        unique_filters=filters if ctf else None,
        filter_indices=np.arange(n) // GROUP if ctf else None,
        offsets=offsets.astype(np.float32),
        amplitudes=np.ones(n, dtype=np.float32),
        seed=seed,
    )
    return sim, table[np.arange(n) // GROUP]


def _disc_normalise(images: np.ndarray, diameter_px: float) -> np.ndarray:
    """Mean 0, sd 1 outside the disc of ``diameter_px`` centred at ``box // 2``."""
    box = images.shape[-1]
    y, x = np.ogrid[0:box, 0:box]
    outside = np.hypot(x - box // 2, y - box // 2) > 0.5 * diameter_px
    bg = images[:, outside]
    mean, sd = bg.mean(axis=1), bg.std(axis=1)
    return ((images - mean[:, None, None]) / sd[:, None, None]).astype(np.float32)


def _volumes(box: int, pixel_size: float, diameter: float, removed: float, seed: int) -> np.ndarray:
    """(2, box, box, box) float64: state 0 and state 1."""
    d_px = diameter / pixel_size
    vol0 = _state0(box, float(d_px), seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return np.stack([vol0, _remove_domain(vol0, d_px, removed, rng)])


def aspire_two_states(
    n: int,
    *,
    box: int = 64,
    pixel_size: float = 3.0,
    snr_stack: float = 0.3,
    diameter: float = 150.0,
    removed: float = 0.15,
    seed: int = 0,
) -> dict[str, Any]:
    """``n`` ASPIRE particles of two states (see the module docstring).

    Parameters
    ----------
    n
        Number of particles.
    box
        Image and volume size, px.
    pixel_size
        Å per pixel.
    snr_stack
        Target SNR: variance of the noiseless CTF-modulated images over the whole box,
        averaged over the particles, over the noise variance.
    diameter
        Longest extent of the specimen, Å (also the disc of the normalisation).
    removed
        Fraction of the mass of state 0 that state 1 lacks.
    seed
        Everything follows from it: specimen, removed domain, states, rotations,
        shifts, defocus and noise.

    Returns
    -------
    dict with ``images`` (n, box, box) float32 (protein white, normalised), ``ctf`` (n,
    7) float64 (``cryosnake.ops.ctf.CTF_COLUMNS``), ``states`` (n,) int64 in {0, 1},
    ``volumes`` (2, box, box, box) float64, ``matrices`` (n, 3, 3) and ``shifts`` (n, 2)
    (dx, dy) px in cryosnake's conventions, ``pixel_size``, ``snr_stack`` and
    ``removed_mass`` (measured) and ``description``.
    """
    from aspire.image import Image
    from aspire.noise import WhiteNoiseAdder

    logging.getLogger("aspire").setLevel(logging.WARNING)
    volumes = _volumes(box, pixel_size, diameter, removed, seed)
    sim, ctf = _simulation(n, volumes, pixel_size, seed)
    clean = np.empty((n, box, box), dtype=np.float32)
    for start in range(0, n, CHUNK):
        clean[start : start + CHUNK] = sim.clean_images[start : start + CHUNK].asnumpy()
    signal_var = float(clean.reshape(n, -1).var(axis=1, dtype=np.float64).mean())
    # ASPIRE seeds image i's noise with seed + 191 (i + 1): keep other seeds' apart.
    adder = WhiteNoiseAdder(var=signal_var / snr_stack, seed=1_000_003 * seed)
    images = np.empty_like(clean)
    noise_power = 0.0
    for start in range(0, n, CHUNK):
        idx = np.arange(start, min(start + CHUNK, n))
        noisy = adder.forward(Image(clean[idx], pixel_size=pixel_size), indices=idx).asnumpy()
        noise_power += float(((noisy - clean[idx]).astype(np.float64) ** 2).sum())
        images[idx] = -noisy  # contrast inverted: protein white
    noise_var = noise_power / clean.size
    removed_mass = 1.0 - float(volumes[1].sum() / volumes[0].sum())
    description = (
        f"ASPIRE {_aspire_version()} Simulation of two states: an AsymmetricVolume "
        f"(seed {seed}) of extent {diameter:g} Å and the same with {removed_mass:.3f} of "
        f"its mass removed (soft sphere off centre); random rotations, shifts <= "
        f"{MAX_SHIFT:g} px, CTFFilter per {GROUP} particles (defocus 1.0-2.5 µm), "
        f"WhiteNoiseAdder at SNR {signal_var / noise_var:.3f} (whole box); "
        "contrast inverted, normalised outside the particle disc"
    )
    return {
        "images": _disc_normalise(images, diameter / pixel_size),
        "ctf": ctf,
        "states": np.asarray(sim.states, dtype=np.int64) - 1,
        "volumes": volumes,
        "matrices": np.transpose(np.asarray(sim.rotations, dtype=np.float64), (0, 2, 1)),
        "shifts": -np.asarray(sim.offsets, dtype=np.float64),
        "pixel_size": float(pixel_size),
        "snr_stack": signal_var / noise_var,
        "removed_mass": removed_mass,
        "description": description,
    }


def _aspire_version() -> str:
    import aspire

    return str(aspire.__version__)


def _fsc_figures(vol: np.ndarray, truth: np.ndarray, pixel_size: float) -> str:
    """FSC at 10, 8 Å and Nyquist - 2 shells, and its minimum up to the latter."""
    from cryosnake.ops.fsc import fsc, fsc_at_resolution

    curve = fsc(np.asarray(vol, dtype=np.float64), truth)
    top = len(curve) - 3
    at = [fsc_at_resolution(curve, pixel_size, r) for r in (10.0, 8.0)]
    return (
        f"FSC 10 Å {at[0]:.3f}, 8 Å {at[1]:.3f}, shell {top} {curve[top]:.3f}, "
        f"min to there {curve[1 : top + 1].min():.3f}"
    )


def _check(n: int = 2000, box: int = 64, pixel_size: float = 3.0) -> None:
    """Print the FSC of cryosnake reconstructions of ASPIRE images against the truth
    under each convention, and the generation time of 20000 particles."""
    import time

    from cryosnake.ops.fourier_slice import BackProjector
    from cryosnake.ops.refine3d import particle_spectra, reconstruct_halves

    logging.getLogger("aspire").setLevel(logging.WARNING)
    volumes = _volumes(box, pixel_size, 150.0, 0.15, 0)
    truth = volumes[0]

    def backproject(images: np.ndarray, mats: np.ndarray, shifts: Any = None) -> np.ndarray:
        bp = BackProjector.zeros(box)
        bp.insert(particle_spectra(images), mats, shifts=shifts)
        return np.asarray(bp.reconstruct(1e-3 * float(bp.weight.mean()) * 8))

    print("1. clean projections (no CTF, no shifts) of state 0:")
    sim, _ = _simulation(n, truth[None], pixel_size, 1, ctf=False, shifts=False)
    images = sim.clean_images[:].asnumpy()
    rots = np.asarray(sim.rotations, dtype=np.float64)
    for transposed in (False, True):
        mats = np.transpose(rots, (0, 2, 1)) if transposed else rots
        vol = backproject(images, mats)
        for reversed_ in (False, True):
            cand = vol.transpose(2, 1, 0) if reversed_ else vol
            label = f"rotation {'transposed' if transposed else 'as given'}, axes "
            label += "reversed" if reversed_ else "as given"
            print(f"   {label:40s} {_fsc_figures(cand, truth, pixel_size)}")

    print("2. clean projections with ASPIRE's offsets (no CTF), rotation transposed:")
    sim, _ = _simulation(n, truth[None], pixel_size, 2, ctf=False)
    images = sim.clean_images[:].asnumpy()
    mats = np.transpose(np.asarray(sim.rotations, dtype=np.float64), (0, 2, 1))
    off = np.asarray(sim.offsets, dtype=np.float64)
    for label, shifts in (("none", None), ("+offsets", off), ("-offsets", -off)):
        vol = backproject(images, mats, shifts)
        print(f"   shifts {label:32s} {_fsc_figures(vol, truth, pixel_size)}")
    print(f"   (|offset| up to {np.hypot(*off.T).max():.2f} px)")

    print("3. noiseless CTF-modulated particles (astigmatism <= 5000 Å), reconstruct_halves:")
    # astigmatism up to 5000 Å (not 500) so that the angle matters at this pixel size
    sim, ctf = _simulation(n, truth[None], pixel_size, 3, astigmatism=5000.0)
    clean = sim.clean_images[:].asnumpy()
    mats = np.transpose(np.asarray(sim.rotations, dtype=np.float64), (0, 2, 1))
    off = -np.asarray(sim.offsets, dtype=np.float64)  # cryosnake's shifts
    halves = np.arange(n) % 2
    flipped = ctf.copy()
    flipped[:, 2] *= -1.0
    cases = (
        ("inverted images, angle as recorded", -clean, ctf),
        ("inverted images, angle negated", -clean, flipped),
        ("ASPIRE's sign, angle as recorded", clean, ctf),
    )
    for label, images, table in cases:
        out = reconstruct_halves(
            particle_spectra(images), table, mats, off, halves, np.ones(box // 2 + 1),
            pixel_size, mask_diameter=0.9 * box,
        )  # fmt: skip
        print(f"   {label:40s} {_fsc_figures(out['full'], truth, pixel_size)}")

    print("4. the benchmark stack (20000 particles, SNR 0.3):")
    tick = time.perf_counter()
    data = aspire_two_states(20000)
    seconds = time.perf_counter() - tick
    states = data["states"]
    print(f"   generated in {seconds:.1f} s; state 1: {states.mean():.3f} of the particles")
    print(f"   removed mass {data['removed_mass']:.4f}, SNR {data['snr_stack']:.4f}")
    y, x = np.ogrid[0:box, 0:box]
    outside = np.hypot(x - box // 2, y - box // 2) > 0.5 * 150.0 / pixel_size
    bg = data["images"][:, outside]
    print(f"   background mean {bg.mean():.2e}, sd {bg.std():.4f}")
    sel = np.flatnonzero(states == 0)
    first = np.arange(len(sel)) % 2
    out = reconstruct_halves(
        particle_spectra(data["images"][sel]), data["ctf"][sel], data["matrices"][sel],
        data["shifts"][sel], first, np.ones(box // 2 + 1), pixel_size, mask_diameter=0.9 * box,
    )  # fmt: skip
    for k in (0, 1):
        print(f"   state-0 map vs truth {k}: {_fsc_figures(out['full'], volumes[k], pixel_size)}")
    print(f"   {data['description']}")


if __name__ == "__main__":
    _check()
