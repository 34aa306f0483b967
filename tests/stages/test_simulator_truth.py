"""The simulator's ground truth is self-consistent: what truth/ says is what the images show.

Each test measures a property of the (noiseless) images with independent tools and
compares it with the saved truth files: drift by cross-correlating frames, CTF by the
Thon rings of the power spectrum, particle coordinates and poses by re-projecting the
saved volume, the gain by the statistics of the raw counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import yaml
from scipy import ndimage

from cryosnake.errors import ConfigError
from cryosnake.io import open_movie, read_mrc, read_star, read_star_block, write_mrc
from cryosnake.ops import (
    ctf_2d,
    euler_to_matrix,
    interaction_constant,
    matrix_to_euler,
    project_volume,
    random_rotations,
    register_translation,
    shift_image,
)
from cryosnake.simulate import (
    SimulationParams,
    atoms_from_model,
    make_params,
    phantom_atoms,
    phantom_states,
    render_volume,
    simulate_dataset,
)

CLEAN = {"junk": False, "solvent_noise": 0.0, "ice_thickness_variation": 0.0, "local_motion": 0.0}

Replay = Callable[..., tuple]
FIGURES: dict[str, object] = {}  # measured numbers, printed with -s for the record


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print("\nsimulator truth figures:\n" + json.dumps(FIGURES, indent=1))


def dataset_params(dataset: Path) -> SimulationParams:
    record = yaml.safe_load((dataset / "simulation.yaml").read_text())
    return SimulationParams(**record["parameters"])


def stems(dataset: Path) -> list[str]:
    return sorted(p.stem for p in (dataset / "movies").iterdir())


def movie_name(dataset: Path, stem: str) -> str:
    return next(f"movies/{p.name}" for p in (dataset / "movies").iterdir() if p.stem == stem)


# ---- the in-memory replay equals the files ---------------------------------------------


def test_truth_files_equal_in_memory_truth(tiny_dataset: Path, replay_movie: Replay) -> None:
    """simulate_movie's truth (re-run with the dataset's seeds) is what was written, and its
    noisy frames are the movie files bit for bit."""
    particles = read_star_block(tiny_dataset / "truth" / "particles.star", "particles")
    micrographs = read_star_block(tiny_dataset / "truth" / "micrographs_ctf.star", "micrographs")
    junk = read_star_block(tiny_dataset / "truth" / "junk.star", "junk")
    for i, stem in enumerate(stems(tiny_dataset)):
        params, truth, frames = replay_movie(tiny_dataset, i, noise=True)
        assert truth.stem == stem
        name = movie_name(tiny_dataset, stem)
        with open_movie(tiny_dataset / name) as movie:
            assert movie.shape == (params.n_frames, *params.shape)
            for t, frame in enumerate(frames):
                np.testing.assert_array_equal(movie.frame(t), frame)

        motion = read_star(tiny_dataset / "truth" / f"{stem}_motion.star")
        general = motion["general"].iloc[0]
        assert int(general.rlnImageSizeX) == params.width
        assert int(general.rlnImageSizeZ) == params.n_frames
        assert general.rlnMicrographMovieName == name
        assert general.rlnMicrographOriginalPixelSize == pytest.approx(params.pixel_size)
        assert general.rlnMicrographDoseRate == pytest.approx(params.dose_per_frame)
        glob = motion["global_shift"]
        assert glob.rlnMicrographFrameNumber.tolist() == list(range(1, params.n_frames + 1))
        np.testing.assert_allclose(glob.rlnMicrographShiftX, truth.shifts[:, 0], atol=1e-6)
        np.testing.assert_allclose(glob.rlnMicrographShiftY, truth.shifts[:, 1], atol=1e-6)
        assert np.all(truth.shifts[0] == 0.0)
        local = motion["local_shift"]
        assert len(local) == 25 * params.n_frames
        for t, rows in local.groupby("rlnMicrographFrameNumber"):
            x, y = rows.rlnCoordinateX.to_numpy(), rows.rlnCoordinateY.to_numpy()
            sx, sy = truth.total_shift(int(t) - 1, x, y, params.shape, params.n_frames)
            np.testing.assert_allclose(rows.rlnMicrographShiftX, sx, atol=1e-6)
            np.testing.assert_allclose(rows.rlnMicrographShiftY, sy, atol=1e-6)

        ctf = read_star_block(tiny_dataset / "truth" / f"{stem}_ctf.star", "micrograph").iloc[0]
        row = micrographs[micrographs.rlnMicrographName == name].iloc[0]
        for r in (ctf, row):
            assert r.rlnDefocusU == pytest.approx(truth.defocus_u, abs=1e-5)
            assert r.rlnDefocusV == pytest.approx(truth.defocus_v, abs=1e-5)
            assert r.rlnDefocusAngle == pytest.approx(truth.defocus_angle, abs=1e-5)
        assert truth.defocus_u >= truth.defocus_v  # RELION: U >= V
        assert params.defocus_min <= 0.5 * (truth.defocus_u + truth.defocus_v)
        assert 0.5 * (truth.defocus_u + truth.defocus_v) <= params.defocus_max

        mine = particles[particles.rlnMicrographName == name]
        np.testing.assert_allclose(
            mine[["rlnCoordinateX", "rlnCoordinateY"]], truth.coordinates, atol=1e-5
        )
        np.testing.assert_allclose(
            mine[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]], truth.angles, atol=1e-5
        )
        np.testing.assert_allclose(mine.rlnDefocusU, truth.defocus_u, atol=1e-5)

        noiseless, px = read_mrc(tiny_dataset / "truth" / f"{stem}_noiseless.mrc")
        assert px == pytest.approx(params.pixel_size, abs=1e-5)
        assert truth.noiseless is not None
        np.testing.assert_array_equal(noiseless, truth.noiseless)

        mine_junk = junk[junk.rlnMicrographName == name]
        assert len(mine_junk) == len(truth.junk)
        for (_, j), jt in zip(mine_junk.iterrows(), truth.junk, strict=True):
            assert j.csnkJunkType == jt["type"]
            assert (j.rlnCoordinateX, j.rlnCoordinateY) == pytest.approx((jt["x"], jt["y"]))


# ---- drift -----------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["particles only", "with solvent and ice"])
def test_drift_truth_matches_frame_registration(
    setting: str, clean_dataset: Path, tmp_path: Path, replay_movie: Replay
) -> None:
    """frame_i(r) ~ frame_0(r - shift_i) with shift_i from <stem>_motion.star, to 0.05 px.

    Junk stays off: ice balls up to three particle diameters wide, cut by the micrograph
    edge, bias a (periodic) cross-correlation of the cropped frames by up to a pixel, which
    says nothing about the truth. Radiation damage stays on: it does not move anything.
    """
    if setting == "particles only":
        dataset = clean_dataset
    else:
        dataset = tmp_path
        params = make_params("tiny", n_movies=1, seed=2, junk=False, local_motion=0.0)
        simulate_dataset(params, dataset, log=lambda _: None)
    worst = 0.0
    for i, stem in enumerate(stems(dataset)):
        params, _, frames = replay_movie(dataset, i, noise=False)
        assert params.local_motion == 0.0 and params.radiation_damage
        motion = read_star(dataset / "truth" / f"{stem}_motion.star")
        saved = motion["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
        frames = [f.astype(np.float64) for f in frames]
        assert len(frames) == params.n_frames
        measured = np.array(
            [register_translation(frames[0], f, upsample=200)[::-1] for f in frames]
        )  # (dx, dy)
        error = np.hypot(*(measured - saved).T)
        worst = max(worst, float(error.max()))
        assert error.max() < 0.05, f"{stem}: drift error {error.max():.3f} px"
        # the drift is real (several pixels), so a sign or axis error could not pass
        assert np.hypot(*saved[-1]) > 2.0
        # without local motion the local table is the global drift everywhere
        local = motion["local_shift"]
        for t, rows in local.groupby("rlnMicrographFrameNumber"):
            np.testing.assert_allclose(rows.rlnMicrographShiftX, saved[int(t) - 1, 0], atol=1e-6)
            np.testing.assert_allclose(rows.rlnMicrographShiftY, saved[int(t) - 1, 1], atol=1e-6)
    FIGURES[f"drift_max_error_px ({setting})"] = round(worst, 4)


def test_local_motion_truth_matches_patch_registration(
    tmp_path: Path, replay_movie: Replay
) -> None:
    """With strong local deformation, patches of frame t are displaced by the local table of
    the motion STAR (global + local at the 5 x 5 grid points), not by the global drift."""
    params = make_params("tiny", n_movies=1, seed=3, junk=False, local_motion=3.0)
    simulate_dataset(params, tmp_path, log=lambda _: None)
    _, _, frames = replay_movie(tmp_path, 0, noise=False)
    frames = [f.astype(np.float64) for f in frames]
    motion = read_star(tmp_path / "truth" / "movie_0001_motion.star")
    glob = motion["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    local = motion["local_shift"]
    half = 16
    measured_local, true_local = [], []
    for t in (3, params.n_frames - 1):  # mid-movie (time profile) and the last frame
        rows = local[local.rlnMicrographFrameNumber == t + 1]
        for _, r in rows.iterrows():
            iy, ix = int(round(r.rlnCoordinateY)), int(round(r.rlnCoordinateX))
            a = frames[0][iy - half : iy + half, ix - half : ix + half]
            b = frames[t][iy - half : iy + half, ix - half : ix + half]
            dy, dx = register_translation(a - a.mean(), b - b.mean(), upsample=50)
            measured_local.append((dx - glob[t, 0], dy - glob[t, 1]))
            true_local.append(
                (r.rlnMicrographShiftX - glob[t, 0], r.rlnMicrographShiftY - glob[t, 1])
            )
    m, d = np.array(measured_local).ravel(), np.array(true_local).ravel()
    rms_local = float(np.sqrt(np.mean(d**2)))
    rms_error = float(np.sqrt(np.mean((m - d) ** 2)))
    scale = float((m * d).sum() / (d * d).sum())  # measured = scale x truth
    FIGURES["local_motion"] = {
        "rms_local_px": round(rms_local, 3),
        "rms_error_px": round(rms_error, 3),
        "fitted_scale": round(scale, 3),
    }
    assert rms_local > 0.5  # the deformation is large enough to test
    assert rms_error < 0.2
    assert rms_error < 0.25 * rms_local  # the global drift alone would leave rms_local
    assert 0.9 < scale < 1.1  # a sign error gives -1, a missing time profile factor >> 1


# ---- CTF -------------------------------------------------------------------------------


def thon_ring_signal(image: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted log power spectrum on the rfft grid, and |s| (1/Å)."""
    img = image.astype(np.float64)
    img -= img.mean()
    ps = np.log(np.abs(np.fft.rfft2(img)) ** 2 + 1e-12)
    centred = np.fft.fftshift(ps, axes=0)
    background = np.fft.ifftshift(ndimage.gaussian_filter(centred, 6.0, mode="wrap"), axes=0)
    ny, nx = image.shape
    s = np.hypot(np.fft.rfftfreq(nx)[None, :], np.fft.fftfreq(ny)[:, None]) / pixel_size
    return ps - background, s


