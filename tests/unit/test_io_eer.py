"""EER movies: our encoder against imagecodecs' decoder, grouping, bad files."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from cryosnake.errors import FileFormatError
from cryosnake.io import open_movie, write_eer, write_tiff_movie
from cryosnake.io._eer import encode_eer_frame


@pytest.mark.parametrize(
    ("shape", "density"),
    [((300, 200), 0.02), ((64, 48), 0.002), ((256, 256), 0.3), ((64, 48), 0.0), ((127, 2), 0.0)],
)
def test_encoded_frames_decode_to_the_same_electrons(
    shape: tuple[int, int], density: float
) -> None:
    for seed in range(4):
        frame = np.random.default_rng(seed).random(shape) < density
        for last in (False, True):  # an electron in the very last pixel, or none
            frame[-1, -1] = last
            decoded = imagecodecs.eer_decode(encode_eer_frame(frame), shape, 7, 2, 2)
            np.testing.assert_array_equal(decoded, frame)


def test_eer_movie_sums_groups_of_frames(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).random((23, 90, 70)) < 0.05
    path = tmp_path / "movie.eer"
    write_eer(path, iter(frames), frame_shape=(90, 70))
    with open_movie(path, eer_group=5) as movie:
        assert movie.n_frames == 4  # 3 left-over EER frames are dropped
        assert movie.frame_shape == (90, 70) and movie.pixel_size == 0.0
        for i in range(4):
            np.testing.assert_array_equal(movie.frame(i), frames[5 * i : 5 * i + 5].sum(axis=0))


def test_bad_eer_input(tmp_path: Path) -> None:
    frames = np.random.default_rng(2).random((6, 40, 30)) < 0.1
    path = tmp_path / "movie.eer"
    write_eer(path, iter(frames), frame_shape=(40, 30))
    with pytest.raises(FileFormatError, match=r"movie\.eer: an EER movie needs .*--eer-group"):
        open_movie(path)
    with pytest.raises(FileFormatError, match="6 EER frames, fewer than one group of 10"):
        open_movie(path, eer_group=10)
    truncated = tmp_path / "truncated.eer"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(FileFormatError, match=r"truncated\.eer"):
        with open_movie(truncated, eer_group=2) as movie:
            movie.frame(2)
    plain = tmp_path / "plain.eer"
    write_tiff_movie(plain, np.zeros((3, 8, 8), np.uint16), 1.0)
    with pytest.raises(FileFormatError, match=r"plain\.eer: not an EER file"):
        open_movie(plain, eer_group=1)
    with pytest.raises(FileFormatError, match="more than one electron"):
        write_eer(tmp_path / "x.eer", iter([np.full((4, 4), 2)]), frame_shape=(4, 4))
    assert not (tmp_path / "x.eer").exists()
