"""Projection of volumes, gain orientation and radiation-damage weighting."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.ops import (
    critical_exposure,
    damage_attenuation,
    euler_to_matrix,
    project_volume,
)
from cryosnake.ops.gain import orient_gain


def blob_volume(n: int, r: tuple[float, float, float], sigma: float = 1.5) -> np.ndarray:
    """A Gaussian blob at r = (x, y, z) voxels from the box centre n//2; indexed [z, y, x]."""
    c = n // 2
    zz, yy, xx = np.mgrid[0:n, 0:n, 0:n].astype(np.float64)
    d2 = (xx - c - r[0]) ** 2 + (yy - c - r[1]) ** 2 + (zz - c - r[2]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def centroid(image: np.ndarray) -> tuple[float, float]:
    """(x, y) intensity centroid."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = image.sum()
    return float((xx * image).sum() / w), float((yy * image).sum() / w)


@pytest.mark.parametrize(
    "euler", [(0.0, 0.0, 0.0), (30.0, 60.0, -20.0), (-135.0, 110.0, 75.0), (90.0, 90.0, 0.0)]
)
def test_off_centre_blob_lands_where_the_rotation_says(euler: tuple[float, float, float]) -> None:
    n = 40
    r = np.array([7.0, -4.0, 9.0])
    vol = blob_volume(n, tuple(r))
    a = euler_to_matrix(*euler)
    image = project_volume(vol, a)
    assert image.shape == (n, n) and image.dtype == np.float32
    expected = a @ r + n // 2
    x, y = centroid(image)
    assert x == pytest.approx(expected[0], abs=0.05)
    assert y == pytest.approx(expected[1], abs=0.05)
    # a line integral: the projection keeps the total density
    assert image.sum() == pytest.approx(vol.sum(), rel=0.01)


def test_identity_projection_is_a_sum_along_z() -> None:
    vol = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(project_volume(vol, np.eye(3)), vol.sum(axis=0), rtol=1e-5)


def test_project_volume_needs_a_cube() -> None:
    with pytest.raises(ValueError):
        project_volume(np.zeros((8, 8, 6)), np.eye(3))


def test_orient_gain_explicit_values() -> None:
    g = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    # rotate: from the row axis towards the column axis (numpy.rot90), i.e. CCW on screen
    np.testing.assert_array_equal(orient_gain(g, 1), [[3, 6], [2, 5], [1, 4]])
    np.testing.assert_array_equal(orient_gain(g, 2), [[6, 5, 4], [3, 2, 1]])
    np.testing.assert_array_equal(orient_gain(g, 3), [[4, 1], [5, 2], [6, 3]])
    np.testing.assert_array_equal(orient_gain(g, 4), g)
    np.testing.assert_array_equal(orient_gain(g, -1), orient_gain(g, 3))
    # flips: x mirrors columns (left-right), y mirrors rows (up-down)
    np.testing.assert_array_equal(orient_gain(g, 0, "x"), [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(orient_gain(g, 0, "y"), [[4, 5, 6], [1, 2, 3]])
    # rotation first, then the flip
    np.testing.assert_array_equal(orient_gain(g, 1, "y"), [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(orient_gain(g, 1, "x"), [[6, 3], [5, 2], [4, 1]])
    out = orient_gain(g, 1, "x")
    assert out.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError):
        orient_gain(g, 0, "z")


def test_orient_gain_undoes_a_rotated_gain() -> None:
    gain = np.random.default_rng(0).random((6, 10))
    stored = np.rot90(gain, -1)[:, ::-1]  # as some detectors write it
    restored = orient_gain(orient_gain(stored, 0, "x"), 1)
    np.testing.assert_array_equal(restored, gain)


def test_critical_exposure_formula() -> None:
    s = np.array([0.05, 0.1, 0.25, 0.5])
    expected = 0.245 * s**-1.665 + 2.81
    np.testing.assert_allclose(critical_exposure(s), expected, rtol=1e-12)
    assert np.isinf(critical_exposure(np.array([0.0]))[0])


def test_damage_attenuation() -> None:
    s = np.linspace(0.0, 0.5, 101)
    np.testing.assert_array_equal(damage_attenuation(s, 0.0), 1.0)  # no exposure, no damage
    weights = damage_attenuation(s, 20.0)
    assert weights[0] == 1.0  # the zero frequency is never damaged
    assert np.all(np.diff(weights) < 0)  # falls with frequency
    assert np.all((weights > 0) & (weights <= 1))
    more = damage_attenuation(s, 40.0)
    assert np.all(more[1:] < weights[1:])  # and with exposure
    # at 1/4 Å^-1 after 20 e/Å^2: exp(-20 / (2 * (0.245 * 4^1.665 + 2.81)))
    n_e = 0.245 * 0.25**-1.665 + 2.81
    assert damage_attenuation(np.array([0.25]), 20.0)[0] == pytest.approx(np.exp(-10 / n_e))
