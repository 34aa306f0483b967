"""``cryosnake live``: process a session while the microscope collects it.

Watches the microscope's output folder (EPU's ``Images-Disc*/GridSquare_*/Data`` or a
flat folder) or an S3 prefix, hands each complete movie to the workflow and runs it in
cycles (:mod:`cryosnake.live.session`), from the workflow folder (the checkout), with
the same configuration files and profile as ``snakemake``.

Example::

    cryosnake live --watch /mnt/epu/session1 --configfile my.yaml --stop-after-idle 30
    cryosnake live --watch /mnt/epu/session1 --configfile my.yaml --profile aws

Locally the movies are linked into ``<results>/live/movies`` and the report of the
session, ``<results>/live/report.html``, is redrawn after every cycle. With S3 as the
default storage (``--profile aws``) they are uploaded there (resumable, checked with
SHA-256), jobs run on AWS Batch, and the workflow's own report
(``<results>/report.html`` in S3) is refreshed with every 3D cycle and at the end.
The session's state is its ledger, ``<results>/live/events.tsv`` (kept in S3 too with
S3 storage), with the chunk table and the workflow's outputs: stop it (Ctrl-C) or
lose it at any time and start the same command again to go on.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cryosnake.chunks import parse_chunk_table
from cryosnake.config import schema_path, validate_config
from cryosnake.dag import add_workflow_args, find_snakefile, snakemake_command
from cryosnake.errors import ConfigError, CryosnakeError
from cryosnake.io import atomic_path, read_star, read_yaml
from cryosnake.live.ledger import Ledger
from cryosnake.live.session import Session, Settings, WorkflowRunner
from cryosnake.live.staging import STAGING, LocalStaging, S3Staging
from cryosnake.live.watch import make_watcher
from cryosnake.stages._common import positive_int, stage_main

__all__ = ["add_args", "main"]

DEFAULT_CONFIG = "config/config.yaml"  # the Snakefile's own configfile


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watch", required=True, help="the microscope's output folder, or s3://bucket/prefix"
    )
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="the workflow's configuration files, as given to snakemake (on top of "
        f"{DEFAULT_CONFIG}); input.movies and simulate are the session's",
    )
    parser.add_argument(
        "--profile", help="snakemake profile, e.g. aws (AWS Batch, S3 storage) or slurm"
    )
    parser.add_argument(
        "--cores",
        help="cores of a local run (default: all; with --profile, the profile's settings)",
    )
    parser.add_argument(
        "--settle",
        type=_seconds,
        default=30.0,
        help="seconds a movie's size must stay unchanged before it counts as complete, "
        "unless its EPU .xml is written (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-period",
        type=_seconds,
        default=300.0,
        help="seconds a complete movie waits at most for its chunk to fill "
        "(input.chunk_size movies) before it is processed (default: %(default)s)",
    )
    parser.add_argument(
        "--class2d-every",
        type=positive_int,
        default=5000,
        help="run 2D classification again after this many new particles (default: %(default)s)",
    )
    parser.add_argument(
        "--map3d-min-particles",
        type=positive_int,
        default=20000,
        help="particles kept by 2D selection before the first ab initio model and "
        "refinement, run again each time they double (default: %(default)s; map3d: "
        "false in the configuration: never)",
    )
    parser.add_argument(
        "--stop-after-idle",
        type=_seconds,
        metavar="MINUTES",
        help="end the session when no movie has arrived for this long and every movie is "
        "processed, after a last run of the whole workflow (default: never; Ctrl-C "
        "stops, and the same command goes on later)",
    )
    parser.add_argument(
        "--poll", type=_seconds, default=5.0, help="seconds between looks (default: %(default)s)"
    )
    add_workflow_args(parser, "-- --jobs 4")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, dictionaries merged key by key (as Snakemake does)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def effective_config(files: Sequence[str], overlay: dict[str, Any]) -> dict[str, Any]:
    """The configuration the workflow will run with: DEFAULT_CONFIG (when present), the
    ``files``, then ``overlay``, with the schema's defaults filled in."""
    config: dict[str, Any] = {}
    for path in [DEFAULT_CONFIG, *files] if Path(DEFAULT_CONFIG).is_file() else files:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys")
        config = _merge(config, data)
    config = _merge(config, overlay)
    return validate_config(config, schema_path(), source=" + ".join([*files]) or DEFAULT_CONFIG)


