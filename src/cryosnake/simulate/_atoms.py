"""Atomic (Gaussian-blob) specimen models and their exact-sampling renderers.

A specimen is a set of Gaussian blobs: centres ``coords`` (Å, model frame, centred on
the origin), integrated potentials ``weights`` (V·Å^3, contrast over the solvent) and
widths ``sigma`` (Å). Because a Gaussian's projection along any direction is again a
Gaussian, projections are rendered directly from the atoms, with no interpolation of a
volume; rendering on a 2x finer grid followed by Fourier cropping makes the images
band-limited at the target sampling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cryosnake.io import read_atomic_model
from cryosnake.ops.fourier import fourier_crop

__all__ = [
    "Atoms",
    "atoms_from_model",
    "phantom_atoms",
    "phantom_states",
    "render_projection",
    "render_volume",
]

# Volume per residue of folded protein (Å^3, 0.81 Da/Å^3 at 110 Da per residue) and
# the mean-inner-potential contrast of protein over vitreous ice (V).
RESIDUE_VOLUME = 136.0
PROTEIN_CONTRAST_V = 2.6
CA_SPACING = 3.8


@dataclass(frozen=True)
class Atoms:
    """Gaussian blobs making up a specimen.

    coords : (n, 3) float64, Å, (x, y, z), centred on the centre of mass
    weights : (n,) float64, V·Å^3 (integral of the contrast potential)
    sigma : (n,) float64, Å
    """

    coords: np.ndarray
    weights: np.ndarray
    sigma: np.ndarray

    @property
    def diameter(self) -> float:
        """Largest distance from the centre, times two (Å)."""
        return float(2.0 * np.sqrt((self.coords**2).sum(axis=1)).max())

    def centred(self) -> Atoms:
        com = (self.coords * self.weights[:, None]).sum(axis=0) / self.weights.sum()
        return Atoms(self.coords - com, self.weights, self.sigma)


def _lobes(diameter: float, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centres and semi-axes of four ellipsoidal domains of unequal size."""
    radii = np.array([0.30, 0.22, 0.19, 0.15]) * diameter
    lobes = [(np.zeros(3), radii[0] * rng.uniform(0.85, 1.15, 3))]
    for r in radii[1:]:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        centre = d * (radii[0] + 0.45 * r)
        lobes.append((centre, r * rng.uniform(0.8, 1.2, 3)))
    return lobes


def _inside_lobes(
    lobes: list[tuple[np.ndarray, np.ndarray]], xx: np.ndarray, yy: np.ndarray, zz: np.ndarray
) -> np.ndarray:
    """Boolean mask of the union of ellipsoids (centre, semi-axes) on a sparse grid."""
    inside = np.zeros(np.broadcast_shapes(xx.shape, yy.shape, zz.shape), dtype=bool)
    for centre, semi in lobes:
        inside |= (
            ((xx - centre[0]) / semi[0]) ** 2
            + ((yy - centre[1]) / semi[1]) ** 2
            + ((zz - centre[2]) / semi[2]) ** 2
        ) <= 1.0
    return inside


def phantom_atoms(diameter: float = 150.0, *, seed: int = 2026, sigma: float = 1.2) -> Atoms:
    """The built-in asymmetric pseudo-atomic phantom.

    One pseudo-atom per residue, 3.8 Å apart along a self-avoiding chain that fills four
    ellipsoidal domains of unequal size at protein density (one residue per 136 Å^3),
    so the particle looks like a multi-domain protein at any resolution.

    Parameters
    ----------
    diameter : Å, the largest extent of the particle
    seed : the phantom is a pure function of (diameter, seed, sigma)
    sigma : Å, width of each pseudo-atom
    """
    atoms, _ = _phantom(diameter, seed, sigma)
    return atoms.centred()


def phantom_states(
    diameter: float = 150.0, *, domain: int = 2, seed: int = 2026, sigma: float = 1.2
) -> tuple[Atoms, Atoms]:
    """Two states of the phantom (:func:`phantom_atoms`, same arguments): the whole
    particle, and the particle without its domain ``domain`` (1-3; the domains from the
    largest, 0, to the smallest: 2 is 13 % of the atoms, 1 is 25 %), a partial complex. Both
    are in the frame of the whole particle (centred on its centre of mass), so a map of
    either lies where a reconstruction aligned to the whole particle puts it.
    """
    if domain not in (1, 2, 3):
        raise ValueError("domain must be 1, 2 or 3 (0 is the core)")
    atoms, lobes = _phantom(diameter, seed, sigma)
    others = [lobe for i, lobe in enumerate(lobes) if i != domain]
    x, y, z = atoms.coords.T
    keep = _inside_lobes(others, x, y, z)
    com = (atoms.coords * atoms.weights[:, None]).sum(axis=0) / atoms.weights.sum()
    whole = Atoms(atoms.coords - com, atoms.weights, atoms.sigma)
    partial = Atoms(atoms.coords[keep] - com, atoms.weights[keep], atoms.sigma[keep])
    return whole, partial


