"""Draw the workflow: the graph of rules and the graph of jobs, as SVG and Mermaid.

Runs snakemake in the workflow folder (the current directory, which must hold the
Snakefile, or give --snakefile) with ``--rulegraph`` and ``--dag``, nothing is executed,
and writes into --out-dir:

- ``rulegraph.svg``, ``rulegraph.mmd``: one box per rule, an arrow from each rule to
  the rules that use its outputs;
- ``dag.svg``, ``dag.mmd``: one box per job (per chunk of movies for the per-movie rules); jobs
  whose outputs are already up to date are drawn dashed.

The graphs are those of the configuration and the profile given (default
``profiles/default``; ``--profile aws`` gives the AWS graph, for which
snakemake may need the S3 endpoint and credentials). Snakemake options after ``--``
are passed through, e.g. ``-- --configfile my_config.yaml`` or ``-- --config results=out``,
or ``-- --omit-from curate`` to leave out curate and what follows it (``--until`` does not
prune the graph, it only changes which jobs would run, and the others are drawn dashed).
The SVG pictures need graphviz's ``dot`` (``apt-get install graphviz``); the Mermaid
files (``.mmd``) render on GitHub and in the Mermaid live editor.

Example::

    cryosnake dag --out-dir results/dag
    cryosnake dag --profile aws --formats svg -- --omit-from curate
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path
from cryosnake.stages._common import run_stage

__all__ = [
    "FORMATS",
    "add_args",
    "add_workflow_args",
    "extract_dot",
    "extract_mermaid",
    "find_snakefile",
    "main",
    "snakemake_command",
    "snakemake_failure",
    "write_dag_pictures",
]

FORMATS = ("svg", "mermaid")
SNAKEFILES = ("Snakefile", "snakefile", "workflow/Snakefile", "workflow/snakefile")
DEFAULT_PROFILE = "profiles/default"

# Lines of snakemake's stderr that never explain a failure: progress and profile notes,
# traceback frames and the frames of exception groups.
_NOISE = re.compile(
    r"^(Using (workflow specific )?profiles? |Building DAG of jobs|Config file .* is extended"
    r"|Assuming unrestricted shared filesystem|host: |Provided |Job stats:"
    r"|[\w.]*(Error|Exception):$|Traceback \(most recent call last\)|File \".*\", line \d+"
    r"|During handling of the above exception|The above exception was the direct cause"
    r"|and \d+ more exceptions?$|[-+|.^~\d\s]*$)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MERMAID_START = re.compile(r"^\s*(flowchart|graph)\b")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir", default="results/dag", help="folder for the pictures (default: %(default)s)"
    )
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="snakemake profile, relative to the workflow folder (default: %(default)s)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        help="svg (needs graphviz dot) and/or mermaid (default: both)",
    )
    add_workflow_args(parser, "-- --config key=value --omit-from curate")


def add_workflow_args(parser: argparse.ArgumentParser, example: str) -> None:
    """``--snakefile`` and ``-- SNAKEMAKE_ARGS`` (``example``: what the help shows) of
    the commands that run snakemake."""
    parser.add_argument(
        "--snakefile", help="the workflow's Snakefile (default: the one in the current folder)"
    )
    parser.add_argument(
        "snakemake_args",
        nargs="*",
        metavar="-- SNAKEMAKE_ARGS",
        help=f"passed to snakemake, e.g. {example}",
    )


def snakemake_command() -> list[str]:
    """The snakemake of this Python (next to sys.executable), else ``python -m snakemake``."""
    exe = Path(sys.executable).parent / "snakemake"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "snakemake"]


def find_snakefile(workdir: Path, snakefile: str | os.PathLike[str] | None) -> Path | None:
    """The Snakefile to pass explicitly (None: snakemake finds it in ``workdir``)."""
    if snakefile is not None:
        path = Path(snakefile)
        if not (path if path.is_absolute() else Path.cwd() / path).is_file():
            raise CryosnakeError(f"--snakefile {snakefile}: no such file")
        return path.resolve()
    if not workdir.is_dir():
        raise CryosnakeError(f"{workdir}: no such folder")
    if not any((workdir / name).is_file() for name in SNAKEFILES):
        raise CryosnakeError(
            f"{workdir.resolve()}: no Snakefile here; run from the workflow folder or give "
            "--snakefile"
        )
    return None


def snakemake_failure(stderr: str, returncode: int) -> str:
    """The last meaningful line of snakemake's stderr."""
    # Exception groups prefix their lines with "|" and "+" frames.
    lines = [_ANSI.sub("", line).strip().lstrip("|+ ").strip() for line in stderr.splitlines()]
    meaningful = [line for line in lines if not _NOISE.match(line)]
    if not meaningful:
        return f"snakemake failed with exit status {returncode}"
    last = meaningful[-1]
    return last if last.lower().startswith("snakemake") else f"snakemake: {last}"


