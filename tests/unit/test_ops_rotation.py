"""ZYZ Euler angles in RELION's convention and uniform random rotations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from cryosnake.ops import euler_to_matrix, matrix_to_euler, random_rotations


def wrap(angle: np.ndarray) -> np.ndarray:
    """Angle difference into (-180, 180]."""
    return (np.asarray(angle) + 180.0) % 360.0 - 180.0


@pytest.fixture
def angles() -> np.ndarray:
    rng = np.random.default_rng(3)
    n = 500
    return np.stack(
        [rng.uniform(-180, 180, n), rng.uniform(1, 179, n), rng.uniform(-180, 180, n)], axis=1
    )


def test_matches_relion_definition(angles: np.ndarray) -> None:
    """RELION's Euler_angles2matrix is the inverse (transpose) of the active intrinsic
    ZYZ rotation (rot, tilt, psi), as used by pyem and starfile-based tools."""
    expected = Rotation.from_euler("ZYZ", angles, degrees=True).inv().as_matrix()
    np.testing.assert_allclose(euler_to_matrix(*angles.T), expected, atol=1e-12)


def test_simple_cases() -> None:
    np.testing.assert_allclose(euler_to_matrix(0, 0, 0), np.eye(3), atol=1e-15)
    # rot = 90 about z: in RELION, A = Rz(rot) rotates the frame, so x -> -y in the image
    a = euler_to_matrix(90.0, 0.0, 0.0)
    np.testing.assert_allclose(a @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    # tilt = 90: the reference z axis ends up along the image x axis
    b = euler_to_matrix(0.0, 90.0, 0.0)
    np.testing.assert_allclose(b @ [0, 0, 1], [-1, 0, 0], atol=1e-12)


def test_matrices_are_proper_rotations(angles: np.ndarray) -> None:
    m = euler_to_matrix(*angles.T)
    assert m.shape == (len(angles), 3, 3)
    eye = np.broadcast_to(np.eye(3), m.shape)
    np.testing.assert_allclose(m @ np.transpose(m, (0, 2, 1)), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_euler_round_trip(angles: np.ndarray) -> None:
    rot, tilt, psi = matrix_to_euler(euler_to_matrix(*angles.T))
    np.testing.assert_allclose(wrap(rot - angles[:, 0]), 0.0, atol=1e-8)
    np.testing.assert_allclose(tilt, angles[:, 1], atol=1e-8)
    np.testing.assert_allclose(wrap(psi - angles[:, 2]), 0.0, atol=1e-8)
    assert np.all((tilt >= 0) & (tilt <= 180))


def test_matrix_round_trip_of_random_rotations() -> None:
    m = random_rotations(1000, np.random.default_rng(4))
    back = euler_to_matrix(*matrix_to_euler(m))
    np.testing.assert_allclose(back, m, atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock(tilt: float) -> None:
    m = euler_to_matrix(40.0, tilt, 25.0)
    rot, t, psi = matrix_to_euler(m)
    assert float(t) == pytest.approx(tilt, abs=1e-9)
    np.testing.assert_allclose(euler_to_matrix(rot, t, psi), m, atol=1e-12)


def test_random_rotations_are_uniform() -> None:
    n = 20000
    m = random_rotations(n, np.random.default_rng(7))
    assert m.shape == (n, 3, 3)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-10)
    np.testing.assert_allclose(
        m @ np.transpose(m, (0, 2, 1)), np.broadcast_to(np.eye(3), m.shape), atol=1e-10
    )
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3 (element sd is 1/sqrt(3), s.e. 0.004)
    np.testing.assert_allclose(m.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose((m**2).mean(axis=0), 1.0 / 3.0, atol=0.01)
    # viewing directions uniform on the sphere: cos(tilt) uniform on [-1, 1]
    _, tilt, _ = matrix_to_euler(m)
    assert stats.kstest(np.cos(np.deg2rad(tilt)), "uniform", args=(-1, 2)).pvalue > 1e-3
    # rotation angle theta has density (1 - cos theta) / pi on [0, pi]
    theta = np.arccos(np.clip((np.trace(m, axis1=1, axis2=2) - 1) / 2, -1, 1))
    cdf = lambda t: (t - np.sin(t)) / np.pi  # noqa: E731
    assert stats.kstest(theta, cdf).pvalue > 1e-3


def test_random_rotations_reproducible() -> None:
    a = random_rotations(5, np.random.default_rng(1))
    b = random_rotations(5, np.random.default_rng(1))
    c = random_rotations(5, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
