"""Particle images read on demand (:mod:`cryosnake.stages._images`): the reader against
mrcfile, the lazy spectra against the arrays they stand for, the in-memory/streamed
decision, and a refinement iteration on streamed particles against the in-memory one
(same numbers, never all particles read at once)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from particles_sim import simulate_particles, write_particles

from cryosnake.backend import take_rows
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fourier import rescale_images
from cryosnake.stages._images import (
    ParticleSpectra,
    StackReader,
    open_spectra,
    stream_particles,
)
from cryosnake.stages._particles import ctf_table, open_particles

BOX = 16


def _write(path: Path, data: np.ndarray, extended: int = 0) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if extended:
            mrc.set_extended_header(np.zeros(extended, dtype=np.uint8))


@pytest.fixture
def stacks(tmp_path: Path) -> tuple[dict[Path, list[tuple[int, int]]], np.ndarray]:
    """Two stacks (float32; int16 with an extended header) and the expected images of
    7 STAR rows that visit them out of order, one image twice."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, BOX, BOX)).astype(np.float32)
    b = rng.integers(-300, 300, size=(4, BOX, BOX)).astype(np.int16)
    _write(tmp_path / "a.mrcs", a)
    _write(tmp_path / "b.mrcs", b, extended=96)
    groups = {
        tmp_path / "a.mrcs": [(0, 3), (2, 1), (4, 2), (6, 3)],
        tmp_path / "b.mrcs": [(1, 4), (3, 2), (5, 3)],
    }
    expected = np.stack([a[2], b[3], a[0], b[1], a[1], b[2], a[2]]).astype(np.float32)
    return groups, expected


def _spectra(images: np.ndarray) -> np.ndarray:
    return np.asarray(r3.particle_spectra(images))


def test_reader_reads_the_images_of_any_rows(
    stacks: tuple[dict[Path, list[tuple[int, int]]], np.ndarray],
) -> None:
    groups, expected = stacks
    reader = StackReader(groups, 7, BOX)
    np.testing.assert_array_equal(reader.read(np.arange(7)), expected)
    rows = np.array([6, 0, 5, 5, 1])
    np.testing.assert_array_equal(reader.read(rows), expected[rows])
    assert reader.read(np.array([], dtype=np.int64)).shape == (0, BOX, BOX)


def test_reader_checks_the_stacks(
    stacks: tuple[dict[Path, list[tuple[int, int]]], np.ndarray], tmp_path: Path
) -> None:
    groups, _ = stacks
    with pytest.raises(FileFormatError, match="image 9 requested"):
        StackReader({**groups, tmp_path / "b.mrcs": [(1, 9)]}, 7, BOX)
    with pytest.raises(FileFormatError, match="expected 8"):
        StackReader(groups, 7, 8)
    short = tmp_path / "short.mrcs"
    _write(short, np.zeros((3, BOX, BOX), np.float32))
    with open(short, "r+b") as handle:
        handle.truncate(1024 + 2 * BOX * BOX * 4)
    with pytest.raises(FileFormatError, match="truncated"):
        StackReader({short: [(0, 1)]}, 1, BOX)


def test_lazy_spectra_index_like_the_array(
    stacks: tuple[dict[Path, list[tuple[int, int]]], np.ndarray],
) -> None:
    groups, images = stacks
    full = _spectra(images)
    lazy = ParticleSpectra(StackReader(groups, 7, BOX), _spectra, full.shape[1:])
    assert lazy.shape == full.shape and len(lazy) == 7 and lazy.nbytes == full.nbytes
    np.testing.assert_array_equal(lazy[:], full)
    np.testing.assert_array_equal(lazy[2:5], full[2:5])
    np.testing.assert_array_equal(lazy[np.array([4, 0, 4])], full[[4, 0, 4]])
    np.testing.assert_array_equal(lazy[3], full[3])
    np.testing.assert_array_equal(lazy[1:4, 2], full[1:4, 2])
    sub = take_rows(lazy, np.array([6, 1, 3]))
    assert isinstance(sub, ParticleSpectra) and sub.shape == (3, *full.shape[1:])
    np.testing.assert_array_equal(sub[1:], full[[1, 3]])
    np.testing.assert_array_equal(take_rows(sub, np.array([2]))[:], full[[3]])
    flat = lazy.reshape(7, -1)
    assert flat.shape == (7, full[0].size)
    np.testing.assert_array_equal(flat[2:6], full[2:6].reshape(4, -1))
    np.testing.assert_array_equal(flat[1:3, [0, 5]], full.reshape(7, -1)[1:3][:, [0, 5]])
    cropped = lazy.map_rows(lambda s: s[:, :4, :3].copy(), (4, 3))
    assert cropped.shape == (7, 4, 3)
    np.testing.assert_array_equal(cropped[5:], full[5:, :4, :3])
    with pytest.raises(TypeError, match="every particle"):
        np.asarray(lazy)
    with pytest.raises(ValueError):
        lazy.reshape(7, 3)


