"""Simulated particle stacks with ground truth, for the 2D classification tests.

:func:`simulate_particles` makes what ``cryosnake extract`` produces, directly (no
movies): boxes of the built-in phantom in random orientations (exact projections of its
pseudo-atoms), a CTF per "micrograph" of 40 particles (defocus 1.0-2.5 µm, astigmatism
up to 400 Å, B-factor envelope 60 Å², 300 kV, Cs 2.7 mm, amplitude contrast 0.07,
applied on a 2x padded box so that the delocalised signal leaves the box as it does on
a micrograph), picking errors of up to 6 % of the diameter, and Gaussian noise with a
mildly coloured spectrum; then RELION normalisation (background outside the particle
diameter: mean 0, sd 1) and contrast inversion (particles white).

``snr`` is the signal-to-noise ratio per pixel over the whole box at the sampling
``snr_pixel_size`` (default 1.5 Å/px, the micrograph sampling of the demo preset):
the variance of the noiseless, CTF-modulated particle images (averaged over the good
particles) over the variance of white noise at that sampling. The stack itself is made
at ``pixel_size`` (coarser, as ``extract`` writes it after Fourier cropping), where the
same noise has (snr_pixel_size / pixel_size)^2 of the variance;
:attr:`ParticleStack.snr_stack` is the resulting SNR per pixel of the stack and
:attr:`ParticleStack.snr_disc` the same inside the particle circle. The signal variance
at the fine sampling is measured on 8 particles rendered there.

Junk (``junk_fraction`` of the boxes, in four equal kinds):

- ``aggregate``: 3-5 overlapping particles displaced by 0.25-0.6 diameters plus dense
  Gaussian blobs, a clump larger than one particle;
- ``edge``: a carbon-film edge (a thick half-plane of 2.5x protein contrast per Å
  through 60-120 Å of film, soft edge) at a random angle, passing within 0.4 diameters
  of the box centre (60 %), or an ice ball of 0.8-1.5 diameters whose centre lies
  0.3-0.8 diameters from the box centre (40 %);
- ``empty``: noise only;
- ``offcentre``: a particle displaced by 0.4-0.6 diameters (a bad pick, far beyond any
  translation search).

:func:`match_projections` is the check of a class average against the truth volume:
the best normalised cross-correlation over projection directions, in-plane rotations
and shifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy import ndimage

from cryosnake.io import optics_table, write_mrc, write_star
from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix, random_rotations
from cryosnake.simulate import Atoms, phantom_atoms, render_projection, render_volume

VOLTAGE, CS, AMPLITUDE_CONTRAST, BFACTOR = 300.0, 2.7, 0.07, 60.0
JUNK_KINDS = ("aggregate", "edge", "empty", "offcentre")
PER_MICROGRAPH = 40


@cache
def phantom(diameter: float = 150.0) -> Atoms:
    """The built-in phantom (cached: it takes about a second)."""
    return phantom_atoms(diameter)


@dataclass
class ParticleStack:
    """Simulated particles and their truth.

    images : (n, box, box) float32, normalised and inverted
    kinds : (n,) "particle" or one of JUNK_KINDS
    matrices : (n, 3, 3) rotation of each (good or off-centre) particle
    centres : (n, 2) (dx, dy) px of the particle centre from the box centre
    defocus : (n, 3) dfU, dfV (Å), angle (degrees)
    """

    images: np.ndarray
    pixel_size: float
    diameter: float
    kinds: np.ndarray
    matrices: np.ndarray
    centres: np.ndarray
    defocus: np.ndarray
    snr: float
    snr_stack: float
    snr_disc: float
    atoms: Atoms | None = None  # the specimen, when not the phantom of ``diameter``
    states: np.ndarray | None = None  # (n,) state of each box (-1: junk) with ``specimens``
    specimens: tuple[Atoms, ...] = ()  # the states' specimens, when several

    @property
    def good(self) -> np.ndarray:
        return np.asarray(self.kinds == "particle")

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])

    def volume(self, box: int | None = None, state: int | None = None) -> np.ndarray:
        """The truth volume (V) at ``pixel_size`` on a ``box``³ grid (of ``state``)."""
        if state is not None:
            return render_volume(self.specimens[state], box or self.box, self.pixel_size)
        atoms = self.atoms if self.atoms is not None else phantom(self.diameter)
        return render_volume(atoms, box or self.box, self.pixel_size)


def _disc(box: int, diameter_px: float) -> np.ndarray:
    yy, xx = np.mgrid[0:box, 0:box] - box // 2
    return np.asarray(xx * xx + yy * yy <= (diameter_px / 2) ** 2)


def _blobs(
    box: int, centre: np.ndarray, radius: float, px: float, rng: np.random.Generator
) -> np.ndarray:
    """Dense Gaussian blobs (projected potential, V·Å) around ``centre`` (dx, dy) px."""
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64) - box // 2
    out = np.zeros((box, box))
    for _ in range(int(rng.integers(3, 8))):
        a = rng.uniform(0, 2 * np.pi)
        r = radius * np.sqrt(rng.uniform())
        cx, cy = centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)
        sig = rng.uniform(8.0, 18.0) / px
        height = 2.6 * 2.0 * 2.5 * sig * px  # about twice protein density through 2.5 sigma
        out += height * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
    return out


def _edge(box: int, diameter_px: float, px: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64) - box // 2
    if rng.uniform() < 0.6:  # carbon film edge
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.4, 0.4) * diameter_px
        d = xx * np.cos(angle) + yy * np.sin(angle) - offset
        thickness = rng.uniform(60.0, 120.0)
        film = 1.0 / (1.0 + np.exp(-d / 1.5))
        return 2.6 * 2.5 * thickness * film
    # crystalline ice ball, centre off the box centre
    radius = rng.uniform(0.4, 0.75) * diameter_px
    a = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0.3, 0.8) * diameter_px
    d2 = (xx - dist * np.cos(a)) ** 2 + (yy - dist * np.sin(a)) ** 2
    thickness = 2.0 * np.sqrt(np.clip(radius**2 - d2, 0, None)) * px
    return 4.5 * ndimage.gaussian_filter(thickness, 1.0)


def _projection(
    atoms: Atoms, matrix: np.ndarray, box: int, px: float, centre: np.ndarray
) -> np.ndarray:
    """Projected potential with the particle centre at box//2 + centre (dx, dy)."""
    return render_projection(atoms, matrix, box, px, offset=(float(centre[1]), float(centre[0])))


