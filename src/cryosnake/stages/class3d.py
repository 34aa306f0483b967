"""3D classification: sort particles into K classes of different 3D structure.

Maximum-likelihood multi-reference refinement (RELION's Class3D, cryoSPARC's
heterogeneous refinement): every particle is aligned to every class map, gets a
probability of belonging to each (from its best-pose likelihood under the CTF and noise
model of refine3d, and the classes' shares), and each class map is rebuilt from the
particles weighted by those probabilities (:mod:`cryosnake.ops.class3d`). K classes start
from one map (``--reference`` once: the particles are aligned to it and then assigned to
the classes at random, seeded) or from K maps (``--reference`` K times). All maps are
low-passed to ``--initial-lowpass`` Å. The pose search is global for
``--global-iterations`` iterations, then local with a step that halves down to the
sampling the resolution needs (a value >= ``--iterations`` keeps it global). The class
maps are filtered by the FSC between the class's two half sets with RELION's
regularisation ``--tau2-fudge`` (T = 4 by default for classification); that FSC at
0.143 is the class's resolution (not gold standard: both halves were aligned to one map).
It stops when fewer than 1 % of the particles change class in two iterations in a row
and the angular step is fine enough, or after ``--iterations``.

Outputs in ``--out-dir`` (RELION's names):

- after every iteration ``###``: ``run_it###_class00k.mrc`` (each class map, filtered and
  masked), ``run_it###_model.star`` (``model_general``; ``model_classes`` with
  ``rlnReferenceImage``, ``rlnClassDistribution``, ``rlnEstimatedResolution``) and
  ``run_it###_data.star`` (the particles with ``rlnClassNumber``,
  ``rlnMaxValueProbDistribution``: the probability of that class, and the angles and
  origins in it);
- at the end the same as ``run_class00k.mrc``, ``run_model.star`` and ``run_data.star``;
- ``particles_kept.star``: the particles of the classes kept for refinement, the
  best-resolved class (``--keep`` names others, e.g. ``--keep 1 3``);
- ``run_classes.png``: projections of every class with its share and resolution.

Devices, memory (the spectra in memory, on the GPU or streamed from their stacks) and
resume from ``run_checkpoint.npz`` are as refine3d's.

Example::

    cryosnake class3d --particles results/particles_selected.star --classes 3 \\
        --reference results/initial3d/initial_model.mrc --out-dir results/class3d
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
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import save_figure, write_mrc, write_star
from cryosnake.ops import class3d as c3
from cryosnake.ops import refine3d as r3
from cryosnake.ops.rotation import matrix_to_euler
from cryosnake.stages._common import SchemaDefault, positive, positive_int, stage_main
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

__all__ = ["add_args", "keep_classes", "main"]

CHECKPOINT = "run_checkpoint.npz"
CHECKPOINT_VERSION = 1


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_io_args(parser, out_help="folder of the outputs")
    parser.add_argument(
        "--reference",
        required=True,
        action="append",
        help="map (MRC) the classes start from: once (all classes), or once per class",
    )
    parser.add_argument("--classes", type=positive_int, required=True, help="K, classes")
    parser.add_argument(
        "--initial-lowpass",
        type=positive,
        default=SchemaDefault("class3d.initial_lowpass"),
        help="Å, low-pass of the references (%(default)s)",
    )
    add_symmetry_arg(parser)
    parser.add_argument("--diameter", type=positive, default=None, help="Å, mask diameter")
    parser.add_argument(
        "--max-shift", type=positive, default=None, help="Å, global shift search (10 %% of it)"
    )
    parser.add_argument(
        "--global-iterations",
        type=_non_negative_int,
        default=SchemaDefault("class3d.global_iterations"),
        help="iterations of global pose search before local (%(default)s)",
    )
    parser.add_argument(
        "--tau2-fudge",
        type=positive,
        default=SchemaDefault("class3d.tau2_fudge"),
        help="RELION's T: > 1 trusts the data more (%(default)s)",
    )
    parser.add_argument(
        "--keep",
        type=positive_int,
        nargs="+",
        default=None,
        help="classes (1-based) whose particles particles_kept.star holds (the best-resolved)",
    )
    add_iterative_args(
        parser,
        "class3d",
        iterations_help="at most",
        seed_help="seed of the half split and of the first assignment to classes",
    )


def _fingerprint(args: argparse.Namespace, particles: pd.DataFrame, extra: dict[str, Any]) -> str:
    fields = {
        "references": [file_digest(p) for p in args.reference],
        "classes": int(args.classes),
        "initial_lowpass": float(args.initial_lowpass),
        "global_iterations": int(args.global_iterations),
        "tau2_fudge": float(args.tau2_fudge),
        "seed": int(args.seed),
        **extra,
    }
    return checkpoint_fingerprint(CHECKPOINT_VERSION, particles, fields)


_ARRAYS = ("matrices", "shifts", "posteriors", "halves", "references", "fractions", "sigma2")


def _save(path: Path, state: c3.ClassState, fingerprint: str) -> None:
    arrays = {name: getattr(state, name) for name in _ARRAYS}
    arrays.update(
        fsc=state.fsc,
        resolutions=state.resolutions,
        scalars=np.array([state.step, state.r_max, state.iteration, float(state.converged)]),
        changes=np.asarray(state.changes, dtype=np.float64),
    )
    save_checkpoint(path, fingerprint, arrays)


def _load(path: Path, fingerprint: str) -> c3.ClassState | None:
    z = load_checkpoint(path, fingerprint, "class3d")
    if z is None:
        return None
    try:
        step, r_max, iteration, converged = z["scalars"].tolist()
        return c3.ClassState(
            **{name: z[name] for name in _ARRAYS},
            fsc=z["fsc"],
            resolutions=z["resolutions"],
            step=float(step),
            r_max=int(r_max),
            iteration=int(iteration),
            changes=z["changes"].tolist(),
            converged=bool(converged),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise FileFormatError(
            f"{path}: unreadable checkpoint ({err}); rerun with --no-resume"
        ) from err


def keep_classes(resolutions: np.ndarray, fractions: np.ndarray) -> list[int]:
    """[k] (1-based): the best-resolved class with particles, the larger on a tie."""
    order = sorted(
        (float(r), -float(f), k + 1)
        for k, (r, f) in enumerate(zip(resolutions, fractions, strict=True))
        if f > 0 and np.isfinite(r)
    )
    if not order:
        raise CryosnakeError("class3d: no class was reconstructed; nothing to keep")
    return [order[0][2]]


def _data_table(particles: pd.DataFrame, state: c3.ClassState, pixel_size: float) -> pd.DataFrame:
    n = len(particles)
    best = state.classes
    rows = np.arange(n)
    rot, tilt, psi = matrix_to_euler(state.matrices[best, rows])
    shifts = state.shifts[best, rows]
    data = particles.copy()
    data["rlnAngleRot"] = rot
    data["rlnAngleTilt"] = tilt
    data["rlnAnglePsi"] = psi
    data["rlnOriginXAngst"] = -shifts[:, 0] * pixel_size
    data["rlnOriginYAngst"] = -shifts[:, 1] * pixel_size
    data["rlnClassNumber"] = best + 1
    data["rlnMaxValueProbDistribution"] = state.posteriors[rows, best]
    return data


def _write_iteration(
    out: Path,
    prefix: str,
    state: c3.ClassState,
    optics: pd.DataFrame,
    data: pd.DataFrame,
    pixel_size: float,
) -> None:
    """``{prefix}_class00k.mrc``, ``{prefix}_model.star`` and ``{prefix}_data.star``."""
    k = len(state.references)
    box = int(state.references.shape[1])
    names = []
    for c in range(k):
        path = out / f"{prefix}_class{c + 1:03d}.mrc"
        write_mrc(path, state.references[c], pixel_size, kind="volume")
        names.append(path.name)
    resolutions = np.where(np.isfinite(state.resolutions), state.resolutions, 999.0)
    write_star(
        out / f"{prefix}_model.star",
        {
            "model_general": pd.DataFrame(
                [
                    {
                        "rlnNrClasses": k,
                        "rlnCurrentIteration": state.iteration,
                        "rlnCurrentResolution": float(np.min(resolutions)),
                        "rlnPixelSize": pixel_size,
                        "rlnOriginalImageSize": box,
                    }
                ]
            ),
            "model_classes": pd.DataFrame(
                {
                    "rlnReferenceImage": names,
                    "rlnClassDistribution": state.fractions,
                    "rlnEstimatedResolution": resolutions,
                }
            ),
        },
    )
    blocks = {"optics": optics, "particles": data}
    write_star(out / f"{prefix}_data.star", blocks)


def _plot(path: Path, state: c3.ClassState, kept: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(state.references)
    fig, axes = plt.subplots(k, 3, figsize=(6.6, 2.2 * k + 0.3), squeeze=False)
    for c in range(k):
        vol = state.references[c]
        for a, (axis, view) in enumerate(((0, "along z"), (1, "along y"), (2, "along x"))):
            ax = axes[c, a]
            ax.imshow(vol.sum(axis=axis), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(view, fontsize=9)
        res = state.resolutions[c]
        label = f"class {c + 1}{' (kept)' if c + 1 in kept else ''}\n"
        label += f"{100 * state.fractions[c]:.1f} %, " + (
            f"{res:.1f} Å" if np.isfinite(res) else "empty"
        )
        axes[c, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"3D classes after iteration {state.iteration}", fontsize=10)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    device = resolve_device(args.device)
    star, out, pset = open_run(args)
    optics, particles, values = pset.optics, pset.particles, pset.values
    pixel_size, box = pset.pixel_size, pset.box
    k = int(args.classes)
    if len(args.reference) not in (1, k):
        raise CryosnakeError(
            f"class3d: {len(args.reference)} references for {k} classes; give one, or one per class"
        )
    if args.keep and max(args.keep) > k:
        raise CryosnakeError(f"class3d: --keep {max(args.keep)} is beyond the {k} classes")
    diameter = particle_diameter(args.diameter, box, pixel_size)
    max_shift = (0.1 * diameter if args.max_shift is None else args.max_shift) / pixel_size
    settings = c3.ClassSettings(
        classes=k,
        search=r3.RefineSettings(
            symmetry=args.symmetry,
            mask_diameter=diameter / pixel_size,
            max_shift=max_shift,
            global_iterations=args.global_iterations,
            max_iterations=args.iterations,
            tau2_fudge=args.tau2_fudge,
        ),
        seed=args.seed,
    )
    references = [read_reference(path, box, pixel_size) for path in args.reference]
    halves = half_sets(particles, star, args.seed)
    n = len(particles)
    xp = array_module(device)
    plan = plan_map_memory("class3d", device, box, n, xp)
    print(
        f"class3d: {n} particles of {box} px at {pixel_size:g} Å into {k} classes from "
        f"{len(references)} reference(s) low-passed to {args.initial_lowpass:g} Å, mask "
        f"{diameter:g} Å, T = {args.tau2_fudge:g}, on the {device} "
        f"({plan.available / 2**30:.1f} GiB free: grids {plan.grids / 2**30:.2f} GiB)",
        flush=True,
    )
    spectra = map_spectra("class3d", pset.reader(), xp, plan)
    ctf = ctf_table(particles, values)
    fingerprint = _fingerprint(
        args,
        particles,
        {"diameter": diameter, "max_shift": max_shift, "box": box, "symmetry": args.symmetry},
    )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    mirror = CheckpointMirror(args.checkpoint_url, checkpoint, "class3d")
    if not args.no_resume:
        mirror.restore()
    state = None if args.no_resume else _load(checkpoint, fingerprint)
    if state is not None:
        print(f"class3d: resuming from {checkpoint} after iteration {state.iteration}", flush=True)
    else:
        state = c3.initial_class_state(
            spectra, references, pixel_size, args.initial_lowpass, settings, halves
        )
    search = settings.search
    while not state.converged and state.iteration < search.max_iterations:
        tick = time.perf_counter()
        kind = "global" if state.iteration < search.global_iterations else "local"
        state, _ = c3.class_iteration(spectra, ctf, pixel_size, state, settings, xp)
        data = _data_table(particles, state, pixel_size)
        _write_iteration(out, f"run_it{state.iteration:03d}", state, optics, data, pixel_size)
        _save(checkpoint, state, fingerprint)
        mirror.store()
        shares = " ".join(f"{100 * f:.1f}" for f in state.fractions)
        res = " ".join(f"{r:.1f}" for r in state.resolutions)
        print(
            f"class3d: iteration {state.iteration}/{search.max_iterations} ({kind}, step "
            f"{state.step:.2f}°)  shares % {shares}  resolutions Å {res}  "
            f"{100 * state.changes[-1]:.1f} % changed class  "
            f"{time.perf_counter() - tick:.1f} s",
            flush=True,
        )
    data = _data_table(particles, state, pixel_size)
    _write_iteration(out, "run", state, optics, data, pixel_size)
    kept = sorted(set(args.keep)) if args.keep else keep_classes(state.resolutions, state.fractions)
    chosen = data[data["rlnClassNumber"].isin(kept)]
    if chosen.empty:
        raise CryosnakeError(f"class3d: the kept classes {kept} hold no particles")
    blocks = {"optics": optics, "particles": chosen}
    write_star(out / "particles_kept.star", blocks)
    _plot(out / "run_classes.png", state, kept)
    mirror.clear()
    status = "converged" if state.converged else "stopped"
    print(
        f"class3d: {status} after {state.iteration} iterations; kept class "
        f"{', '.join(map(str, kept))}: {len(chosen)} of {n} particles; "
        f"{time.perf_counter() - started:.1f} s -> {out / 'particles_kept.star'}"
    )
    return 0


main = stage_main("class3d", __doc__, add_args, _run)
