"""Point groups and their use in reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.ops import fourier_slice as fs
from cryosnake.ops import refine3d as r3
from cryosnake.ops.initial3d import rotate_volume
from cryosnake.ops.rotation import random_rotations
from cryosnake.ops.symmetry import asymmetric_unit, symmetry_group


@pytest.mark.parametrize(
    ("name", "order"),
    [("C1", 1), ("c7", 7), ("D2", 4), ("D5", 10), ("T", 12), ("O", 24), ("I", 60)],
)
def test_groups_have_their_order_and_are_closed(name: str, order: int) -> None:
    group = symmetry_group(name)
    assert group.shape == (order, 3, 3)
    np.testing.assert_allclose(np.linalg.det(group), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        group @ group.transpose(0, 2, 1), np.tile(np.eye(3), (order, 1, 1)), atol=1e-9
    )
    for g in group:
        for h in group:
            assert np.any(np.all(np.isclose(group, g @ h, atol=1e-8), axis=(1, 2)))


def test_axes_follow_relion_defaults() -> None:
    c4 = symmetry_group("C4")
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert any(np.allclose(g, quarter) for g in c4)  # four-fold about z
    flip_x = np.diag([1.0, -1.0, -1.0])
    assert any(np.allclose(g, flip_x) for g in symmetry_group("D3"))  # two-fold along x
    for bad in ("D1", "C0", "Q3", "", "I2x"):
        with pytest.raises(ValueError):
            symmetry_group(bad)


def test_insertion_with_symmetry_gives_a_symmetric_map() -> None:
    """Whatever the images, a map reconstructed with C4 is invariant under the
    four-fold about z, and without symmetry it is not."""
    n, px = 32, 5.0
    rng = np.random.default_rng(3)
    images = rng.normal(size=(60, n, n)).astype(np.float32)
    spectra = r3.particle_spectra(images)
    ctf = np.tile([15000.0, 15000.0, 0.0, 0.0, 300.0, 2.7, 0.07], (60, 1))
    matrices = random_rotations(60, rng)
    shifts = np.zeros((60, 2))
    sigma2 = np.ones(n // 2 + 1)
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about z

    def correlation(symmetry: str) -> float:
        bp = fs.BackProjector.zeros(n)
        r3.insert_particles(bp, spectra, ctf, matrices, shifts, sigma2, px, 16, symmetry)
        vol = np.asarray(bp.reconstruct(1e-2 * float(np.mean(bp.weight)) * 8))
        turned = rotate_volume(vol, quarter)
        inner = r3.soft_sphere(n, n - 6)
        a, b = (vol * inner).ravel(), (turned * inner).ravel()
        return float(np.corrcoef(a, b)[0, 1])

    assert correlation("C4") > 0.999
    assert correlation("C1") < 0.5


@pytest.mark.parametrize("name", ["C1", "C4", "D3", "T", "O", "I"])
def test_asymmetric_unit_covers_so3_with_its_share_of_the_grid(name: str) -> None:
    step = 12.0
    grid = r3.fibonacci_rotations(step)
    group = symmetry_group(name)
    unit = asymmetric_unit(grid, name, margin=0.5 * step)
    bare = asymmetric_unit(grid, name)
    # About 1/|G| of the grid (a band of half a step along the boundary on top).
    assert len(bare) == pytest.approx(len(grid) / len(group), rel=0.15)
    assert len(bare) <= len(unit) <= 1.5 * len(grid) / len(group) + 1
    # A pose is as close to a kept rotation (up to the group) as to the full grid: the
    # unit is sampled at the grid's density, its boundary included.
    poses = random_rotations(1000, np.random.default_rng(1))

    def gap(rotations: np.ndarray, elements: np.ndarray) -> np.ndarray:
        equivalent = np.einsum("pij,gjk->pgik", poses, elements).reshape(-1, 3, 3)
        cos = (np.einsum("qij,rij->qr", equivalent, rotations) - 1.0) / 2.0
        best = np.degrees(np.arccos(np.clip(cos.max(axis=1), -1.0, 1.0)))
        return best.reshape(len(poses), len(elements)).min(axis=1)

    full, reduced = gap(grid, np.eye(3)[None]), gap(unit, group)
    assert np.median(reduced) <= np.median(full) + 0.3
    assert np.percentile(reduced, 95) <= np.percentile(full, 95) + 0.3
    assert reduced.max() <= full.max() + 1.0
