"""Extract particles from one micrograph into a stack (RELION's particle extraction).

Reads the micrograph (MRC), the particle coordinates (a STAR block with
``rlnCoordinateX/Y`` in micrograph pixels, x = column, y = row, as ``cryosnake pick``
writes; it may be empty) and the micrograph's CTF STAR (``cryosnake ctf``). For each
coordinate a box of ``--box`` px is cut, centred on the coordinate with sub-pixel
accuracy (the fractional remainder is removed with a Fourier phase ramp, so
``rlnOriginXAngst/YAngst`` are 0), optionally Fourier-cropped to ``--bin-to`` px (the
pixel size grows by box / bin-to), normalised as RELION does (the background, outside
a circle of ``--diameter``, gets mean 0 and standard deviation 1) and contrast-inverted
so particles are white (``--no-invert`` keeps the micrograph's contrast).

Particles whose box crosses the micrograph edge are skipped, as RELION does; their
number is reported. Without ``--box``, the box is about 1.8 x ``--diameter``, rounded
up to an even, FFT-friendly size.

Writes ``OUT_DIR/<micrograph stem>.mrcs`` (float32 stack, pixel size in the header) and
``OUT_DIR/<micrograph stem>.star`` (RELION 3.1: ``optics`` and ``particles`` blocks;
``rlnImageName`` is ``000001@OUT_DIR/<stem>.mrcs`` and ``rlnMicrographName`` the
micrograph, as given, or relative to ``--names-relative-to``). No particle is not an
error: the stack then has 0 images and the ``particles`` block no row.

Example::

    cryosnake extract --micrograph results/motioncor/movie_0001.mrc \\
        --coords results/pick/movie_0001.star --ctf results/ctf/movie_0001.star \\
        --diameter 150 --box 180 --bin-to 90 --out-dir results/extract --pixel-size 1.5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.backend import resolve_device, to_device, to_host
from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import optics_table, read_mrc, read_star, read_star_block, write_mrc, write_star
from cryosnake.ops.extract import BACKGROUND_FRACTION, default_box, extract_particles
from cryosnake.stages._common import (
    add_device_arg,
    add_header_check_arg,
    add_names_root_arg,
    file_name,
    positive,
    stage_main,
)
from cryosnake.stages._movie import check_pixel_size

__all__ = ["add_args", "main"]

COORDINATES = ("rlnCoordinateX", "rlnCoordinateY")
CTF_LABELS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)
OPTIONAL_CTF_LABELS = ("rlnCtfMaxResolution", "rlnCtfFigureOfMerit")


def _even_int(text: str) -> int:
    """argparse type: an even integer >= 8 (RELION's boxes are even)."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from err
    if value < 8 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even number of pixels >= 8, got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrograph", required=True, help="micrograph (MRC)")
    parser.add_argument(
        "--coords", required=True, help="STAR with rlnCoordinateX/Y (micrograph px)"
    )
    parser.add_argument("--ctf", required=True, help="CTF STAR of the micrograph (cryosnake ctf)")
    parser.add_argument("--out-dir", required=True, help="folder for <stem>.mrcs and <stem>.star")
    parser.add_argument(
        "--box", type=_even_int, help="box in micrograph px, even (default: ~1.8 x --diameter)"
    )
    parser.add_argument(
        "--bin-to", type=_even_int, help="Fourier-crop the boxes to this many px (even, <= box)"
    )
    parser.add_argument(
        "--diameter",
        type=positive,
        help="Å: particle diameter; the normalisation background lies outside this circle "
        f"(default {BACKGROUND_FRACTION:g} x the box)",
    )
    parser.add_argument(
        "--no-invert",
        action="store_true",
        help="keep the micrograph's contrast (default: invert, particles white)",
    )
    parser.add_argument(
        "--pixel-size",
        type=positive,
        help="Å per micrograph px (default: the MRC header, else the CTF STAR)",
    )
    add_header_check_arg(parser)
    add_device_arg(parser)
    add_names_root_arg(parser)


def _coordinates(path: str) -> pd.DataFrame:
    """The first block of ``path`` with rlnCoordinateX/Y, numeric and of one micrograph.

    A file whose blocks are all empty (even without labels) holds no particle.
    """
    blocks = read_star(path)
    table = next((df for df in blocks.values() if all(c in df.columns for c in COORDINATES)), None)
    if table is None and all(len(df) == 0 for df in blocks.values()):
        return pd.DataFrame(columns=list(COORDINATES))  # no particle, written without labels
    if table is None:
        raise FileFormatError(
            f"{path}: no data block with rlnCoordinateX and rlnCoordinateY "
            f"(found: {', '.join(f'data_{name}' for name in blocks)})"
        )
    table = table.reset_index(drop=True)
    try:
        xy = table[list(COORDINATES)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FileFormatError(f"{path}: rlnCoordinateX/Y are not numbers") from err
    if not np.all(np.isfinite(xy)):
        raise FileFormatError(f"{path}: rlnCoordinateX/Y hold NaN or infinite values")
    if "rlnMicrographName" in table.columns and table["rlnMicrographName"].nunique() > 1:
        raise FileFormatError(
            f"{path}: holds coordinates of {table['rlnMicrographName'].nunique()} micrographs; "
            "give the coordinates of this micrograph only"
        )
    return table


def _ctf(path: str) -> pd.Series:
    """The one row of the CTF STAR's ``micrograph`` block."""
    table = read_star_block(path, "micrograph", required=CTF_LABELS)
    if len(table) != 1:
        raise FileFormatError(f"{path}: data_micrograph must hold one row, found {len(table)}")
    row = table.iloc[0]
    labels = [*CTF_LABELS, "rlnPhaseShift", *OPTIONAL_CTF_LABELS, "rlnMicrographPixelSize"]
    for label in labels:
        if label in row.index:
            try:
                value = float(row[label])
            except (TypeError, ValueError) as err:
                raise FileFormatError(f"{path}: {label} is not a number") from err
            if not np.isfinite(value):
                raise FileFormatError(f"{path}: {label} is not finite")
    return row


def _micrograph(args: argparse.Namespace, ctf: pd.Series) -> tuple[np.ndarray, float]:
    """The micrograph as a 2D float32 array and its pixel size (Å)."""
    image, header_px = read_mrc(args.micrograph)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise CryosnakeError(f"{args.micrograph}: expected one 2D micrograph, got {image.shape}")
    image = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise CryosnakeError(f"{args.micrograph}: holds NaN or infinite values")
    if args.pixel_size is not None:
        if not args.ignore_header_pixel_size:
            check_pixel_size(header_px, args.micrograph, args.pixel_size)
        return image, float(args.pixel_size)
    if header_px > 0:
        return image, float(header_px)
    if "rlnMicrographPixelSize" in ctf.index and float(ctf["rlnMicrographPixelSize"]) > 0:
        return image, float(ctf["rlnMicrographPixelSize"])
    raise CryosnakeError(
        f"{args.micrograph}: no pixel size in the header nor in {args.ctf}; give --pixel-size"
    )


def _sizes(args: argparse.Namespace, pixel_size: float) -> tuple[int, int, float]:
    """Box, final box and background-circle diameter (final px)."""
    if args.box is not None:
        box = int(args.box)
    elif args.diameter is not None:
        box = default_box(args.diameter / pixel_size)
    else:
        raise CryosnakeError("--box or --diameter: give at least one to set the box size")
    size = box if args.bin_to is None else int(args.bin_to)
    if size > box:
        raise CryosnakeError(f"--bin-to: {size} px is larger than the box of {box} px")
    image_px = pixel_size * box / size
    if args.diameter is None:
        return box, size, BACKGROUND_FRACTION * size
    diameter = args.diameter / image_px
    if diameter >= size:
        raise CryosnakeError(
            f"--diameter: {args.diameter:g} Å is {diameter:.1f} px, not smaller than the "
            f"box of {size} px (no background left to normalise with)"
        )
    return box, size, diameter


def _particles(
    coords: pd.DataFrame,
    kept: np.ndarray,
    ctf: pd.Series,
    args: argparse.Namespace,
    stack_name: str,
) -> pd.DataFrame:
    """The ``particles`` block: one row per extracted particle, RELION labels."""
    rows = coords[kept].reset_index(drop=True)
    n = len(rows)
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
            "rlnMicrographName": [file_name(args.micrograph, args.names_root)] * n,
            "rlnCoordinateX": rows["rlnCoordinateX"].to_numpy(dtype=np.float64),
            "rlnCoordinateY": rows["rlnCoordinateY"].to_numpy(dtype=np.float64),
            "rlnOriginXAngst": np.zeros(n),  # sub-pixel remainder applied to the image
            "rlnOriginYAngst": np.zeros(n),
        }
    )
    for label in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        table[label] = np.full(n, float(ctf[label]))
    phase = float(ctf["rlnPhaseShift"]) if "rlnPhaseShift" in ctf.index else 0.0
    table["rlnPhaseShift"] = np.full(n, phase)
    for label in OPTIONAL_CTF_LABELS:
        if label in ctf.index:
            table[label] = np.full(n, float(ctf[label]))
    table["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)
    if "rlnAutopickFigureOfMerit" in rows.columns:
        table["rlnAutopickFigureOfMerit"] = rows["rlnAutopickFigureOfMerit"].to_numpy()
    return table


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out_dir = Path(args.out_dir)
    stem = Path(args.micrograph).stem
    stack_path, star_path = out_dir / f"{stem}.mrcs", out_dir / f"{stem}.star"
    for given in (args.coords, args.ctf, args.micrograph):
        if Path(given).resolve() in (stack_path.resolve(), star_path.resolve()):
            raise CryosnakeError(f"--out-dir: {given} would be overwritten by the output")
    coords = _coordinates(args.coords)
    ctf = _ctf(args.ctf)
    image, pixel_size = _micrograph(args, ctf)
    box, size, diameter = _sizes(args, pixel_size)
    image_px = pixel_size * box / size
    device = resolve_device(args.device)
    xy = coords[list(COORDINATES)].to_numpy(dtype=np.float64).reshape(-1, 2)
    stack, kept = extract_particles(
        to_device(image, device),
        xy,
        box,
        size=size,
        background_diameter=diameter,
        invert=not args.no_invert,
    )
    stack = to_host(stack)
    optics = optics_table(
        pixel_size=pixel_size,
        voltage=float(ctf["rlnVoltage"]),
        cs=float(ctf["rlnSphericalAberration"]),
        amplitude_contrast=float(ctf["rlnAmplitudeContrast"]),
        image_size=size,
        image_pixel_size=image_px,
    )
    particles = _particles(coords, kept, ctf, args, file_name(stack_path, args.names_root))
    write_mrc(stack_path, stack, image_px, kind="stack")
    write_star(star_path, {"optics": optics, "particles": particles})
    skipped = int((~kept).sum())
    binning = f" -> {size} px" if size != box else ""
    print(
        f"extract: {args.micrograph}: {len(particles)} particles of {box} px{binning} at "
        f"{image_px:.4g} Å/px, {skipped} skipped (box crosses the edge) -> {stack_path} "
        f"on {device} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


main = stage_main("extract", __doc__, add_args, _run)
