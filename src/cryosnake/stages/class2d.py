"""Reference-free 2D classification of particle images (maximum likelihood, RELION-style).

Reads ``particles.star`` (RELION 3.0 to 5, :func:`cryosnake.io.read_particles`; images named
``000001@stack.mrcs`` relative to ``--names-relative-to`` (default the working
directory), or else to the STAR file's folder; RELION-normalised, contrast-inverted),
and classifies the particles into
``--classes`` classes by expectation-maximisation over classes, in-plane rotations
(every ``--psi-step`` degrees) and translations (within ``--max-shift`` Å), with the
CTF in the model, a noise spectrum estimated from the data, class averages that are
Wiener-filtered with their own SNR and masked with a soft circle of ``--diameter``, and
a start from random classes (see :mod:`cryosnake.ops.class2d`). Images are Fourier-
cropped to a working box of at most ``--box`` pixels (default 64) for speed. The
search widens in resolution as the classes improve; the run stops when fewer than 1 %
of the particles change class and the log-likelihood has levelled off (or after
``--iterations``).

Outputs in ``--out-dir``:

- ``run_classes.mrcs``: the class averages at the particles' box and pixel size;
- ``run_data.star``: the input optics and particles plus ``rlnClassNumber``,
  ``rlnAnglePsi``, ``rlnOriginXAngst``, ``rlnOriginYAngst`` (the particle centre is at
  the box centre minus the origin), ``rlnMaxValueProbDistribution`` and
  ``rlnLogLikeliContribution`` (log marginal likelihood of the image under the model);
- ``run_model.star``: ``model_general``; ``model_classes`` with ``rlnReferenceImage``,
  ``rlnClassDistribution``, ``rlnClassParticleCount``, ``rlnEstimatedResolution`` (Å,
  where the class SSNR falls below 1) and the class score ``rlnClassScore`` with what
  it is made of, ``rlnClassContainment``, ``rlnClassLowResSsnr`` and
  ``rlnClassMassRatio`` (see ``cryosnake select2d --help``); per-class SSNR and signal
  spectra (``model_class_N``) and the noise spectrum (``model_noise``);
- ``run_classes.png``: a gallery of the classes with their sizes, scores, resolutions.

Memory: the particles' working-box spectra (8 n b (b/2+1) bytes for n particles and a
working box of b px) are computed once and kept in memory (on the device) when they
take less than half of the memory budget (the host's available memory and, on a GPU,
the device's free memory, capped by ``CRYOSNAKE_MEMORY``, e.g. ``8G``); otherwise they
are streamed: every pass over the particles (E-step, subset averages) reads the images
of each batch from their stacks and masks and crops them again
(:mod:`cryosnake.stages._images`), so that the memory used does not grow with the
particle count (only the poses, classes of each particle and CTF parameters do). The
log says which.

A checkpoint (``run_checkpoint.npz``) is written atomically after every iteration; a
run started again with the same arguments (and the same particles) continues from the
last finished iteration, and ends where an uninterrupted run would. ``--no-resume``
starts over.

Example::

    cryosnake class2d --particles results/extract/particles.star --classes 50 \\
        --diameter 180 --out-dir results/class2d
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.aws.checkpoints import CheckpointMirror
from cryosnake.backend import array_module, resolve_device, to_device, to_host
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import save_figure, write_mrc, write_star
from cryosnake.ops import class2d as c2
from cryosnake.stages._common import file_name, positive, positive_int, stage_main
from cryosnake.stages._images import StackReader, open_spectra
from cryosnake.stages._particles import (
    add_iterative_args,
    add_particle_io_args,
    checkpoint_fingerprint,
    ctf_table,
    file_digest,
    load_checkpoint,
    open_run,
    particle_diameter,
    save_checkpoint,
)

__all__ = ["add_args", "main"]

MAX_BOX = 64
CHECKPOINT = "run_checkpoint.npz"
CHECKPOINT_VERSION = 2
NEW_COLUMNS = (
    "rlnClassNumber",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnMaxValueProbDistribution",
    "rlnLogLikeliContribution",
)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    add_particle_io_args(parser, out_help="folder for the run_* outputs")
    parser.add_argument("--classes", type=positive_int, required=True, help="number of classes K")
    parser.add_argument(
        "--diameter",
        type=positive,
        default=None,
        help="Å, mask diameter: a little more than the particle's (default 80 %% of the box)",
    )
    parser.add_argument(
        "--psi-step", type=positive, default=5.0, help="degrees between in-plane rotations (5)"
    )
    parser.add_argument(
        "--max-shift",
        type=_non_negative,
        default=None,
        help="Å, translation search radius (default 10 %% of the diameter)",
    )
    parser.add_argument(
        "--box",
        type=positive_int,
        default=MAX_BOX,
        help=f"px, largest working box; images are Fourier-cropped to it ({MAX_BOX})",
    )
    parser.add_argument(
        "--tau2-fudge",
        type=positive,
        default=2.0,
        help="regularisation T: > 1 trusts the data more (RELION's 2D default, 2)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="particles per batch (default: by memory)"
    )
    add_iterative_args(
        parser,
        "class2d",
        iterations_help="most EM iterations",
        seed_help="random seed of the start",
    )


# --------------------------------------------------------------------------- input


def _load_spectra(reader: StackReader, pixel_size: float, box: int, xp: Any) -> tuple[Any, str]:
    """The particle images masked by the box and cropped to ``box``: the (n, box,
    box//2+1) spectra on ``xp``'s device, or streamed when they do not fit the memory
    budget (:func:`~cryosnake.stages._images.open_spectra`); and the log's note."""
    mask = (reader.box - 2 * c2.MASK_EDGE) * pixel_size

    def prepare(images: Any) -> Any:
        return c2.prepare_spectra(images, pixel_size, box, mask)

    return open_spectra(reader, prepare, (box, box // 2 + 1), xp, device_transform=prepare)


# --------------------------------------------------------------------------- checkpoint

_DEVICE_FIELDS = ("classes", "unmasked")
_ARRAY_FIELDS = (
    "sigma2",
    "tau2",
    "ssnr",
    "fractions",
    "assignment",
    "psi",
    "shift",
    "max_prob",
    "loglik",
)
_SCALAR_FIELDS = (
    "sigma_offset",
    "r_max",
    "tau2_shells",
    "iteration",
    "log_likelihood",
    "changes",
    "converged",
    "history",
    "reseeded",
)


def _save_checkpoint(
    path: Path, state: c2.Class2DState, rng: np.random.Generator, fingerprint: str
) -> None:
    arrays: dict[str, np.ndarray] = {name: to_host(getattr(state, name)) for name in _DEVICE_FIELDS}
    arrays.update({name: np.asarray(getattr(state, name)) for name in _ARRAY_FIELDS})
    # Scalars and the generator as JSON text (NaN written as NaN, which json reads back).
    scalars = {name: getattr(state, name) for name in _SCALAR_FIELDS}
    arrays["scalars"] = np.array(json.dumps(scalars))
    arrays["rng"] = np.array(json.dumps(rng.bit_generator.state))
    save_checkpoint(path, fingerprint, arrays)


def _load_checkpoint(
    path: Path, fingerprint: str, device: Any
) -> tuple[c2.Class2DState, np.random.Generator] | None:
    """The saved state and generator, or None when ``path`` is absent or belongs to
    other arguments or particles (said on stdout)."""
    z = load_checkpoint(path, fingerprint, "class2d")
    if z is None:
        return None
    try:
        fields: dict[str, Any] = {name: to_device(z[name], device) for name in _DEVICE_FIELDS}
        fields.update({name: z[name] for name in _ARRAY_FIELDS})
        scalars = json.loads(str(z["scalars"]))
        fields.update({name: scalars[name] for name in _SCALAR_FIELDS})
        fields["log_likelihood"] = float(fields["log_likelihood"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(z["rng"]))
    except (KeyError, TypeError, ValueError) as err:
        raise FileFormatError(
            f"{path}: unreadable checkpoint ({err}); rerun with --no-resume"
        ) from err
    return c2.Class2DState(**fields), rng


def _fingerprint(
    args: argparse.Namespace, particles: pd.DataFrame, settings: dict[str, Any]
) -> str:
    fields = {"particles": file_digest(args.particles), "seed": int(args.seed), **settings}
    return checkpoint_fingerprint(CHECKPOINT_VERSION, particles, fields)


# --------------------------------------------------------------------------- outputs


def _gallery(path: Path, images: np.ndarray, table: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(images)
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:k]):
        row = table.iloc[i]
        ax.imshow(images[i], cmap="gray")
        ax.set_title(
            f"{i + 1}: {int(row.rlnClassParticleCount)} ({100 * row.rlnClassDistribution:.1f} %)\n"
            f"score {row.rlnClassScore:.2f}, {row.rlnEstimatedResolution:.0f} Å",
            fontsize=8,
        )
    fig.suptitle("2D classes: number, particles (share), score, resolution", fontsize=10)
    save_figure(path, fig)


def _write_outputs(
    out: Path,
    root: str | None,
    optics: pd.DataFrame,
    particles: pd.DataFrame,
    state: c2.Class2DState,
    settings: c2.Class2DSettings,
    pixel_size: float,
    work_pixel: float,
    big: int,
    diameter: float,
    subsets: Any,
) -> pd.DataFrame:
    k = settings.n_classes
    box = int(state.classes.shape[-1])
    classes = to_host(c2.resize_images(state.classes, big))
    write_mrc(out / "run_classes.mrcs", classes, pixel_size, kind="stack")
    classes_name = file_name(out / "run_classes.mrcs", root)
    counts = np.bincount(state.assignment, minlength=k)
    scores = c2.class_scores(subsets, state.ssnr, work_pixel, diameter, counts)
    resolution = state.resolution(work_pixel)
    model_classes = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{i + 1:06d}@{classes_name}" for i in range(k)],
            "rlnClassDistribution": state.fractions,
            "rlnClassParticleCount": counts,
            "rlnEstimatedResolution": resolution,
            "rlnClassScore": scores["score"],
            "rlnClassContainment": scores["containment"],
            "rlnClassLowResSsnr": scores["ssnr_low"],
            "rlnClassMassRatio": scores["mass_ratio"],
            "rlnClassMassWeight": scores["mass_weight"],
        }
    )
    general = pd.DataFrame(
        [
            {
                "rlnReferenceDimensionality": 2,
                "rlnDataDimensionality": 2,
                "rlnOriginalImageSize": big,
                "rlnCurrentImageSize": box,
                "rlnPixelSize": pixel_size,
                "rlnCurrentResolution": float(resolution.min()),
                "rlnNrClasses": k,
                "rlnParticleDiameter": diameter,
                "rlnTau2FudgeFactor": settings.tau2_fudge,
                "rlnLogLikelihood": state.log_likelihood,
                "rlnAveragePmax": float(np.mean(state.max_prob)),
                "rlnSigmaOffsetsAngst": state.sigma_offset * work_pixel,
                "rlnCurrentIteration": state.iteration,
            }
        ]
    )
    shells = np.arange(box // 2 + 1)
    freq = shells / (box * work_pixel)
    ang = np.where(shells > 0, box * work_pixel / np.maximum(shells, 1), 999.0)
    blocks: dict[str, pd.DataFrame] = {"model_general": general, "model_classes": model_classes}
    for i in range(k):
        blocks[f"model_class_{i + 1}"] = pd.DataFrame(
            {
                "rlnSpectralIndex": shells,
                "rlnResolution": freq,
                "rlnAngstromResolution": ang,
                "rlnSsnrMap": state.ssnr[i],
                "rlnReferenceSigma2": state.tau2[i],
            }
        )
    blocks["model_noise"] = pd.DataFrame(
        {
            "rlnSpectralIndex": shells,
            "rlnResolution": freq,
            "rlnAngstromResolution": ang,
            "rlnSigma2Noise": state.sigma2,
        }
    )
    write_star(out / "run_model.star", blocks)
    data = particles.copy()
    data["rlnClassNumber"] = state.assignment + 1
    data["rlnAnglePsi"] = state.psi
    # image(r) = class(R^-1 (r - t)): the particle centre is at the box centre + t, and
    # RELION's origin is the shift that recentres it.
    data["rlnOriginXAngst"] = -state.shift[:, 0] * work_pixel
    data["rlnOriginYAngst"] = -state.shift[:, 1] * work_pixel
    data["rlnMaxValueProbDistribution"] = state.max_prob
    data["rlnLogLikeliContribution"] = state.loglik
    blocks_out = {"optics": optics, "particles": data}
    write_star(out / "run_data.star", blocks_out)
    _gallery(out / "run_classes.png", classes, model_classes)
    return model_classes


# --------------------------------------------------------------------------- run


def _auto_batch(n_t: int, box: int, kr: int, device: str) -> int:
    """Particles per batch for a working set of ~256 MB (CPU) or ~2 GB (GPU)."""
    n_f = math.pi * (box / 2) ** 2 / 2
    per_particle = n_t * (2 * n_f * 4 * 3 + kr * 4 * 3)
    budget = (2 << 30) if device == "gpu" else (256 << 20)
    return int(max(8, min(4096, budget // max(per_particle, 1))))


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    device = resolve_device(args.device)
    _, out, pset = open_run(args)
    optics, particles, values = pset.optics, pset.particles, pset.values
    pixel_size, big = pset.pixel_size, pset.box
    box = min(big, args.box - args.box % 2)
    if box < 16:
        raise CryosnakeError(f"--box: a working box of {box} px is too small (>= 16)")
    diameter = particle_diameter(args.diameter, big, pixel_size)
    work_pixel = pixel_size * big / box
    max_shift = 0.1 * diameter if args.max_shift is None else args.max_shift
    settings = c2.Class2DSettings(
        n_classes=args.classes,
        mask_diameter=diameter / work_pixel,
        psi_step=args.psi_step,
        max_shift=max_shift / work_pixel,
        tau2_fudge=args.tau2_fudge,
        batch=1,
        reseed_until=max(1, args.iterations // 2),
    )
    kr = settings.n_classes * settings.n_rotations
    batch = args.batch or _auto_batch(len(settings.translations), box, kr, device)
    settings = replace(settings, batch=batch)
    fingerprint = _fingerprint(
        args,
        particles,
        {
            "classes": settings.n_classes,
            "diameter": float(diameter),
            "psi_step": float(settings.psi_step),
            "max_shift": float(max_shift),
            "box": box,
            "tau2_fudge": float(settings.tau2_fudge),
            "reseed_until": settings.reseed_until,
        },
    )
    n = len(particles)
    print(
        f"class2d: {n} particles of {big} px at {pixel_size:g} Å, working box {box} px "
        f"({work_pixel:.2f} Å/px), K = {settings.n_classes}, {settings.n_rotations} rotations, "
        f"{len(settings.translations)} translations, on {device}",
        flush=True,
    )
    xp = array_module(device)
    spectra, note = _load_spectra(pset.reader(), pixel_size, box, xp)
    print(f"class2d: {note}", flush=True)
    data = c2.ParticleData(
        spectra=spectra, ctf=ctf_table(particles, values), pixel_size=work_pixel, device=xp
    )
    checkpoint = out / CHECKPOINT
    mirror = CheckpointMirror(args.checkpoint_url, checkpoint, "class2d")
    if not args.no_resume:
        mirror.restore()
    loaded = None if args.no_resume else _load_checkpoint(checkpoint, fingerprint, device)
    if loaded is not None:
        state, rng = loaded
        print(f"class2d: resuming from {checkpoint} after iteration {state.iteration}", flush=True)
    else:
        rng = np.random.default_rng(args.seed)
        state = c2.initial_state(data, settings, rng)
    while not state.converged and state.iteration < args.iterations:
        tick = time.perf_counter()
        state = c2.em_iteration(data, state, settings, rng)
        _save_checkpoint(checkpoint, state, rng, fingerprint)
        mirror.store()
        res = state.resolution(work_pixel)
        note = f"  re-seeded class(es) {[k + 1 for k in state.reseeded]}" if state.reseeded else ""
        print(
            f"class2d: iteration {state.iteration}/{args.iterations}  "
            f"logL {state.log_likelihood:.6g}  changes {100 * state.changes:.1f} %  "
            f"best class {res.min():.1f} Å (shells <= {state.r_max})  "
            f"{time.perf_counter() - tick:.1f} s{note}",
            flush=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    subsets = c2.subset_averages(data, state, settings)
    model = _write_outputs(
        out,
        args.names_root,
        optics,
        particles,
        state,
        settings,
        pixel_size,
        work_pixel,
        big,
        diameter,
        subsets,
    )
    mirror.clear()
    status = "converged" if state.converged else "stopped"
    print(
        f"class2d: {status} after {state.iteration} iterations, "
        f"{int((model.rlnClassParticleCount > 0).sum())} of {settings.n_classes} classes used, "
        f"{time.perf_counter() - started:.1f} s -> {out / 'run_model.star'}"
    )
    return 0


main = stage_main("class2d", __doc__, add_args, _run)