def _image(projection: np.ndarray, pixel_size: float) -> np.ndarray:
    """CTF image (defocus 1.5 µm) of a projection, on a 2x padded box."""
    box = projection.shape[-1]
    pad, lo = 2 * box, box // 2
    padded = np.zeros((pad, pad))
    padded[lo : lo + box, lo : lo + box] = projection
    ctf = ctf_2d((pad, pad), pixel_size, 15000.0, 15000.0, 0.0, bfactor=BFACTOR)
    return np.fft.irfft2(np.fft.rfft2(padded) * ctf, s=(pad, pad))[lo : lo + box, lo : lo + box]


@cache
def _fine_variance_ratio(diameter: float, box: int, pixel_size: float, fine: float) -> float:
    """Signal variance per pixel at sampling ``fine`` over that at ``pixel_size`` (same
    field of view), from 8 random views."""
    if fine >= pixel_size:
        return 1.0
    atoms = phantom(diameter)
    fine_box = int(round(box * pixel_size / fine / 2)) * 2
    mats = random_rotations(8, np.random.default_rng(12345))
    coarse = [_image(render_projection(atoms, m, box, pixel_size), pixel_size).var() for m in mats]
    fine_v = [_image(render_projection(atoms, m, fine_box, fine), fine).var() for m in mats]
    return float(np.mean(fine_v) / np.mean(coarse))


