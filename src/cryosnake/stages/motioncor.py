"""Motion correction of one movie: align frames, dose-weight, sum (MotionCor2's job).

Reads the movie, multiplies it by the gain reference (oriented as given, or found
with ``--gain-rotate auto``), replaces hot and dead pixels, optionally bins
super-resolution frames in Fourier space, then measures the motion coarse to fine on
block-averaged copies of the frames: whole frames at 4 Å per pixel, then patches
(``--patches``) at 2 Å, whose common shift refines the whole-frame shifts and whose
differences are fitted with a smooth deformation model. It writes the
motion-corrected sum with and without dose weighting (Grant & Grigorieff 2015), made
from the full-resolution frames in tiles that each follow their local motion.

Outputs in ``--out-dir`` (the two sums in ``--micrograph-dir`` when given, as the
workflow keeps them: results/micrographs/CHUNK/):

* ``<stem>.mrc``      dose-weighted sum (pixel size = movie pixel size x --bin)
* ``<stem>_noDW.mrc`` unweighted sum
* ``<stem>.star``     per-frame shifts in unbinned movie pixels (RELION's motion STAR
  layout: ``general``, ``global_shift``, ``local_shift`` at the patch centres), with
  ``frame_i(r) ~ reference(r - shift_i)`` and the first frame at zero
* ``<stem>_motion.png`` drift trajectory and power spectrum of the sum

Example::

    cryosnake motioncor --movie data/demo/movies/movie_0001.mrc --out-dir results/motioncor \\
        --pixel-size 1.5 --dose-per-frame 1.0 --gain data/demo/gain.mrc --patches 5x5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.backend import resolve_device, to_device, to_host
from cryosnake.errors import CryosnakeError
from cryosnake.io import open_movie, save_figure, write_mrc, write_star
from cryosnake.ops.defects import fill_defects, find_defects, sum_frames
from cryosnake.ops.dose import frame_exposures
from cryosnake.ops.fourier import fourier_crop
from cryosnake.ops.motion import corrected_sums, measure_motion
from cryosnake.stages._common import (
    SchemaDefault,
    add_device_arg,
    add_header_check_arg,
    add_names_root_arg,
    file_name,
    positive,
    stage_main,
)
from cryosnake.stages._movie import add_eer_arg, add_gain_args, check_header_pixel_size, load_gain

__all__ = ["add_args", "main", "patch_grid"]


def patch_grid(text: str) -> tuple[int, int]:
    """argparse type: ``COLSxROWS`` such as ``5x5``; ``1x1`` switches patches off."""
    cols, sep, rows = text.lower().partition("x")
    try:
        grid = (int(rows), int(cols))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS such as 5x5, got {text!r}") from err
    if not sep or min(grid) < 1 or max(grid) > 20:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS between 1x1 and 20x20, got {text!r}")
    return grid


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--movie", required=True, help="movie file (.mrc, .mrcs, .tif, .tiff)")
    parser.add_argument("--out-dir", required=True, help="folder for <stem>.mrc, .star, .png")
    parser.add_argument(
        "--micrograph-dir",
        default=None,
        help="folder for the micrographs <stem>.mrc and <stem>_noDW.mrc (default --out-dir)",
    )
    parser.add_argument("--pixel-size", type=positive, required=True, help="Å per movie pixel")
    parser.add_argument("--dose-per-frame", type=positive, required=True, help="e/Å² per frame")
    parser.add_argument(
        "--pre-exposure",
        type=float,
        default=SchemaDefault("motioncor.pre_exposure"),
        help="e/Å² before the first frame (%(default)s)",
    )
    add_gain_args(parser, auto=True)
    add_eer_arg(parser)
    parser.add_argument(
        "--patches",
        type=patch_grid,
        default=SchemaDefault("motioncor.patches"),
        metavar="COLSxROWS",
        help="patch grid of the local motion model (default %(default)s; 1x1: global only)",
    )
    parser.add_argument(
        "--bin",
        type=int,
        default=SchemaDefault("motioncor.bin"),
        choices=(1, 2, 3, 4),
        help="Fourier binning of the frames (2 for super-resolution movies; %(default)s)",
    )
    parser.add_argument(
        "--bfactor-global",
        type=float,
        default=SchemaDefault("motioncor.bfactor_global"),
        help="B-factor (Å²) of the coarse whole-frame alignment at 4 Å (default %(default)s)",
    )
    parser.add_argument(
        "--bfactor",
        type=float,
        default=SchemaDefault("motioncor.bfactor"),
        help="B-factor (Å²) of the patch alignment at 2 Å, which also refines the "
        "whole-frame shifts (default %(default)s)",
    )
    add_header_check_arg(parser)
    add_device_arg(parser)
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    add_names_root_arg(parser)


def _load_frames(args: argparse.Namespace, device: Any) -> tuple[Any, dict[str, Any]]:
    """Gain-corrected, defect-free, binned frames on ``device``, and what was done."""
    info: dict[str, Any] = {}
    with open_movie(args.movie, eer_group=args.eer_group) as movie:
        if not args.ignore_header_pixel_size:
            check_header_pixel_size(movie, args.movie, args.pixel_size)
        n, (ny, nx) = movie.n_frames, movie.frame_shape
        if n < 2:
            raise CryosnakeError(f"{args.movie}: a movie needs at least 2 frames, got {n}")
        raw = np.empty((n, ny, nx), dtype=np.float32)
        for i in range(n):
            raw[i] = movie.frame(i)
    if args.gain:
        gain, rotate, flip = load_gain(
            args.gain, args.gain_rotate, args.gain_flip, (ny, nx), lambda: raw.sum(axis=0)
        )
        info.update(gain_rotate=rotate, gain_flip=flip)
        raw *= gain
    frames = to_device(raw, device)  # on the CPU, the same array
    total = sum_frames(frames)
    defects = find_defects(total)
    count = int(defects.sum())
    if count:
        fill_defects(frames, defects, float(total[~defects].mean()) / n)
    info["defect_pixels"] = count
    if args.bin > 1:
        if ny % args.bin or nx % args.bin:
            raise CryosnakeError(
                f"{args.movie}: {nx} x {ny} px frames cannot be binned by {args.bin}"
            )
        shape = (ny // args.bin, nx // args.bin)
        binned = frames[:, : shape[0], : shape[1]].copy()
        for i in range(n):
            binned[i] = fourier_crop(frames[i], shape) * args.bin**2
        frames = binned
    return frames, info


def _plot(
    path: Path,
    shifts: np.ndarray,
    tracks: pd.DataFrame | None,
    image: np.ndarray,
    px: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 4.2))
    a0.plot(shifts[:, 0], shifts[:, 1], "o-", ms=3, lw=1, label="global")
    a0.plot(shifts[0, 0], shifts[0, 1], "ks", ms=5, label="frame 1")
    if tracks is not None:
        for _, track in tracks.groupby(["rlnCoordinateX", "rlnCoordinateY"]):
            a0.plot(
                track.rlnMicrographShiftX,
                track.rlnMicrographShiftY,
                "-",
                lw=0.6,
                alpha=0.6,
                color="C1",
            )
        a0.plot([], [], "-", color="C1", label="at patch centres")
    a0.set_xlabel("x shift (px)")
    a0.set_ylabel("y shift (px)")
    a0.set_aspect("equal", adjustable="datalim")
    a0.grid(alpha=0.3)
    a0.legend(fontsize=8)
    a0.set_title("drift (frame_i(r) = ref(r - shift))", fontsize=9)
    size = min(image.shape)
    crop = image[:size, :size]
    ps = np.abs(np.fft.fftshift(np.fft.fft2(crop - crop.mean()))) ** 2
    ps = np.log1p(ps / np.median(ps))
    lo, hi = np.percentile(ps, [5, 99.5])
    nyq = 1.0 / (2 * px)
    a1.imshow(ps, cmap="gray", vmin=lo, vmax=hi, extent=(-nyq, nyq, -nyq, nyq), origin="lower")
    a1.set_title("power spectrum of the dose-weighted sum", fontsize=9)
    a1.set_xlabel("1/Å")
    fig.suptitle(title, fontsize=10)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    stem = Path(args.movie).stem
    out_dir = Path(args.out_dir)
    frames, info = _load_frames(args, device)
    n, ny, nx = frames.shape
    px = args.pixel_size * args.bin
    t_read = time.perf_counter() - t0
    whole, local, iterations = measure_motion(
        frames,
        px,
        patches=args.patches,
        bfactor=args.bfactor,
        bfactor_global=args.bfactor_global,
    )
    exposures = frame_exposures(n, args.dose_per_frame, args.pre_exposure)
    dose_weighted, plain = corrected_sums(frames, whole, px, exposures, local=local)
    dose_weighted, plain = to_host(dose_weighted), to_host(plain)
    t_align = time.perf_counter() - t0 - t_read
    # Reported global shifts: the frame-averaged motion (whole-frame shift plus the mean
    # of the local deformation over the frame), RELION's convention for global_shift.
    shifts = whole if local is None else whole + local.mean_shift()

    unbinned = shifts * args.bin
    general = pd.DataFrame(
        [
            {
                "rlnImageSizeX": nx * args.bin,
                "rlnImageSizeY": ny * args.bin,
                "rlnImageSizeZ": n,
                "rlnMicrographMovieName": file_name(args.movie, args.names_root),
                "rlnMicrographBinning": float(args.bin),
                "rlnMicrographOriginalPixelSize": args.pixel_size,
                "rlnMicrographDoseRate": args.dose_per_frame,
                "rlnMicrographPreExposure": args.pre_exposure,
                "rlnMicrographStartFrame": 1,
            }
        ]
    )
    blocks: dict[str, pd.DataFrame] = {
        "general": general,
        "global_shift": pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.arange(1, n + 1),
                "rlnMicrographShiftX": unbinned[:, 0],
                "rlnMicrographShiftY": unbinned[:, 1],
            }
        ),
    }
    if local is not None:
        rows = []
        grid_rows, grid_cols = args.patches
        gy, gx = np.meshgrid(
            (np.arange(grid_rows) + 0.5) * ny / grid_rows,
            (np.arange(grid_cols) + 0.5) * nx / grid_cols,
            indexing="ij",
        )
        cx, cy = gx.ravel(), gy.ravel()
        for t in range(n):
            lx, ly = local.shift_at(np.full(len(cx), t), cx, cy)
            rows.append(
                pd.DataFrame(
                    {
                        "rlnMicrographFrameNumber": t + 1,
                        "rlnCoordinateX": cx * args.bin,
                        "rlnCoordinateY": cy * args.bin,
                        "rlnMicrographShiftX": (whole[t, 0] + lx) * args.bin,
                        "rlnMicrographShiftY": (whole[t, 1] + ly) * args.bin,
                    }
                )
            )
        blocks["local_shift"] = pd.concat(rows, ignore_index=True)
    micrographs = Path(args.micrograph_dir) if args.micrograph_dir else out_dir
    write_mrc(micrographs / f"{stem}.mrc", dose_weighted, px)
    write_mrc(micrographs / f"{stem}_noDW.mrc", plain, px)
    write_star(out_dir / f"{stem}.star", blocks)
    if not args.no_plot:
        drift = float(np.linalg.norm(unbinned[-1] - unbinned[0]))
        _plot(
            out_dir / f"{stem}_motion.png",
            unbinned,
            blocks.get("local_shift"),
            dose_weighted,
            px,
            f"{stem}: {n} frames, total drift {drift:.1f} px",
        )
    step = np.linalg.norm(np.diff(unbinned, axis=0), axis=1)
    print(
        f"motioncor: {args.movie}: {n} x {ny} x {nx} px on {device}, "
        f"drift {step.sum():.1f} px over {n} frames, {iterations} iterations, "
        f"{info['defect_pixels']} defect pixels"
        + (f", gain rotate {info['gain_rotate']} flip {info['gain_flip']}" if args.gain else "")
        + f" (read {t_read:.1f} s, align+sum {t_align:.1f} s)"
    )
    return 0


main = stage_main("motioncor", __doc__, add_args, _run)
