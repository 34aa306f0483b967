"""cryosnake motioncor against the simulator's ground truth.

Acceptance figures of issue 3 measured on a demo-preset movie (1024 x 1024 x 30 frames,
1 e/Å² per frame, 1.5 Å/px, local deformation on): global drift, the per-pixel
trajectory with and without patches, dose weighting by the FRC with the noiseless
micrograph; plus gain orientation, binning and bad input on the tiny preset.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryosnake.io import read_mrc, read_star, write_mrc
from cryosnake.ops.gain import orient_gain
from cryosnake.simulate import make_params, simulate_dataset
from cryosnake.stages import motioncor

SHIFT = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
GRID = ["rlnMicrographFrameNumber", "rlnCoordinateY", "rlnCoordinateX"]
RunCli = Callable[[Sequence[str]], tuple[int, str, str]]


def run(movie: Path, out: Path, *extra: str, pixel_size: str = "1.5", dose: str = "1") -> None:
    args = ["--movie", str(movie), "--out-dir", str(out), "--pixel-size", pixel_size]
    assert motioncor.main([*args, "--dose-per-frame", dose, *extra]) == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo movie, corrected with 5x5 patches (mc/) and globally only (mc1/)."""
    out = tmp_path_factory.mktemp("demo")
    simulate_dataset(make_params("demo", n_movies=1, seed=11), out, log=lambda _: None)
    movie, gain = out / "movies" / "movie_0001.mrc", str(out / "gain.mrc")
    run(movie, out / "mc", "--gain", gain)
    run(movie, out / "mc1", "--gain", gain, "--patches", "1x1", "--no-plot")
    return out


def rms(a: np.ndarray) -> float:
    return float(np.sqrt((np.asarray(a) ** 2).sum(axis=1).mean()))


def test_global_drift_within_0_2_px(demo: Path) -> None:
    truth = read_star(demo / "truth" / "movie_0001_motion.star")["global_shift"][SHIFT]
    for folder in ("mc", "mc1"):
        star = read_star(demo / folder / "movie_0001.star")
        found = star["global_shift"][SHIFT]
        assert star["global_shift"].rlnMicrographFrameNumber.tolist() == list(range(1, 31))
        assert np.all(found.iloc[0].to_numpy() == 0.0)
        error = rms(found.to_numpy() - truth.to_numpy())
        assert error <= 0.2, (folder, error)
    # The drift is real: about 10 px, so a do-nothing answer fails.
    assert rms(truth.to_numpy()) > 3.0


def test_patches_halve_the_per_pixel_trajectory_error(demo: Path) -> None:
    truth = read_star(demo / "truth" / "movie_0001_motion.star")["local_shift"]
    truth = truth.sort_values(GRID)
    local = read_star(demo / "mc" / "movie_0001.star")["local_shift"].sort_values(GRID)
    np.testing.assert_allclose(local[GRID[1:]], truth[GRID[1:]], atol=1e-6)
    with_patches = rms(local[SHIFT].to_numpy() - truth[SHIFT].to_numpy())
    whole = read_star(demo / "mc1" / "movie_0001.star")
    assert "local_shift" not in whole
    global_only = np.repeat(whole["global_shift"][SHIFT].to_numpy(), 25, axis=0)
    without = rms(global_only - truth[SHIFT].to_numpy())
    assert with_patches <= 0.5 * without, (with_patches, without)


def frc(a: np.ndarray, b: np.ndarray, pixel_size: float, shells: int = 40) -> tuple:
    fa, fb = np.fft.rfft2(a - a.mean()), np.fft.rfft2(b - b.mean())
    ky = np.fft.fftfreq(a.shape[0], pixel_size)[:, None]
    kx = np.fft.rfftfreq(a.shape[1], pixel_size)[None, :]
    edges = np.linspace(0, 0.5 / pixel_size, shells + 1)
    idx = (np.digitize(np.sqrt(ky**2 + kx**2), edges) - 1).ravel()

    def ring(values: np.ndarray) -> np.ndarray:
        return np.bincount(idx, values.ravel(), shells + 1)[:shells]

    value = ring((fa * fb.conj()).real) / np.sqrt(ring(abs(fa) ** 2) * ring(abs(fb) ** 2))
    return 0.5 * (edges[1:] + edges[:-1]), value