def _phantom(
    diameter: float, seed: int, sigma: float
) -> tuple[Atoms, list[tuple[np.ndarray, np.ndarray]]]:
    """The phantom's atoms (not centred) and its domains (centre, semi-axes), Å."""
    rng = np.random.default_rng(seed)
    lobes = _lobes(diameter, rng)
    half = int(np.ceil(0.8 * diameter)) + 4
    axis = np.arange(-half, half + 1, dtype=np.float64)
    # Domain membership on a 1 Å grid.
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    inside = _inside_lobes(lobes, xx, yy, zz)
    # Scale so that the largest extent equals the requested diameter.
    pts = np.argwhere(inside).astype(np.float64) - half
    sample = pts[rng.choice(len(pts), size=min(3000, len(pts)), replace=False)]
    d2 = ((sample[:, None, :] - sample[None, :, :]) ** 2).sum(-1)
    extent = float(np.sqrt(d2.max())) + 1.0
    scale = diameter / extent
    if abs(scale - 1.0) > 0.01:
        lobes = [(c * scale, s * scale) for c, s in lobes]
        inside = _inside_lobes(lobes, xx, yy, zz)
    n_target = int(inside.sum() / RESIDUE_VOLUME)
    coords = _fill_with_chain(inside, half, n_target, rng)
    weights = np.full(len(coords), RESIDUE_VOLUME * PROTEIN_CONTRAST_V)
    return Atoms(coords, weights, np.full(len(coords), float(sigma))), lobes


def _fill_with_chain(
    inside: np.ndarray, half: int, n_target: int, rng: np.random.Generator
) -> np.ndarray:
    """Self-avoiding, persistent random walk(s) with 3.8 Å steps inside ``inside``."""
    free = inside.copy()  # inside and not within the exclusion radius of an atom
    r_ex = 3.4
    span = int(np.ceil(r_ex))
    off = np.arange(-span, span + 1)
    oz, oy, ox = np.meshgrid(off, off, off, indexing="ij")
    keep = ox**2 + oy**2 + oz**2 <= r_ex**2
    ball = np.stack([oz[keep], oy[keep], ox[keep]], axis=1)
    shape = np.array(free.shape)

    def index(p: np.ndarray) -> tuple[int, int, int]:
        q = np.rint(p[::-1] + half).astype(int)
        return int(q[0]), int(q[1]), int(q[2])

    def is_free(p: np.ndarray) -> bool:
        i = index(p)
        return all(0 <= i[k] < shape[k] for k in range(3)) and bool(free[i])

    def occupy(p: np.ndarray) -> None:
        cells = np.array(index(p)) + ball
        ok = np.all((cells >= 0) & (cells < shape), axis=1)
        cells = cells[ok]
        free[cells[:, 0], cells[:, 1], cells[:, 2]] = False

    candidates = np.argwhere(inside)
    atoms: list[np.ndarray] = []
    restarts = 0
    while len(atoms) < n_target and restarts < 200:
        picks = candidates[rng.integers(len(candidates), size=2000)]
        open_ = picks[free[picks[:, 0], picks[:, 1], picks[:, 2]]]
        if len(open_) == 0:
            break
        p = open_[0][::-1].astype(np.float64) - half
        atoms.append(p)
        occupy(p)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        while len(atoms) < n_target:
            for _ in range(40):
                trial = direction * 1.2 + rng.normal(size=3)
                trial /= np.linalg.norm(trial)
                q = p + CA_SPACING * trial
                if is_free(q):
                    p, direction = q, trial
                    atoms.append(p)
                    occupy(p)
                    break
            else:
                restarts += 1
                break
    return np.array(atoms, dtype=np.float64)


# Mean atomic number of a protein heavy atom (C, N, O, S mix) and heavy atoms per residue.
_MEAN_Z = 6.6
_ATOMS_PER_RESIDUE = 7.8


