"""Run a per-movie stage on every movie of a chunk, in one process.

The workflow runs the per-movie stages (inspect, motioncor, ctf, pick, extract) one job
per chunk of movies (:mod:`cryosnake.chunks`). This command is that job: it runs the
stage's own ``main`` once per movie, in this process (the libraries and, on a GPU,
CUDA are loaded once), with the per-movie file options it builds from the chunk's
folders, and the stage options given after ``--`` unchanged. Each folder holds one
stage's files of the chunk, named by movie:

- ``inspect``: ``--movies`` -> ``--out-dir`` ``<movie>.json``, ``<movie>.png``;
- ``motioncor``: the ``--movies`` that inspect accepted (its reports in
  ``--inspect-dir``) -> ``--micrographs`` ``<movie>.mrc``, ``<movie>_noDW.mrc`` and
  ``--out-dir`` ``<movie>.star``, ``<movie>_motion.png``;
- ``ctf``: every ``<movie>_noDW.mrc`` of ``--micrographs`` -> ``--out-dir``
  ``<movie>.star``, ``<movie>.png``;
- ``pick``: every ``<movie>.mrc`` of ``--micrographs`` with its CTF (``--ctf-dir``)
  -> ``--out-dir`` ``<movie>.star``, ``<movie>.png``;
- ``extract``: the same with the picks (``--pick-dir``) -> ``--out-dir``
  ``<movie>.mrcs``, ``<movie>.star``.

A movie whose stage fails stops the job with the stage's one-line error (the movies
before it are done; a rerun of the chunk redoes them). A chunk whose movies inspect all
rejected gives empty folders.

Example::

    cryosnake chunk ctf --micrographs results/micrographs/chunk0001 \\
        --out-dir results/ctf/chunk0001 -- --pixel-size 1.5 --voltage 300 --cs 2.7 \\
        --amplitude-contrast 0.07 --names-relative-to .
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.stages._common import run_stage

__all__ = [
    "PER_MOVIE_STAGES",
    "add_args",
    "check_options",
    "main",
    "movie_options",
    "split_argv",
]

# stage -> its module in cryosnake.stages
PER_MOVIE_STAGES = {
    "inspect": "inspect_movie",
    "motioncor": "motioncor",
    "ctf": "ctf",
    "pick": "pick",
    "extract": "extract",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=sorted(PER_MOVIE_STAGES), help="per-movie stage to run")
    parser.add_argument("--movies", nargs="+", help="movie files (inspect, motioncor)")
    parser.add_argument("--inspect-dir", help="inspect's reports of the movies (motioncor)")
    parser.add_argument(
        "--micrographs",
        help="folder of the chunk's micrographs: written by motioncor, read by ctf, pick "
        "and extract",
    )
    parser.add_argument("--ctf-dir", help="folder of the micrographs' CTF STAR files")
    parser.add_argument("--pick-dir", help="folder of the micrographs' picks (extract)")
    parser.add_argument("--out-dir", required=True, help="folder of the stage's outputs")
    parser.usage = "%(prog)s {inspect,motioncor,ctf,pick,extract} [OPTIONS] -- STAGE-OPTIONS"
    parser.epilog = "After --: the options of the stage itself, given to it for every movie."


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the chunk's options, the stage's options): those after ``--``."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def _accepted(movies: list[str], inspect_dir: str) -> list[str]:
    """The movies whose inspect report (``<stem>.json``) does not reject them."""
    kept = []
    for movie in movies:
        report = Path(inspect_dir) / f"{Path(movie).stem}.json"
        try:
            verdict = json.loads(report.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise FileFormatError(f"{report}: no inspect report for {movie}") from err
        except (OSError, ValueError) as err:
            raise FileFormatError(f"{report}: unreadable inspect report ({err})") from err
        if "rejected" not in verdict:
            kept.append(movie)
    return kept


def _micrograph_names(folder: str) -> list[str]:
    """Movie names of the motion-corrected micrographs in ``folder`` (sorted)."""
    path = Path(folder)
    if not path.is_dir():
        raise FileFormatError(f"{path}: no such folder of micrographs")
    suffix = "_noDW.mrc"
    return sorted(p.name[: -len(suffix)] for p in path.glob(f"*{suffix}"))


def movie_options(args: argparse.Namespace, movie: str) -> list[str]:
    """The file options of ``args.stage`` for one movie of the chunk (``movie``: the
    movie file for inspect and motioncor, else the movie's name)."""
    out = Path(args.out_dir)
    stem = Path(movie).stem
    if args.stage == "inspect":
        return [
            "--movie", movie, "--out", str(out / f"{stem}.json"),
            "--thumbnail", str(out / f"{stem}.png"),
        ]  # fmt: skip
    if args.stage == "motioncor":
        return ["--movie", movie, "--out-dir", str(out), "--micrograph-dir", args.micrographs]
    mic = Path(args.micrographs)
    plot = ["--out", str(out / f"{movie}.star"), "--plot", str(out / f"{movie}.png")]
    if args.stage == "ctf":
        return ["--micrograph", str(mic / f"{movie}_noDW.mrc"), *plot]
    ctf = str(Path(args.ctf_dir) / f"{movie}.star")
    if args.stage == "pick":
        return ["--micrograph", str(mic / f"{movie}.mrc"), "--ctf", ctf, *plot]
    return [
        "--micrograph", str(mic / f"{movie}.mrc"),
        "--coords", str(Path(args.pick_dir) / f"{movie}.star"), "--ctf", ctf,
        "--out-dir", str(out),
    ]  # fmt: skip


def check_options(args: argparse.Namespace) -> None:
    """Stop (one line) when an option that ``args.stage`` needs is missing."""
    needed = {
        "inspect": ("movies",),
        "motioncor": ("movies", "inspect_dir", "micrographs"),
        "ctf": ("micrographs",),
        "pick": ("micrographs", "ctf_dir"),
        "extract": ("micrographs", "ctf_dir", "pick_dir"),
    }[args.stage]
    for name in needed:
        if not getattr(args, name):
            option = "--" + name.replace("_", "-")
            raise CryosnakeError(f"chunk {args.stage}: {option} is required")


def _movies(args: argparse.Namespace) -> list[str]:
    """The chunk's movies to process: movie files (inspect, motioncor: those inspect
    accepted), or the names of the micrographs in ``--micrographs``."""
    if args.stage == "inspect":
        return list(args.movies)
    if args.stage == "motioncor":
        return _accepted(list(args.movies), args.inspect_dir)
    return _micrograph_names(args.micrographs)


def _stage(stage: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(f"cryosnake.stages.{PER_MOVIE_STAGES[stage]}")
    main: Callable[[list[str]], int] = module.main
    return main


def _run(args: argparse.Namespace, stage_args: list[str]) -> int:
    started = time.perf_counter()
    check_options(args)
    jobs = [(Path(m).stem, movie_options(args, m)) for m in _movies(args)]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.micrographs and args.stage == "motioncor":
        Path(args.micrographs).mkdir(parents=True, exist_ok=True)
    run = _stage(args.stage)
    skipped = len(args.movies) - len(jobs) if args.stage == "motioncor" else 0
    print(
        f"chunk {args.stage}: {len(jobs)} movie(s)"
        + (f" ({skipped} rejected by inspect, not processed)" if skipped else "")
        + f" -> {out}",
        flush=True,
    )
    for number, (movie, files) in enumerate(jobs, start=1):
        tick = time.perf_counter()
        print(f"chunk {args.stage}: [{number}/{len(jobs)}] {movie}", flush=True)
        try:
            status = run([*files, *stage_args])
        except CryosnakeError:
            print(f"chunk {args.stage}: {movie} failed", flush=True)
            raise
        if status != 0:
            raise CryosnakeError(f"chunk {args.stage}: {movie}: the stage exited with {status}")
        print(
            f"chunk {args.stage}: [{number}/{len(jobs)}] {movie} done in "
            f"{time.perf_counter() - tick:.1f} s",
            flush=True,
        )
    print(
        f"chunk {args.stage}: {len(jobs)} movie(s) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``cryosnake chunk``: parse ``argv`` (the stage's options after ``--``) and run."""
    head, stage_args = split_argv(sys.argv[1:] if argv is None else argv)
    return run_stage("chunk", __doc__, add_args, lambda args: _run(args, stage_args), head)