def simulate_particles(
    n: int = 800,
    *,
    box: int = 48,
    pixel_size: float = 4.5,
    diameter: float = 150.0,
    junk_fraction: float = 0.2,
    snr: float = 0.05,
    snr_pixel_size: float = 1.5,
    seed: int = 0,
    atoms: Atoms | None = None,
    specimens: tuple[Atoms, ...] = (),
    state_fractions: tuple[float, ...] = (),
) -> ParticleStack:
    """Simulate ``n`` extracted boxes (see the module docstring); ``atoms``: another
    specimen than the phantom (``diameter`` should be its extent; ``snr`` is then
    calibrated on the phantom of that diameter). ``specimens``: several states (e.g.
    :func:`cryosnake.simulate.phantom_states`), each particle one of them at random in
    the proportions ``state_fractions`` (default equal); the noise is set from the
    signal of them all."""
    rng = np.random.default_rng(seed)
    specimen = atoms
    atoms = phantom(diameter) if specimen is None else specimen
    states = None
    if specimens:
        fractions = np.asarray(state_fractions or [1.0] * len(specimens), dtype=np.float64)
        states = rng.choice(len(specimens), size=n, p=fractions / fractions.sum())
    d_px = diameter / pixel_size
    n_junk = int(round(junk_fraction * n))
    kinds = np.array(["particle"] * (n - n_junk) + [JUNK_KINDS[i % 4] for i in range(n_junk)])
    kinds = kinds[rng.permutation(n)]
    matrices = random_rotations(n, rng)
    centres = np.zeros((n, 2))
    clean = np.zeros((n, box, box))
    for i, kind in enumerate(kinds):
        if states is not None:
            atoms = specimens[states[i]]
        if kind == "particle":
            centres[i] = rng.uniform(-1, 1, 2) * 0.06 * d_px / math.sqrt(2)
            clean[i] = _projection(atoms, matrices[i], box, pixel_size, centres[i])
        elif kind == "offcentre":
            a = rng.uniform(0, 2 * np.pi)
            centres[i] = rng.uniform(0.4, 0.6) * d_px * np.array([np.cos(a), np.sin(a)])
            clean[i] = _projection(atoms, matrices[i], box, pixel_size, centres[i])
        elif kind == "aggregate":
            for _ in range(int(rng.integers(3, 6))):
                a = rng.uniform(0, 2 * np.pi)
                c = rng.uniform(0.25, 0.6) * d_px * np.array([np.cos(a), np.sin(a)])
                m = random_rotations(1, rng)[0]
                clean[i] += _projection(atoms, m, box, pixel_size, c)
            clean[i] += _blobs(box, np.zeros(2), 0.5 * d_px, pixel_size, rng)
        elif kind == "edge":
            clean[i] = _edge(box, d_px, pixel_size, rng)
    # CTF per micrograph, on a 2x padded box.
    defocus = np.zeros((n, 3))
    pad = 2 * box
    lo = box // 2
    signal = np.zeros((n, box, box))
    for start in range(0, n, PER_MICROGRAPH):
        mean = rng.uniform(10000.0, 25000.0)
        astig = rng.uniform(0.0, 400.0)
        angle = rng.uniform(0.0, 180.0)
        dfu, dfv = mean + astig / 2, mean - astig / 2
        defocus[start : start + PER_MICROGRAPH] = (dfu, dfv, angle)
        ctf = ctf_2d(
            (pad, pad),
            pixel_size,
            dfu,
            dfv,
            angle,
            voltage=VOLTAGE,
            cs=CS,
            amplitude_contrast=AMPLITUDE_CONTRAST,
            bfactor=BFACTOR,
        )
        chunk = clean[start : start + PER_MICROGRAPH]
        padded = np.zeros((len(chunk), pad, pad))
        padded[:, lo : lo + box, lo : lo + box] = chunk
        imaged = np.fft.irfft2(np.fft.rfft2(padded) * ctf, s=(pad, pad))
        # Contrast inversion: protein is dark under a negative low-frequency CTF.
        signal[start : start + PER_MICROGRAPH] = -imaged[:, lo : lo + box, lo : lo + box]
    disc = _disc(box, d_px)
    good = kinds == "particle"
    var_disc = float(signal[good][:, disc].var(axis=1).mean())
    var_box = float(signal[good].reshape(int(good.sum()), -1).var(axis=1).mean())
    ratio = _fine_variance_ratio(diameter, box, pixel_size, snr_pixel_size)
    noise_var = var_box * ratio / snr * (snr_pixel_size / pixel_size) ** 2
    # Mildly coloured noise: 30 % less power at Nyquist than at low frequency.
    white = rng.normal(size=(n, box, box))
    kx = np.fft.rfftfreq(box)[None, :]
    ky = np.fft.fftfreq(box)[:, None]
    colour = np.sqrt(1.0 - 0.3 * np.clip(np.sqrt(kx**2 + ky**2) / 0.5, 0, 1))
    colour /= np.sqrt((colour**2).mean())
    noise = np.fft.irfft2(np.fft.rfft2(white) * colour, s=(box, box)) * math.sqrt(noise_var)
    images = signal + noise
    # RELION normalisation: background outside the particle diameter.
    bg = ~disc
    mu = images[:, bg].mean(axis=1)
    sd = images[:, bg].std(axis=1)
    images = (images - mu[:, None, None]) / sd[:, None, None]
    return ParticleStack(
        images=images.astype(np.float32),
        pixel_size=pixel_size,
        diameter=diameter,
        kinds=kinds,
        matrices=matrices,
        centres=centres,
        defocus=defocus,
        snr=snr,
        snr_stack=var_box / noise_var,
        snr_disc=var_disc / noise_var,
        atoms=specimen,
        states=None if states is None else np.where(kinds == "particle", states, -1),
        specimens=tuple(specimens),
    )