def test_dose_weighting_raises_the_frc_beyond_8_angstrom(demo: Path) -> None:
    noiseless, _ = read_mrc(demo / "truth" / "movie_0001_noiseless.mrc")
    weighted, px = read_mrc(demo / "mc" / "movie_0001.mrc")
    plain, _ = read_mrc(demo / "mc" / "movie_0001_noDW.mrc")
    s, with_dw = frc(weighted, noiseless, px)
    _, without = frc(plain, noiseless, px)
    signal = (s > 1 / 8) & (without > 0.05)
    assert signal.sum() >= 20
    assert np.all(with_dw[signal] > without[signal]), np.c_[1 / s, with_dw, without][signal]
    # Both sums are sharp: the low-resolution FRC is high.
    assert with_dw[(s > 1 / 30) & (s < 1 / 15)].mean() > 0.5


def test_outputs_are_valid_and_labelled(demo: Path) -> None:
    for name in ("movie_0001.mrc", "movie_0001_noDW.mrc"):
        path = demo / "mc" / name
        assert mrcfile.validate(str(path), print_file=io.StringIO())
        image, px = read_mrc(path)
        assert image.shape == (1024, 1024)
        assert px == pytest.approx(1.5)
    star = read_star(demo / "mc" / "movie_0001.star")
    assert set(star) == {"general", "global_shift", "local_shift"}
    general = star["general"].iloc[0]
    assert (general.rlnImageSizeX, general.rlnImageSizeY, general.rlnImageSizeZ) == (
        1024,
        1024,
        30,
    )
    assert general.rlnMicrographDoseRate == 1.0
    assert (demo / "mc" / "movie_0001_motion.png").stat().st_size > 10_000


# ---- tiny preset: gain orientation, binning, bad input ---------------------------------


def test_gain_orientation_is_found(tiny_dataset: Path, tmp_path: Path, run_cli: RunCli) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    gain, px = read_mrc(tiny_dataset / "gain.mrc")
    run(movie, tmp_path / "ref", "--gain", str(tiny_dataset / "gain.mrc"), "--no-plot",
        pixel_size="2.5", dose="3")  # fmt: skip
    reference, _ = read_mrc(tmp_path / "ref" / "movie_0001.mrc")
    # Store the gain as a detector would after a rotation or a mirror; auto must undo it.
    for stored in (np.rot90(gain, 1), gain[:, ::-1], gain[::-1, :], np.rot90(gain, 3)[:, ::-1]):
        path = tmp_path / "gain_stored.mrc"
        write_mrc(path, np.ascontiguousarray(stored), px)
        out = tmp_path / "auto"
        code, stdout, _ = run_cli(
            ["motioncor", "--movie", movie, "--out-dir", out, "--pixel-size", "2.5",
             "--dose-per-frame", "3", "--gain", path, "--gain-rotate", "auto", "--no-plot"]
        )  # fmt: skip
        assert code == 0
        rotate, flip = stdout.split("gain rotate ")[1].split(" (")[0].split(" flip ")
        assert np.array_equal(orient_gain(stored, int(rotate), flip), gain)
        corrected, _ = read_mrc(out / "movie_0001.mrc")
        np.testing.assert_allclose(corrected, reference, atol=1e-3 * float(np.abs(reference).max()))


