"""EER movies (Falcon 4/4i electron-event representation), read through tifffile.

An EER file holds one binary frame per TIFF page: every detected electron, several
hundred to over a thousand frames per exposure. Like RELION, cryosnake sums
``group`` consecutive EER frames into one *fraction* and treats fractions as movie
frames (the last ``n_pages % group`` EER frames are left out); the dose per frame
given to the stages is then the dose per fraction. Pages are decoded by imagecodecs
through tifffile at the detector's physical pixel size (no super-resolution).

The bit stream (EER v1, TIFF compression 65001): for each electron in raster order,
the number of empty pixels before it as a 7-bit code, where code 127 means "127
empty pixels, no electron yet", followed by 2 + 2 sub-pixel bits; bits are packed
least significant first; the stream ends with a code that brings the position to
exactly one past the last pixel, and its length is a whole number of 16-bit words.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable

import numpy as np

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path
from cryosnake.io._tiff import TiffMovieReader

__all__ = ["EER_COMPRESSIONS", "EerMovieReader", "encode_eer_frame", "write_eer"]

PathLike = str | os.PathLike[str]
EER_COMPRESSIONS = (65000, 65001, 65002)
_RLE_BITS = 7
_SUB_BITS = 4
_OVERFLOW = (1 << _RLE_BITS) - 1


class EerMovieReader:
    """Fractions of an EER movie: sums of ``group`` consecutive EER frames."""

    def __init__(self, path: PathLike, group: int) -> None:
        self._tiff = TiffMovieReader(path)
        self.path = self._tiff.path
        if not self._tiff.is_eer:
            self._tiff.close()
            raise FileFormatError(f"{self.path}: not an EER file (pages are not EER-compressed)")
        if group < 1:
            self._tiff.close()
            raise FileFormatError(f"{self.path}: EER grouping must be >= 1, got {group}")
        self.eer_frames = self._tiff.n_frames
        self.group = group
        self.n_frames = self.eer_frames // group
        if self.n_frames == 0:
            self._tiff.close()
            raise FileFormatError(
                f"{self.path}: {self.eer_frames} EER frames, fewer than one group of {group}"
            )
        self.frame_shape = self._tiff.frame_shape
        self.dtype = np.dtype(np.uint16)
        self.pixel_size = 0.0  # not in the file in a form we can trust

    def eer_frame(self, page: int) -> np.ndarray:
        """EER frame ``page`` (0-based) as a (ny, nx) bool image."""
        import imagecodecs

        data, compression, tags = self._tiff.raw_page(page)
        skip = {65000: 8, 65001: 7}.get(compression, tags.get(65007, 7))
        horz, vert = tags.get(65008, 2), tags.get(65009, 2)
        try:
            return np.asarray(imagecodecs.eer_decode(data, self.frame_shape, skip, horz, vert))
        except Exception as err:
            raise FileFormatError(
                f"{self.path}: EER frame {page} cannot be decoded ({err}); file truncated?"
            ) from err

    def frame(self, index: int) -> np.ndarray:
        """Fraction ``index``: the sum of its EER frames, uint16 counts."""
        out = np.zeros(self.frame_shape, dtype=np.uint16)
        for page in range(index * self.group, (index + 1) * self.group):
            out += self.eer_frame(page)
        return out

    def close(self) -> None:
        self._tiff.close()


def encode_eer_frame(frame: np.ndarray) -> bytes:
    """EER v1 bit stream of one binary frame (0 or 1 electron per pixel)."""
    flat = np.flatnonzero(np.asarray(frame).ravel())
    size = int(np.asarray(frame).size)
    # Electrons, then the end marker one past the last pixel.
    runs = np.diff(np.concatenate([[-1], flat, [size]])) - 1
    overflow, rest = np.divmod(runs, _OVERFLOW)
    code = _RLE_BITS + _SUB_BITS
    width = _RLE_BITS * overflow + code
    if rest[-1] == 0 and overflow[-1] > 0:
        width[-1] -= code  # the overflow codes alone land on the end
    start = np.concatenate([[0], np.cumsum(width)[:-1]])
    total = int(width.sum()) + code  # room for the decoder's look-ahead
    bits = np.zeros((total + 15) // 16 * 16, dtype=np.uint8)
    steps = np.arange(int(overflow.sum())) - np.repeat(np.cumsum(overflow) - overflow, overflow)
    first = np.repeat(start, overflow) + _RLE_BITS * steps
    last = start + _RLE_BITS * overflow
    keep = ~((rest == 0) & (overflow > 0) & (np.arange(len(rest)) == len(rest) - 1))
    for bit in range(_RLE_BITS):
        bits[first + bit] = 1
        bits[last[keep] + bit] = (rest[keep] >> bit) & 1
    return np.packbits(bits, bitorder="little").tobytes()


def write_eer(
    path: PathLike, frames: Iterable[np.ndarray], *, frame_shape: tuple[int, int]
) -> None:
    """Write binary frames as an EER file (little-endian TIFF, compression 65001).

    For simulated data and tests: it reads back with tifffile/imagecodecs like a
    Falcon EER (without the acquisition metadata). Written atomically.
    """
    ny, nx = frame_shape
    segments = []
    for i, frame in enumerate(frames):
        if frame.shape != (ny, nx):
            raise FileFormatError(f"{path}: EER frame {i} is {frame.shape}, expected {frame_shape}")
        if frame.max(initial=0) > 1:
            raise FileFormatError(f"{path}: EER frame {i} has more than one electron per pixel")
        segments.append(encode_eer_frame(frame))
    if not segments:
        raise FileFormatError(f"{path}: an EER file needs at least one frame")
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    offsets = []
    for segment in segments:
        offsets.append(len(out))
        out += segment
    tags_per_page = 8
    ifds = []
    for segment, offset in zip(segments, offsets, strict=True):
        ifds.append(len(out))
        tags = [  # (tag, type: 3 SHORT / 4 LONG, value)
            (256, 4, nx),  # ImageWidth
            (257, 4, ny),  # ImageLength
            (258, 3, 1),  # BitsPerSample
            (259, 3, 65001),  # Compression: EER, 7-bit runs
            (262, 3, 1),  # PhotometricInterpretation: min-is-black
            (273, 4, offset),  # StripOffsets
            (278, 4, ny),  # RowsPerStrip
            (279, 4, len(segment)),  # StripByteCounts
        ]
        out += struct.pack("<H", tags_per_page)
        for tag, kind, value in tags:
            if kind == 3:
                out += struct.pack("<HHIHH", tag, kind, 1, value, 0)
            else:
                out += struct.pack("<HHII", tag, kind, 1, value)
        out += b"\x00\x00\x00\x00"  # offset of the next IFD, set below
    for this, following in itertools.pairwise(ifds):
        at = this + 2 + 12 * tags_per_page
        out[at : at + 4] = struct.pack("<I", following)
    out[4:8] = struct.pack("<I", ifds[0])
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(out))
