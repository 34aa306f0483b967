"""STAR files (RELION 3.1 layout), JSON/figures, and atomic writes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
    read_star_stack,
    save_figure,
    star_files,
    write_json,
    write_star,
)
from cryosnake.io import star as star_module


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

    def explode(name: str, df: pd.DataFrame) -> Iterator[str]:
        yield "data_optics\n\nloop_\n_rlnOpt"  # half a file
        raise OSError("No space left on device")

    monkeypatch.setattr(star_module, "format_block", explode)
    with pytest.raises(OSError):
        write_star(path, blocks)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- starfile compatibility


def _varied(n: int) -> pd.DataFrame:
    """Rows with every kind of value cryosnake writes: names, quoted text, ints, floats."""
    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/job/mic {i % 3}.mrcs" for i in range(n)],
            "rlnMicrographName": [f"MotionCorr/mic_{i % 7:04d}.mrc" for i in range(n)],
            "rlnCoordinateX": rng.uniform(0, 4096, n),
            "rlnDefocusU": rng.uniform(5000, 30000, n).round(2),
            "rlnCtfFigureOfMerit": np.where(np.arange(n) % 5 == 2, np.nan, rng.uniform(0, 1, n)),
            "rlnOpticsGroup": rng.integers(1, 4, n),
            "rlnGroupName": ["" if i % 4 == 0 else f"g{i % 4}" for i in range(n)],
            "rlnAutopickFigureOfMerit": -rng.uniform(0, 1e6, n),
            # runs of one value (a micrograph's), one of them NaN; a -0.0 among zeros
            "rlnDefocusV": np.repeat([np.nan, *rng.uniform(5000, 9000, n // 50)], 50)[:n],
            "rlnPhaseShift": np.where(np.arange(n) == n // 2, -0.0, 0.0),
        }
    )


@pytest.mark.parametrize("n", [1, 7, 20_001])  # 20_001: more rows than one formatting chunk
def test_star_text_is_starfiles_and_both_read_it_alike(
    tmp_path: Path, blocks: dict[str, pd.DataFrame], n: int
) -> None:
    data = {"optics": blocks["optics"], "particles": _varied(n)}
    ours = write_star(tmp_path / "ours.star", data)
    peer = tmp_path / "peer.star"
    starfile.write(data, peer, float_format="%.6f")
    body = ours.read_text().split("\n", 1)[1]
    assert body == peer.read_text().split("\n", 1)[1]  # all but starfile's dated comment
    assert ours.read_text().startswith("# Created by cryosnake")
    for written in (ours, peer):
        got, ref = read_star(written), starfile.read(written, always_dict=True)
        assert list(got) == list(ref) == ["optics", "particles"]
        for name in got:
            pd.testing.assert_frame_equal(got[name], ref[name])
    got = read_star(ours)["particles"]
    assert got["rlnOpticsGroup"].dtype == np.int64
    assert got["rlnDefocusU"].dtype == np.float64
    assert pd.api.types.is_string_dtype(got["rlnImageName"])
    assert got["rlnImageName"].tolist() == data["particles"]["rlnImageName"].tolist()
    assert got["rlnGroupName"].tolist() == data["particles"]["rlnGroupName"].tolist()
    nan = data["particles"]["rlnCtfFigureOfMerit"].isna()
    assert got["rlnCtfFigureOfMerit"].isna().tolist() == nan.tolist()
    np.testing.assert_allclose(
        got["rlnCoordinateX"], data["particles"]["rlnCoordinateX"], rtol=0, atol=5e-7
    )


RELION_TEXT = """
# version 30001

data_general

_rlnImageSizeX                                     4096
_rlnMicrographMovieName                    'Movies/a b.tif'
_rlnMicrographBinning                          1.000000
_rlnMicrographStartFrame                              1

data_global_shift

loop_
_rlnMicrographFrameNumber #1
_rlnMicrographShiftX #2
_rlnMicrographName #3
  1     0.000000   "Movies/a b.mrc"
  2    -1.250000   Movies/c.mrc    # a comment after the values

# a comment line
  3     2.500000   'Movies/d e.mrc'

data_empty

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2