def storage_prefix(profile: str | None, snakemake_args: Sequence[str] = ()) -> str | None:
    """The S3 default storage prefix of the runs (None: local storage):
    ``--default-storage-prefix`` among ``snakemake_args``, else what ``profile`` sets.

    The profile is found as Snakemake finds it: a folder, else
    ``$XDG_CONFIG_HOME/snakemake/NAME`` (``~/.config``), else ``profiles/NAME``."""
    if profile is None:
        return None
    for i, arg in enumerate(snakemake_args):
        if arg.startswith("--default-storage-prefix="):
            return arg.split("=", 1)[1]
        if arg == "--default-storage-prefix" and i + 1 < len(snakemake_args):
            return snakemake_args[i + 1]
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    for folder in (Path(profile), Path(home) / "snakemake" / profile, Path("profiles") / profile):
        if (folder / "config.yaml").is_file():
            settings = read_yaml(folder / "config.yaml") or {}
            if settings.get("default-storage-provider") != "s3":
                return None
            prefix = settings.get("default-storage-prefix")
            if not prefix:
                raise ConfigError(f"{folder}/config.yaml: default-storage-prefix is not set")
            return str(prefix)
    raise ConfigError(f"--profile {profile}: no such snakemake profile")


class LocalResults:
    """The workflow's results in the local ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def text(self, name: str) -> str | None:
        path = self.folder / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def chunk_table(self) -> dict[str, str]:
        text = self.text("chunks.tsv")
        return {} if text is None else parse_chunk_table(text, str(self.folder / "chunks.tsv"))

    def particles(self, name: str) -> int:
        """Rows of the particles block of ``name`` (0 when it is missing)."""
        text = self.text(name)
        if text is None:
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            return len(read_star(path).get("particles", ()))


class S3Results(LocalResults):
    """The workflow's results under ``results`` in the S3 storage ``prefix``."""

    def __init__(self, prefix: str, results: str) -> None:
        super().__init__(Path(results))
        self.prefix = prefix

    def text(self, name: str) -> str | None:
        from cryosnake.aws.storage import read_s3_text

        return read_s3_text(self.prefix, f"{self.folder}/{name}", missing_ok=True)


@contextmanager
def _session_lock(folder: Path) -> Iterator[None]:
    """Only one live session per results folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CryosnakeError(
                f"{folder}: another cryosnake live runs on these results"
            ) from None
        yield


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _refresher(results: Path, config_file: Path) -> Any:
    from cryosnake.stages import report

    def refresh() -> None:
        out = results / "live" / "report.html"
        args = ["--results", str(results), "--out", str(out), "--config", str(config_file)]
        try:
            report.main(args)
        except CryosnakeError as err:
            print(f"cryosnake live: the session report was not redrawn: {err}", file=sys.stderr)

    return refresh


def _run(args: argparse.Namespace) -> int:
    prefix = storage_prefix(args.profile, args.snakemake_args)
    config = effective_config(args.configfile, {"simulate": {"enabled": False}})
    results = Path(config["results"])
    live = results / "live"
    snakefile = find_snakefile(Path.cwd(), args.snakefile)
    with _session_lock(live):
        if prefix is None:
            ledger = Ledger.open(live / "events.tsv")
            staging: LocalStaging | S3Staging = LocalStaging(results / STAGING)
            store: LocalResults = LocalResults(results)
        else:
            from cryosnake.aws import s3
            from cryosnake.aws.storage import write_s3_text

            store = S3Results(prefix, str(results))
            ledger = Ledger.open(
                live / "events.tsv",
                kept=store.text("live/events.tsv"),
                mirror=lambda text: write_s3_text(prefix, f"{results}/live/events.tsv", text),
            )
            staging = S3Staging(prefix, f"{results}/{STAGING}", s3.client())
        chunk_overlay = {"simulate": {"enabled": False}, "input": {"movies": staging.pattern}}
        config = effective_config(args.configfile, chunk_overlay)
        chunk_config = _write_yaml(live / "chunks.yaml", chunk_overlay)
        config_file = _write_yaml(live / "config.yaml", config)

        def session_config(movies: list[str]) -> Path:
            overlay = {"simulate": {"enabled": False}, "input": {"movies": movies}}
            return _write_yaml(live / "session.yaml", overlay)

        from cryosnake.aws import s3 as s3_module

        watcher = make_watcher(args.watch, args.settle, dict(ledger.arrived), s3_module.client)
        options = ["--snakefile", str(snakefile)] if snakefile is not None else []
        options += ["--profile", args.profile] if args.profile else []
        options += args.snakemake_args
        if args.cores is not None or args.profile is None:
            options += ["--cores", args.cores or "all"]
        settings = Settings(
            chunk_size=int(config["input"]["chunk_size"]),
            chunk_period=args.chunk_period,
            class2d_every=args.class2d_every,
            map3d=bool(config["map3d"]),
            map3d_min_particles=args.map3d_min_particles,
            stop_after_idle=None if args.stop_after_idle is None else 60 * args.stop_after_idle,
            poll=args.poll,
        )
        runner = WorkflowRunner(snakemake_command(), args.configfile, options, live / "logs")
        session = Session(
            watcher,
            staging,
            ledger,
            runner,
            store,
            settings,
            chunk_config=chunk_config,
            session_config=session_config,
            refresh=_refresher(results, config_file) if prefix is None else lambda: None,
        )
        return session.run()


main = stage_main("live", __doc__, add_args, _run)