def extract_dot(text: str) -> str:
    """The dot graph in snakemake's stdout, without any lines printed before or after it.

    Parameters
    ----------
    text : str
        stdout of ``snakemake --dag dot`` or ``--rulegraph dot``.

    Returns
    -------
    str
        From the ``digraph`` line to the last closing brace, newline-terminated.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("digraph")), None)
    end = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip() == "}"), None)
    if start is None or end is None or end < start:
        raise CryosnakeError("snakemake printed no dot graph")
    return "\n".join(lines[start : end + 1]) + "\n"


def extract_mermaid(text: str) -> str:
    """The Mermaid flowchart in snakemake's stdout, with its ``---`` front matter if any.

    Parameters
    ----------
    text : str
        stdout of ``snakemake --dag mermaid-js`` or ``--rulegraph mermaid-js``.

    Returns
    -------
    str
        From the front matter (or the ``flowchart`` line) to the end, newline-terminated.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _MERMAID_START.match(line)), None)
    if start is None:
        raise CryosnakeError("snakemake printed no mermaid graph")
    if start > 0 and lines[start - 1].strip() == "---":  # front matter: --- title: ... ---
        opening = next((i for i in range(start - 2, -1, -1) if lines[i].strip() == "---"), None)
        if opening is not None:
            start = opening
    return "\n".join(lines[start:]).rstrip() + "\n"


def _snakemake_graph(
    program: list[str], args: list[str], option: str, kind: str, workdir: Path
) -> str:
    """stdout of ``snakemake <option>=<kind> <args>``; CryosnakeError on failure."""
    # First: the other arguments may end in targets or a --config list.
    cmd = [*program, f"{option}={kind}", *args]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    except OSError as err:
        raise CryosnakeError(f"cannot run snakemake ({cmd[0]}): {err.strerror}") from err
    if proc.returncode != 0:
        raise CryosnakeError(snakemake_failure(proc.stderr, proc.returncode))
    return proc.stdout


def _render_svg(dot: str, dot_text: str, name: str) -> bytes:
    """``dot -Tsvg`` of a graph; CryosnakeError with dot's message on failure."""
    proc = subprocess.run([dot, "-Tsvg"], input=dot_text.encode(), capture_output=True)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CryosnakeError(
            f"dot -Tsvg failed on the {name}: {message[-1] if message else proc.returncode}"
        )
    return proc.stdout


def write_dag_pictures(
    workdir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    profile: str | None = DEFAULT_PROFILE,
    extra_args: Sequence[str] = (),
    formats: Sequence[str] = FORMATS,
    *,
    snakefile: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write the rule graph and the job graph of a workflow as SVG and/or Mermaid files.

    Parameters
    ----------
    workdir : path
        The workflow folder; snakemake runs there, so ``profile``, relative paths in
        ``extra_args`` and the configuration's paths are relative to it.
    out_dir : path
        Folder for ``rulegraph.svg``, ``dag.svg``, ``rulegraph.mmd`` and ``dag.mmd``
        (created if needed; relative to the current directory).
    profile : str or None
        Passed as ``--profile``; None passes none (snakemake still reads
        ``profiles/default`` of the workflow by itself).
    extra_args : sequence of str
        Further snakemake arguments, e.g. ``["--config", "k=v", "--until", "ctf"]``.
    formats : sequence of {"svg", "mermaid"}
        Which pictures to write.
    snakefile : path, optional
        The Snakefile, if ``workdir`` holds none.

    Returns
    -------
    list of Path
        The files written, each replaced atomically.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise CryosnakeError(f"formats: expected some of {', '.join(FORMATS)}, got {formats}")
    dot = shutil.which("dot") if "svg" in formats else None
    if "svg" in formats and dot is None:
        raise CryosnakeError(
            "graphviz 'dot' not found on PATH, needed for the SVG pictures "
            "(apt-get install graphviz, or --formats mermaid)"
        )
    work = Path(workdir)
    explicit = find_snakefile(work, snakefile)
    program = snakemake_command()
    args = [] if explicit is None else ["--snakefile", str(explicit)]
    if profile:
        args += ["--profile", str(profile)]
    args += list(extra_args)

    kinds = (["dot"] if "svg" in formats else []) + (["mermaid-js"] if "mermaid" in formats else [])
    jobs = [(graph, kind) for kind in kinds for graph in ("rulegraph", "dag")]
    # Each call computes the DAG afresh (a few seconds); they run side by side. Printing a
    # graph does not lock the working directory.
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {
            job: pool.submit(_snakemake_graph, program, args, f"--{job[0]}", job[1], work)
            for job in jobs
        }
        outputs = {job: future.result() for job, future in futures.items()}

    out = Path(out_dir)
    written = []
    for (graph, kind), text in outputs.items():
        if kind == "dot":
            svg = _render_svg(str(dot), extract_dot(text), graph)
            target = out / f"{graph}.svg"
            with atomic_path(target) as tmp:
                tmp.write_bytes(svg)
        else:
            target = out / f"{graph}.mmd"
            with atomic_path(target) as tmp:
                tmp.write_text(extract_mermaid(text))
        written.append(target)
    return written


def _run(args: argparse.Namespace) -> int:
    written = write_dag_pictures(
        Path.cwd(),
        args.out_dir,
        profile=args.profile or None,
        extra_args=args.snakemake_args,
        formats=args.formats,
        snakefile=args.snakefile,
    )
    for path in written:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("dag", __doc__, add_args, _run, argv)
