"""Every rule's command line parses with its stage's own parser (a contract test).

A dry run of the whole workflow with 3D (and 3D classification) on prints the shell
command of every job; each ``cryosnake <stage> ...`` in it is split as the shell would
split it and given to that stage's argument parser (:data:`cryosnake.cli.STAGES`), which
exits on an unknown option, a missing required one or a value of the wrong type. Nothing
is executed, so the 3D rules' command lines are checked in seconds. A rule must also
give every option whose default is a configuration setting (:class:`SchemaDefault`: the
workflow's value is the configuration's, and a job needs no schema), and
``--names-relative-to`` to every stage that writes or reads file names in STAR files.
The per-movie stages run through ``cryosnake chunk STAGE ... -- OPTIONS``: the chunk's
options are checked by the chunk command's parser, and the stage's by its own, with the
file options the chunk command gives it for one movie.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cryosnake.cli import STAGES
from cryosnake.stages import chunk
from cryosnake.stages._common import NAMES_ROOT_OPTION, SchemaDefault, stage_parser

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow
# `cryosnake <stage> ...` up to the end of the command: a closing parenthesis, a
# redirection or the next command.
COMMAND = re.compile(r"\bcryosnake ([a-z0-9-]+)\b([^;&|()>]*)")


def _commands(workdir: Path) -> list[tuple[str, list[str]]]:
    config = {
        "results": str(workdir / "results"),
        "input": {
            "movies": str(workdir / "data/movies/*.mrc"),
            "gain": str(workdir / "data/gain.mrc"),
        },
        "simulate": {
            "enabled": True,
            "preset": "tiny",
            "n_movies": 2,
            "out_dir": str(workdir / "data"),
        },
        "map3d": True,
        "class3d": {"classes": 2, "keep": [1, 2]},  # the optional step too
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--printshellcmds", "--cores", "8",
         "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(path)],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = []
    for line in proc.stdout.splitlines():
        for match in COMMAND.finditer(line):
            found.append((match.group(1), shlex.split(match.group(2))))
    return found


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, list[str]]]:
    return _commands(tmp_path_factory.mktemp("rule-commands"))


def _per_movie(name: str, argv: list[str]) -> tuple[str, list[str]]:
    """(stage, the command line the stage gets for one movie) of ``cryosnake chunk``
    (any other command: itself)."""
    if name != "chunk":
        return name, argv
    head, stage_args = chunk.split_argv(argv)
    args = _parser("chunk").parse_args(head)
    chunk.check_options(args)
    movie = args.movies[0] if args.stage in ("inspect", "motioncor") else "movie_0001"
    return args.stage, [*chunk.movie_options(args, movie), *stage_args]


def test_every_stage_rule_is_in_the_dry_run(commands: list[tuple[str, list[str]]]) -> None:
    stages = {_per_movie(name, argv)[0] for name, argv in commands}
    assert stages >= {
        "simulate", "inspect", "import", "motioncor", "ctf", "curate", "pick", "extract",
        "merge-particles", "class2d", "select2d", "initial3d", "class3d", "refine3d",
        "postprocess",
        "report",
    }  # fmt: skip


def _parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"cryosnake.{STAGES[name]}")
    parser = stage_parser(name, module.__doc__)
    module.add_args(parser)
    return parser


def _missing(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The options a rule must give (see the module's docstring) but ``argv`` lacks."""
    args = parser.parse_args(argv)
    missing = [
        action.option_strings[0]
        for action in parser._actions
        if isinstance(getattr(args, action.dest, None), SchemaDefault)
    ]
    if any(NAMES_ROOT_OPTION in action.option_strings for action in parser._actions):
        if NAMES_ROOT_OPTION not in argv:
            missing.append(NAMES_ROOT_OPTION)
    return missing


def test_every_rule_command_parses(commands: list[tuple[str, list[str]]]) -> None:
    for name, argv in (_per_movie(*command) for command in commands):
        parser = _parser(name)
        try:
            missing = _missing(parser, argv)
        except SystemExit as err:  # argparse's way of refusing a command line
            pytest.fail(f"cryosnake {name} {shlex.join(argv)}: refused by its parser ({err})")
        assert not missing, f"cryosnake {name} {shlex.join(argv)}: lacks {', '.join(missing)}"


def test_the_check_refuses_a_bad_command_line() -> None:
    """The contract test's own check: a wrong option, a missing configuration setting
    or a missing names root is caught."""
    with pytest.raises(SystemExit):
        _missing(_parser("ctf"), ["--micrograph", "m.mrc", "--no-such-option"])
    argv = ["--particles", "p.star", "--out-dir", "out", "--classes", "2"]
    assert _missing(_parser("class2d"), argv) == [
        "--iterations", "--seed", "--device", NAMES_ROOT_OPTION,
    ]  # fmt: skip
    assert _missing(_parser("merge-particles"), ["--stars", "a.star", "--out", "b.star"]) == []
