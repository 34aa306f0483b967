"""Uniform, lazy access to movies stored as MRC/MRCS or TIFF.

Examples
--------
>>> with open_movie("data/demo/movies/movie_0001.mrc") as movie:  # doctest: +SKIP
...     total = sum(movie.frame(i).astype("float32") for i in range(movie.n_frames))
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import mrcfile
import numpy as np
import tifffile

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path
from cryosnake.io._eer import EerMovieReader
from cryosnake.io._mrc import read_mrc
from cryosnake.io._tiff import TiffMovieReader

__all__ = ["MOVIE_SUFFIXES", "Movie", "open_movie", "write_movie"]

MOVIE_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff", ".eer")
_MRC_MODES = {
    np.dtype(np.int8): 0,
    np.dtype(np.int16): 1,
    np.dtype(np.float32): 2,
    np.dtype(np.uint16): 6,
    np.dtype(np.float16): 12,
}


class Movie:
    """A movie opened for reading.

    Attributes
    ----------
    path : Path
    n_frames : int
    frame_shape : (ny, nx)
    dtype : numpy dtype of the stored frames
    pixel_size : float
        Å per pixel as stored in the file, 0.0 when the file does not say.
    """

    def __init__(self, path: str | os.PathLike[str], *, eer_group: int | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        self._tiff: TiffMovieReader | EerMovieReader | None = None
        self._mmap: np.ndarray | None = None
        if suffix in (".mrc", ".mrcs"):
            data, voxel = read_mrc(self.path, mmap=True)
            if data.ndim == 2:
                data = data[None]
            self._mmap = data
            self.n_frames = int(data.shape[0])
            self.frame_shape = (int(data.shape[1]), int(data.shape[2]))
            self.dtype = np.dtype(data.dtype)
            self.pixel_size = voxel
        elif suffix == ".eer":
            if eer_group is None:
                raise FileFormatError(
                    f"{self.path}: an EER movie needs the number of EER frames per "
                    "fraction (--eer-group)"
                )
            self._tiff = EerMovieReader(self.path, eer_group)
            self.n_frames = self._tiff.n_frames
            self.frame_shape = self._tiff.frame_shape
            self.dtype = self._tiff.dtype
            self.pixel_size = self._tiff.pixel_size
        elif suffix in (".tif", ".tiff"):
            self._tiff = TiffMovieReader(self.path)
            self.n_frames = self._tiff.n_frames
            self.frame_shape = self._tiff.frame_shape
            self.dtype = self._tiff.dtype
            self.pixel_size = self._tiff.pixel_size
        else:
            raise FileFormatError(
                f"{self.path}: unsupported movie format {suffix!r} "
                f"(expected one of {', '.join(MOVIE_SUFFIXES)})"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, *self.frame_shape)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored (2D array, file dtype)."""
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"{self.path}: frame {index} out of range 0..{self.n_frames - 1}")
        if self._mmap is not None:
            return np.array(self._mmap[index])
        assert self._tiff is not None
        return self._tiff.frame(index)

    def read(self, dtype: np.typing.DTypeLike = np.float32) -> np.ndarray:
        """All frames as one (n, ny, nx) array of ``dtype``."""
        out = np.empty(self.shape, dtype=dtype)
        for i in range(self.n_frames):
            out[i] = self.frame(i)
        return out

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        self._mmap = None

    def __enter__(self) -> Movie:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_movie(path: str | os.PathLike[str], *, eer_group: int | None = None) -> Movie:
    """Open a movie (MRC/MRCS/TIFF/EER) for lazy frame access; see :class:`Movie`.

    ``eer_group``: EER frames summed into one movie frame (needed for ``.eer``).
    """
    return Movie(path, eer_group=eer_group)


def write_movie(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    n_frames: int,
    frame_shape: tuple[int, int],
    dtype: np.typing.DTypeLike,
    pixel_size: float,
    compression: str | None = "lzw",
) -> Path:
    """Write frames one at a time (never holding the movie in memory), atomically.

    ``.mrc``/``.mrcs`` become an MRC image stack with the pixel size in the header;
    ``.tif``/``.tiff`` a multi-page TIFF (LZW by default, as detectors write them).
    Fewer or more frames than ``n_frames``, or a frame of another shape, is an error
    and leaves no file behind.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    dt = np.dtype(dtype)
    count = 0

    def checked() -> Iterator[np.ndarray]:
        nonlocal count
        for frame in frames:
            if frame.shape != tuple(frame_shape):
                raise FileFormatError(
                    f"{p}: frame {count} has shape {frame.shape}, expected {tuple(frame_shape)}"
                )
            if count >= n_frames:
                raise FileFormatError(f"{p}: more than the {n_frames} frames announced")
            count += 1
            yield np.asarray(frame, dtype=dt)
        if count != n_frames:
            raise FileFormatError(f"{p}: got {count} frames, expected {n_frames}")

    if suffix in (".mrc", ".mrcs"):
        if dt not in _MRC_MODES:
            modes = ", ".join(str(d) for d in _MRC_MODES)
            raise FileFormatError(f"{p}: cannot write {dt} frames to MRC (use one of {modes})")
        with atomic_path(p) as tmp:
            mrc = mrcfile.new_mmap(
                tmp, shape=(n_frames, *frame_shape), mrc_mode=_MRC_MODES[dt], overwrite=True
            )
            try:
                for i, frame in enumerate(checked()):
                    mrc.data[i] = frame
                mrc.set_image_stack()
                mrc.voxel_size = float(pixel_size)
                mrc.update_header_stats()
            finally:
                mrc.close()
    elif suffix in (".tif", ".tiff"):
        # One series from an iterator of pages: the shaped description of the first
        # page then announces all frames, so tifffile, libtiff and RELION agree.
        with atomic_path(p) as tmp, tifffile.TiffWriter(tmp) as tif:
            pages = checked()
            tif.write(
                itertools.islice(pages, n_frames),  # tifffile closes what it is given
                shape=(n_frames, *frame_shape),
                dtype=dt,
                compression=compression,
                photometric="minisblack",
                metadata={"pixel_size": float(pixel_size), "axes": "ZYX"},
            )
            next(pages, None)  # raises if frames remain beyond n_frames
    else:
        raise FileFormatError(f"{p}: unsupported movie format {suffix!r}")
    return p
