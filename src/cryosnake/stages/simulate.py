"""Simulate a cryo-EM dataset with exact ground truth.

Writes raw movies (MRC or LZW-TIFF, uint16 counts), the gain reference ``gain.mrc``
and ``truth/`` (volume, particle coordinates and poses, per-movie drift, local motion,
CTF, noiseless micrographs, junk and hot pixels) into OUT_DIR.

Example::

    cryosnake simulate --preset demo --out-dir data/demo --seed 1
    cryosnake simulate --preset benchmark --out-dir data/bench --n-movies 1 \\
        --set local_motion=2.0 --set junk=false

Presets: demo (6 movies, 30 x 1024 x 1024 px, 1.5 Å/px), tiny (2 movies of 256 px, for
tests) and benchmark (4096 x 4096 x 40 frames). Any parameter of
``cryosnake.simulate.SimulationParams`` can be overridden with ``--set NAME=VALUE``;
``--list-parameters`` prints them with their values.
"""

from __future__ import annotations

import argparse
import dataclasses

from cryosnake.errors import ConfigError
from cryosnake.simulate import PRESETS, make_params, simulate_dataset
from cryosnake.stages._common import positive, stage_main

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="starting set of parameters (default: demo)",
    )
    parser.add_argument("--out-dir", required=True, help="dataset folder to write")
    parser.add_argument("--seed", type=int, help="random seed (default: 1)")
    parser.add_argument("--n-movies", type=int, help="number of movies")
    parser.add_argument(
        "--format",
        dest="movie_format",
        choices=("mrc", "tiff"),
        help="movie file format (tiff: LZW-compressed)",
    )
    parser.add_argument("--pixel-size", type=positive, help="Å per pixel")
    parser.add_argument("--voltage", type=positive, help="acceleration voltage, kV")
    parser.add_argument("--cs", type=float, help="spherical aberration, mm")
    parser.add_argument("--amplitude-contrast", type=float, help="amplitude contrast fraction")
    parser.add_argument("--dose-per-frame", type=positive, help="e/Å² per frame")
    parser.add_argument("--n-frames", type=int, help="frames per movie")
    parser.add_argument("--size", type=int, help="micrograph width = height, px")
    parser.add_argument(
        "--specimen", help="'phantom' (built-in), a map (.mrc) or an atomic model (.pdb/.cif)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override any parameter (repeatable)",
    )
    parser.add_argument(
        "--list-parameters",
        action="store_true",
        help="print the parameters that would be used, and exit",
    )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = {
        "seed": args.seed,
        "n_movies": args.n_movies,
        "movie_format": args.movie_format,
        "pixel_size": args.pixel_size,
        "voltage": args.voltage,
        "cs": args.cs,
        "amplitude_contrast": args.amplitude_contrast,
        "dose_per_frame": args.dose_per_frame,
        "n_frames": args.n_frames,
        "width": args.size,
        "height": args.size,
        "specimen": args.specimen,
    }
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE")
        values[name.strip().replace("-", "_")] = value
    return values


def _run(args: argparse.Namespace) -> int:
    params = make_params(args.preset, **_overrides(args))
    if args.list_parameters:
        for f in dataclasses.fields(params):
            if f.name != "extra":
                print(f"{f.name} = {getattr(params, f.name)!r}")
        return 0
    simulate_dataset(params, args.out_dir)
    return 0


main = stage_main("simulate", __doc__, add_args, _run)
