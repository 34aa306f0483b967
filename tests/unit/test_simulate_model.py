"""Simulation parameters, the phantom, atomic models and their renderers."""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cryosnake.errors import ConfigError, CryosnakeError, FileFormatError
from cryosnake.io import write_mrc
from cryosnake.ops import euler_to_matrix, project_volume
from cryosnake.simulate import (
    PRESETS,
    Atoms,
    SimulationParams,
    atoms_from_model,
    load_specimen,
    make_detector,
    make_params,
    phantom_atoms,
    render_projection,
    render_volume,
    simulate_movie,
    volume_box,
)

# ---- parameters --------------------------------------------------------------------


def test_presets() -> None:
    assert set(PRESETS) == {"demo", "tiny", "benchmark"}
    tiny = make_params("tiny")
    assert (tiny.n_movies, tiny.width, tiny.height, tiny.n_frames) == (2, 256, 256, 8)
    assert tiny.pixel_size == 2.5
    assert tiny.shape == (256, 256)
    assert make_params("demo") == SimulationParams()
    assert make_params("benchmark").width == 4096


def test_overrides_are_coerced_from_strings() -> None:
    p = make_params("tiny", width="128", junk="false", pixel_size="3", seed=5, voltage=200)
    assert p.width == 128 and isinstance(p.width, int)
    assert p.junk is False
    assert p.pixel_size == 3.0 and isinstance(p.pixel_size, float)
    assert p.voltage == 200.0 and isinstance(p.voltage, float)
    assert make_params("tiny", n_frames=12.0).n_frames == 12
    assert make_params("tiny", seed=None).seed == 1  # None: keep the preset's value


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"width": "abc"}, "width"),
        ({"junk": "maybe"}, "junk"),
        ({"width": True}, "width"),
        ({"n_movies": 0}, "n_movies"),
        ({"dose_per_frame": -1.0}, "dose_per_frame"),
        ({"gain_sd": -0.1}, "gain_sd"),
        ({"amplitude_contrast": 1.0}, "amplitude_contrast"),
        ({"defocus_min": 30000.0}, "defocus_min"),
        ({"movie_format": "png"}, "movie_format"),
        ({"width": 40, "height": 40}, "particle_diameter"),
        ({"n_frames": 2.5}, "n_frames"),
        ({"partial_fraction": 1.2}, "partial_fraction"),
        ({"partial_fraction": 1.0}, "partial_fraction"),
        ({"partial_fraction": -0.1}, "partial_fraction"),
        ({"partial_fraction": "half"}, "partial_fraction"),
        ({"partial_domain": 0}, "partial_domain"),
        ({"partial_domain": 4}, "partial_domain"),
        ({"partial_fraction": 0.5, "specimen": "model.pdb"}, "partial_fraction"),
    ],
)
def test_bad_parameters_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_params("tiny", **overrides)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset() -> None:
    with pytest.raises(CryosnakeError) as err:
        make_params("huge")
    assert "huge" in str(err.value)


def test_movie_names() -> None:
    p = make_params("tiny", movie_format="tiff")
    assert p.movie_stem(0) == "movie_0001"
    assert p.movie_suffix == ".tif"
    assert make_params("tiny").movie_suffix == ".mrc"


def test_volume_box() -> None:
    assert volume_box(150.0, 2.5) == 80  # >= 1.25 * 60 px, a multiple of 16
    assert volume_box(100.0, 1.0) % 16 == 0 and volume_box(100.0, 1.0) >= 125


# ---- phantom ---------------------------------------------------------------------------


