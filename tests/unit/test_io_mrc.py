"""MRC/MRCS reading and writing: round trips, validation, corrupt files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import read_mrc, read_mrc_header, write_mrc


def assert_one_line_naming(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 20, 28)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "is_stack"),
    [
        ("image.mrc", (20, 28), np.float32, False),
        ("stack.mrcs", (6, 20, 28), np.float32, True),
        ("volume.mrc", (6, 20, 28), np.float32, False),
        ("counts.mrcs", (3, 16, 12), np.uint16, True),
        ("small.mrc", (16, 12), np.int8, False),
        ("ints.mrc", (16, 12), np.int16, False),
        ("half.mrc", (16, 12), np.float16, False),
    ],
)
def test_round_trip_preserves_data_and_voxel_size(
    tmp_path: Path, name: str, shape: tuple[int, ...], dtype: type, is_stack: bool
) -> None:
    rng = np.random.default_rng(1)
    data = (rng.normal(size=shape) * 20).astype(dtype)
    path = write_mrc(tmp_path / name, data, 1.37)
    back, voxel = read_mrc(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, data)
    assert voxel == pytest.approx(1.37, abs=1e-6)
    header = read_mrc_header(path)
    assert header["shape"] == shape
    assert header["voxel_size"] == pytest.approx(1.37, abs=1e-6)
    assert header["is_stack"] is is_stack
    assert mrcfile.validate(str(path), print_file=io.StringIO()) is True
    with mrcfile.open(path) as mrc:
        assert mrc.voxel_size.x == pytest.approx(1.37, abs=1e-6)
        assert mrc.voxel_size.y == pytest.approx(1.37, abs=1e-6)
        if len(shape) == 3:
            assert bool(mrc.is_image_stack()) is is_stack
            assert bool(mrc.is_volume()) is (not is_stack)


def test_float64_is_stored_as_float32(tmp_path: Path) -> None:
    data = np.linspace(0, 1, 48).reshape(6, 8)
    back, _ = read_mrc(write_mrc(tmp_path / "f.mrc", data, 2.0))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-6)


def test_explicit_kind_overrides_suffix(tmp_path: Path, volume: np.ndarray) -> None:
    write_mrc(tmp_path / "movie.mrc", volume, 1.0, kind="stack")
    write_mrc(tmp_path / "map.mrcs", volume, 1.0, kind="volume")
    assert read_mrc_header(tmp_path / "movie.mrc")["is_stack"] is True
    assert read_mrc_header(tmp_path / "map.mrcs")["is_stack"] is False


def test_memory_mapped_read(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_mrc(tmp_path / "stack.mrcs", volume, 1.5)
    data, voxel = read_mrc(path, mmap=True)
    assert isinstance(data, np.memmap) or isinstance(data.base, np.memmap)
    assert voxel == pytest.approx(1.5, abs=1e-6)
    np.testing.assert_array_equal(data[3], volume[3])
    with pytest.raises((ValueError, TypeError)):
        data[0, 0, 0] = 1.0  # read-only


@pytest.mark.parametrize(
    "bad_write",
    [
        pytest.param(lambda p: write_mrc(p, np.zeros((4, 4), np.complex64), 1.0), id="complex"),
        pytest.param(lambda p: write_mrc(p, np.zeros((2, 2, 2, 2), np.float32), 1.0), id="4d"),
        pytest.param(lambda p: write_mrc(p, np.zeros((4, 4), np.float32), 0.0), id="voxel0"),
        pytest.param(lambda p: write_mrc(p, np.zeros((4, 4), np.int64), 1.0), id="int64"),
    ],
)
def test_write_rejects_bad_input_and_leaves_no_file(tmp_path: Path, bad_write) -> None:
    path = tmp_path / "out.mrc"
    with pytest.raises(FileFormatError) as err:
        bad_write(path)
    assert_one_line_naming(err, path)
    assert list(tmp_path.iterdir()) == []


def _written(tmp_path: Path, volume: np.ndarray) -> bytes:
    return write_mrc(tmp_path / "good.mrc", volume, 1.0).read_bytes()


def _corrupt_cases(raw: bytes) -> dict[str, bytes]:
    bad_map = bytearray(raw)
    bad_map[208:212] = b"XXXX"  # MAP ID
    bad_mode = bytearray(raw)
    bad_mode[12:16] = struct.pack("<i", 99)
    return {
        "truncated_data": raw[:-100],
        "truncated_header": raw[:500],
        "empty": b"",
        "bad_map_id": bytes(bad_map),
        "unknown_mode": bytes(bad_mode),
        "not_mrc": b"hello, this is a text file\n" * 100,
    }


@pytest.mark.parametrize(
    "case",
    ["truncated_data", "truncated_header", "empty", "bad_map_id", "unknown_mode", "not_mrc"],
)
@pytest.mark.parametrize("reader", ["read", "read_mmap", "header"])
def test_corrupt_files_raise_one_line_error_naming_file(
    tmp_path: Path, volume: np.ndarray, case: str, reader: str
) -> None:
    raw = _written(tmp_path, volume)
    path = tmp_path / f"{case}.mrc"
    path.write_bytes(_corrupt_cases(raw)[case])
    with pytest.raises(FileFormatError) as err:
        if reader == "read":
            read_mrc(path)
        elif reader == "read_mmap":
            read_mrc(path, mmap=True)
        else:
            read_mrc_header(path)
    assert_one_line_naming(err, path)


def _complex_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / f"mode{mode}.mrc"
    if mode == 4:
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.ones((4, 4), np.complex64))
    else:
        # complex int16: 4 bytes per voxel; write int16 (4, 8) and relabel as (4, 4) mode 3
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.ones((4, 8), np.int16))
        raw = bytearray(path.read_bytes())
        raw[0:4] = struct.pack("<i", 4)  # nx
        raw[12:16] = struct.pack("<i", 3)  # mode
        raw[28:32] = struct.pack("<i", 4)  # mx
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("mode", [3, 4])
def test_complex_modes_are_rejected(tmp_path: Path, mode: int) -> None:
    path = _complex_file(tmp_path, mode)
    for read in (read_mrc, lambda p: read_mrc(p, mmap=True), read_mrc_header):
        with pytest.raises(CryosnakeError) as err:
            read(path)
        assert_one_line_naming(err, path)
        assert "mode" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mrc"
    with pytest.raises(FileFormatError) as err:
        read_mrc(path)
    assert_one_line_naming(err, path)
    assert "no such file" in str(err.value)


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "a.mrc"
    write_mrc(path, np.zeros((8, 8), np.float32), 1.0)
    write_mrc(path, np.ones((4, 6), np.float32), 2.0)
    data, voxel = read_mrc(path)
    assert data.shape == (4, 6)
    assert data.min() == 1.0
    assert voxel == pytest.approx(2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mrc"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_rejected_file_is_not_left_open(tmp_path: Path) -> None:
    path = _complex_file(tmp_path, 4)
    before = len(list(Path("/proc/self/fd").iterdir()))
    with pytest.raises(FileFormatError) as err:
        read_mrc(path, mmap=True)
    # the exception (and its traceback) is still alive here: no descriptor may be held
    assert err.value is not None
    assert len(list(Path("/proc/self/fd").iterdir())) == before
