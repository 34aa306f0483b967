"""Gold-standard 3D refinement of particles against a reference map.

The particles are split into two random halves (or by ``rlnRandomSubset``) refined
independently, each against its own map, both started from ``--reference`` low-passed
to ``--initial-lowpass`` Å. Each iteration: a pose search (global over all
orientations every 15° and all shifts within ``--max-shift`` for the first two
iterations, then local with an angular step that halves down to the sampling the
resolution needs), CTF-weighted Fourier insertion of each half, FSC between the masked
half maps, and an FSC-based Wiener filter of each half map (details in
:mod:`cryosnake.ops.refine3d`). It stops when the step is fine enough and the
resolution no longer improves, or after ``--iterations``.

Outputs in ``--out-dir`` (RELION's names):

- ``run_half1_class001_unfil.mrc``, ``run_half2_class001_unfil.mrc``: the half maps
  (Wiener-filtered by their SNR, not masked, not sharpened), for ``postprocess``;
- ``run_class001.mrc``: the map of all particles, filtered by the FSC;
- ``fsc.star``: ``data_fsc`` with ``rlnResolution``, ``rlnAngstromResolution``,
  ``rlnFourierShellCorrelationCorrected`` (masked with an automatic mask and corrected by
  phase randomisation), ``rlnFourierShellCorrelationUnmaskedMaps``, and
  ``data_general`` with ``rlnFinalResolution``;
- ``run_data.star``: the particles with ``rlnAngleRot/Tilt/Psi``,
  ``rlnOriginXAngst/YAngst`` and ``rlnRandomSubset``;
- ``run_angdist.png``: the distribution of projection directions, and the FSC.

``--device gpu`` (or ``auto`` with CuPy and a CUDA device) runs the searches and the
reconstructions on the GPU. Memory is planned from the box size and the device's free
memory: the Fourier grids (two back-projectors on a 2x padded grid, about 1.1 GiB at
128 px, 9 GiB at 256 px, 24 GiB at 360 px) must fit, or the run stops at once with the
figures; every batch size follows from what is free (``CRYOSNAKE_MEMORY``, e.g.
``16G``, caps it on a shared node). The particles' spectra (8 n b (b/2+1) bytes: 27
GB for 10^5 particles of 256 px) are held in memory when they take less than half of
the memory budget left by the grids (the host's available memory and, on a GPU, the
device's free memory, both capped by ``CRYOSNAKE_MEMORY``), and moved to the GPU when
they take less than half of what the grids leave there; otherwise they are streamed:
every pass of an iteration (pose search, insertion, noise) reads the images of each
batch from their stacks and transforms them again (:mod:`cryosnake.stages._images`),
so that the memory used does not grow with the particle count (only the poses and CTF
parameters do), at the cost of reading the stacks three times per iteration. The log
says which.

A checkpoint (``run_checkpoint.npz``) is written atomically after every iteration; a
restarted run with the same inputs resumes after the last finished iteration
(``--no-resume`` starts over). ``--symmetry`` imposes a point group (C<n>, D<n>, T,
O, I; axes as RELION's defaults, :mod:`cryosnake.ops.symmetry`) on the reconstructions;
the global search then covers the asymmetric unit only.

Example::

    cryosnake refine3d --particles results/particles_selected.star \\
        --reference results/initial3d/initial_model.mrc --out-dir results/refine3d
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.aws.checkpoints import CheckpointMirror
from cryosnake.backend import array_module, resolve_device
from cryosnake.errors import FileFormatError
from cryosnake.io import save_figure, write_mrc, write_star
from cryosnake.ops import postprocess as pp
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fsc import shell_resolution
from cryosnake.ops.rotation import matrix_to_euler
from cryosnake.stages._common import SchemaDefault, positive, stage_main
from cryosnake.stages._images import map_spectra, plan_map_memory
from cryosnake.stages._particles import (
    add_iterative_args,
    add_particle_io_args,
    add_symmetry_arg,
    checkpoint_fingerprint,
    ctf_table,
    file_digest,
    half_sets,
    load_checkpoint,
    open_run,
    particle_diameter,
    read_reference,
    save_checkpoint,
)

__all__ = ["add_args", "main"]

CHECKPOINT = "run_checkpoint.npz"
CHECKPOINT_VERSION = 1


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_io_args(parser, out_help="folder of the outputs")
    parser.add_argument("--reference", required=True, help="reference map (MRC)")
    parser.add_argument(
        "--initial-lowpass",
        type=positive,
        default=SchemaDefault("refine3d.initial_lowpass"),
        help="Å, low-pass of the reference (%(default)s)",
    )
    add_symmetry_arg(parser)
    parser.add_argument("--diameter", type=positive, default=None, help="Å, mask diameter")
    parser.add_argument(
        "--max-shift", type=positive, default=None, help="Å, global shift search (10 %% of it)"
    )
    add_iterative_args(
        parser, "refine3d", iterations_help="at most", seed_help="seed of the half split"
    )


def _fingerprint(args: argparse.Namespace, particles: pd.DataFrame, extra: dict[str, Any]) -> str:
    fields = {
        "reference": file_digest(args.reference),
        "initial_lowpass": float(args.initial_lowpass),
        "seed": int(args.seed),
        **extra,
    }
    return checkpoint_fingerprint(CHECKPOINT_VERSION, particles, fields)


def _save(path: Path, state: r3.RefineState, fingerprint: str) -> None:
    save_checkpoint(
        path,
        fingerprint,
        {
            "matrices": state.matrices,
            "shifts": state.shifts,
            "halves": state.halves,
            "references": state.references,
            "sigma2": state.sigma2,
            "fsc": state.fsc,
            "scalars": np.array(
                [state.resolution, state.step, state.r_max, state.iteration, float(state.converged)]
            ),
            "history": np.asarray(state.history, dtype=np.float64),
        },
    )


def _load(path: Path, fingerprint: str) -> r3.RefineState | None:
    z = load_checkpoint(path, fingerprint, "refine3d")
    if z is None:
        return None
    try:
        resolution, step, r_max, iteration, converged = z["scalars"].tolist()
        return r3.RefineState(
            matrices=z["matrices"],
            shifts=z["shifts"],
            halves=z["halves"],
            references=z["references"],
            sigma2=z["sigma2"],
            fsc=z["fsc"],
            resolution=float(resolution),
            step=float(step),
            r_max=int(r_max),
            iteration=int(iteration),
            history=z["history"].tolist(),
            converged=bool(converged),
        )
    except (KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: unreadable checkpoint ({err}); rerun with --no-resume"
        ) from err


def _plot(path: Path, state: r3.RefineState, fsc: dict[str, np.ndarray], resolution: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rot, tilt, _ = matrix_to_euler(state.matrices)
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 2, 1, projection="mollweide")
    lon = np.deg2rad(((rot + 180.0) % 360.0) - 180.0)
    lat = np.deg2rad(90.0 - tilt)
    ax.hexbin(lon, lat, gridsize=36, mincnt=1, cmap="viridis")
    ax.set_xticklabels([])
    ax.set_title(f"projection directions ({len(rot)} particles)", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(fsc["frequency"], fsc["corrected"], "k", lw=2, label="corrected (masked)")
    ax2.plot(fsc["frequency"], fsc["unmasked"], "tab:green", label="unmasked")
    ax2.axhline(0.143, color="0.5", ls="--", lw=1)
    ax2.set_xlabel("resolution (1/Å)")
    ax2.set_ylabel("FSC between half maps")
    ax2.set_ylim(-0.1, 1.05)
    ax2.set_title(f"gold-standard FSC: {resolution:.2f} Å at 0.143", fontsize=10)
    ax2.legend(fontsize=8)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    symmetry = args.symmetry
    device = resolve_device(args.device)
    star, out, pset = open_run(args)
    optics, particles, values = pset.optics, pset.particles, pset.values
    pixel_size, box = pset.pixel_size, pset.box
    diameter = particle_diameter(args.diameter, box, pixel_size)
    max_shift = (0.1 * diameter if args.max_shift is None else args.max_shift) / pixel_size
    settings = r3.RefineSettings(
        symmetry=symmetry,
        mask_diameter=diameter / pixel_size,
        max_shift=max_shift,
        max_iterations=args.iterations,
    )
    reference = read_reference(args.reference, box, pixel_size)
    halves = half_sets(particles, star, args.seed)
    n = len(particles)
    xp = array_module(device)
    plan = plan_map_memory("refine3d", device, box, n, xp)
    print(
        f"refine3d: {n} particles of {box} px at {pixel_size:g} Å "
        f"({int((halves == 0).sum())} + {int((halves == 1).sum())} in the half sets), "
        f"mask {diameter:g} Å, reference {args.reference} low-passed to "
        f"{args.initial_lowpass:g} Å, on the {device} ({plan.available / 2**30:.1f} GiB free: "
        f"grids {plan.grids / 2**30:.2f} GiB)",
        flush=True,
    )
    spectra = map_spectra("refine3d", pset.reader(), xp, plan)
    ctf = ctf_table(particles, values)
    fingerprint = _fingerprint(
        args,
        particles,
        {"diameter": diameter, "max_shift": max_shift, "box": box, "symmetry": symmetry},
    )
    checkpoint = out / CHECKPOINT
    mirror = CheckpointMirror(args.checkpoint_url, checkpoint, "refine3d")
    if not args.no_resume:
        mirror.restore()
    state = None if args.no_resume else _load(checkpoint, fingerprint)
    if state is not None:
        print(f"refine3d: resuming from {checkpoint} after iteration {state.iteration}", flush=True)
    else:
        state = r3.initial_refine_state(
            spectra, reference, pixel_size, args.initial_lowpass, settings, halves
        )
    rec: dict[str, Any] | None = None
    while not state.converged and state.iteration < settings.max_iterations:
        tick = time.perf_counter()
        kind = "global" if state.iteration < settings.global_iterations else "local"
        state, rec = r3.refine_iteration(spectra, ctf, pixel_size, state, settings, xp)
        _save(checkpoint, state, fingerprint)
        mirror.store()
        print(
            f"refine3d: iteration {state.iteration}/{settings.max_iterations} ({kind}, step "
            f"{state.step:.2f}°)  resolution {state.resolution:.2f} Å  "
            f"{time.perf_counter() - tick:.1f} s",
            flush=True,
        )
    if rec is None:  # resumed a finished run: rebuild the maps from the saved poses
        rec = r3.reconstruct_halves(
            spectra, ctf, state.matrices, state.shifts, state.halves, state.sigma2,
            pixel_size, settings.mask_diameter, symmetry=symmetry, xp=xp,
        )  # fmt: skip
    half1, half2 = rec["halves"]
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "run_half1_class001_unfil.mrc", half1, pixel_size, kind="volume")
    write_mrc(out / "run_half2_class001_unfil.mrc", half2, pixel_size, kind="volume")
    write_mrc(out / "run_class001.mrc", rec["full"], pixel_size, kind="volume")
    mask, _ = pp.auto_mask(0.5 * (half1 + half2), pixel_size)
    curves = pp.corrected_fsc(half1, half2, mask, np.random.default_rng(args.seed))
    corrected = np.asarray(curves["corrected"])
    resolution = shell_resolution(corrected, pixel_size, 0.143)
    shells = np.arange(box // 2 + 1)
    freq = shells / (box * pixel_size)
    angstrom = np.where(shells > 0, box * pixel_size / np.maximum(shells, 1), 999.0)
    write_star(
        out / "fsc.star",
        {
            "general": pd.DataFrame(
                [{"rlnFinalResolution": resolution, "rlnCurrentIteration": state.iteration}]
            ),
            "fsc": pd.DataFrame(
                {
                    "rlnSpectralIndex": shells,
                    "rlnResolution": freq,
                    "rlnAngstromResolution": angstrom,
                    "rlnFourierShellCorrelationCorrected": corrected,
                    "rlnFourierShellCorrelationUnmaskedMaps": np.asarray(curves["unmasked"]),
                }
            ),
        },
    )
    rot, tilt, psi = matrix_to_euler(state.matrices)
    data = particles.copy()
    data["rlnAngleRot"] = rot
    data["rlnAngleTilt"] = tilt
    data["rlnAnglePsi"] = psi
    data["rlnOriginXAngst"] = -state.shifts[:, 0] * pixel_size
    data["rlnOriginYAngst"] = -state.shifts[:, 1] * pixel_size
    data["rlnRandomSubset"] = state.halves + 1
    blocks = {"optics": optics, "particles": data}
    write_star(out / "run_data.star", blocks)
    _plot(
        out / "run_angdist.png",
        state,
        {"frequency": freq, "corrected": corrected, "unmasked": np.asarray(curves["unmasked"])},
        resolution,
    )
    mirror.clear()
    status = "converged" if state.converged else "stopped"
    print(
        f"refine3d: {status} after {state.iteration} iterations; gold-standard FSC 0.143 at "
        f"{resolution:.2f} Å (masked, corrected); {time.perf_counter() - started:.1f} s "
        f"-> {out / 'run_class001.mrc'}"
    )
    return 0


main = stage_main("refine3d", __doc__, add_args, _run)