def test_phantom_is_protein_like_and_deterministic() -> None:
    a = phantom_atoms(80.0, seed=5)
    b = phantom_atoms(80.0, seed=5)
    c = phantom_atoms(80.0, seed=6)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.coords.shape != c.coords.shape or not np.allclose(a.coords, c.coords)
    # the requested diameter is the largest extent (pairwise distance) of the domains; the
    # chain filling them stays a few Å inside their surface
    assert 72.0 < pdist(a.coords).max() <= 82.0
    assert a.diameter >= pdist(a.coords).max()  # 2 x the largest radius from the centre
    com = (a.coords * a.weights[:, None]).sum(0) / a.weights.sum()
    np.testing.assert_allclose(com, 0.0, atol=1e-9)
    # one pseudo-atom per 136 Å^3 of protein: a sphere of this size holds fewer atoms than
    # its volume / 136, and the phantom is not a tiny fraction of it either
    sphere = 4 / 3 * np.pi * 40.0**3 / 136.0
    assert 0.1 * sphere < len(a.coords) < sphere
    # neighbouring chain atoms sit 3.8 Å apart (CA spacing)
    steps = np.linalg.norm(np.diff(a.coords[:200], axis=0), axis=1)
    assert np.median(steps) == pytest.approx(3.8, abs=0.01)
    # asymmetric: principal moments of inertia differ
    centred = a.coords - a.coords.mean(0)
    moments = np.linalg.eigvalsh(centred.T @ centred / len(centred))
    assert moments[2] / moments[0] > 1.1


# ---- atomic model input --------------------------------------------------------------


def test_atoms_from_pdb(small_pdb: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, truth = small_pdb
    atoms = atoms_from_model(path)
    xyz, z, b = truth["xyz"], truth["z"], truth["b"]
    assert isinstance(atoms, Atoms)
    assert len(atoms.coords) == 48  # hydrogens and the water dropped
    # weights proportional to Z; coordinates re-centred on the weighted centre
    np.testing.assert_allclose(atoms.weights / atoms.weights[0], z / z[0], rtol=1e-12)
    com = (xyz * z[:, None]).sum(0) / z.sum()
    np.testing.assert_allclose(atoms.coords, xyz - com, atol=1e-3)  # PDB keeps 3 decimals
    np.testing.assert_allclose(atoms.sigma**2, b / (8 * np.pi**2) + 1.0, rtol=1e-6)
    # one residue (7.8 heavy atoms of mean Z 6.6) carries the phantom's 136 Å^3 * 2.6 V
    per_atom_z = 136.0 * 2.6 / (6.6 * 7.8)
    np.testing.assert_allclose(atoms.weights, z * per_atom_z, rtol=1e-12)


def test_atoms_from_mmcif(tmp_path: Path, small_pdb: tuple[Path, dict[str, np.ndarray]]) -> None:
    pdb = small_pdb[0]
    st = gemmi.read_structure(str(pdb))
    st.setup_entities()
    cif = tmp_path / "model.cif"
    st.make_mmcif_document().write_file(str(cif))
    a, b = atoms_from_model(pdb), atoms_from_model(cif)
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-6)
    np.testing.assert_allclose(a.weights, b.weights)


def test_bad_atomic_models(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError) as err:
        atoms_from_model(tmp_path / "missing.pdb")
    assert str(tmp_path / "missing.pdb") in str(err.value)
    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\nEND\n")
    with pytest.raises(FileFormatError) as err:
        atoms_from_model(empty)
    assert str(empty) in str(err.value) and "\n" not in str(err.value)


# ---- renderers ---------------------------------------------------------------------


def test_render_projection_integral_and_position() -> None:
    atoms = Atoms(
        coords=np.array([[12.0, -8.0, 5.0]]), weights=np.array([1000.0]), sigma=np.array([2.0])
    )
    px, box = 1.5, 48
    a = euler_to_matrix(20.0, 70.0, -40.0)
    img = render_projection(atoms, a, box, px, offset=(0.25, -0.5))
    assert img.shape == (box, box) and img.dtype == np.float32
    # integral over the image (V·Å x Å^2) is the atom weight (V·Å^3)
    assert img.sum() * px**2 == pytest.approx(1000.0, rel=1e-3)
    yy, xx = np.mgrid[0:box, 0:box]
    expected = box // 2 + (a @ atoms.coords[0])[:2] / px + np.array([-0.5, 0.25])
    assert (xx * img).sum() / img.sum() == pytest.approx(expected[0], abs=0.02)
    assert (yy * img).sum() / img.sum() == pytest.approx(expected[1], abs=0.02)