def atoms_from_model(path: str | os.PathLike[str], *, min_sigma: float = 1.0) -> Atoms:
    """Read an atomic model (PDB or mmCIF, through gemmi) as Gaussian blobs.

    Hydrogens and waters are dropped. Each atom's weight is proportional to its atomic
    number, scaled so that a residue carries the same contrast as in the phantom; its
    width comes from the B-factor, sigma^2 = B / (8 pi^2) + min_sigma^2.
    """
    xyz, z, b = read_atomic_model(path)
    per_z = RESIDUE_VOLUME * PROTEIN_CONTRAST_V / (_MEAN_Z * _ATOMS_PER_RESIDUE)
    weights = z.astype(np.float64) * per_z
    sigma = np.sqrt(b / (8 * np.pi**2) + min_sigma**2)
    return Atoms(xyz, weights, sigma).centred()


def _splat(
    positions: np.ndarray,
    weights: np.ndarray,
    sigma_px: np.ndarray,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Sum of normalised Gaussians (integral = weight, in pixel units) sampled at pixel
    centres. ``positions`` (n, d) are in array-index order (z, y, x) / (y, x)."""
    dim = len(shape)
    out = np.zeros(int(np.prod(shape)), dtype=np.float64)
    radius = int(np.ceil(3.5 * sigma_px.max()))
    offsets = np.arange(-radius, radius + 1)
    width = offsets.size
    strides = np.cumprod((1, *shape[::-1][:-1]))[::-1]
    chunk = max(1, 2_000_000 // width**dim)
    for start in range(0, len(positions), chunk):
        pos = positions[start : start + chunk]
        w = weights[start : start + chunk]
        s = sigma_px[start : start + chunk]
        base = np.floor(pos).astype(np.int64)
        norm = w / (np.sqrt(2 * np.pi) * s) ** dim
        flat = np.zeros((len(pos),) + (width,) * dim, dtype=np.int64)
        value = norm.reshape((-1,) + (1,) * dim).astype(np.float64)
        valid = np.ones((len(pos),) + (width,) * dim, dtype=bool)
        for axis in range(dim):
            idx = base[:, axis, None] + offsets[None, :]  # (n, width)
            g = np.exp(-0.5 * ((idx - pos[:, axis, None]) / s[:, None]) ** 2)
            ok = (idx >= 0) & (idx < shape[axis])
            bshape = [len(pos)] + [1] * dim
            bshape[axis + 1] = width
            value = value * g.reshape(bshape)
            flat = flat + (np.clip(idx, 0, shape[axis] - 1) * strides[axis]).reshape(bshape)
            valid = valid & ok.reshape(bshape)
        out += np.bincount(flat[valid], weights=value[valid], minlength=out.size)
    return out.reshape(shape)


def render_projection(
    atoms: Atoms,
    matrix: np.ndarray,
    box: int,
    pixel_size: float,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    oversample: int = 2,
) -> np.ndarray:
    """Projected contrast potential of the rotated specimen in a ``box``² image.

    The model point ``r`` lands at pixel ``box//2 + (A r)[:2] / pixel_size + offset``
    (x = column), with ``offset = (dy, dx)`` in pixels.

    Returns
    -------
    (box, box) float32, V·Å (integral of the potential along the beam)
    """
    rotated = atoms.coords @ np.asarray(matrix, dtype=np.float64).T
    fine = box * oversample
    fine_px = pixel_size / oversample
    # Coarse pixel j sits at fine index j*oversample (see fourier_crop).
    cx = (box // 2 + offset[1]) * oversample + rotated[:, 0] / fine_px
    cy = (box // 2 + offset[0]) * oversample + rotated[:, 1] / fine_px
    image = _splat(
        np.stack([cy, cx], axis=1),
        atoms.weights / fine_px**2,
        atoms.sigma / fine_px,
        (fine, fine),
    )
    if oversample == 1:
        return image.astype(np.float32)
    return np.asarray(fourier_crop(image, (box, box)), dtype=np.float32)


def render_volume(atoms: Atoms, box: int, pixel_size: float, *, oversample: int = 2) -> np.ndarray:
    """Contrast potential (V) of the specimen on a ``box``³ grid, centre at ``box//2``.

    Returns (box, box, box) float32 indexed [z, y, x]; summing it along z and
    multiplying by ``pixel_size`` gives :func:`render_projection` for the identity pose.
    """
    fine = box * oversample
    fine_px = pixel_size / oversample
    c = (box // 2) * oversample
    pos = c + atoms.coords[:, ::-1] / fine_px  # (z, y, x)
    vol = _splat(pos, atoms.weights / fine_px**3, atoms.sigma / fine_px, (fine,) * 3)
    if oversample == 1:
        return vol.astype(np.float32)
    return np.asarray(fourier_crop(vol, (box, box, box)), dtype=np.float32)