def write_particles(stack: ParticleStack, folder: Path, *, name: str = "particles") -> Path:
    """Write ``folder/name.star`` (RELION 3.1) and ``folder/name.mrcs``; images are named
    by absolute path. Returns the STAR path."""
    folder.mkdir(parents=True, exist_ok=True)
    mrcs = (folder / f"{name}.mrcs").resolve()
    write_mrc(mrcs, stack.images, stack.pixel_size)
    n = len(stack.images)
    optics = optics_table(
        pixel_size=stack.pixel_size,
        voltage=VOLTAGE,
        cs=CS,
        amplitude_contrast=AMPLITUDE_CONTRAST,
        image_size=stack.box,
        image_pixel_size=stack.pixel_size,
    )
    micrograph = np.arange(n) // PER_MICROGRAPH
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{mrcs}" for i in range(n)],
            "rlnMicrographName": [f"MotionCorr/mic_{m + 1:04d}.mrc" for m in micrograph],
            "rlnCoordinateX": 100.0 + 50.0 * (np.arange(n) % PER_MICROGRAPH),
            "rlnCoordinateY": 200.0 + 10.0 * micrograph,
            "rlnDefocusU": stack.defocus[:, 0],
            "rlnDefocusV": stack.defocus[:, 1],
            "rlnDefocusAngle": stack.defocus[:, 2],
            "rlnPhaseShift": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    path = folder / f"{name}.star"
    write_star(path, {"optics": optics, "particles": particles})
    return path


