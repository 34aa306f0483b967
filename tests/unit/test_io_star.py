"""STAR files (RELION 3.1 layout), JSON/figures, and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryosnake.errors import FileFormatError
from cryosnake.io import (
    atomic_path,
    optics_table,
    read_json,
    read_star,
    read_star_block,
    save_figure,
    write_json,
    write_star,
)


def assert_one_line_naming(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


@pytest.fixture
def blocks() -> dict[str, pd.DataFrame]:
    optics = optics_table(
        pixel_size=1.2,
        voltage=300,
        cs=2.7,
        amplitude_contrast=0.1,
        image_size=64,
        image_pixel_size=2.4,
    )
    n = 5
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/stack.mrcs" for i in range(n)],
            "rlnMicrographName": ["MotionCorr/mic_0001.mrc"] * 3 + ["MotionCorr/mic_0002.mrc"] * 2,
            "rlnCoordinateX": np.array([10.5, 200.25, 31.0, 4.0, 1000.125]),
            "rlnCoordinateY": np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
            "rlnAngleRot": np.linspace(-170, 170, n),
            "rlnAngleTilt": np.linspace(5, 175, n),
            "rlnAnglePsi": np.linspace(-90, 90, n),
            "rlnDefocusU": np.full(n, 15000.0),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    return {"optics": optics, "particles": particles}


def test_star_round_trip_with_optics_and_particles(
    tmp_path: Path, blocks: dict[str, pd.DataFrame]
) -> None:
    path = write_star(tmp_path / "particles.star", blocks)
    text = path.read_text()
    for label in ("_rlnOpticsGroup ", "_rlnImagePixelSize ", "_rlnCoordinateX ", "_rlnImageName "):
        assert label in text
    assert "data_optics" in text and "data_particles" in text

    back = read_star(path)
    assert list(back) == ["optics", "particles"]
    for name, df in blocks.items():
        got = back[name]
        assert list(got.columns) == list(df.columns)
        for col in df.columns:
            if pd.api.types.is_numeric_dtype(df[col]):
                np.testing.assert_allclose(got[col].to_numpy(float), df[col].to_numpy(float))
            else:
                assert got[col].astype(str).tolist() == df[col].astype(str).tolist()

    # starfile (what pyem, RELION-adjacent tools and users load) reads it the same way
    ref = starfile.read(path)
    assert set(ref) == {"optics", "particles"}
    assert ref["particles"]["rlnOpticsGroup"].tolist() == [1] * 5
    assert ref["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(2.4)
    assert ref["optics"]["rlnMicrographOriginalPixelSize"].iloc[0] == pytest.approx(1.2)


def test_optics_table_labels() -> None:
    micrographs = optics_table(pixel_size=0.83, voltage=300, cs=2.7, amplitude_contrast=0.1)
    assert micrographs.shape[0] == 1
    assert set(micrographs.columns) == {
        "rlnOpticsGroupName",
        "rlnOpticsGroup",
        "rlnMicrographOriginalPixelSize",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnMicrographPixelSize",
    }
    particles = optics_table(
        pixel_size=0.83,
        voltage=200,
        cs=2.7,
        amplitude_contrast=0.1,
        image_size=128,
        image_pixel_size=1.66,
    )
    row = particles.iloc[0]
    assert row.rlnImageSize == 128
    assert row.rlnImagePixelSize == pytest.approx(1.66)
    assert row.rlnImageDimensionality == 2
    assert row.rlnVoltage == pytest.approx(200)


def test_single_row_block_reads_as_one_row_frame(tmp_path: Path) -> None:
    general = pd.DataFrame([{"rlnImageSizeX": 4096, "rlnMicrographMovieName": "m.tif"}])
    path = write_star(tmp_path / "motion.star", {"general": general})
    block = read_star_block(path, "general", required=("rlnImageSizeX",))
    assert block.shape == (1, 2)
    assert int(block.rlnImageSizeX.iloc[0]) == 4096


def test_missing_block_or_label_names_the_file(
    tmp_path: Path, blocks: dict[str, pd.DataFrame]
) -> None:
    path = write_star(tmp_path / "p.star", blocks)
    with pytest.raises(FileFormatError) as err:
        read_star_block(path, "movies")
    assert_one_line_naming(err, path)
    assert "data_movies" in str(err.value)
    with pytest.raises(FileFormatError) as err:
        read_star_block(path, "particles", required=("rlnCoordinateX", "rlnDefocusV"))
    assert_one_line_naming(err, path)
    assert "rlnDefocusV" in str(err.value)
    assert "rlnCoordinateX" not in str(err.value)


@pytest.mark.parametrize("content", ["", "just some text\nwithout blocks\n"])
def test_star_without_blocks(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.star"
    path.write_text(content)
    with pytest.raises(FileFormatError) as err:
        read_star(path)
    assert_one_line_naming(err, path)


def test_missing_star(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError) as err:
        read_star(tmp_path / "none.star")
    assert_one_line_naming(err, tmp_path / "none.star")


def test_write_star_rejects_bad_blocks(tmp_path: Path) -> None:
    path = tmp_path / "x.star"
    with pytest.raises(FileFormatError) as err:
        write_star(path, {})
    assert_one_line_naming(err, path)
    with pytest.raises(FileFormatError) as err:
        write_star(path, {"a": pd.DataFrame({"_rlnBad": [1]})})
    assert_one_line_naming(err, path)
    assert not path.exists()


def test_json_round_trip_and_errors(tmp_path: Path) -> None:
    data = {"movie": "a.tif", "frame_dose": [1.0, 1.5], "n": 3}
    path = write_json(tmp_path / "sub" / "r.json", data)
    assert read_json(path) == data
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FileFormatError) as err:
        read_json(bad)
    assert_one_line_naming(err, bad)
    with pytest.raises(FileFormatError):
        read_json(tmp_path / "missing.json")


def test_save_figure_writes_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(tmp_path / "f.png", fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # closed


def test_atomic_path_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".txt"
        assert tmp.name.startswith(".")
        tmp.write_text("complete")
        assert not target.exists()  # nothing visible before the rename
    assert target.read_text() == "complete"

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete"  # untouched
    assert sorted(os.listdir(target.parent)) == ["out.txt"]  # no temporary left

    fresh = tmp_path / "never.txt"
    with pytest.raises(RuntimeError), atomic_path(fresh) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert not fresh.exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_failed_star_write_leaves_no_partial_file(
    tmp_path: Path, blocks: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.star"

    def explode(data: object, filename: os.PathLike[str], **kwargs: object) -> None:
        Path(filename).write_text("data_optics\n\nloop_\n_rlnOpt")  # half a file
        raise OSError("No space left on device")

    monkeypatch.setattr(starfile, "write", explode)
    with pytest.raises(OSError):
        write_star(path, blocks)
    assert list(tmp_path.iterdir()) == []