def ctf_correlation(
    signal: np.ndarray,
    band: np.ndarray,
    shape: tuple[int, int],
    pixel_size: float,
    optics: pd.Series,
    defocus_u: float,
    defocus_v: float,
    angle: float,
) -> float:
    ctf2 = (
        ctf_2d(
            shape,
            pixel_size,
            defocus_u,
            defocus_v,
            angle,
            voltage=float(optics.rlnVoltage),
            cs=float(optics.rlnSphericalAberration),
            amplitude_contrast=float(optics.rlnAmplitudeContrast),
        ).astype(np.float64)
        ** 2
    )
    return float(np.corrcoef(signal[band], ctf2[band])[0, 1])


def test_ctf_truth_matches_thon_rings(tiny_dataset: Path) -> None:
    """The saved defocus U/V/angle put the CTF zeros on the minima of the noiseless
    micrograph's power spectrum; perturbed values do not."""
    star = read_star(tiny_dataset / "truth" / "micrographs_ctf.star")
    optics = star["optics"].iloc[0]
    px = float(optics.rlnMicrographPixelSize)
    results = {}
    astigmatic = 0
    for _, row in star["micrographs"].iterrows():
        stem = Path(row.rlnMicrographName).stem
        image, _ = read_mrc(tiny_dataset / "truth" / f"{stem}_noiseless.mrc")
        signal, s = thon_ring_signal(image, px)
        band = (s > 1 / 30) & (s < 1 / (2.2 * px))
        du, dv, ang = float(row.rlnDefocusU), float(row.rlnDefocusV), float(row.rlnDefocusAngle)

        def cc(u: float, v: float, a: float, *, sig=signal, b=band, shp=image.shape) -> float:
            return ctf_correlation(sig, b, shp, px, optics, u, v, a)

        true = cc(du, dv, ang)
        r = {
            "true": true,
            "+2000": cc(du + 2000, dv + 2000, ang),
            "-2000": cc(du - 2000, dv - 2000, ang),
            "+500": cc(du + 500, dv + 500, ang),
            "-500": cc(du - 500, dv - 500, ang),
        }
        assert true > 0.4, f"{stem}: CTF^2 vs spectrum correlation {true:.2f}"
        for key in ("+2000", "-2000"):
            assert r[key] < true - 0.3, f"{stem}: defocus {key} Å fits as well ({r[key]:.2f})"
        for key in ("+500", "-500"):
            assert r[key] < true - 0.15, f"{stem}: defocus {key} Å fits as well ({r[key]:.2f})"

        # spectrum at predicted zeros vs at predicted maxima (log units, background removed)
        ctf2 = (
            ctf_2d(
                image.shape,
                px,
                du,
                dv,
                ang,
                voltage=float(optics.rlnVoltage),
                cs=float(optics.rlnSphericalAberration),
                amplitude_contrast=float(optics.rlnAmplitudeContrast),
            )
            ** 2
        )
        at_zeros = float(signal[band & (ctf2 < 0.05)].mean())
        at_maxima = float(signal[band & (ctf2 > 0.95)].mean())
        r["log_ps_maxima_minus_zeros"] = at_maxima - at_zeros
        assert at_maxima - at_zeros > 1.0  # maxima at least e times the zeros

        if du - dv > 400 and abs(np.sin(np.deg2rad(2 * ang))) > 0.5:
            astigmatic += 1
            r["angle+90"] = cc(du, dv, ang + 90)
            r["angle+45"] = cc(du, dv, ang + 45)
            r["-angle (clockwise)"] = cc(du, dv, -ang)
            r["U<->V"] = cc(dv, du, ang)
            assert r["angle+90"] < true - 0.2
            assert r["U<->V"] < true - 0.2
            assert r["angle+45"] < true - 0.1
            assert r["-angle (clockwise)"] < true - 0.2
        results[stem] = {k: round(v, 3) for k, v in r.items()}
    assert astigmatic >= 1, "the fixture needs one clearly astigmatic movie for the angle test"
    FIGURES["ctf_correlation"] = results


