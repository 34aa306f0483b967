"""TIFF movies (uncompressed, LZW, deflate; as K3/Falcon/EPU write them)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path, require_file

__all__ = ["TiffMovieReader", "write_tiff_movie"]

PathLike = str | os.PathLike[str]


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _strict_tifffile(path: Path) -> Iterator[None]:
    """Turn tifffile's logged warnings (e.g. a broken page chain after truncation,
    where it would silently return fewer frames) into a FileFormatError."""
    logger = logging.getLogger("tifffile")
    collector = _Collector()
    propagate = logger.propagate
    logger.addHandler(collector)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate
    if collector.messages:
        msg = " ".join(collector.messages[0].split())
        raise FileFormatError(f"{path}: truncated or corrupt TIFF ({msg})")


class TiffMovieReader:
    """Frame-by-frame access to a multi-page TIFF movie.

    Pages are decoded on demand, so a movie is never held twice in memory.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = require_file(path)
        size = self.path.stat().st_size
        shapes: set[tuple[int, ...]] = set()
        dtypes: set[np.dtype] = set()
        try:
            with _strict_tifffile(self.path):
                self._tif = tifffile.TiffFile(self.path)
                pages = list(self._tif.pages)
            for page in pages:
                shapes.add(tuple(page.shape))
                dtypes.add(np.dtype(page.dtype))
                offsets = page.dataoffsets
                counts = page.databytecounts
                if any(o + c > size for o, c in zip(offsets, counts, strict=True)):
                    raise FileFormatError(
                        f"{self.path}: truncated (frame {pages.index(page)} "
                        f"extends past the end of the file)"
                    )
        except FileFormatError:
            self.close()
            raise
        except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error
            raise FileFormatError(f"{self.path}: not a valid TIFF file ({err})") from err
        n = len(pages)
        if n == 0:
            self.close()
            raise FileFormatError(f"{self.path}: TIFF file holds no frames")
        if len(shapes) != 1:
            self.close()
            raise FileFormatError(
                f"{self.path}: frames differ in size ({', '.join(map(str, sorted(shapes)))})"
            )
        shape = shapes.pop()
        if len(shape) != 2:
            self.close()
            raise FileFormatError(f"{self.path}: frames must be 2D greyscale, got {shape}")
        self.n_frames = n
        self.frame_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = dtypes.pop()
        # EER (Falcon): pages compressed with TIFF codes 65000-65002.
        self.is_eer = all(page.compression in (65000, 65001, 65002) for page in pages)
        self.pixel_size = 0.0 if self.is_eer else self._pixel_size()

    def _pixel_size(self) -> float:
        desc = self._tif.pages[0].description  # type: ignore[union-attr]
        try:
            meta = json.loads(desc)
            return float(meta.get("pixel_size", 0.0))
        except (ValueError, TypeError, AttributeError):
            return 0.0

    def frame(self, index: int) -> np.ndarray:
        try:
            return np.asarray(self._tif.pages[index].asarray())
        except Exception as err:
            raise FileFormatError(
                f"{self.path}: frame {index} cannot be decoded ({err}); file truncated?"
            ) from err

    def raw_page(self, index: int) -> tuple[bytes, int, dict[int, int]]:
        """Page ``index`` undecoded: its bytes (one strip), compression code and the
        integer values of its private EER tags 65007-65009 (when present)."""
        page = self._tif.pages[index]
        offsets, counts = page.dataoffsets, page.databytecounts
        handle = self._tif.filehandle
        data = bytearray()
        for offset, count in zip(offsets, counts, strict=True):
            handle.seek(offset)
            data += handle.read(count)
        tags = {
            code: int(page.tags.valueof(code))  # type: ignore[union-attr]
            for code in (65007, 65008, 65009)
            if code in page.tags  # type: ignore[union-attr]
        }
        return bytes(data), int(page.compression), tags

    def close(self) -> None:
        if hasattr(self, "_tif"):
            self._tif.close()


def write_tiff_movie(
    path: PathLike,
    frames: np.ndarray,
    pixel_size: float,
    *,
    compression: str | None = "lzw",
) -> Path:
    """Write ``frames`` (n, ny, nx) as a multi-page TIFF, atomically.

    The pixel size (Å) is stored in the JSON image description; readers of real
    detector TIFFs should not rely on it and take the pixel size from the config.
    """
    p = Path(path)
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise FileFormatError(f"{p}: a TIFF movie needs (n, ny, nx) frames, got {arr.shape}")
    with atomic_path(p) as tmp:
        tifffile.imwrite(
            tmp,
            arr,
            compression=compression,
            photometric="minisblack",
            metadata={"pixel_size": float(pixel_size), "axes": "ZYX"},
        )
    return p
