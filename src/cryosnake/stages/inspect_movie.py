"""Check one movie before processing and summarise it (RELION's import, with checks).

Reads the movie frame by frame, applies the gain reference, and checks what would
silently spoil every later stage: a gain whose size does not match the frames, a pixel
size in the file header that disagrees with the one given, a dose per frame that
disagrees with the counts actually recorded, blank frames. Any of these is an error
naming the file; with ``--reject`` (as the workflow runs it) a problem of the movie is
instead recorded in the report as ``"rejected": "<reason>"`` and the workflow goes on
without that movie (``rejected.tsv``), while a problem of the gain stays an error.

Writes a JSON report (frames, size, measured dose per frame, outlier pixels) and a PNG
thumbnail of the gain-corrected sum with the per-frame dose (of a rejected movie: the
reason).

Example::

    cryosnake inspect --movie data/demo/movies/movie_0001.mrc --gain data/demo/gain.mrc \\
        --pixel-size 1.5 --dose-per-frame 1.0 --out results/inspect/movie_0001.json \\
        --thumbnail results/inspect/movie_0001.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cryosnake.errors import CryosnakeError, FileFormatError, MovieRejected
from cryosnake.io import Movie, open_movie, save_figure, write_json
from cryosnake.stages._common import (
    SchemaDefault,
    add_header_check_arg,
    add_names_root_arg,
    file_name,
    positive,
    stage_main,
)
from cryosnake.stages._movie import (
    add_eer_arg,
    add_gain_args,
    check_header_pixel_size,
    load_gain,
    read_gain,
)

__all__ = ["add_args", "inspect_movie", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--movie", required=True, help="movie file (.mrc, .mrcs, .tif, .tiff)")
    parser.add_argument("--out", required=True, help="JSON report to write")
    parser.add_argument("--thumbnail", help="PNG thumbnail to write")
    parser.add_argument("--pixel-size", type=positive, required=True, help="Å per pixel")
    parser.add_argument("--dose-per-frame", type=positive, required=True, help="e/Å² per frame")
    add_gain_args(parser, auto=True)
    add_eer_arg(parser)
    parser.add_argument(
        "--dose-tolerance",
        type=float,
        default=SchemaDefault("inspect.dose_tolerance"),
        help="relative mismatch allowed between the measured and the given "
        "dose per frame (<= 0: do not check; default %(default)s)",
    )
    add_header_check_arg(parser)
    parser.add_argument(
        "--reject",
        action="store_true",
        help="a movie that fails a check (unreadable, truncated, blank frames, off dose "
        "or pixel size) is recorded as rejected in --out (with the reason, exit 0) "
        "instead of being an error; a problem of the gain reference stays an error",
    )
    add_names_root_arg(parser)


def _frames(movie: Movie, path: str) -> Iterator[np.ndarray]:
    """The frames of ``movie``; a read error (truncated, corrupt) rejects the movie."""
    for i in range(movie.n_frames):
        try:
            yield movie.frame(i)
        except FileFormatError as err:
            raise MovieRejected(str(err)) from err


def inspect_movie(
    movie_path: str,
    *,
    pixel_size: float,
    dose_per_frame: float,
    gain_path: str | None = None,
    gain_rotate: int | str = 0,
    gain_flip: str = "none",
    dose_tolerance: float = 0.25,
    check_header: bool = True,
    eer_group: int | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Check a movie and measure it.

    Returns
    -------
    report : dict (JSON-ready)
    total : (ny, nx) float32 gain-corrected sum of the frames
    frame_means : (n,) float64 mean gain-corrected counts per pixel of each frame

    Raises
    ------
    MovieRejected
        The movie cannot be used: unreadable, truncated, blank frames, no counts, a
        header pixel size or a measured dose that disagrees with the given one.
    CryosnakeError
        The gain reference is unreadable or does not fit the frames (the session's
        problem, not one movie's).
    """
    stored_gain = read_gain(gain_path) if gain_path else None
    try:
        movie_cm = open_movie(movie_path, eer_group=eer_group)
    except FileFormatError as err:
        raise MovieRejected(str(err)) from err
    with movie_cm as movie:
        header_px = movie.pixel_size
        if check_header:
            try:
                check_header_pixel_size(movie, movie_path, pixel_size)
            except CryosnakeError as err:
                raise MovieRejected(str(err)) from err
        gain = None
        if gain_path:

            def raw_sum() -> np.ndarray:
                total = np.zeros(movie.frame_shape, dtype=np.float32)
                for frame in _frames(movie, movie_path):
                    total += frame
                return total

            gain, gain_rotate, gain_flip = load_gain(
                gain_path, gain_rotate, gain_flip, movie.frame_shape, raw_sum, stored_gain
            )
        total = np.zeros(movie.frame_shape, dtype=np.float64)
        means = np.empty(movie.n_frames)
        for i, raw in enumerate(_frames(movie, movie_path)):
            frame = raw.astype(np.float32)
            if gain is not None:
                frame *= gain
            means[i] = float(frame.mean())
            total += frame
        n_frames, shape, dtype = movie.n_frames, movie.frame_shape, str(movie.dtype)

    median = float(np.median(means))
    if median <= 0:
        raise MovieRejected(f"{movie_path}: frames hold no counts")
    blank = np.flatnonzero(means < 0.1 * median)
    if blank.size:
        raise MovieRejected(
            f"{movie_path}: frame(s) {', '.join(str(b + 1) for b in blank[:5])} are blank "
            f"(mean {means[blank[0]]:.3g} vs median {median:.3g} counts/px)"
        )
    measured_dose = float(means.mean()) / pixel_size**2
    mismatch = abs(measured_dose - dose_per_frame) / dose_per_frame
    if dose_tolerance > 0 and mismatch > dose_tolerance:
        raise MovieRejected(
            f"{movie_path}: measured {measured_dose:.3f} e/Å² per frame from the counts, but "
            f"the given dose per frame is {dose_per_frame:.3f} (off by {100 * mismatch:.0f} %; "
            "check acquisition.dose_per_frame, acquisition.pixel_size and the gain)"
        )
    # Outlier (hot) pixels: far above the local level in the summed image.
    level = float(np.median(total))
    spread = 1.4826 * float(np.median(np.abs(total - level)))
    hot = int((total > level + 12.0 * max(spread, np.sqrt(max(level, 1.0)))).sum())
    report: dict[str, Any] = {
        "movie": str(movie_path),
        "n_frames": n_frames,
        "width": shape[1],
        "height": shape[0],
        "dtype": dtype,
        "header_pixel_size": header_px,
        "pixel_size": pixel_size,
        "gain": gain_path,
        "gain_rotate": gain_rotate,
        "gain_flip": gain_flip,
        "dose_per_frame_given": dose_per_frame,
        "dose_per_frame_measured": round(measured_dose, 4),
        "total_dose": round(measured_dose * n_frames, 3),
        "frame_dose": [round(m / pixel_size**2, 4) for m in means],
        "hot_pixels": hot,
    }
    return report, total.astype(np.float32), means


