"""Particle STAR files and their image stacks: shared by the stages that read particles.

:func:`open_particles` reads a particles file in any form RELION or cryoSPARC exports
write (:func:`cryosnake.io.read_particles`: RELION 3.0 or 3.1+, as RELION 3.1) and
settles the working grid: the pixel size and box of the first particle's optics group;
the stacks of other pixel or box sizes are rescaled to it as they are read.
``image_groups`` resolves ``rlnImageName`` (``000001@stack.mrcs``, relative to the
``--names-relative-to`` folder, default the working directory, or else to the STAR
file's folder) and groups the particles by stack (read by
:mod:`cryosnake.stages._images`, in memory or streamed); ``ctf_table`` gives the CTF parameters per
particle in the order of :data:`cryosnake.ops.ctf.CTF_COLUMNS`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import atomic_path, read_mrc, read_mrc_header, read_particles
from cryosnake.io.particles import NOT_MODELLED
from cryosnake.stages._common import (
    SchemaDefault,
    add_names_root_arg,
    point_group,
    positive_int,
    resolve_name,
)
from cryosnake.stages._images import StackReader

__all__ = [
    "ParticleSet",
    "add_checkpoint_url_arg",
    "add_iterative_args",
    "add_particle_io_args",
    "add_resume_args",
    "add_symmetry_arg",
    "checkpoint_fingerprint",
    "ctf_table",
    "file_digest",
    "half_sets",
    "image_groups",
    "image_path",
    "load_checkpoint",
    "open_particles",
    "open_run",
    "particle_diameter",
    "read_reference",
    "save_checkpoint",
]


@dataclass
class ParticleSet:
    """A particles STAR file and the working grid of its images.

    optics, particles, values : as :func:`cryosnake.io.read_particles` returns them
        (RELION 3.1; ``optics`` with each group's ``rlnImageSize`` read from its stacks)
    pixel_size : Å per pixel of the working grid; box : its size (px, even)
    groups : stack -> [(row, image number)] (:func:`image_groups`)
    rescaled : stack -> its pixel size, for the stacks not on the working grid
    """

    star: Path
    optics: pd.DataFrame
    particles: pd.DataFrame
    values: pd.DataFrame
    pixel_size: float
    box: int
    groups: dict[Path, list[tuple[int, int]]]
    rescaled: dict[Path, float]

    def __len__(self) -> int:
        return len(self.particles)

    def reader(self) -> StackReader:
        """The images of the particles on the working grid, by row."""
        return StackReader(self.groups, len(self), self.box, self.pixel_size, self.rescaled)

    def describe(self) -> str:
        """One line on the optics groups and the working grid, for the log."""
        groups = self.optics.sort_values("rlnOpticsGroup")
        sizes = ", ".join(
            f"{float(p):g} Å/px × {int(b)} px"
            for p, b in zip(groups["rlnImagePixelSize"], groups["rlnImageSize"], strict=True)
        )
        line = f"{len(self)} particles in {len(groups)} optics group(s) ({sizes})"
        labels = {*self.optics.columns, *self.particles.columns}
        left_out = [what for label, what in NOT_MODELLED.items() if label in labels]
        if left_out:
            line += f"; not modelled: {', '.join(left_out)}"
        if self.rescaled:
            line += (
                f"; working at {self.pixel_size:g} Å/px × {self.box} px (the first particle's "
                f"group), {len(self.rescaled)} stack(s) rescaled in Fourier space"
            )
        return line


def open_particles(
    star: Path, root: str | None = None, pixel_size: float | None = None
) -> ParticleSet:
    """Read ``star`` (``pixel_size``: see :func:`cryosnake.io.read_particles`) and settle
    the working grid: the pixel size and box of the first particle's optics group, an
    even box (one-line errors naming the file); image names are relative to ``root``
    (:func:`~cryosnake.stages._common.resolve_name`)."""
    optics, particles, values = read_particles(star, pixel_size)
    groups = image_groups(star, particles, root)
    native = values["rlnImagePixelSize"].to_numpy()
    group_of = particles["rlnOpticsGroup"].astype(int).to_numpy()
    grid: dict[Path, tuple[float, int]] = {}  # stack -> (its pixel size, its group's box)
    group_box: dict[int, int] = {}
    for path, items in groups.items():
        rows = [r for r, _ in items]
        sizes = np.unique(native[rows])
        if len(sizes) != 1:
            raise FileFormatError(f"{path}: holds particles of pixel sizes {sorted(sizes)}")
        group = int(group_of[rows[0]])
        if group not in group_box:
            group_box[group] = int(read_mrc_header(path)["shape"][-1])  # type: ignore[index]
        grid[path] = (float(sizes[0]), group_box[group])
    work_pixel, box = float(native[0]), group_box[int(group_of[0])]
    if box % 2:
        first = next(path for path, items in groups.items() if items[0][0] == 0)
        raise CryosnakeError(f"{first}: odd box ({box} px); extract with an even box")
    optics = optics.copy()  # each group's image size as its stacks have it
    stated = optics.get("rlnImageSize", pd.Series(np.zeros(len(optics)))).astype(int).tolist()
    optics["rlnImageSize"] = np.array(
        [group_box.get(int(g), s) for g, s in zip(optics["rlnOpticsGroup"], stated, strict=True)],
        dtype=np.int64,
    )
    rescaled = {p: px for p, (px, b) in grid.items() if (px, b) != (work_pixel, box)}
    return ParticleSet(star, optics, particles, values, work_pixel, box, groups, rescaled)


def particle_diameter(diameter: float | None, box: int, pixel_size: float) -> float:
    """Å: ``--diameter``, or 80 % of the box; larger than the box is an error."""
    value = float(diameter) if diameter else 0.8 * box * pixel_size
    if value > box * pixel_size:
        raise CryosnakeError(
            f"--diameter {value:g} Å is larger than the box ({box * pixel_size:g} Å)"
        )
    return value


def image_path(name: str, star: Path, root: str | None = None) -> tuple[int, Path]:
    """(image number, stack file) of an ``rlnImageName`` read from ``star``."""
    index, sep, path = str(name).partition("@")
    if not sep or not index.strip().isdigit():
        raise FileFormatError(f"{star}: rlnImageName {name!r} is not of the form 000001@stack")
    return int(index), resolve_name(path, root, star)


def ctf_table(particles: pd.DataFrame, values: pd.DataFrame) -> np.ndarray:
    phase = (
        particles["rlnPhaseShift"].astype(float).to_numpy()
        if "rlnPhaseShift" in particles.columns
        else np.zeros(len(particles))
    )
    return np.column_stack(
        [
            particles["rlnDefocusU"].astype(float),
            particles["rlnDefocusV"].astype(float),
            particles["rlnDefocusAngle"].astype(float),
            phase,
            values["rlnVoltage"],
            values["rlnSphericalAberration"],
            values["rlnAmplitudeContrast"],
        ]
    )


def image_groups(
    star: Path, particles: pd.DataFrame, root: str | None = None
) -> dict[Path, list[tuple[int, int]]]:
    """Stack file -> [(row, image number)], every stack checked to exist."""
    groups: dict[Path, list[tuple[int, int]]] = {}
    for row, name in enumerate(particles["rlnImageName"]):
        number, path = image_path(name, star, root)
        groups.setdefault(path, []).append((row, number))
    for path in groups:
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file (named in {star})")
    return groups


def add_particle_io_args(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """``--particles``, ``--out-dir`` and ``--names-relative-to`` of the stages that
    read a particles STAR file."""
    parser.add_argument(
        "--particles",
        required=True,
        help="particles STAR file (RELION 3.0 to 5, cryoSPARC through csparc2star)",
    )
    parser.add_argument("--out-dir", required=True, help=out_help)
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        help="Å/px of the images, for a particles file without data_optics (RELION 3.0); "
        "overrides its rlnDetectorPixelSize and rlnMagnification",
    )
    add_names_root_arg(parser)


def add_symmetry_arg(parser: argparse.ArgumentParser) -> None:
    """``--symmetry``: the point group of the particle (initial3d.symmetry)."""
    parser.add_argument(
        "--symmetry",
        type=point_group,
        default=SchemaDefault("initial3d.symmetry"),
        help="point group: C1, C<n>, D<n>, T, O or I (%(default)s)",
    )


def add_iterative_args(
    parser: argparse.ArgumentParser, stage: str, *, iterations_help: str, seed_help: str
) -> None:
    """``--iterations``, ``--seed`` and ``--device`` (defaults: the schema's section
    ``stage``), ``--no-resume`` and ``--checkpoint-url`` of an iterative stage."""
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=SchemaDefault(f"{stage}.iterations"),
        help=f"{iterations_help} (%(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SchemaDefault(f"{stage}.seed"),
        help=f"{seed_help} (%(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default=SchemaDefault(f"{stage}.device"),
        help="where to compute (%(default)s)",
    )
    add_resume_args(parser)


def open_run(args: argparse.Namespace) -> tuple[Path, Path, ParticleSet]:
    """(particles STAR, output folder, particle set) of a stage that
    :func:`add_particle_io_args` gave its options."""
    star = Path(args.particles)
    pset = open_particles(star, args.names_root, args.pixel_size)
    print(f"{star}: {pset.describe()}", flush=True)
    return star, Path(args.out_dir), pset


def add_resume_args(parser: argparse.ArgumentParser) -> None:
    """``--no-resume`` and ``--checkpoint-url`` of an iterative stage."""
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if a checkpoint exists"
    )
    add_checkpoint_url_arg(parser)


def add_checkpoint_url_arg(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-url``: the S3 copy of an iterative stage's checkpoint
    (:mod:`cryosnake.aws.checkpoints`)."""
    parser.add_argument(
        "--checkpoint-url",
        default=None,
        help="s3://BUCKET/PREFIX/: also keep the checkpoint there after every iteration and "
        "resume from it when the output folder holds none (a spot instance reclaimed); "
        "deleted once the outputs are written",
    )


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's content (not its path: a job resubmitted after a spot reclaim
    reads the same inputs from another folder, :mod:`cryosnake.aws.checkpoints`)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def checkpoint_fingerprint(version: int, particles: pd.DataFrame, fields: dict[str, Any]) -> str:
    """The fingerprint of an iterative stage's checkpoint (:func:`save_checkpoint`):
    its format ``version``, the particles (their count and image names) and the
    stage's ``fields`` (inputs and options the state depends on), as sorted JSON."""
    names = "\n".join(map(str, particles["rlnImageName"])).encode()
    record = {
        "version": version,
        "n": len(particles),
        "images": hashlib.sha1(names).hexdigest(),
        **fields,
    }
    return json.dumps(record, sort_keys=True, default=str)


