"""CTF estimation of one micrograph (CTFFIND4's job).

Averages the power spectra of overlapping tiles, subtracts a smooth background,
searches the mean defocus on the rotational average, then refines defocus U, V and
the astigmatism angle (and, with ``--fit-phase-shift``, a phase-plate shift) in 2D.
Writes one STAR block with one row, the format later stages (pick, extract) read:
``rlnDefocusU/V/Angle``, ``rlnPhaseShift``, ``rlnCtfFigureOfMerit``,
``rlnCtfMaxResolution`` and the acquisition values used. With ``--plot``, a PNG of
the spectrum (left half observed, right half fitted) and the per-ring fit quality.

A micrograph without Thon rings (pure noise, empty ice) gets a low figure of merit
and a poor fit resolution that ``curate`` rejects; it is not an error.

Example::

    cryosnake ctf --micrograph results/motioncor/movie_0001_noDW.mrc \\
        --out results/ctf/movie_0001.star --pixel-size 1.5 --voltage 300 --cs 2.7 \\
        --amplitude-contrast 0.07 --plot results/ctf/movie_0001.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import read_mrc, save_figure, write_star
from cryosnake.ops.ctf_fit import CtfFit, fit_ctf
from cryosnake.stages._common import (
    SchemaDefault,
    add_acquisition_args,
    add_header_check_arg,
    add_names_root_arg,
    file_name,
    positive,
    stage_main,
)
from cryosnake.stages._movie import check_pixel_size

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrograph", required=True, help="micrograph (MRC)")
    parser.add_argument("--out", required=True, help="STAR file to write (one row)")
    add_acquisition_args(parser, pixel_help="Å per pixel")
    parser.add_argument(
        "--min-res",
        type=positive,
        default=SchemaDefault("ctf.min_res"),
        help="Å, low limit (%(default)s)",
    )
    parser.add_argument(
        "--max-res",
        type=positive,
        default=SchemaDefault("ctf.max_res"),
        help="Å, high limit (%(default)s)",
    )
    parser.add_argument(
        "--defocus-range",
        type=positive,
        nargs=2,
        default=SchemaDefault("ctf.defocus_min", "ctf.defocus_max"),
        metavar=("MIN", "MAX"),
        help="Å, range of the mean defocus searched (%(default)s)",
    )
    parser.add_argument(
        "--max-astigmatism",
        type=positive,
        default=SchemaDefault("ctf.max_astigmatism"),
        help="Å, largest dfU - dfV (%(default)s)",
    )
    parser.add_argument("--fit-phase-shift", action="store_true", help="phase-plate data")
    parser.add_argument("--tile", type=int, default=512, help="periodogram tile size, px")
    parser.add_argument("--plot", help="PNG of the fit to write")
    add_header_check_arg(parser)
    add_names_root_arg(parser)


def _plot(path: str, fit: CtfFit, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = fit.spectrum.shape[0]
    show = fit.spectrum.copy()
    model = (fit.model - fit.model.mean()) / max(float(fit.model.std()), 1e-12)
    show[:, n // 2 :] = model[:, n // 2 :]
    lo, hi = np.percentile(fit.spectrum, [2, 98])
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9.5, 4.2), width_ratios=[1, 1.3])
    nyq = 1.0 / (2 * fit.spectrum_pixel_size)
    a0.imshow(show, cmap="gray", vmin=lo, vmax=hi, extent=(-nyq, nyq, -nyq, nyq), origin="lower")
    a0.set_title("spectrum (left) | fit (right)", fontsize=9)
    a0.set_xlabel("1/Å")
    a1.plot(fit.ring_frequency, fit.ring_correlation, "o-", ms=3)
    a1.axhline(0.3, color="k", ls="--", lw=1)
    label = f"fit to {fit.max_resolution:.1f} Å"
    a1.axvline(1.0 / fit.max_resolution, color="C3", lw=1, label=label)
    a1.set_xlabel("spatial frequency (1/Å)")
    a1.set_ylabel("correlation of fit and spectrum")
    a1.set_ylim(-0.2, 1.0)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    image, header_px = read_mrc(args.micrograph)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise CryosnakeError(f"{args.micrograph}: expected one 2D micrograph, got {image.shape}")
    if min(image.shape) < 128:
        raise CryosnakeError(f"{args.micrograph}: {image.shape} px is too small to fit a CTF")
    if not args.ignore_header_pixel_size:
        check_pixel_size(header_px, args.micrograph, args.pixel_size)
    if not np.all(np.isfinite(image)):
        raise CryosnakeError(f"{args.micrograph}: holds NaN or infinite values")
    low, high = sorted(args.defocus_range)
    try:
        fit = fit_ctf(
            image,
            args.pixel_size,
            voltage=args.voltage,
            cs=args.cs,
            amplitude_contrast=args.amplitude_contrast,
            min_res=args.min_res,
            max_res=args.max_res,
            defocus_range=(low, high),
            max_astigmatism=args.max_astigmatism,
            fit_phase_shift=args.fit_phase_shift,
            tile=args.tile,
        )
    except ValueError as err:
        raise CryosnakeError(f"--min-res/--max-res: {err}") from err
    row = {
        "rlnMicrographName": file_name(args.micrograph, args.names_root),
        "rlnDefocusU": round(fit.defocus_u, 2),
        "rlnDefocusV": round(fit.defocus_v, 2),
        "rlnDefocusAngle": round(fit.angle, 3),
        "rlnPhaseShift": round(fit.phase_shift, 3),
        "rlnCtfFigureOfMerit": round(fit.figure_of_merit, 5),
        "rlnCtfMaxResolution": round(fit.max_resolution, 3),
        "rlnVoltage": args.voltage,
        "rlnSphericalAberration": args.cs,
        "rlnAmplitudeContrast": args.amplitude_contrast,
        "rlnMicrographPixelSize": args.pixel_size,
    }
    write_star(args.out, {"micrograph": pd.DataFrame([row])})
    if args.plot:
        _plot(
            args.plot,
            fit,
            f"{args.micrograph}: dfU {fit.defocus_u:.0f} dfV {fit.defocus_v:.0f} Å "
            f"@ {fit.angle:.1f}°, FOM {fit.figure_of_merit:.3f}",
        )
    print(
        f"ctf: {args.micrograph}: defocus {fit.defocus_u:.0f} / {fit.defocus_v:.0f} Å at "
        f"{fit.angle:.1f}°, figure of merit {fit.figure_of_merit:.3f}, fit to "
        f"{fit.max_resolution:.1f} Å ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


main = stage_main("ctf", __doc__, add_args, _run)