def test_binning_halves_the_image_and_keeps_unbinned_shifts(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    gain = str(tiny_dataset / "gain.mrc")
    run(movie, tmp_path, "--gain", gain, "--bin", "2", "--patches", "1x1", "--no-plot",
        pixel_size="2.5", dose="3")  # fmt: skip
    image, px = read_mrc(tmp_path / "movie_0001.mrc")
    assert image.shape == (128, 128)
    assert px == pytest.approx(5.0)
    star = read_star(tmp_path / "movie_0001.star")
    assert star["general"].rlnMicrographBinning.iloc[0] == 2.0
    truth = read_star(tiny_dataset / "truth" / "movie_0001_motion.star")["global_shift"]
    error = rms(star["global_shift"][SHIFT].to_numpy() - truth[SHIFT].to_numpy())
    assert error < 0.5, error  # in unbinned pixels, at half the resolution
    assert rms(truth[SHIFT].to_numpy()) > 2.0


def test_bad_input_is_one_line_and_writes_nothing(
    tiny_dataset: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(movie.read_bytes()[: movie.stat().st_size // 2])
    small_gain = tmp_path / "small_gain.mrc"
    write_mrc(small_gain, np.ones((100, 80), np.float32), 2.5)
    one_frame = tmp_path / "one.mrc"
    write_mrc(one_frame, read_mrc(movie)[0][:1], 2.5, kind="stack")
    out = tmp_path / "out"
    base = ["motioncor", "--out-dir", out, "--pixel-size", "2.5", "--dose-per-frame", "3"]
    cases = [
        ([*base, "--movie", truncated], "truncated.mrc"),
        ([*base, "--movie", movie, "--gain", small_gain], "small_gain.mrc: gain is 80 x 100"),
        ([*base, "--movie", movie, "--gain", small_gain, "--gain-rotate", "auto"],
         "small_gain.mrc"),
        ([*base, "--movie", one_frame], "one.mrc: a movie needs at least 2 frames"),
        ([*base, "--movie", movie, "--patches", "5by5"], "--patches"),
        ([*base, "--movie", tmp_path / "missing.mrc"], "missing.mrc: no such file"),
    ]  # fmt: skip
    for args, expected in cases:
        code, _, err = run_cli(args)
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cryosnake"), err
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_tiff_movie_gives_the_same_result(tiny_dataset: Path, tmp_path: Path) -> None:
    from cryosnake.io import open_movie, write_movie

    movie = tiny_dataset / "movies" / "movie_0002.mrc"
    tiff = tmp_path / "movie_0002.tif"
    with open_movie(movie) as m:
        write_movie(tiff, (m.frame(i) for i in range(m.n_frames)), n_frames=m.n_frames,
                    frame_shape=m.frame_shape, dtype=np.uint16, pixel_size=2.5)  # fmt: skip
    gain = str(tiny_dataset / "gain.mrc")
    for source, out in ((movie, tmp_path / "a"), (tiff, tmp_path / "b")):
        run(source, out, "--gain", gain, "--no-plot", pixel_size="2.5", dose="3")
    a = read_star(tmp_path / "a" / "movie_0002.star")["global_shift"]
    b = read_star(tmp_path / "b" / "movie_0002.star")["global_shift"]
    pd.testing.assert_frame_equal(a, b)
    shutil.rmtree(tmp_path / "a")


def test_eer_movie_gives_the_same_result_as_its_counts(tmp_path: Path) -> None:
    from cryosnake.io import open_movie, write_eer

    params = make_params("tiny", n_movies=1, seed=5, hot_pixel_fraction=0.0)
    simulate_dataset(params, tmp_path / "data", log=lambda _: None)
    movie = tmp_path / "data" / "movies" / "movie_0001.mrc"
    with open_movie(movie) as m:
        frames = [m.frame(i) for i in range(m.n_frames)]
    group = int(max(f.max() for f in frames))  # EER frames per fraction
    eer = tmp_path / "movie_0001.eer"
    write_eer(
        eer,
        ((f > k).astype(np.uint8) for f in frames for k in range(group)),
        frame_shape=frames[0].shape,
    )
    gain = str(tmp_path / "data" / "gain.mrc")
    run(movie, tmp_path / "mrc", "--gain", gain, "--no-plot", pixel_size="2.5", dose="3")
    run(eer, tmp_path / "eer", "--gain", gain, "--no-plot", "--eer-group", str(group),
        pixel_size="2.5", dose="3")  # fmt: skip
    a = read_star(tmp_path / "mrc" / "movie_0001.star")["global_shift"]
    b = read_star(tmp_path / "eer" / "movie_0001.star")["global_shift"]
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(
        read_mrc(tmp_path / "mrc" / "movie_0001.mrc")[0],
        read_mrc(tmp_path / "eer" / "movie_0001.mrc")[0],
    )