def save_checkpoint(path: Path, fingerprint: str, arrays: dict[str, np.ndarray]) -> None:
    """Write an iterative stage's checkpoint (NumPy ``.npz``) atomically.

    ``fingerprint``: a text that changes with every input and option the state
    depends on (a checkpoint of other inputs is not resumed).
    """
    payload: dict[str, Any] = {"fingerprint": np.array(fingerprint), **arrays}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **payload)


def load_checkpoint(path: Path, fingerprint: str, stage: str) -> dict[str, np.ndarray] | None:
    """The arrays of a checkpoint written by :func:`save_checkpoint`; None when there is
    none, or it was made with other inputs (said on stdout).

    Raises
    ------
    FileFormatError
        The file is unreadable (the message names it and ``--no-resume``).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                print(f"{stage}: {path} was made with other inputs; starting over")
                return None
            return {key: z[key] for key in z.files if key != "fingerprint"}
    except (OSError, KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: unreadable checkpoint ({err}); rerun with --no-resume"
        ) from err


def read_reference(path: str, box: int, pixel_size: float) -> np.ndarray:
    """A reference map (MRC) resampled to ``pixel_size`` and padded or cropped to
    ``box`` (one-line errors naming the file)."""
    data, voxel = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise FileFormatError(f"{path}: the reference must be a cubic 3D map, got {data.shape}")
    if not np.isfinite(data).all():
        raise FileFormatError(f"{path}: the reference holds NaN or infinite values")
    vol = np.asarray(data, dtype=np.float64)
    if abs(voxel - pixel_size) > 0.01 * pixel_size:
        vol = ndimage.zoom(vol, voxel / pixel_size, order=3)
    n = vol.shape[0]
    out = np.zeros((box, box, box))
    lo_in, lo_out = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    m = min(n, box)
    out[lo_out : lo_out + m, lo_out : lo_out + m, lo_out : lo_out + m] = vol[
        lo_in : lo_in + m, lo_in : lo_in + m, lo_in : lo_in + m
    ]
    return out.astype(np.float32)


def half_sets(particles: pd.DataFrame, star: Path, seed: int) -> np.ndarray:
    """(n,) 0 or 1: the half set of each particle, from ``rlnRandomSubset`` or a seeded
    random split."""
    n = len(particles)
    if "rlnRandomSubset" in particles.columns:
        subset = particles["rlnRandomSubset"].astype(int).to_numpy()
        if not set(np.unique(subset)) <= {1, 2}:
            raise FileFormatError(f"{star}: rlnRandomSubset must be 1 or 2")
        halves = subset - 1
    else:
        halves = np.random.default_rng(seed).permutation(n) % 2
    if min(int((halves == 0).sum()), int((halves == 1).sum())) < 2:
        raise CryosnakeError(f"{star}: each half set needs at least 2 particles (have {n})")
    return halves