def test_streamed_when_the_spectra_exceed_half_the_budget(
    stacks: tuple[dict[Path, list[tuple[int, int]]], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups, images = stacks
    tail = (BOX, BOX // 2 + 1)
    nbytes = 7 * BOX * tail[1] * 8
    assert stream_particles(nbytes, 2 * nbytes) and not stream_particles(nbytes, 2 * nbytes + 1)
    monkeypatch.setenv("CRYOSNAKE_MEMORY", str(2 * nbytes))
    lazy, note = open_spectra(StackReader(groups, 7, BOX), _spectra, tail, np)
    assert isinstance(lazy, ParticleSpectra) and "streamed" in note
    monkeypatch.setenv("CRYOSNAKE_MEMORY", "1G")
    held, note = open_spectra(StackReader(groups, 7, BOX), _spectra, tail, np)
    assert isinstance(held, np.ndarray) and "in memory" in note and "1.00 GiB" in note
    np.testing.assert_array_equal(held, _spectra(images))
    # Memory the stage's grids take is not the particles'
    reader = StackReader(groups, 7, BOX)
    lazy, note = open_spectra(reader, _spectra, tail, np, reserved=(1 << 30) - nbytes)
    assert isinstance(lazy, ParticleSpectra) and "streamed" in note


class _CountingReader(StackReader):
    most = 0

    def read(self, rows: np.ndarray) -> np.ndarray:
        _CountingReader.most = max(_CountingReader.most, len(rows))
        return super().read(rows)


def test_refinement_on_streamed_particles_equals_the_in_memory_one(tmp_path: Path) -> None:
    stack = simulate_particles(120, box=32, pixel_size=6.0, junk_fraction=0.0, seed=4)
    pset = open_particles(write_particles(stack, tmp_path))
    n, box = len(pset), pset.box
    reader = _CountingReader(pset.groups, n, box)
    lazy = ParticleSpectra(reader, r3.particle_spectra, (box, box // 2 + 1))
    held = lazy[:]
    ctf = ctf_table(pset.particles, pset.values)
    settings = r3.RefineSettings(
        mask_diameter=150.0 / 6.0, max_shift=2.0, global_step=30.0, global_iterations=1, batch=8
    )
    halves = np.arange(n) % 2
    ref = stack.volume()
    states = [r3.initial_refine_state(s, ref, 6.0, 30.0, settings, halves) for s in (held, lazy)]
    _CountingReader.most = 0
    for _ in range(2):  # one global iteration, one local
        states = [
            r3.refine_iteration(s, ctf, 6.0, st, settings)[0]
            for s, st in zip((held, lazy), states, strict=True)
        ]
    a, b = states
    assert a.iteration == 2
    np.testing.assert_array_equal(a.matrices, b.matrices)
    np.testing.assert_array_equal(a.shifts, b.shifts)
    np.testing.assert_array_equal(a.references, b.references)
    np.testing.assert_array_equal(a.sigma2, b.sigma2)
    # Batches of the searches and insertions (8 x 4 at most), the noise pass per half
    assert 0 < _CountingReader.most <= n // 2


def test_reader_rescales_the_stacks_of_other_grids(tmp_path: Path) -> None:
    """A stack of another pixel and box size is brought to the working grid as it is
    read (:func:`cryosnake.ops.fourier.rescale_images`); the others are read as they are."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, BOX, BOX)).astype(np.float32)
    b = rng.standard_normal((3, 20, 20)).astype(np.float32)
    _write(tmp_path / "a.mrcs", a)
    _write(tmp_path / "b.mrcs", b)
    groups = {tmp_path / "a.mrcs": [(0, 1), (2, 2)], tmp_path / "b.mrcs": [(1, 3)]}
    rescaled = {tmp_path / "a.mrcs": 1.0, tmp_path / "b.mrcs": 1.1}  # a: on the grid
    reader = StackReader(groups, 3, BOX, 1.0, rescaled)
    images = reader.read(np.arange(3))
    np.testing.assert_array_equal(images[[0, 2]], a)
    np.testing.assert_allclose(images[1], rescale_images(b[2:3], 1.1, 1.0, BOX)[0], atol=1e-6)
    with pytest.raises(FileFormatError, match=r"b.mrcs: images of \(20, 20\) px, expected 16"):
        StackReader(groups, 3, BOX)


def test_odd_box_is_one_line_naming_the_stack(tmp_path: Path) -> None:
    stack = simulate_particles(4, box=33, pixel_size=6.0, junk_fraction=0.0, seed=2)
    star = write_particles(stack, tmp_path)
    with pytest.raises(CryosnakeError, match=r"particles.mrcs: odd box \(33 px\); extract with"):
        open_particles(star)