# ---- particle coordinates and poses ---------------------------------------------------


def forward_model(
    volume: np.ndarray,
    shape: tuple[int, int],
    params: SimulationParams,
    ctf_row: pd.Series,
    coords: np.ndarray,
    angles: np.ndarray,
    pad: int = 64,
) -> np.ndarray:
    """Weak-phase image 2*psi of particles (saved volume, saved poses) at saved coordinates:
    what the noiseless micrograph should be, as N*dose_px*(1 + 2 psi), without solvent,
    junk and ice."""
    n = volume.shape[0]
    px = params.pixel_size
    canvas = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad))
    for (x, y), (rot, tilt, psi) in zip(coords, angles, strict=True):
        proj = project_volume(volume, euler_to_matrix(rot, tilt, psi)) * px  # V·Å
        ix, iy = int(round(x)), int(round(y))
        proj = shift_image(proj, (y - iy, x - ix))
        y0, x0 = iy + pad - n // 2, ix + pad - n // 2
        canvas[y0 : y0 + n, x0 : x0 + n] += proj
    ctf = ctf_2d(
        canvas.shape,
        px,
        float(ctf_row.rlnDefocusU),
        float(ctf_row.rlnDefocusV),
        float(ctf_row.rlnDefocusAngle),
        voltage=params.voltage,
        cs=params.cs,
        amplitude_contrast=params.amplitude_contrast,
        phase_shift=params.phase_shift,
        bfactor=params.envelope_bfactor,
    )
    psi2 = scipy.fft.irfft2(scipy.fft.rfft2(canvas) * ctf, s=canvas.shape)
    return 2.0 * interaction_constant(params.voltage) * psi2[pad:-pad, pad:-pad]


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def check_particles(dataset: Path, label: str) -> dict[str, dict[str, float]]:
    """Re-project truth/volume.mrc at the poses of truth/particles.star, place at the saved
    coordinates, apply the saved CTF and compare with the noiseless micrograph."""
    params = dataset_params(dataset)
    record = yaml.safe_load((dataset / "simulation.yaml").read_text())
    diameter = float(record["particle_diameter_angst"])  # of the specimen actually used
    volume, vpx = read_mrc(dataset / "truth" / "volume.mrc")
    assert vpx == pytest.approx(params.pixel_size, abs=1e-5)
    star = read_star(dataset / "truth" / "particles.star")
    particles = star["particles"]
    ctfs = read_star_block(dataset / "truth" / "micrographs_ctf.star", "micrographs")
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for _, ctf_row in ctfs.iterrows():
        name = ctf_row.rlnMicrographName
        stem = Path(name).stem
        noiseless, _ = read_mrc(dataset / "truth" / f"{stem}_noiseless.mrc")
        data = (
            noiseless.astype(np.float64)
            / (params.n_frames * params.dose_per_frame * params.pixel_size**2)
            - 1.0
        )
        mine = particles[particles.rlnMicrographName == name]
        assert len(mine) >= 3
        coords = mine[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        angles = mine[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
        # particles lie inside the micrograph, clear of the edge
        radius = 0.5 * diameter / params.pixel_size
        assert np.all(coords > 0.8 * radius)
        assert np.all(coords < np.array([params.width, params.height]) - 0.8 * radius)

        def model(c: np.ndarray, a: np.ndarray, *, shp=data.shape, row=ctf_row) -> np.ndarray:
            return forward_model(volume, shp, params, row, c, a)

        true = model(coords, angles)
        wrong = np.stack(matrix_to_euler(random_rotations(len(angles), rng)), axis=1)
        mats = euler_to_matrix(*angles.T)
        inverse = np.stack(matrix_to_euler(np.transpose(mats, (0, 2, 1))), axis=1)
        r = {
            "cc_true": ncc(true, data),
            "cc_random_poses": ncc(model(coords, wrong), data),
            "cc_inverse_rotations": ncc(model(coords, inverse), data),
            "cc_psi+90": ncc(model(coords, angles + np.array([0.0, 0.0, 90.0])), data),
            "cc_x_y_swapped": ncc(model(coords[:, ::-1], angles), data),
            "cc_shifted_3px": ncc(model(coords + np.array([3.0, 0.0]), angles), data),
        }
        assert r["cc_true"] > 0.9, f"{label} {stem}: {r}"
        for key in ("cc_random_poses", "cc_inverse_rotations", "cc_psi+90", "cc_x_y_swapped"):
            assert r[key] < r["cc_true"] - 0.4, f"{label} {stem}: {key} = {r[key]:.2f}"
        assert r["cc_shifted_3px"] < r["cc_true"] - 0.2

        # each particle on its own: the cross-correlation peak sits on the saved coordinate
        offsets = []
        for k in range(len(coords)):
            single = model(coords[k : k + 1], angles[k : k + 1])
            dy, dx = register_translation(single, data, upsample=20, max_shift=10)
            offsets.append(np.hypot(dy, dx))
        r["max_peak_offset_px"] = float(max(offsets))
        assert max(offsets) < 1.0, f"{label} {stem}: peak offsets {np.round(offsets, 2)}"

        # and the particles are where the density is: local signal energy at the
        # coordinates vs at random positions
        energy = ndimage.gaussian_filter(data**2, radius / 2)
        at_particles = ndimage.map_coordinates(energy, [coords[:, 1], coords[:, 0]], order=1)
        random_xy = rng.uniform(
            [radius, radius], [params.width - radius, params.height - radius], size=(500, 2)
        )
        at_random = ndimage.map_coordinates(energy, [random_xy[:, 1], random_xy[:, 0]], order=1)
        r["energy_ratio_min_particle_vs_median_random"] = float(
            at_particles.min() / np.median(at_random)
        )
        assert at_particles.min() > 2.0 * np.median(at_random)
        out[f"{label}/{stem}"] = {k: round(v, 3) for k, v in r.items()}
    return out


def test_particle_coordinates_and_poses(clean_dataset: Path) -> None:
    FIGURES["particles_phantom"] = check_particles(clean_dataset, "phantom")


def test_atomic_model_specimen(tmp_path: Path, small_pdb: tuple[Path, dict]) -> None:
    """A PDB file as specimen: the truth volume carries the model's potential and the
    saved coordinates and poses describe the micrograph."""
    pdb = small_pdb[0]
    atoms = atoms_from_model(pdb)
    params = make_params("tiny", n_movies=1, specimen=str(pdb), **CLEAN)
    out = tmp_path / "data"
    simulate_dataset(params, out, log=lambda _: None)
    volume, _ = read_mrc(out / "truth" / "volume.mrc")
    assert volume.sum() * params.pixel_size**3 == pytest.approx(atoms.weights.sum(), rel=0.01)
    record = yaml.safe_load((out / "simulation.yaml").read_text())
    assert record["particle_diameter_angst"] == pytest.approx(atoms.diameter, abs=0.01)
    FIGURES["particles_pdb"] = check_particles(out, "pdb")


def test_map_specimen(tmp_path: Path) -> None:
    """A user MRC map (at another voxel size) as specimen."""
    atoms = phantom_atoms(100.0, seed=4)
    source = write_mrc(tmp_path / "map.mrc", render_volume(atoms, 64, 2.0), 2.0)
    params = make_params("tiny", n_movies=1, specimen=str(source), **CLEAN)
    out = tmp_path / "data"
    simulate_dataset(params, out, log=lambda _: None)
    volume, px = read_mrc(out / "truth" / "volume.mrc")
    assert px == pytest.approx(2.5, abs=1e-5)
    assert volume.shape == (52, 52, 52)  # 64 voxels of 2 Å resampled to 2.5 Å
    record = yaml.safe_load((out / "simulation.yaml").read_text())
    # twice the largest radius of the map's density (5 % of its maximum) from the centre:
    # the atoms' own figure plus the blur of the pseudo-atoms and the voxels
    extent = record["particle_diameter_angst"]
    assert atoms.diameter <= extent <= atoms.diameter + 12.0
    FIGURES["particles_map"] = check_particles(out, "map")


# ---- detector: gain, Poisson counts, hot pixels, dose -------------------------------


def test_raw_counts_are_poisson_through_the_gain(tiny_dataset: Path, replay_movie: Replay) -> None:
    """raw ~ Poisson(expected / gain): multiplying raw frames by gain.mrc gives the expected
    (gain-corrected) counts; hot pixels of defects.star are hot."""
    gain, _ = read_mrc(tiny_dataset / "gain.mrc")
    gain = gain.astype(np.float64)
    defects = read_star_block(tiny_dataset / "truth" / "defects.star", "defects")
    hot = np.zeros(gain.shape, dtype=bool)
    hot[defects.rlnCoordinateY.astype(int), defects.rlnCoordinateX.astype(int)] = True
    assert hot.sum() >= 1
    params, _, expected = replay_movie(tiny_dataset, 0, noise=False)
    expected = np.stack(list(expected)).astype(np.float64)
    with open_movie(tiny_dataset / "movies" / f"movie_0001{params.movie_suffix}") as movie:
        raw = movie.read(np.float64)
    good = ~hot
    lam = expected / gain
    z = ((raw - lam) / np.sqrt(lam))[:, good]
    assert abs(z.mean()) < 0.01
    assert z.var() == pytest.approx(1.0, abs=0.02)
    ratio = (raw * gain)[:, good].sum() / expected[:, good].sum()
    assert ratio == pytest.approx(1.0, abs=0.003)
    # the other direction (dividing by the gain) is visibly wrong
    wrong = ((raw - expected * gain) / np.sqrt(expected * gain))[:, good]
    assert wrong.var() > 1.1
    # hot pixels
    assert np.all(raw[:, hot].mean(axis=0) > 20 * np.median(raw))
    FIGURES["poisson"] = {"z_mean": round(float(z.mean()), 4), "z_var": round(float(z.var()), 4)}


def test_dose_per_frame_in_the_counts(clean_dataset: Path) -> None:
    """Without ice (no amplitude loss), gain-corrected counts per Å^2 per frame are the
    dose per frame."""
    params = dataset_params(clean_dataset)
    gain, _ = read_mrc(clean_dataset / "gain.mrc")
    for stem in stems(clean_dataset):
        with open_movie(clean_dataset / "movies" / f"{stem}{params.movie_suffix}") as movie:
            frames = movie.read(np.float64)
        per_frame = (frames * gain).mean(axis=(1, 2)) / params.pixel_size**2
        np.testing.assert_allclose(per_frame, params.dose_per_frame, rtol=0.01)
        noiseless, _ = read_mrc(clean_dataset / "truth" / f"{stem}_noiseless.mrc")
        total = noiseless.mean() / params.pixel_size**2
        assert total == pytest.approx(params.n_frames * params.dose_per_frame, rel=0.01)


# ---- two-state specimen ------------------------------------------------------------------


def test_two_state_specimen(tmp_path: Path) -> None:
    """partial_fraction: about that share of the particles lacks domain 2 of the phantom;
    truth/particles.star says which (rlnClassNumber 2), truth/volume_partial.mrc is that
    state, and the noiseless micrographs show each particle in its saved state."""
    params = make_params(
        "tiny", n_movies=3, seed=4, particles_per_micrograph=8, partial_fraction=0.5, **CLEAN
    )
    out = tmp_path / "data"
    simulate_dataset(params, out, log=lambda _: None)
    volume, px = read_mrc(out / "truth" / "volume.mrc")
    partial, ppx = read_mrc(out / "truth" / "volume_partial.mrc")
    assert partial.shape == volume.shape and ppx == pytest.approx(px)
    whole_atoms, partial_atoms = phantom_states(params.particle_diameter, domain=2)
    share = partial_atoms.weights.sum() / whole_atoms.weights.sum()
    assert 0.8 < share < 0.95  # domain 2: ~13 % of the mass
    assert partial.sum() / volume.sum() == pytest.approx(share, rel=0.01)
    record = yaml.safe_load((out / "simulation.yaml").read_text())
    assert record["parameters"]["partial_fraction"] == 0.5
    assert record["parameters"]["partial_domain"] == 2
    assert sum(m["partial_particles"] for m in record["movies"]) > 0

    particles = read_star_block(out / "truth" / "particles.star", "particles")
    states = particles["rlnClassNumber"].to_numpy()
    assert set(states) == {1, 2}
    assert 0.25 < float(np.mean(states == 2)) < 0.75, states
    ctfs = read_star_block(out / "truth" / "micrographs_ctf.star", "micrographs")
    box = int(1.6 * params.particle_diameter / params.pixel_size)
    sums: dict[int, list[float]] = {1: [], 2: []}
    called = []
    for _, ctf_row in ctfs.iterrows():
        name = ctf_row.rlnMicrographName
        noiseless, _ = read_mrc(out / "truth" / f"{Path(name).stem}_noiseless.mrc")
        data = (
            noiseless.astype(np.float64)
            / (params.n_frames * params.dose_per_frame * params.pixel_size**2)
            - 1.0
        )
        mine = particles[particles.rlnMicrographName == name]
        coords = mine[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        angles = mine[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
        truth = mine["rlnClassNumber"].to_numpy()
        # each particle alone, as either state (the forward model is linear)
        single = {
            s: [
                forward_model(
                    vol, data.shape, params, ctf_row, coords[k : k + 1], angles[k : k + 1]
                )
                for k in range(len(coords))
            ]
            for s, vol in ((1, volume), (2, partial))
        }
        model = sum(single[int(s)][k] for k, s in enumerate(truth))
        assert ncc(model, data) > 0.95
        for k, s in enumerate(truth):
            rest = data - model + single[int(s)][k]
            err = {c: float(((rest - single[c][k]) ** 2).sum()) for c in (1, 2)}
            called.append(min(err, key=err.__getitem__) == s)
            # the particle's contrast (amplitude contrast: darker for more mass), summed
            # over a box around it
            x, y = (int(round(v)) for v in coords[k])
            ys = slice(max(0, y - box // 2), y + box // 2)
            xs = slice(max(0, x - box // 2), x + box // 2)
            sums[int(s)].append(-float(data[ys, xs].sum()))
    assert all(called), called
    ratio = np.mean(sums[2]) / np.mean(sums[1])
    FIGURES["two_state"] = {
        "partial_share": round(float(np.mean(states == 2)), 3),
        "mass_share": round(float(share), 3),
        "box_contrast_ratio": round(float(ratio), 3),
    }
    assert ratio < 0.97  # about the mass share, plus what the neighbours spill in


def test_two_state_off_changes_nothing(tmp_path: Path) -> None:
    """partial_fraction 0 (the default): no state column, no volume_partial.mrc, and the
    same random stream as a two-state dataset up to the states (same coordinates, poses
    and defocus: the states are drawn after them)."""
    base = make_params("tiny", n_movies=1, seed=5, **CLEAN)
    out = tmp_path / "off"
    simulate_dataset(base, out, log=lambda _: None)
    assert not (out / "truth" / "volume_partial.mrc").exists()
    particles = read_star_block(out / "truth" / "particles.star", "particles")
    assert "rlnClassNumber" not in particles.columns
    two = tmp_path / "on"
    simulate_dataset(
        make_params("tiny", n_movies=1, seed=5, partial_fraction=0.4, **CLEAN),
        two,
        log=lambda _: None,
    )
    other = read_star_block(two / "truth" / "particles.star", "particles")
    labels = ["rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnDefocusU"]
    np.testing.assert_array_equal(particles[labels], other[labels])


def test_two_state_needs_the_phantom(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="partial_fraction"):
        make_params("tiny", specimen=str(tmp_path / "map.mrc"), partial_fraction=0.3)
