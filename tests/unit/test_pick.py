"""cryosnake.ops.pick against the simulator's ground truth.

The micrographs are demo-like (the demo preset's specimen, dose, CTF, solvent, ice,
junk and counting noise) but sampled at 3 Å per pixel on 512 x 512 pixels, the demo's
field of view at half the resolution, so that each takes a fraction of a second. The
micrograph is the expected dose sum with Poisson noise (no motion to undo); the
slow tests in tests/stages/test_pick_stage.py repeat the measurement at the demo's
1.5 Å per pixel, and on motion-corrected simulated movies.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import ndimage

from cryosnake.ops import pick
from cryosnake.ops.pick import (
    MicrographCtf,
    pick_blobs,
    pick_templates,
    resample_images,
    working_shape,
)
from cryosnake.ops.pick.select import _contrast_outliers, _profile_distance
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.simulate import (
    MovieTruth,
    SimulationParams,
    load_specimen,
    make_detector,
    make_params,
    matched_picks,
    simulate_movie,
)

DIAMETER = 150.0
MATCH = 0.2 * DIAMETER  # Å, the match radius of the acceptance


@functools.cache
def _specimen(pixel_size: float) -> tuple[object, np.ndarray]:
    return load_specimen(make_params("demo", pixel_size=pixel_size))


def simulate(
    seed: int, *, size: int = 512, pixel_size: float = 3.0, **overrides: object
) -> tuple[SimulationParams, MovieTruth, np.ndarray]:
    """A demo-like micrograph: the expected dose sum with Poisson counting noise."""
    params = make_params(
        "demo", n_movies=1, seed=seed, width=size, height=size, pixel_size=pixel_size,
        **overrides,
    )  # fmt: skip
    specimen, _ = _specimen(pixel_size)
    seeds = np.random.SeedSequence(seed).spawn(2)
    detector = make_detector(params, np.random.default_rng(seeds[0]))
    truth, _ = simulate_movie(
        params, 0, specimen, detector, np.random.default_rng(seeds[1]), noise=False
    )
    assert truth.noiseless is not None
    image = np.random.default_rng(seed + 1000).poisson(np.maximum(truth.noiseless, 0))
    return params, truth, image.astype(np.float32)


def ctf_of(params: SimulationParams, truth: MovieTruth) -> MicrographCtf:
    return MicrographCtf(
        truth.defocus_u,
        truth.defocus_v,
        truth.defocus_angle,
        voltage=params.voltage,
        cs=params.cs,
        amplitude_contrast=params.amplitude_contrast,
    )


def projections(volume: np.ndarray, angles: list[tuple[float, float]]) -> np.ndarray:
    """Low-passed projections (rot, tilt, psi = 0) of ``volume``: templates."""
    out = [project_volume(volume, euler_to_matrix(rot, tilt, 0.0)) for rot, tilt in angles]
    return np.array([ndimage.gaussian_filter(p, 1.5) for p in out], dtype=np.float32)


VIEWS = [(rot, tilt) for tilt in (45.0, 90.0, 135.0) for rot in (0.0, 90.0, 180.0, 270.0)]
VIEWS += [(0.0, 0.0), (0.0, 180.0)]


@pytest.fixture(scope="module")
def micrographs() -> list[tuple[SimulationParams, MovieTruth, np.ndarray]]:
    return [simulate(seed) for seed in (11, 12, 13, 14)]


def test_working_shape_puts_the_radius_on_about_twelve_pixels() -> None:
    ny, nx = working_shape((1024, 960), 1.5, 150.0)
    assert ny % 2 == 0 and nx % 2 == 0
    assert math.isclose(75.0 / (1.5 * 1024 / ny), pick.PIXELS_PER_RADIUS, rel_tol=0.03)
    assert math.isclose(ny / nx, 1024 / 960, rel_tol=0.02)
    assert working_shape((300, 301), 5.0, 60.0) == (300, 300)  # never upsampled


def test_resample_images_keeps_the_centre_and_the_shape() -> None:
    yy, xx = np.mgrid[0:64, 0:64] - 32
    blob = np.exp(-(xx**2 + (yy - 6.0) ** 2) / (2 * 4.0**2)).astype(np.float32)[None]
    half = np.asarray(resample_images(blob, 0.5))
    assert half.shape == (1, 32, 32)
    com = ndimage.center_of_mass(half[0])
    assert np.allclose(com, (16 + 3.0, 16), atol=0.05)
    back = np.asarray(resample_images(half, 2.0))
    assert back.shape == blob.shape
    assert np.abs(back - blob).max() < 0.02
    assert np.array_equal(np.asarray(resample_images(blob, 1.0)), blob)


def test_blob_picking_finds_the_simulated_particles(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    found = picked = total = 0
    for params, truth, image in micrographs:
        picks = pick_blobs(image, params.pixel_size, DIAMETER, ctf=ctf_of(params, truth))
        m = matched_picks(picks.coordinates, truth.coordinates, MATCH / params.pixel_size)
        found, picked, total = (
            found + m,
            picked + len(picks.coordinates),
            total + len(truth.coordinates),
        )
        assert picks.scores.shape == (len(picks.coordinates),)
        assert np.all(picks.scores > picks.threshold)
        assert np.all(picks.classes == 0) and np.all(picks.psi == pick.UNSET_PSI)
    precision, recall = found / picked, found / total
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_blob_picking_without_ctf_inverts_the_contrast(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    params, truth, image = micrographs[0]
    picks = pick_blobs(image, params.pixel_size, DIAMETER)
    m = matched_picks(picks.coordinates, truth.coordinates, MATCH / params.pixel_size)
    assert m >= 0.9 * len(truth.coordinates) and m >= 0.9 * len(picks.coordinates)
    inverted = pick_blobs(-image, params.pixel_size, DIAMETER)  # particles now bright
    m_inv = matched_picks(inverted.coordinates, truth.coordinates, MATCH / params.pixel_size)
    assert m_inv < 0.5 * len(truth.coordinates)


def test_template_picking_finds_the_simulated_particles(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    _, volume = _specimen(3.0)
    templates = projections(volume, VIEWS)
    found = picked = total = 0
    for params, truth, image in micrographs[:3]:
        picks = pick_templates(
            image, params.pixel_size, DIAMETER, templates, params.pixel_size,
            ctf=ctf_of(params, truth), angle_step=15.0,
        )  # fmt: skip
        m = matched_picks(picks.coordinates, truth.coordinates, MATCH / params.pixel_size)
        found, picked, total = (
            found + m,
            picked + len(picks.coordinates),
            total + len(truth.coordinates),
        )
        assert np.all((picks.classes >= 1) & (picks.classes <= len(templates)))
        assert np.all((picks.psi >= 0) & (picks.psi < 360))
        assert np.all(picks.scores > picks.threshold)
    precision, recall = found / picked, found / total
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_template_psi_and_class_follow_relion(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    """Templates that are exact views (rot, tilt, psi = 0) of three particles: the picks
    on those particles report their template and psi (RELION: particle = Rz(psi) x
    template)."""
    params, truth, image = micrographs[1]
    _, volume = _specimen(3.0)
    chosen = [0, 1, 2]
    templates = projections(volume, [(truth.angles[k, 0], truth.angles[k, 1]) for k in chosen])
    step = 10.0
    picks = pick_templates(
        image, params.pixel_size, DIAMETER, templates, params.pixel_size,
        ctf=ctf_of(params, truth), angle_step=step,
    )  # fmt: skip
    for number, k in enumerate(chosen, start=1):
        d = np.hypot(*(picks.coordinates - truth.coordinates[k]).T)
        assert d.min() < MATCH / params.pixel_size
        i = int(np.argmin(d))
        assert picks.classes[i] == number
        error = (picks.psi[i] - truth.angles[k, 2] + 180.0) % 360.0 - 180.0
        assert abs(error) <= step / 2 + 3.0, (picks.psi[i], truth.angles[k, 2])


def test_templates_at_another_pixel_size_are_rescaled(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    """Templates at 1.5 Å/px (Fourier-padded from 3 Å/px) on a 3 Å/px micrograph pick
    what the 3 Å/px templates pick."""
    params, truth, image = micrographs[2]
    _, volume = _specimen(3.0)
    native = projections(volume, VIEWS)
    fine = np.asarray(resample_images(native, 2.0))
    ctf = ctf_of(params, truth)
    a = pick_templates(image, 3.0, DIAMETER, native, 3.0, ctf=ctf, angle_step=15.0)
    b = pick_templates(image, 3.0, DIAMETER, fine, 1.5, ctf=ctf, angle_step=15.0)
    assert matched_picks(b.coordinates, a.coordinates, 2.0) >= 0.95 * len(a.coordinates)
    m = matched_picks(b.coordinates, truth.coordinates, MATCH / params.pixel_size)
    assert m >= 0.9 * len(truth.coordinates)


def test_pure_noise_and_empty_ice_give_no_pick() -> None:
    rng = np.random.default_rng(5)
    noise = rng.poisson(60.0, size=(512, 512)).astype(np.float32)
    params, truth, empty = simulate(21, particles_per_micrograph=0, junk=False)
    assert len(truth.coordinates) == 0
    _, volume = _specimen(3.0)
    templates = projections(volume, VIEWS[:6])
    for image, ctf in ((noise, None), (empty, ctf_of(params, truth))):
        blobs = pick_blobs(image, 3.0, DIAMETER, ctf=ctf)
        assert len(blobs.coordinates) == 0, blobs.scores
        assert blobs.coordinates.shape == (0, 2) and len(blobs.candidate_scores) > 0
        tmpl = pick_templates(image, 3.0, DIAMETER, templates, 3.0, ctf=ctf, angle_step=20.0)
        assert len(tmpl.coordinates) == 0, tmpl.scores


def test_no_pick_closer_to_the_edge_than_a_radius(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    """Crop a micrograph so that particles sit on and near the new borders: none is
    picked within a radius of the border, those well inside still are."""
    params, truth, image = micrographs[3]
    radius = 0.5 * DIAMETER / params.pixel_size
    y0, x0 = 37, 53
    crop = image[y0 : y0 + 400, x0 : x0 + 420]
    picks = pick_blobs(crop, params.pixel_size, DIAMETER, ctf=ctf_of(params, truth))
    ny, nx = crop.shape
    xy = picks.coordinates
    border = np.minimum.reduce([xy[:, 0], xy[:, 1], nx - 1 - xy[:, 0], ny - 1 - xy[:, 1]])
    working_pixel = max(ny / working_shape(crop.shape, 3.0, DIAMETER)[0], 1.0)
    assert np.all(border >= radius - working_pixel - 1e-6)
    t = truth.coordinates - [x0, y0]
    t_border = np.minimum.reduce([t[:, 0], t[:, 1], nx - 1 - t[:, 0], ny - 1 - t[:, 1]])
    cut = t_border < radius - 2 * working_pixel
    assert cut.sum() >= 3  # the crop does cut particles
    inside = t[t_border >= radius + 2]
    assert matched_picks(xy, inside, MATCH / params.pixel_size) >= 0.85 * len(inside)
    assert picks.rejected["edge"] >= 1


def test_contrast_outliers_cover_ice_not_thickness_gradients() -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:240, 0:240]
    image = 0.002 * xx + 0.05 * np.sin(yy / 60.0) + rng.normal(0, 0.02, (240, 240))
    image = ndimage.gaussian_filter(image, 2.0)
    ice = (yy - 80) ** 2 + (xx - 150) ** 2 < 30**2
    image = image - 0.4 * ndimage.gaussian_filter(ice.astype(float), 2.0)
    mask = _contrast_outliers(image, 12.0)
    assert mask[ice].mean() > 0.95
    far = ndimage.distance_transform_edt(~ice) > 12
    assert mask[far].mean() < 0.01


def test_profile_distance_flags_extended_lumpy_objects() -> None:
    """Twenty compact blobs and one aggregate of scattered lumps in an energy map."""
    rng = np.random.default_rng(4)
    r = 12.0
    energy = rng.normal(0.0, 0.02, (260, 260))
    centres = [(30 + 50 * (k // 5), 30 + 50 * (k % 5)) for k in range(20)]
    yy, xx = np.mgrid[0:260, 0:260]
    for i, j in centres:
        amp = rng.uniform(0.8, 1.2)
        energy += amp * np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * (0.3 * r) ** 2))
    agg = (230, 130)
    for _ in range(8):
        a, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.3) * r
        i, j = agg[0] + rad * np.sin(a), agg[1] + rad * np.cos(a)
        energy += 1.2 * np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * (0.15 * r) ** 2))
    all_centres = np.array([*centres, agg])
    distance = _profile_distance(energy, all_centres, all_centres, np.zeros(energy.shape, bool), r)
    assert distance[-1] > pick.PROFILE_Z
    assert np.mean(distance[:-1] > pick.PROFILE_Z) <= 0.1


def test_ice_and_aggregates_are_mostly_not_picked() -> None:
    """Junk-rich demo-like micrographs: no pick on ice, most aggregates left alone."""
    junk_items = junk_picked = ice_picked = 0
    for seed in (31, 32, 33):
        params, truth, image = simulate(
            seed, aggregates_per_micrograph=3.0, ice_blobs_per_micrograph=2.0
        )
        picks = pick_blobs(image, params.pixel_size, DIAMETER, ctf=ctf_of(params, truth))
        for item in truth.junk:
            radius = 0.5 * item["diameter"] / params.pixel_size
            hit = bool(np.any(np.hypot(*(picks.coordinates - [item["x"], item["y"]]).T) < radius))
            junk_items += 1
            junk_picked += hit
            ice_picked += hit and item["type"] == "ice"
    assert junk_items >= 10
    assert ice_picked == 0
    assert junk_picked <= 0.3 * junk_items, (junk_picked, junk_items)


def test_picks_follow_the_device_of_the_input() -> None:
    """NumPy in, NumPy out (CuPy is exercised by the gpu-marked test)."""
    params, truth, image = simulate(41, particles_per_micrograph=10, junk=False)
    picks = pick_blobs(image, params.pixel_size, DIAMETER, ctf=ctf_of(params, truth))
    assert isinstance(picks.coordinates, np.ndarray) and picks.coordinates.dtype == np.float64
    assert isinstance(picks.image, np.ndarray) and picks.image.dtype == np.float32


@pytest.mark.gpu
def test_gpu_and_cpu_pick_the_same_particles(
    micrographs: list[tuple[SimulationParams, MovieTruth, np.ndarray]],
) -> None:
    cp = pytest.importorskip("cupy")
    params, truth, image = micrographs[0]
    ctf = ctf_of(params, truth)
    cpu = pick_blobs(image, params.pixel_size, DIAMETER, ctf=ctf)
    gpu = pick_blobs(cp.asarray(image), params.pixel_size, DIAMETER, ctf=ctf)
    assert isinstance(gpu.coordinates, np.ndarray)
    assert matched_picks(gpu.coordinates, cpu.coordinates, 2.0) >= 0.95 * len(cpu.coordinates)
    _, volume = _specimen(3.0)
    templates = projections(volume, VIEWS)
    t_cpu = pick_templates(image, 3.0, DIAMETER, templates, 3.0, ctf=ctf, angle_step=15.0)
    t_gpu = pick_templates(
        cp.asarray(image), 3.0, DIAMETER, templates, 3.0, ctf=ctf, angle_step=15.0
    )
    assert matched_picks(t_gpu.coordinates, t_cpu.coordinates, 2.0) >= 0.95 * len(t_cpu.coordinates)