def fibonacci_directions(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of ``n`` directions spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    tilt = np.degrees(np.arccos(1.0 - 2.0 * i / n))
    rot = np.degrees(np.pi * (1.0 + 5**0.5) * i) % 360.0
    return rot, tilt


def _lowpass(images: np.ndarray, pixel_size: float, resolution: float) -> np.ndarray:
    box = images.shape[-1]
    kx = np.fft.rfftfreq(box)[None, :]
    ky = np.fft.fftfreq(box)[:, None]
    s = np.sqrt(kx**2 + ky**2) / pixel_size
    filt = np.exp(-0.5 * (s * resolution) ** 2 / (2 * math.log(2)) * 4)  # half at 1/resolution
    return np.fft.irfft2(np.fft.rfft2(images) * filt, s=(box, box))


@cache
def _projection_bank(diameter: float, box: int, pixel_size: float, n_directions: int) -> np.ndarray:
    vol = render_volume(phantom(diameter), box, pixel_size)
    rot, tilt = fibonacci_directions(n_directions)
    mats = euler_to_matrix(rot, tilt, np.zeros_like(rot))
    return np.stack([project_volume(vol, m) for m in mats])


def match_projections(
    average: np.ndarray,
    pixel_size: float,
    diameter: float,
    *,
    n_directions: int = 300,
    psi_step: float = 3.0,
    resolution: float = 0.0,
) -> tuple[float, int, float]:
    """Best NCC of a class average with the truth volume's projections.

    Searches ``n_directions`` evenly spread projection directions (whole sphere, so
    mirror views are included), in-plane rotations in ``psi_step`` steps and all cyclic
    shifts; the NCC is computed inside the circle of 1.2 particle diameters after
    low-pass filtering both images to ``resolution`` Å (0: no filter).

    Returns (ncc, direction index, psi).
    """
    box = average.shape[-1]
    bank = _projection_bank(diameter, box, pixel_size, n_directions).astype(np.float64)
    avg = np.asarray(average, dtype=np.float64)
    if resolution > 0:
        bank = _lowpass(bank, pixel_size, resolution)
        avg = _lowpass(avg[None], pixel_size, resolution)[0]
    mask = _disc(box, 1.2 * diameter / pixel_size).astype(np.float64)
    masked = bank * mask
    masked -= (masked.sum(axis=(1, 2)) / mask.sum())[:, None, None] * mask
    bank_norm = np.sqrt((masked**2).sum(axis=(1, 2)))
    bank_fft = np.fft.rfft2(masked)
    best = (-2.0, 0, 0.0)
    for psi in np.arange(0.0, 360.0, psi_step):
        rotated = ndimage.rotate(avg, psi, reshape=False, order=3, mode="constant") * mask
        rotated = rotated - rotated[mask > 0].mean() * mask
        norm_a = math.sqrt(float((rotated**2).sum()))
        cc = np.fft.irfft2(bank_fft * np.conj(np.fft.rfft2(rotated))[None], s=(box, box))
        k = int(np.argmax(cc.reshape(len(bank), -1).max(axis=1) / bank_norm))
        dy, dx = np.unravel_index(int(np.argmax(cc[k])), (box, box))
        proj = np.roll(bank[k], (-dy, -dx), axis=(0, 1)) * mask
        proj = proj - proj[mask > 0].mean() * mask
        ncc = float((proj * rotated).sum()) / (norm_a * math.sqrt(float((proj**2).sum())) + 1e-30)
        if ncc > best[0]:
            best = (ncc, k, float(psi))
    return best


def symmetric_specimen(group: str, unit_diameter: float = 60.0) -> tuple[Atoms, float]:
    """A specimen of point group ``group``: the phantom of ``unit_diameter`` Å moved off
    the centre by (12, 20, 45) Å and copied by every element ``g`` of the group (atoms at
    ``g r``). Returns the atoms and the specimen's extent (Å)."""
    from cryosnake.ops.symmetry import symmetry_group

    elements = symmetry_group(group)
    unit = phantom(unit_diameter)
    coords = np.concatenate([(unit.coords + np.array([12.0, 20.0, 45.0])) @ g.T for g in elements])
    copies = len(elements)
    atoms = Atoms(
        coords=coords, weights=np.tile(unit.weights, copies), sigma=np.tile(unit.sigma, copies)
    )
    return atoms, float(2.0 * np.sqrt((coords**2).sum(axis=1)).max())


def simulate_star_images(
    star: Path, root: Path, *, box: int = 32, snr: float = 1.0, seed: int = 0
) -> None:
    """Write, below ``root``, the image stacks that the particles file ``star`` names
    (for real STAR files whose stacks are not public): each particle a CTF image of the
    phantom (extent 70 % of the box) at its pose (``rlnAngleRot/Tilt/Psi``, 0 when
    absent) and origin (within an eighth of the box), with its own defocus, voltage,
    Cs, amplitude contrast and pixel size, plus white noise of ``snr`` per pixel,
    normalised. Stacks hold as many images as the largest number named; those not named
    stay zero (sparse files)."""
    from cryosnake.io import read_particles

    rng = np.random.default_rng(seed)
    _, particles, values = read_particles(star)
    n = len(particles)
    angles = [
        particles[f"rlnAngle{a}"].astype(float).to_numpy()
        if f"rlnAngle{a}" in particles.columns else np.zeros(n)
        for a in ("Rot", "Tilt", "Psi")
    ]  # fmt: skip
    matrices = euler_to_matrix(*angles)
    origins = np.column_stack(
        [
            particles[c].astype(float).to_numpy() if c in particles.columns else np.zeros(n)
            for c in ("rlnOriginXAngst", "rlnOriginYAngst")
        ]
    )
    names = particles["rlnImageName"].astype(str).str.partition("@")
    index, paths = names[0].astype(int).to_numpy() - 1, names[2].to_numpy()
    images: dict[str, dict[int, np.ndarray]] = {}
    pad, lo = 2 * box, box // 2
    for i in range(n):
        px = float(values["rlnImagePixelSize"].iloc[i])
        centre = np.clip(-origins[i] / px, -box / 8, box / 8)  # large boxes' origins
        proj = _projection(phantom(0.7 * box * px), matrices[i], box, px, centre)
        ctf = ctf_2d(
            (pad, pad), px, float(particles["rlnDefocusU"].iloc[i]),
            float(particles["rlnDefocusV"].iloc[i]), float(particles["rlnDefocusAngle"].iloc[i]),
            voltage=float(values["rlnVoltage"].iloc[i]),
            cs=float(values["rlnSphericalAberration"].iloc[i]),
            amplitude_contrast=float(values["rlnAmplitudeContrast"].iloc[i]),
        )  # fmt: skip
        padded = np.zeros((pad, pad))
        padded[lo : lo + box, lo : lo + box] = proj
        signal = -np.fft.irfft2(np.fft.rfft2(padded) * ctf, s=(pad, pad))[lo:-lo, lo:-lo]
        noisy = signal + rng.normal(size=signal.shape) * signal.std() / math.sqrt(snr)
        images.setdefault(paths[i], {})[int(index[i])] = (noisy - noisy.mean()) / noisy.std()
    for name, stack in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new_mmap(path, shape=(max(stack) + 1, box, box), mrc_mode=2) as mrc:
            for k, image in stack.items():
                mrc.data[k] = image
