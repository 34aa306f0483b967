"""Pick particles in one micrograph: reference-free blobs, or templates.

Without ``--templates``: blob picking (Laplacian of Gaussian at the particle's core on
the downsampled, CTF phase-flipped micrograph, plus the local energy of its
band-passed detail). With ``--templates``: template matching, the normalised
cross-correlation with CTF-modulated templates (2D class averages or projections,
protein white, e.g. RELION's run_classes.mrcs) rotated in-plane every
``--angle-step`` degrees; their pixel size comes from the file header
(``--template-pixel-size`` overrides it). ``--ctf`` is the STAR file that
``cryosnake ctf`` writes; without it the contrast is only inverted.

Both pickers suppress picks closer than 0.8 diameter to a stronger one and reject
picks closer than a radius to the edge, on ice or carbon (local contrast outliers) and
aggregates (picks unlike the population of picks). The figure of merit is a sum of
z-scores (blobs: Laplacian of Gaussian and local energy; templates: best
cross-correlation and local energy).

How the automatic threshold follows the data (unless ``--threshold`` is given): blob
picking with ``--ctf`` first measures the micrograph's background from its own power
spectrum, the noise at the CTF's zeros (where particles give no signal) plus the
specimen's texture (ice, carbon) from the first Thon rings, and scores candidates in
units of that background, so a crowded micrograph is scored as fairly as a sparse
one; when those picks leave at least 70 % of the micrograph free, its free pixels
measure the background instead (they also see noise the zeros cannot). Template
picking, and blob picking without ``--ctf``, score against the
micrograph's pixels away from provisional picks. In both cases the threshold is the
lowest score at which noise, simulated through the same filters, would account for at
most 5 % of the picks (Benjamini-Hochberg): pure noise or empty ice gives no pick, a
micrograph full of particles is cut lower than one with a few. The plot (``--plot``)
shows the candidates' scores against it. Blob picks (with ``--ctf``) are placed at
their particle's centre of mass, not at its densest part.

Writes one STAR block ``data_particles`` with RELION's autopick labels:
``rlnCoordinateX``, ``rlnCoordinateY`` (micrograph pixels, x = column, y = row, the
first pixel's centre at 0), ``rlnClassNumber`` (the template, 0 for blobs),
``rlnAutopickFigureOfMerit`` and ``rlnAnglePsi`` (in-plane angle of the template,
-999 for blobs). A micrograph without particles gives the labels and no row. With
``--plot``, a PNG of the downsampled micrograph with the picks circled and the
histogram of candidate scores against the threshold.

Example::

    cryosnake pick --micrograph results/motioncor/movie_0001.mrc \\
        --ctf results/ctf/movie_0001.star --out results/pick/movie_0001.star \\
        --pixel-size 1.5 --diameter 150 --plot results/pick/movie_0001.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.backend import resolve_device, to_device
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import read_mrc, read_mrc_header, read_star, save_figure, write_star
from cryosnake.ops.pick import MicrographCtf, Picks, pick_blobs, pick_templates
from cryosnake.stages._common import add_device_arg, positive, stage_main
from cryosnake.stages._movie import PIXEL_SIZE_TOLERANCE, check_pixel_size

__all__ = ["LABELS", "add_args", "main", "read_ctf"]

LABELS = (
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnClassNumber",
    "rlnAutopickFigureOfMerit",
    "rlnAnglePsi",
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrograph", required=True, help="micrograph (MRC)")
    parser.add_argument("--out", required=True, help="STAR file of the picks to write")
    parser.add_argument("--pixel-size", type=positive, required=True, help="Å per pixel")
    parser.add_argument(
        "--diameter", type=positive, required=True, help="particle diameter (longest extent), Å"
    )
    parser.add_argument(
        "--templates", help="stack of 2D templates (.mrcs), protein white: template picking"
    )
    parser.add_argument(
        "--template-pixel-size",
        type=positive,
        help="Å per template pixel (default: from the templates' header)",
    )
    parser.add_argument(
        "--angle-step", type=positive, default=10.0, help="degrees between template rotations (10)"
    )
    parser.add_argument("--ctf", help="CTF STAR file of the micrograph (cryosnake ctf)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="figure of merit a pick must exceed (default: automatic, from the noise)",
    )
    parser.add_argument("--plot", help="PNG of the picks to write")
    add_device_arg(parser)
    parser.add_argument(
        "--ignore-header-pixel-size",
        action="store_true",
        help="do not compare --pixel-size with the micrograph's header",
    )


def read_ctf(path: str, micrograph: str, pixel_size: float) -> MicrographCtf:
    """The CTF of ``micrograph`` from a STAR file.

    Accepts what ``cryosnake ctf`` writes (block ``micrograph``, one row) and RELION's
    ``micrographs_ctf.star`` (blocks ``optics`` and ``micrographs``; the row whose
    rlnMicrographName has the micrograph's stem). Acquisition values (voltage, Cs,
    amplitude contrast) missing from the row are taken from the optics block.
    """
    blocks = read_star(path)
    if "micrograph" in blocks:
        table = blocks["micrograph"]
    elif "micrographs" in blocks:
        table = blocks["micrographs"]
        if len(table) > 1:
            if "rlnMicrographName" not in table.columns:
                raise FileFormatError(f"{path}: data_micrographs lacks rlnMicrographName")
            stem = Path(micrograph).stem
            names = table["rlnMicrographName"].astype(str).map(lambda s: Path(s).stem)
            table = table[names == stem]
            if len(table) != 1:
                raise FileFormatError(f"{path}: no single row for micrograph {stem}")
    else:
        raise FileFormatError(
            f"{path}: no data_micrograph block (found: {', '.join(sorted(blocks)) or 'none'})"
        )
    if len(table) == 0:
        raise FileFormatError(f"{path}: the CTF table has no row")
    row = table.iloc[0].to_dict()
    if "optics" in blocks and len(blocks["optics"]):
        optics = blocks["optics"].iloc[0].to_dict()
        row = {**optics, **row}
    needed = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
    missing = [label for label in needed if label not in row]
    if missing:
        raise FileFormatError(f"{path}: lacks label(s) {', '.join(missing)}")

    def value(label: str, default: float | None = None) -> float:
        if label not in row:
            if default is None:
                raise FileFormatError(f"{path}: lacks label {label}")
            return default
        try:
            out = float(row[label])
        except (TypeError, ValueError) as err:
            raise FileFormatError(f"{path}: {label} is not a number ({row[label]!r})") from err
        if not np.isfinite(out):
            raise FileFormatError(f"{path}: {label} is not finite")
        return out

    star_px = value("rlnMicrographPixelSize", 0.0)
    if star_px > 0 and abs(star_px - pixel_size) > PIXEL_SIZE_TOLERANCE * pixel_size:
        raise CryosnakeError(
            f"{path}: rlnMicrographPixelSize {star_px:.4f} Å differs from --pixel-size "
            f"{pixel_size:.4f} Å"
        )
    ctf = MicrographCtf(
        defocus_u=value("rlnDefocusU"),
        defocus_v=value("rlnDefocusV"),
        angle=value("rlnDefocusAngle"),
        voltage=value("rlnVoltage"),
        cs=value("rlnSphericalAberration"),
        amplitude_contrast=value("rlnAmplitudeContrast"),
        phase_shift=value("rlnPhaseShift", 0.0),
    )
    if not (ctf.defocus_u > 0 and ctf.defocus_v > 0 and ctf.voltage > 0):
        raise FileFormatError(f"{path}: defocus and voltage must be > 0")
    return ctf


def _read_micrograph(args: argparse.Namespace) -> np.ndarray:
    image, header_px = read_mrc(args.micrograph)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise CryosnakeError(f"{args.micrograph}: expected one 2D micrograph, got {image.shape}")
    if not args.ignore_header_pixel_size:
        check_pixel_size(header_px, args.micrograph, args.pixel_size)
    if not np.all(np.isfinite(image)):
        raise CryosnakeError(f"{args.micrograph}: holds NaN or infinite values")
    size = args.diameter / args.pixel_size
    if size < 6:
        raise CryosnakeError(
            f"--diameter {args.diameter} Å is only {size:.1f} pixels at {args.pixel_size} Å/px"
        )
    if min(image.shape) < 2.5 * size:
        raise CryosnakeError(
            f"{args.micrograph}: {image.shape} px is too small for particles of "
            f"{args.diameter} Å ({size:.0f} px)"
        )
    return np.asarray(image, dtype=np.float32)


def _read_templates(args: argparse.Namespace) -> tuple[np.ndarray, float]:
    path = args.templates
    is_stack = bool(read_mrc_header(path)["is_stack"])
    data, voxel = read_mrc(path)
    if data.ndim == 3 and not is_stack and data.shape[0] == data.shape[1] == data.shape[2] > 1:
        raise FileFormatError(
            f"{path}: a 3D volume, not a stack of 2D templates (write projections or "
            "class averages as .mrcs)"
        )
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise FileFormatError(f"{path}: expected a stack of square 2D templates, got {data.shape}")
    if data.shape[1] < 8:
        raise FileFormatError(f"{path}: templates of {data.shape[1]} px are too small")
    if not np.all(np.isfinite(data)):
        raise FileFormatError(f"{path}: holds NaN or infinite values")
    pixel = args.template_pixel_size or voxel
    if not pixel > 0:
        raise FileFormatError(f"{path}: the header has no pixel size (pass --template-pixel-size)")
    box = data.shape[1] * pixel
    if box < args.diameter:
        raise CryosnakeError(
            f"{path}: templates span {box:.0f} Å ({data.shape[1]} px at {pixel:.3f} Å/px), "
            f"less than --diameter {args.diameter} Å: wrong pixel size?"
        )
    return np.asarray(data, dtype=np.float32), float(pixel)


def _table(picks: Picks) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnCoordinateX": np.round(picks.coordinates[:, 0], 2).astype(np.float64),
            "rlnCoordinateY": np.round(picks.coordinates[:, 1], 2).astype(np.float64),
            "rlnClassNumber": picks.classes.astype(np.int64),
            "rlnAutopickFigureOfMerit": np.round(picks.scores, 4).astype(np.float64),
            "rlnAnglePsi": np.round(picks.psi, 2).astype(np.float64),
        },
        columns=list(LABELS),
    )


def _plot(path: str, picks: Picks, diameter_px: float, title: str, score_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    image = picks.image
    lo, hi = np.percentile(image, [1, 99])
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 5.6), width_ratios=[1.25, 1])
    a0.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    radius = 0.5 * diameter_px / picks.scale[1]
    for x, y in picks.coordinates:
        a0.add_patch(
            Circle((x / picks.scale[1], y / picks.scale[0]), radius, fill=False, lw=1, ec="lime")
        )
    a0.set_title(f"{len(picks.coordinates)} picks", fontsize=9)
    a0.set_xticks([])
    a0.set_yticks([])
    scores = picks.candidate_scores[np.isfinite(picks.candidate_scores)]
    if len(scores):
        a1.hist(scores, bins=40, color="0.5")
    a1.axvline(picks.threshold, color="C3", lw=1.5, label=f"threshold {picks.threshold:.2f}")
    a1.set_xlabel(score_name)
    a1.set_ylabel("candidates")
    a1.legend(fontsize=8)
    rejected = ", ".join(f"{k} {v}" for k, v in picks.rejected.items())
    a1.set_title(f"rejected above threshold: {rejected}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    image = _read_micrograph(args)
    ctf = read_ctf(args.ctf, args.micrograph, args.pixel_size) if args.ctf else None
    templates = _read_templates(args) if args.templates else None
    micrograph = to_device(image, device)
    if templates is None:
        picks = pick_blobs(
            micrograph, args.pixel_size, args.diameter, ctf=ctf, threshold=args.threshold
        )
        kind, score_name = "blob", "figure of merit (zLoG + zEnergy)"
    else:
        picks = pick_templates(
            micrograph,
            args.pixel_size,
            args.diameter,
            templates[0],
            templates[1],
            ctf=ctf,
            threshold=args.threshold,
            angle_step=args.angle_step,
        )
        kind, score_name = "template", "figure of merit (zNCC + 0.5 zEnergy)"
    write_star(args.out, {"particles": _table(picks)})
    if args.plot:
        _plot(
            args.plot,
            picks,
            args.diameter / args.pixel_size,
            f"{args.micrograph}: {kind} picking, {len(picks.coordinates)} particles",
            score_name,
        )
    rejected = ", ".join(f"{v} {k}" for k, v in picks.rejected.items())
    print(
        f"pick: {args.micrograph}: {len(picks.coordinates)} particles ({kind} picking on "
        f"{device}, threshold {picks.threshold:.3f}; rejected {rejected}) "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


main = stage_main("pick", __doc__, add_args, _run)