def test_render_volume_matches_projection() -> None:
    atoms = phantom_atoms(60.0, seed=1)
    px, box = 2.0, 48
    vol = render_volume(atoms, box, px)
    assert vol.shape == (box,) * 3
    assert vol.sum() * px**3 == pytest.approx(atoms.weights.sum(), rel=1e-3)
    ident = render_projection(atoms, np.eye(3), box, px)
    np.testing.assert_allclose(vol.sum(axis=0) * px, ident, atol=1e-3 * ident.max())
    # a rotated pose: projecting the volume agrees with rendering the rotated atoms
    a = euler_to_matrix(35.0, 80.0, 150.0)
    direct = render_projection(atoms, a, box, px)
    from_volume = project_volume(vol, a) * px
    cc = np.corrcoef(direct.ravel(), from_volume.ravel())[0, 1]
    assert cc > 0.97


@pytest.mark.parametrize("units", [1.0, 37.0, 0.002])
def test_user_map_gets_protein_contrast_whatever_its_units(tmp_path: Path, units: float) -> None:
    """A map in arbitrary units is scaled to about the phantom's integrated potential."""
    atoms = phantom_atoms(150.0, seed=5)
    reference = render_volume(atoms, 128, 2.0)
    path = tmp_path / "map.mrc"
    write_mrc(path, reference * units, 2.0)
    _, volume = load_specimen(make_params("tiny", specimen=str(path), pixel_size=2.0))
    ratio = float(volume.sum() / reference.sum())
    assert 0.75 < ratio < 1.25, ratio
    empty = tmp_path / "empty.mrc"
    write_mrc(empty, np.zeros((32, 32, 32), np.float32), 2.0)
    with pytest.raises(ConfigError, match=r"empty\.mrc: the specimen map has no positive density"):
        load_specimen(make_params("tiny", specimen=str(empty), pixel_size=2.0))


# ---- two-state specimen ------------------------------------------------------------------


def test_two_state_parameters_and_specimen() -> None:
    p = make_params("tiny", partial_fraction="0.25", partial_domain="1")
    assert p.partial_fraction == 0.25 and p.partial_domain == 1
    assert p.as_dict()["partial_fraction"] == 0.25  # recorded in simulation.yaml
    assert make_params("tiny").partial_fraction == 0.0  # off by default
    specimen, volume = load_specimen(p)
    assert specimen.partial is not None and specimen.atoms is not None
    assert len(specimen.partial.weights) < len(specimen.atoms.weights)
    # the whole state is exactly the one-state phantom
    plain, plain_volume = load_specimen(make_params("tiny"))
    assert plain.partial is None and plain.atoms is not None
    np.testing.assert_array_equal(specimen.atoms.coords, plain.atoms.coords)
    np.testing.assert_array_equal(volume, plain_volume)
    # a partial particle has the mass of its state
    mat = np.eye(3)
    whole = specimen.project(mat, 96, 2.5, (0.0, 0.0))
    part = specimen.project(mat, 96, 2.5, (0.0, 0.0), state=1)
    share = specimen.partial.weights.sum() / specimen.atoms.weights.sum()
    assert part.sum() / whole.sum() == pytest.approx(share, rel=0.01)
    with pytest.raises(ValueError, match="partial"):
        plain.project(mat, 96, 2.5, (0.0, 0.0), state=1)


def test_movie_states() -> None:
    """States are drawn per particle only for a two-state specimen: with the option off
    the random stream, hence the movie, is what it was."""
    off = make_params("tiny", n_movies=1, junk=False)
    on = make_params("tiny", n_movies=1, junk=False, partial_fraction=0.5)
    specimen, _ = load_specimen(on)
    detector = make_detector(off, np.random.default_rng(0))
    t_off, _ = simulate_movie(off, 0, specimen, detector, np.random.default_rng(7), noise=False)
    assert t_off.states.shape == (len(t_off.coordinates),) and not t_off.states.any()
    plain, _ = load_specimen(off)
    t_plain, _ = simulate_movie(off, 0, plain, detector, np.random.default_rng(7), noise=False)
    assert t_plain.noiseless is not None and t_off.noiseless is not None
    np.testing.assert_array_equal(t_plain.noiseless, t_off.noiseless)
    t_on, _ = simulate_movie(on, 0, specimen, detector, np.random.default_rng(7), noise=False)
    np.testing.assert_array_equal(t_on.coordinates, t_off.coordinates)
    assert set(t_on.states.tolist()) <= {0, 1} and len(t_on.states) == len(t_on.coordinates)
    assert t_on.states.any()
    with pytest.raises(ValueError, match="partial"):
        simulate_movie(on, 0, plain, detector, np.random.default_rng(7))