data_particles
loop_
_rlnCoordinateX #1
_rlnClassNumber #2
10.5 3
11.5 4
"""


def test_relion_layout_reads_as_starfile_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "relion.star"
    path.write_text(RELION_TEXT)
    got, ref = read_star(path), starfile.read(path, always_dict=True)
    assert list(got) == list(ref) == ["general", "global_shift", "empty", "particles"]
    assert got["general"].iloc[0].to_dict() == ref["general"]  # simple block: one row
    assert got["general"]["rlnMicrographMovieName"].iloc[0] == "Movies/a b.tif"
    assert got["general"]["rlnImageSizeX"].dtype == np.int64
    for name in ("global_shift", "empty", "particles"):
        pd.testing.assert_frame_equal(got[name], ref[name])
    assert got["global_shift"]["rlnMicrographName"].tolist() == [
        "Movies/a b.mrc",
        "Movies/c.mrc",
        "Movies/d e.mrc",
    ]
    assert got["empty"].shape == (0, 2)

    # what we write of it, starfile reads the same (the simple block as a loop)
    again = write_star(tmp_path / "again.star", got)
    back = starfile.read(again, always_dict=True)
    pd.testing.assert_frame_equal(back["general"], got["general"])
    for name in ("global_shift", "empty", "particles"):
        pd.testing.assert_frame_equal(back[name], got[name])


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (lambda text: text[: text.rindex("\t")], "has 9 of 10 values"),  # last row cut short
        (lambda text: text.replace('\n"000002@', '\n1\t"000002@'), "Expected 10 fields"),
        (lambda text: text.replace('\n"000002@', '\nxyz\n"000002@'), "1 of 10 values"),
    ],
)
def test_truncated_or_corrupt_loop_is_one_line_naming_the_file(
    tmp_path: Path, cut: Callable[[str], str], expected: str
) -> None:
    good = write_star(tmp_path / "good.star", {"particles": _varied(20)})
    bad = tmp_path / "bad.star"
    bad.write_text(cut(good.read_text()))
    assert bad.read_text() != good.read_text()
    with pytest.raises(FileFormatError) as err:
        read_star(bad)
    assert_one_line_naming(err, bad)
    assert expected in str(err.value)
    # among many files read together, the bad one is named
    others = [write_star(tmp_path / f"ok{i}.star", {"particles": _varied(20)}) for i in range(3)]
    with pytest.raises(FileFormatError) as err:
        read_star_stack([*others[:2], bad, others[2]], ["particles"])
    assert_one_line_naming(err, bad)


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.star"
    path.write_bytes(b"data_x\nloop_\n_rlnA #1\n\xff\xfe\n")
    with pytest.raises(FileFormatError) as err:
        read_star(path)
    assert_one_line_naming(err, path)


def test_stack_is_the_files_read_one_by_one(tmp_path: Path) -> None:
    tables = [_varied(n) for n in (3, 0, 5, 1)]
    tables[2] = tables[2].drop(columns=["rlnOpticsGroup"])  # labels differ between files
    tables[1] = tables[1].drop(columns=["rlnDefocusU"])  # an empty loop of other labels
    paths = []
    for i, table in enumerate(tables):
        shifts = pd.DataFrame({"rlnMicrographFrameNumber": np.arange(1, i + 2)})
        paths.append(
            write_star(tmp_path / f"m{i}.star", {"particles": table, "global_shift": shifts})
        )
    simple = tmp_path / "simple.star"
    simple.write_text("data_particles\n\n_rlnImageName 000001@x.mrcs\n_rlnOpticsGroup 2\n")
    both = read_star_stack(paths, ["particles", "global_shift"])
    assert both["global_shift"].counts.tolist() == [1, 2, 3, 4]
    assert both["global_shift"].table["rlnMicrographFrameNumber"].tolist() == [
        1, 1, 2, 1, 2, 3, 1, 2, 3, 4
    ]  # fmt: skip
    got = read_star_stack([*paths, simple], ["particles"])["particles"]
    assert got.counts.tolist() == [3, 0, 5, 1, 1]
    assert got.file_index.tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3, 4]
    assert got.starts.tolist() == [0, 3, 3, 8, 9]
    assert got.labels[2] == tuple(tables[2].columns) and got.labels[4] == (
        "rlnImageName",
        "rlnOpticsGroup",
    )
    one_by_one = [read_star(p)["particles"] for p in [*paths, simple]]
    expected = pd.concat([t for t in one_by_one if len(t)], ignore_index=True)
    assert got.table["rlnImageName"].tolist() == expected["rlnImageName"].tolist()
    np.testing.assert_array_equal(got.table["rlnDefocusU"], expected["rlnDefocusU"])
    groups = got.table["rlnOpticsGroup"]  # integers, missing for the file without them
    assert isinstance(groups.dtype, pd.Int64Dtype)
    assert groups.isna().tolist() == [False] * 3 + [True] * 5 + [False] * 2
    present = [*tables[0]["rlnOpticsGroup"], *tables[3]["rlnOpticsGroup"], 2]
    assert groups.dropna().astype(int).tolist() == present
    with pytest.raises(FileFormatError) as err:
        read_star_stack([paths[0], simple], ["global_shift"])
    assert_one_line_naming(err, simple)
    assert "no data_global_shift block" in str(err.value)


def test_star_files_takes_folders_and_files(tmp_path: Path) -> None:
    chunk = tmp_path / "chunk0001"
    chunk.mkdir()
    for name in ("b.star", "a.star", "a.mrc", "a.png", ".c.star.tmp12.star", "c.mrcs"):
        (chunk / name).write_text("")
    (chunk / "sub.star").mkdir()  # a folder is not a file
    single = tmp_path / "z.star"
    single.write_text("")
    assert star_files([single], "--ctf") == [single]
    got = star_files([single, str(chunk)], "--ctf")
    assert got == [chunk / "a.star", chunk / "b.star", single]
    # With folders, name order whatever the folder: chunks do not change the order.
    later = tmp_path / "chunk0002"
    later.mkdir()
    (later / "a0.star").write_text("")
    got = star_files([str(chunk), str(later)], "--ctf")
    assert got == [chunk / "a.star", later / "a0.star", chunk / "b.star"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for given, text in ((empty, "holds no .star file"), (tmp_path / "none", "no such file")):
        with pytest.raises(FileFormatError) as err:
            star_files([given], "--ctf")
        assert_one_line_naming(err, given)
        assert "--ctf" in str(err.value) and text in str(err.value)
