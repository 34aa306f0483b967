"""Ab initio 3D map from particles, without a reference.

Stochastic hard expectation-maximisation on random mini-batches of ``--batch``
particles (in the spirit of cryoSPARC's ab initio): from a featureless start, each
iteration aligns a batch to the current map (orientations every ``--step`` degrees,
shifts within 10 % of the diameter) and moves the map towards the batch's
reconstruction, at a resolution going from 40 Å to ``--resolution`` (details in
:mod:`cryosnake.ops.initial3d`). The work is done on particles Fourier-cropped so
that Nyquist is about a third of ``--resolution``; the map is written at the
particles' box and pixel size, low-passed to ``--resolution``, for ``refine3d``.

The map's handedness is that of the data or its mirror image (projections cannot tell
them apart); check it against a known structure. ``--symmetry`` imposes a point group
(C<n>, D<n>, T, O, I; axes as RELION's defaults) on every reconstruction.

Memory: the particles' spectra (8 n b (b/2+1) bytes for n particles of b px) are
computed once and kept in memory (the Fourier-cropped ones on the device) when they
take less than half of the memory budget (the host's available memory and, on a GPU,
the device's free memory, capped by ``CRYOSNAKE_MEMORY``, e.g. ``8G``); otherwise they
are streamed: each mini-batch, the judging of an attempt and each final pass read their
particles' images from the stacks and crop them again
(:mod:`cryosnake.stages._images`), so that the memory used does not grow with the
particle count (only the poses and CTF parameters do). The log says which.

Outputs in ``--out-dir``: ``initial_model.mrc``, ``initial_model.png`` (central
slices and projections) and ``initial_model_data.star`` (the particles with the
poses of the final pass, RELION labels).

A checkpoint (``initial_model_checkpoint.npz``) is written atomically every
:data:`~cryosnake.ops.initial3d.CHECKPOINT_EVERY` mini-batches, after every attempt and
after every final pass; a restarted run with the same inputs goes on from there to the
result of an uninterrupted run (``--no-resume`` starts over). ``--checkpoint-url``
keeps a copy in S3 (a spot instance reclaimed, :mod:`cryosnake.aws.checkpoints`).

Example::

    cryosnake initial3d --particles results/particles_selected.star \\
        --out-dir results/initial3d
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.aws.checkpoints import CheckpointMirror
from cryosnake.backend import array_module, resolve_device
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import save_figure, write_mrc, write_star
from cryosnake.ops import initial3d as ai
from cryosnake.ops import refine3d as r3
from cryosnake.ops.rotation import matrix_to_euler
from cryosnake.stages._common import SchemaDefault, positive, positive_int, stage_main
from cryosnake.stages._images import open_spectra
from cryosnake.stages._particles import (
    add_iterative_args,
    add_particle_io_args,
    add_symmetry_arg,
    checkpoint_fingerprint,
    ctf_table,
    load_checkpoint,
    open_run,
    particle_diameter,
    save_checkpoint,
)

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_io_args(parser, out_help="folder of the outputs")
    add_symmetry_arg(parser)
    parser.add_argument("--diameter", type=positive, default=None, help="Å, mask diameter")
    parser.add_argument(
        "--resolution",
        type=positive,
        default=SchemaDefault("initial3d.resolution"),
        help="Å, final resolution (%(default)s)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=SchemaDefault("initial3d.batch"),
        help="particles each (%(default)s)",
    )
    parser.add_argument("--step", type=positive, default=15.0, help="degrees, angular step (15)")
    add_iterative_args(parser, "initial3d", iterations_help="mini-batches", seed_help="random seed")


CHECKPOINT = "initial_model_checkpoint.npz"
CHECKPOINT_VERSION = 1


def _fingerprint(
    particles: pd.DataFrame, settings: ai.AbInitioSettings, box: int, px: float
) -> str:
    fields = {"settings": dataclasses.asdict(settings), "box": box, "pixel_size": px}
    return checkpoint_fingerprint(CHECKPOINT_VERSION, particles, fields)


def _save(path: Path, state: ai.AbInitioState, fingerprint: str) -> None:
    arrays = {
        "counters": np.array([state.attempt, state.t, state.passes]),
        "best_fit": np.array(state.best_fit),
        "rng": np.array(json.dumps(state.rng)),
        "judge": state.judge,
    }
    for name in ("volume", "best_volume", "matrices", "shifts"):
        value = getattr(state, name)
        if value is not None:
            arrays[name] = value
    save_checkpoint(path, fingerprint, arrays)


def _load(path: Path, fingerprint: str) -> ai.AbInitioState | None:
    z = load_checkpoint(path, fingerprint, "initial3d")
    if z is None:
        return None
    try:
        attempt, t, passes = (int(v) for v in z["counters"])
        return ai.AbInitioState(
            attempt=attempt,
            t=t,
            passes=passes,
            best_fit=float(z["best_fit"]),
            rng=json.loads(str(z["rng"])),
            judge=z["judge"],
            **{k: z[k] for k in ("volume", "best_volume", "matrices", "shifts") if k in z},
        )
    except (KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: unreadable checkpoint ({err}); rerun with --no-resume"
        ) from err


def _plot(path: Path, volume: np.ndarray, pixel_size: float, resolution: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = volume.shape[0]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for j, name in enumerate(("z", "y", "x")):
        axes[0, j].imshow(np.take(volume, n // 2, axis=j), cmap="gray", origin="lower")
        axes[0, j].set_title(f"central slice, normal {name}", fontsize=9)
        axes[1, j].imshow(volume.sum(axis=j), cmap="gray", origin="lower")
        axes[1, j].set_title(f"projection along {name}", fontsize=9)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"initial3d: ab initio map, {resolution:g} Å, {pixel_size:.2f} Å/px")
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    symmetry = args.symmetry
    device = resolve_device(args.device)
    star, out, pset = open_run(args)
    optics, particles, values = pset.optics, pset.particles, pset.values
    pixel_size, box = pset.pixel_size, pset.box
    n = len(particles)
    if n < 10:
        raise CryosnakeError(f"{star}: {n} particles; ab initio needs at least 10")
    diameter = particle_diameter(args.diameter, box, pixel_size)
    if args.resolution < 2.0 * pixel_size:
        raise CryosnakeError(f"--resolution {args.resolution:g} Å is beyond Nyquist")
    settings = ai.AbInitioSettings(
        symmetry=symmetry,
        diameter=diameter,
        resolution=args.resolution,
        start_resolution=max(40.0, 1.5 * args.resolution),
        iterations=args.iterations,
        batch=min(args.batch, n),
        step=args.step,
        max_shift=0.1 * diameter,
        seed=args.seed,
    )
    w = ai.working_box(box, pixel_size, args.resolution)
    print(
        f"initial3d: {n} particles of {box} px at {pixel_size:g} Å, working box {w} px "
        f"({pixel_size * box / w:.2f} Å/px), {args.iterations} mini-batches of "
        f"{settings.batch}, on the {device}",
        flush=True,
    )
    xp = array_module(device)
    spectra, note = open_spectra(pset.reader(), r3.particle_spectra, (box, box // 2 + 1), xp)
    print(f"initial3d: {note}", flush=True)
    ctf = ctf_table(particles, values)

    def progress(message: str) -> None:
        print(f"initial3d: {message}  {time.perf_counter() - started:.1f} s", flush=True)

    fingerprint = _fingerprint(particles, settings, box, pixel_size)
    checkpoint = out / CHECKPOINT
    mirror = CheckpointMirror(args.checkpoint_url, checkpoint, "initial3d")
    if not args.no_resume:
        mirror.restore()
    state = None if args.no_resume else _load(checkpoint, fingerprint)
    if state is not None:
        print(
            f"initial3d: resuming from {checkpoint}: {state.attempt} attempt(s) and "
            f"{state.t} mini-batch(es) of the next, {state.passes} final pass(es) done",
            flush=True,
        )

    def save(state: ai.AbInitioState) -> None:
        _save(checkpoint, state, fingerprint)
        mirror.store()

    volume, _, poses = ai.ab_initio(
        spectra, ctf, pixel_size, settings, progress, xp=xp,
        resume=state, save=save,
    )  # fmt: skip
    full = ai.pad_volume(volume, box) if box > volume.shape[0] else volume
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "initial_model.mrc", full, pixel_size, kind="volume")
    _plot(out / "initial_model.png", full, pixel_size, args.resolution)
    rot, tilt, psi = matrix_to_euler(poses["matrices"])
    data = particles.copy()
    data["rlnAngleRot"] = rot
    data["rlnAngleTilt"] = tilt
    data["rlnAnglePsi"] = psi
    data["rlnOriginXAngst"] = -poses["shifts"][:, 0] * pixel_size
    data["rlnOriginYAngst"] = -poses["shifts"][:, 1] * pixel_size
    blocks = {"optics": optics, "particles": data}
    write_star(out / "initial_model_data.star", blocks)
    mirror.clear()
    print(
        f"initial3d: done in {time.perf_counter() - started:.1f} s "
        f"-> {out / 'initial_model.mrc'} ({box} px, {pixel_size:g} Å/px)"
    )
    return 0


main = stage_main("initial3d", __doc__, add_args, _run)
