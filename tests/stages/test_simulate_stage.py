"""``cryosnake simulate``: the files it writes, their formats, reproducibility."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
import yaml

from cryosnake.io import open_movie, read_mrc, read_star
from cryosnake.simulate import make_params, simulate_dataset

# RELION (3.1-5) metadata labels that cryosnake writes; see RELION's metadata_label.h.
RELION_LABELS = {
    "rlnAmplitudeContrast",
    "rlnAnglePsi",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
    "rlnDefocusAngle",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnImageDimensionality",
    "rlnImageName",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageSizeX",
    "rlnImageSizeY",
    "rlnImageSizeZ",
    "rlnMicrographBinning",
    "rlnMicrographDoseRate",
    "rlnMicrographFrameNumber",
    "rlnMicrographMovieName",
    "rlnMicrographName",
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographPreExposure",
    "rlnMicrographShiftX",
    "rlnMicrographShiftY",
    "rlnMicrographStartFrame",
    "rlnMotionModelVersion",
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnPhaseShift",
    "rlnSphericalAberration",
    "rlnVoltage",
}
CUSTOM_PREFIX = "csnk"  # cryosnake's own labels (RELION ignores unknown labels)

EXPECTED_FILES = [
    "gain.mrc",
    "simulation.yaml",
    "movies/movie_0001.mrc",
    "movies/movie_0002.mrc",
    "truth/volume.mrc",
    "truth/particles.star",
    "truth/micrographs_ctf.star",
    "truth/junk.star",
    "truth/defects.star",
    "truth/movie_0001_motion.star",
    "truth/movie_0001_ctf.star",
    "truth/movie_0001_noiseless.mrc",
    "truth/movie_0002_motion.star",
    "truth/movie_0002_ctf.star",
    "truth/movie_0002_noiseless.mrc",
]


def test_simulate_writes_the_documented_files(tiny_dataset: Path) -> None:
    files = sorted(str(p.relative_to(tiny_dataset)) for p in tiny_dataset.rglob("*") if p.is_file())
    assert files == sorted(EXPECTED_FILES)  # and no temporary files left behind


def test_every_mrc_is_valid_with_the_pixel_size(tiny_dataset: Path) -> None:
    mrcs = sorted(tiny_dataset.rglob("*.mrc"))
    assert len(mrcs) == 6
    for path in mrcs:
        log = io.StringIO()
        assert mrcfile.validate(str(path), print_file=log) is True, log.getvalue()
        with mrcfile.open(path, permissive=False) as mrc:
            assert mrc.voxel_size.x == pytest.approx(2.5, abs=1e-5), path
            if path.parent.name == "movies":
                assert bool(mrc.is_image_stack())
                assert mrc.data.shape == (8, 256, 256)
                assert mrc.data.dtype == np.uint16
            elif path.name == "volume.mrc":
                assert bool(mrc.is_volume())
                assert mrc.data.shape == (80, 80, 80)
            else:
                assert mrc.data.shape == (256, 256)


def test_every_star_loads_with_relion_labels(tiny_dataset: Path) -> None:
    stars = sorted(tiny_dataset.rglob("*.star"))
    assert len(stars) == 8
    for path in stars:
        blocks = starfile.read(path, always_dict=True)
        assert blocks, path
        for name, block in blocks.items():
            labels = block.columns if isinstance(block, pd.DataFrame) else list(block)
            for label in labels:
                assert label in RELION_LABELS or label.startswith(CUSTOM_PREFIX), (
                    f"{path.name} data_{name}: {label}"
                )
    particles = starfile.read(tiny_dataset / "truth" / "particles.star")
    assert set(particles) == {"optics", "particles"}
    assert len(particles["particles"]) == 12
    assert set(particles["particles"].rlnOpticsGroup) == {1}
    optics = particles["optics"].iloc[0]
    assert optics.rlnMicrographPixelSize == pytest.approx(2.5)
    assert optics.rlnVoltage == pytest.approx(300.0)
    ctf = starfile.read(tiny_dataset / "truth" / "micrographs_ctf.star")
    assert set(ctf) == {"optics", "micrographs"}
    assert {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"} <= set(
        ctf["micrographs"].columns
    )
    assert (ctf["micrographs"].rlnDefocusU >= ctf["micrographs"].rlnDefocusV).all()
    assert ctf["micrographs"].rlnDefocusAngle.between(0, 180).all()
    motion = starfile.read(tiny_dataset / "truth" / "movie_0001_motion.star")
    assert set(motion) == {"general", "global_shift", "local_shift"}


def test_simulation_record(tiny_dataset: Path) -> None:
    record = yaml.safe_load((tiny_dataset / "simulation.yaml").read_text())
    assert record["parameters"] == make_params("tiny", seed=1).as_dict()
    assert [m["movie"] for m in record["movies"]] == [
        "movies/movie_0001.mrc",
        "movies/movie_0002.mrc",
    ]
    assert record["volume_box"] == 80
    gain, _ = read_mrc(tiny_dataset / "gain.mrc")
    assert gain.shape == (256, 256)
    assert gain.dtype == np.float32
    assert 0.9 < float(gain.mean()) < 1.1 and float(gain.std()) > 0.02


def _snapshot(out: Path) -> dict[str, object]:
    """File contents; STAR files by value and MRC files without their text labels (both
    carry the time of writing)."""
    snap: dict[str, object] = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        key = str(p.relative_to(out))
        if p.suffix == ".star":
            snap[key] = {k: v.to_dict("list") for k, v in read_star(p).items()}
        elif p.suffix == ".mrc":
            raw = bytearray(p.read_bytes())
            raw[224:1024] = bytes(800)  # nlabl labels of 80 characters: a time stamp
            snap[key] = bytes(raw)
        else:
            snap[key] = p.read_bytes()
    return snap


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    small = {"n_movies": 1, "width": 160, "height": 160, "particle_diameter": 100.0}
    runs = {}
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / label
        simulate_dataset(make_params("tiny", seed=seed, **small), out, log=lambda _: None)
        runs[label] = _snapshot(out)
    assert runs["a"] == runs["b"]
    a, c = runs["a"], runs["c"]
    assert a.keys() == c.keys()
    assert a["movies/movie_0001.mrc"] != c["movies/movie_0001.mrc"]
    assert a["gain.mrc"] != c["gain.mrc"]
    assert a["truth/movie_0001_ctf.star"] != c["truth/movie_0001_ctf.star"]
    assert a["truth/particles.star"] != c["truth/particles.star"]
    assert a["truth/volume.mrc"] == c["truth/volume.mrc"]  # the specimen has its own seed


def test_tiff_movies(tmp_path: Path, run_cli: Callable, replay_movie: Callable) -> None:
    out = tmp_path / "tif"
    code, stdout, err = run_cli(
        ["simulate", "--preset", "tiny", "--n-movies", "1", "--format", "tiff", "--seed", "2",
         "--out-dir", out]
    )  # fmt: skip
    assert code == 0, err
    assert "movie_0001.tif" in stdout
    path = out / "movies" / "movie_0001.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = tifffile.imread(path)
    with tifffile.TiffFile(path) as tif:
        assert int(tif.pages[0].compression) == 5  # LZW
    assert data.shape == (8, 256, 256) and data.dtype == np.uint16
    _, _, frames = replay_movie(out, 0, noise=True)
    np.testing.assert_array_equal(data, np.stack(list(frames)))
    with open_movie(path) as movie:
        assert movie.pixel_size == pytest.approx(2.5)


def test_overrides_reach_the_data(tmp_path: Path, run_cli: Callable) -> None:
    out = tmp_path / "o"
    code, _, err = run_cli(
        ["simulate", "--preset", "tiny", "--n-movies", "1", "--size", "128", "--n-frames", "3",
         "--pixel-size", "3.0", "--dose-per-frame", "2", "--set", "junk=false",
         "--set", "particle-diameter=90", "--out-dir", out]
    )  # fmt: skip
    assert code == 0, err
    record = yaml.safe_load((out / "simulation.yaml").read_text())
    p = record["parameters"]
    assert (p["width"], p["height"], p["n_frames"], p["pixel_size"]) == (128, 128, 3, 3.0)
    assert p["junk"] is False and p["particle_diameter"] == 90.0
    with open_movie(out / "movies" / "movie_0001.mrc") as movie:
        assert movie.shape == (3, 128, 128)
        assert movie.pixel_size == pytest.approx(3.0)


def test_list_parameters(tmp_path: Path, run_cli: Callable) -> None:
    code, out, _ = run_cli(
        ["simulate", "--preset", "tiny", "--set", "seed=4", "--list-parameters",
         "--out-dir", tmp_path / "x"]
    )  # fmt: skip
    assert code == 0
    assert "seed = 4" in out and "width = 256" in out
    assert not (tmp_path / "x").exists()  # nothing simulated
