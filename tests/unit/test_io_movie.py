"""Movies: TIFF (uncompressed, LZW, deflate) and MRC, lazy reading, streaming writes."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from cryosnake.errors import FileFormatError
from cryosnake.io import open_movie, write_movie, write_mrc, write_tiff_movie
from cryosnake.io._tiff import TiffMovieReader

SHAPE = (6, 40, 56)


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(0).poisson(3.0, size=SHAPE).astype(np.uint16)


def assert_one_line_naming(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("compression", "tiff_code"), [(None, 1), ("lzw", 5), ("zlib", 8)], ids=["raw", "lzw", "zlib"]
)
def test_tiff_movie_round_trip(
    tmp_path: Path, frames: np.ndarray, compression: str | None, tiff_code: int
) -> None:
    path = write_tiff_movie(tmp_path / "m.tif", frames, 1.1, compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == SHAPE[0]
        assert int(tif.pages[0].compression) == tiff_code
    with open_movie(path) as movie:
        assert movie.shape == SHAPE
        assert movie.n_frames == SHAPE[0]
        assert movie.frame_shape == SHAPE[1:]
        assert movie.dtype == np.uint16
        assert movie.pixel_size == pytest.approx(1.1)
        np.testing.assert_array_equal(movie.frame(2), frames[2])
        np.testing.assert_array_equal(movie.frame(-1), frames[-1])
        data = movie.read(np.float32)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, frames.astype(np.float32))
    # other readers agree
    np.testing.assert_array_equal(tifffile.imread(path), frames)


@pytest.mark.parametrize("suffix", [".mrc", ".mrcs", ".tif", ".tiff"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_write_movie_streams_frames(
    tmp_path: Path, frames: np.ndarray, suffix: str, dtype: type
) -> None:
    data = frames.astype(dtype)
    consumed: list[int] = []

    def gen() -> Iterator[np.ndarray]:
        for i, f in enumerate(data):
            consumed.append(i)
            yield f

    path = write_movie(
        tmp_path / f"movie{suffix}",
        gen(),
        n_frames=SHAPE[0],
        frame_shape=SHAPE[1:],
        dtype=dtype,
        pixel_size=0.83,
    )
    assert consumed == list(range(SHAPE[0]))
    with open_movie(path) as movie:
        assert movie.shape == SHAPE
        assert movie.dtype == np.dtype(dtype)
        assert movie.pixel_size == pytest.approx(0.83, abs=1e-6)
        np.testing.assert_array_equal(movie.read(dtype), data)
    if suffix in (".mrc", ".mrcs"):
        assert mrcfile.validate(str(path), print_file=io.StringIO()) is True
        with mrcfile.open(path) as mrc:
            assert bool(mrc.is_image_stack())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_array_equal(tifffile.imread(path), data)
        with tifffile.TiffFile(path) as tif:
            assert int(tif.pages[0].compression) == 5  # LZW by default


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
@pytest.mark.parametrize("problem", ["too_few", "too_many", "wrong_shape"])
def test_write_movie_failure_leaves_nothing(
    tmp_path: Path, frames: np.ndarray, suffix: str, problem: str
) -> None:
    if problem == "too_few":
        source = iter(frames[:-2])
    elif problem == "too_many":
        source = iter(np.concatenate([frames, frames[:1]]))
    else:
        source = iter([frames[0], frames[1], frames[2][:-1]])
    path = tmp_path / f"movie{suffix}"
    with pytest.raises(FileFormatError) as err:
        write_movie(
            path,
            source,
            n_frames=SHAPE[0],
            frame_shape=SHAPE[1:],
            dtype=np.uint16,
            pixel_size=1.0,
        )
    assert_one_line_naming(err, path)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


def test_failed_write_keeps_previous_file(tmp_path: Path, frames: np.ndarray) -> None:
    path = write_tiff_movie(tmp_path / "m.tif", frames, 1.0)
    before = path.read_bytes()
    with pytest.raises(FileFormatError):
        write_movie(
            path,
            iter(frames[:2]),
            n_frames=SHAPE[0],
            frame_shape=SHAPE[1:],
            dtype=np.uint16,
            pixel_size=1.0,
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


@pytest.mark.parametrize("compression", [None, "lzw"])
@pytest.mark.parametrize("keep", [0.5, 0.97, 0.02])
def test_truncated_tiff_is_an_error(
    tmp_path: Path, frames: np.ndarray, compression: str | None, keep: float
) -> None:
    raw = write_tiff_movie(tmp_path / "full.tif", frames, 1.0, compression=compression)
    data = raw.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(FileFormatError) as err:
        with open_movie(path) as movie:
            for i in range(movie.n_frames):  # a reader may defer the failure to decoding
                movie.frame(i)
    assert_one_line_naming(err, path)


def test_tiff_pages_of_different_size(tmp_path: Path, frames: np.ndarray) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(frames[0], photometric="minisblack")
        tif.write(frames[1, :20], photometric="minisblack")
    with pytest.raises(FileFormatError) as err:
        open_movie(path)
    assert_one_line_naming(err, path)
    assert "differ" in str(err.value)


def test_tiff_rgb_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(FileFormatError) as err:
        TiffMovieReader(path)
    assert_one_line_naming(err, path)


def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "text.tif"
    path.write_text("not a tiff at all\n" * 50)
    with pytest.raises(FileFormatError) as err:
        open_movie(path)
    assert_one_line_naming(err, path)


def test_missing_and_unsupported_movies(tmp_path: Path) -> None:
    for name in ("missing.tif", "missing.mrc"):
        with pytest.raises(FileFormatError) as err:
            open_movie(tmp_path / name)
        assert_one_line_naming(err, tmp_path / name)
    odd = tmp_path / "movie.eer2"
    odd.write_bytes(b"\0" * 64)
    with pytest.raises(FileFormatError) as err:
        open_movie(odd)
    assert_one_line_naming(err, odd)
    with pytest.raises(FileFormatError):
        write_movie(
            tmp_path / "x.png",
            iter([]),
            n_frames=0,
            frame_shape=(2, 2),
            dtype=np.uint16,
            pixel_size=1.0,
        )


def test_mrc_movie_single_image_is_one_frame(tmp_path: Path) -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_mrc(tmp_path / "one.mrc", image, 1.0)
    with open_movie(path) as movie:
        assert movie.shape == (1, 3, 4)
        np.testing.assert_array_equal(movie.frame(0), image)
        with pytest.raises(IndexError):
            movie.frame(1)


def test_write_tiff_movie_needs_3d(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError):
        write_tiff_movie(tmp_path / "m.tif", np.zeros((4, 4), np.uint16), 1.0)
    assert list(tmp_path.iterdir()) == []


def test_mrc_movie_of_an_unwritable_dtype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "complex.mrc"
    frames = iter([np.zeros((8, 8), np.complex64)])
    with pytest.raises(FileFormatError, match=r"complex\.mrc: cannot write complex64 frames"):
        write_movie(path, frames, n_frames=1, frame_shape=(8, 8), dtype=np.complex64, pixel_size=1)
    assert not path.exists()
