"""Particle images read on demand: the memory model of the particle stages.

``class2d``, ``initial3d``, ``class3d`` and ``refine3d`` work on the particles' Fourier
transforms (spectra). A set of ``n`` spectra of ``b`` px takes ``8 n b (b/2 + 1)``
bytes (200,000 particles of 256 px: 52 GB), so it is held in memory only when it takes
less than :data:`IN_MEMORY_SHARE` of the memory budget (:func:`memory_budget`: the
host's available memory, capped by ``CRYOSNAKE_MEMORY``, and on a GPU also the device's
free memory). Otherwise the stage hands the ops a :class:`ParticleSpectra`: an object with
the array interface the ops use (``shape``, ``len``, slices, integer index arrays,
``reshape(n, -1)``, :func:`cryosnake.backend.take_rows`) that reads the images of the
rows asked for from their stacks and transforms them on the fly, so that each pass over
the particles reads them batch by batch and the memory in use depends on the batch
sizes (planned from the budget), not on the particle count. Each image's transform is
independent of its batch: both paths give the same numbers.

The stacks are read with positioned reads (``os.pread``) of contiguous runs of images,
not through memory maps, whose pages count in the process's resident memory. Stacks of
another pixel or box size than the working one (optics groups that differ) are
rescaled in Fourier space as they are read
(:func:`cryosnake.ops.fourier.rescale_images`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from cryosnake.backend import available_memory
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fourier import rescale_images

__all__ = [
    "IN_MEMORY_SHARE",
    "ParticleSpectra",
    "StackReader",
    "map_spectra",
    "memory_budget",
    "open_spectra",
    "plan_map_memory",
    "spectra_bytes",
    "stream_particles",
]

# The spectra stay in memory when they take less than this share of the budget.
IN_MEMORY_SHARE = 0.5
# Bytes of images read and transformed at once by a ParticleSpectra (at most).
READ_CHUNK = 64 << 20

Transform = Callable[[np.ndarray], np.ndarray]


def memory_budget(xp: Any) -> int:
    """Bytes the particle stack may take: the host's available memory (capped by
    ``CRYOSNAKE_MEMORY``) and, for CuPy's ``xp``, at most the device's free memory."""
    host = available_memory(np)
    return host if xp is np else min(host, available_memory(xp))


def spectra_bytes(n: int, box: int) -> int:
    """Bytes of ``n`` complex64 half-plane spectra of ``box`` px."""
    return n * box * (box // 2 + 1) * 8


def stream_particles(nbytes: int, budget: int) -> bool:
    """Whether spectra of ``nbytes`` are to be streamed: they take
    :data:`IN_MEMORY_SHARE` of ``budget`` bytes or more."""
    return nbytes >= IN_MEMORY_SHARE * budget


def open_spectra(
    reader: StackReader,
    transform: Transform,
    tail: tuple[int, ...],
    xp: Any,
    device_transform: Callable[[Any], Any] | None = None,
    reserved: int = 0,
) -> tuple[Any, str]:
    """The spectra of ``reader``'s particles for a stage computing with ``xp``, and a
    note for its log.

    ``transform`` maps (m, box, box) float32 images to (m, *tail) complex64 spectra
    (NumPy). When the spectra take less than :data:`IN_MEMORY_SHARE` of
    :func:`memory_budget` less ``reserved`` bytes (the stage's Fourier grids) they are
    computed once into a NumPy array (with ``device_transform`` on ``xp``'s device into
    an ``xp`` array, when given); otherwise the result is a :class:`ParticleSpectra`
    that reads them when indexed (through ``device_transform`` on a GPU, when given).
    """
    source = ParticleSpectra(reader, transform, tail)
    budget = max(0, memory_budget(xp) - reserved)
    size = f"{source.nbytes / 2**30:.2f} GiB of spectra, memory budget {budget / 2**30:.2f} GiB"
    if stream_particles(source.nbytes, budget):
        if device_transform is not None and xp is not np:
            # The batches go through the same device transform as the in-memory path,
            # so that streaming does not change the numbers on a GPU either.
            source.transform = _on_device(xp, device_transform)
        return source, f"particles streamed from their stacks batch by batch ({size})"
    if device_transform is not None:
        return source.to_array(xp, device_transform), f"particles in memory ({size})"
    return source[:], f"particles in memory ({size})"


def plan_map_memory(stage: str, device: str, box: int, n: int, xp: Any) -> r3.MemoryPlan:
    """The memory plan of a stage that reconstructs maps (refine3d, class3d) on
    ``device`` (:func:`cryosnake.ops.refine3d.plan_memory`); a one-line error with the
    figures when the box's Fourier grids do not fit."""
    try:
        return r3.plan_memory(box, n, xp)
    except MemoryError as err:
        raise CryosnakeError(
            f"{stage} on the {device}: {err}; extract the particles with a smaller box "
            "(or binned)" + (", or run with --device cpu" if device == "gpu" else "")
        ) from err


def map_spectra(stage: str, reader: StackReader, xp: Any, plan: r3.MemoryPlan) -> Any:
    """The spectra of a stage planned by :func:`plan_map_memory`: in memory (moved to
    the device once when the plan says they fit there), or streamed from their stacks
    (on a GPU, moved to it batch by batch); which, said on stdout."""
    box = reader.box
    spectra, note = open_spectra(
        reader, r3.particle_spectra, (box, box // 2 + 1), xp, reserved=plan.grids
    )
    if plan.stack_on_device and isinstance(spectra, np.ndarray):
        spectra = xp.asarray(spectra)
        note += ", moved to the device once"
    elif xp is not np:
        note += ", moved to the device batch by batch"
    print(f"{stage}: {note}", flush=True)
    return spectra


def _on_device(xp: Any, transform: Callable[[Any], Any]) -> Transform:
    """``transform`` run on ``xp``'s device, from NumPy images to NumPy spectra."""

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(xp.asnumpy(transform(xp.asarray(images))))

    return run


@dataclass(frozen=True)
class _Stack:
    path: Path
    offset: int  # bytes before the first image
    dtype: np.dtype[Any]
    count: int  # images in the file
    box: int  # px of its images
    pixel_size: float | None  # Å/px of its images, when they are to be rescaled


def _open_stack(path: Path, box: int, pixel_size: float | None = None) -> _Stack:
    """A stack's header; images of another size than ``box`` are an error unless their
    ``pixel_size`` is given (they are then rescaled)."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            header = mrc.header
            dtype = mrcfile.utils.data_dtype_from_header(header)
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            offset = 1024 + int(header.nsymbt)
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: not a readable MRC stack ({err})") from err
    if nx != ny or (pixel_size is None and nx != box):
        raise FileFormatError(f"{path}: images of {(ny, nx)} px, expected {box}")
    size = path.stat().st_size
    if offset + nz * nx * ny * dtype.itemsize > size:
        raise FileFormatError(f"{path}: truncated ({size} bytes for {nz} images of {nx} px)")
    return _Stack(path, offset, np.dtype(dtype), nz, nx, pixel_size)


class StackReader:
    """The (box, box) float32 images of the particles of a STAR file, by row.

    groups : stack -> [(row, image number)] (:func:`cryosnake.stages._particles.image_groups`)
    n : number of particles (rows); box : image size (px)
    pixel_size, rescaled : the working pixel size (Å/px) and the native pixel size of
        the stacks whose images are to be brought to it and to ``box``

    Every stack's header is checked (image size, enough images) when the reader is made.
    """

    def __init__(
        self,
        groups: dict[Path, list[tuple[int, int]]],
        n: int,
        box: int,
        pixel_size: float | None = None,
        rescaled: dict[Path, float] | None = None,
    ) -> None:
        self.box = box
        self.n = n
        self.pixel_size = pixel_size
        rescaled = rescaled or {}
        self._stacks: list[_Stack] = []
        self._stack_of = np.full(n, -1, dtype=np.int64)
        self._index_of = np.zeros(n, dtype=np.int64)
        for number, (path, items) in enumerate(groups.items()):
            stack = _open_stack(path, box, rescaled.get(path))
            if stack.pixel_size is not None and stack.box == box and pixel_size is not None:
                if abs(stack.pixel_size - pixel_size) <= 1e-6 * pixel_size:
                    stack = replace(stack, pixel_size=None)  # already on the working grid
            rows = np.array([r for r, _ in items], dtype=np.int64)
            index = np.array([i for _, i in items], dtype=np.int64) - 1
            if index.min() < 0 or index.max() >= stack.count:
                raise FileFormatError(
                    f"{path}: image {index.max() + 1} requested, the stack has {stack.count}"
                )
            self._stacks.append(stack)
            self._stack_of[rows] = number
            self._index_of[rows] = index
        if (self._stack_of < 0).any():
            raise ValueError("groups do not cover every row")

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), box, box) float32 images of the STAR ``rows`` (in that order).

        The distinct images are sorted by stack and position and read in contiguous runs,
        one positioned read per run."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.box, self.box), dtype=np.float32)
        key = self._stack_of[rows] * (1 << 40) + self._index_of[rows]
        unique, inverse = np.unique(key, return_inverse=True)
        stack_ids, index = np.divmod(unique, 1 << 40)
        images = np.empty((len(unique), self.box, self.box), dtype=np.float32)
        breaks = np.flatnonzero((np.diff(stack_ids) != 0) | (np.diff(index) != 1)) + 1
        starts = np.r_[0, breaks]
        stops = np.r_[breaks, len(unique)]
        handles: dict[int, int] = {}
        try:
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                sid = int(stack_ids[a])
                stack = self._stacks[sid]
                if sid not in handles:
                    handles[sid] = os.open(stack.path, os.O_RDONLY)
                per = stack.box * stack.box * stack.dtype.itemsize
                nbytes = (b - a) * per
                buf = os.pread(handles[sid], nbytes, stack.offset + int(index[a]) * per)
                if len(buf) != nbytes:
                    raise FileFormatError(f"{stack.path}: truncated")
                run = np.frombuffer(buf, dtype=stack.dtype).reshape(b - a, stack.box, stack.box)
                if stack.pixel_size is not None and self.pixel_size is not None:
                    run = rescale_images(run, stack.pixel_size, self.pixel_size, self.box)
                images[a:b] = run
                del buf, run
        finally:
            for fd in handles.values():
                os.close(fd)
        if len(unique) == len(rows) and (np.diff(key) > 0).all():
            return images  # rows in file order (a slice of a STAR file in stack order)
        return images[inverse.reshape(-1)]


class ParticleSpectra:
    """Lazy (n, ...) complex64 particle spectra: ``transform`` of the images of
    ``reader``'s rows ``rows`` (all when None), computed when indexed.

    Indexing with a slice, an integer array or an integer gives NumPy arrays, computed
    :data:`READ_CHUNK` bytes of images at a time; :meth:`subset` (what
    :func:`cryosnake.backend.take_rows` calls) and :meth:`map_rows` give lazy views,
    ``reshape(n, -1)`` a lazy flattened view. ``np.asarray`` of it is refused (it would
    read every particle): ``spectra[:]`` materialises it on purpose.

    transform : (m, box, box) float32 images -> (m, *tail) complex64 spectra
    tail : the shape of one particle's spectrum
    """

    ndim = 3
    dtype = np.dtype(np.complex64)

    def __init__(
        self,
        reader: StackReader,
        transform: Transform,
        tail: tuple[int, ...],
        rows: np.ndarray | None = None,
    ) -> None:
        self.reader = reader
        self.transform = transform
        self.tail = tuple(int(t) for t in tail)
        self.rows = np.arange(reader.n, dtype=np.int64) if rows is None else rows
        self.ndim = 1 + len(self.tail)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.tail)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * int(np.prod(self.tail)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "np.asarray of a ParticleSpectra would read every particle; index it instead"
        )

    def subset(self, indices: Any) -> ParticleSpectra:
        """The lazy rows ``indices`` (NumPy integers or a slice) of this set."""
        return ParticleSpectra(self.reader, self.transform, self.tail, self.rows[indices])

    def map_rows(self, fn: Transform, tail: tuple[int, ...]) -> ParticleSpectra:
        """Lazy ``fn`` (a per-particle map of (m, *self.tail) arrays to (m, *tail)) of
        these spectra."""
        first = self.transform

        def both(images: np.ndarray) -> np.ndarray:
            return fn(first(images))

        return ParticleSpectra(self.reader, both, tail, self.rows)

    def reshape(self, *shape: Any) -> _FlatSpectra:
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        if len(shape) != 2 or int(shape[0]) != len(self) or int(shape[1]) not in (-1, self.size):
            raise ValueError(f"a ParticleSpectra reshapes to ({len(self)}, -1) only, not {shape}")
        return _FlatSpectra(self)

    @property
    def size(self) -> int:
        return len(self) * int(np.prod(self.tail))

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self._compute(self.rows[[int(key)]])[0]
            return out[rest] if rest else out
        out = self._compute(self.rows[key])
        return out[(slice(None), *rest)] if rest else out

    def to_array(self, xp: Any, transform: Callable[[Any], Any]) -> Any:
        """All the spectra in one ``xp`` array, ``transform`` (on ``xp``'s device) applied
        to :data:`READ_CHUNK` bytes of images at a time."""
        out = xp.empty(self.shape, dtype=xp.complex64)
        chunk = max(1, READ_CHUNK // (self.reader.box**2 * 4))
        for start in range(0, len(self), chunk):
            images = xp.asarray(self.reader.read(self.rows[start : start + chunk]))
            out[start : start + len(images)] = transform(images)
            del images
        return out

    def _compute(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        out = np.empty((len(rows), *self.tail), dtype=np.complex64)
        box = self.reader.box
        chunk = max(1, READ_CHUNK // (box * box * 4))
        for start in range(0, len(rows), chunk):
            images = self.reader.read(rows[start : start + chunk])
            out[start : start + len(images)] = self.transform(images)
            del images
        return out


class _FlatSpectra:
    """``ParticleSpectra.reshape(n, -1)``: rows flattened to (size,) when indexed."""

    def __init__(self, source: ParticleSpectra) -> None:
        self.source = source

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.source), int(np.prod(self.source.tail)))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        block = self.source[key]
        if block.ndim == len(self.source.tail):  # one particle
            row = block.reshape(-1)
            return row[rest] if rest else row
        flat = block.reshape(len(block), -1)
        return flat[(slice(None), *rest)] if rest else flat