def _thumbnail(
    path: str,
    total: np.ndarray,
    means: np.ndarray,
    pixel_size: float,
    dose_per_frame: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    # Hot pixels would dominate the picture: show them at the median level.
    med = float(np.median(total))
    mad = float(np.median(np.abs(total - med))) or 1.0
    total = np.where(np.abs(total - med) > 20 * 1.4826 * mad, med, total)
    bin_ = max(1, int(np.ceil(max(total.shape) / 512)))
    ny, nx = (s // bin_ * bin_ for s in total.shape)
    small = total[:ny, :nx].reshape(ny // bin_, bin_, nx // bin_, bin_).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, max(1.0, 8.0 / pixel_size / bin_))
    lo, hi = np.percentile(small, [1, 99])
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 4.2), width_ratios=[1, 1.2])
    a0.imshow(small, cmap="gray", vmin=lo, vmax=hi, origin="lower")
    a0.set_title("gain-corrected sum (not aligned)", fontsize=9)
    a0.set_axis_off()
    a1.plot(np.arange(1, len(means) + 1), means / pixel_size**2, "o-", ms=3, label="measured")
    a1.axhline(dose_per_frame, color="k", ls="--", lw=1, label="given")
    a1.set_ylim(0, 1.3 * max(dose_per_frame, float(means.max()) / pixel_size**2))
    a1.legend(fontsize=8, loc="lower right")
    a1.set_xlabel("frame")
    a1.set_ylabel("dose (e/Å²)")
    a1.set_title("dose per frame", fontsize=9)
    a1.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save_figure(path, fig)


def _rejection_thumbnail(path: str, movie: str, reason: str) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.2))
    ax.set_axis_off()
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(reason, 110)), ha="center", va="center",
            fontsize=8, wrap=True)  # fmt: skip
    fig.suptitle(f"{Path(movie).name}: rejected", fontsize=10, color="firebrick")
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        report, total, means = inspect_movie(
            args.movie,
            pixel_size=args.pixel_size,
            dose_per_frame=args.dose_per_frame,
            gain_path=args.gain,
            gain_rotate=args.gain_rotate,
            gain_flip=args.gain_flip,
            dose_tolerance=args.dose_tolerance,
            check_header=not args.ignore_header_pixel_size,
            eer_group=args.eer_group,
        )
    except MovieRejected as err:
        if not args.reject:
            raise
        movie = file_name(args.movie, args.names_root)
        write_json(args.out, {"movie": movie, "rejected": str(err)})
        if args.thumbnail:
            _rejection_thumbnail(args.thumbnail, args.movie, str(err))
        print(f"inspect: {args.movie}: REJECTED: {err}")
        return 0
    report["movie"] = file_name(args.movie, args.names_root)
    if args.gain:
        report["gain"] = file_name(args.gain, args.names_root)
    write_json(args.out, report)
    if args.thumbnail:
        _thumbnail(
            args.thumbnail,
            total,
            means,
            args.pixel_size,
            args.dose_per_frame,
            f"{Path(args.movie).name}: {report['dose_per_frame_measured']:.3g} e/Å²/frame, "
            f"{report['hot_pixels']} hot pixels",
        )
    print(
        f"inspect: {args.movie}: {report['n_frames']} x {report['height']} x {report['width']}, "
        f"{report['dose_per_frame_measured']:.3f} e/Å²/frame measured "
        f"({report['dose_per_frame_given']} given), {report['hot_pixels']} hot pixels "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


main = stage_main("inspect", __doc__, add_args, _run)
