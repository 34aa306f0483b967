"""Every rule's command line parses with its stage's own parser (a contract test).

A dry run of the whole workflow with 3D on prints the shell command of every job;
each ``cryosnake <stage> ...`` in it is split as the shell would split it and given to
that stage's argument parser (:data:`cryosnake.cli.STAGES`), which exits on an unknown
option, a missing required one or a value of the wrong type. Nothing is executed, so
the 3D rules' command lines are checked in seconds.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cryosnake.cli import STAGES
from cryosnake.stages._common import stage_parser

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


def test_every_stage_rule_is_in_the_dry_run(commands: list[tuple[str, list[str]]]) -> None:
    stages = {name for name, _ in commands}
    assert stages >= {
        "simulate", "inspect", "import", "motioncor", "ctf", "curate", "pick", "extract",
        "merge-particles", "class2d", "select2d", "initial3d", "refine3d", "postprocess",
        "report",
    }  # fmt: skip


def test_every_rule_command_parses(commands: list[tuple[str, list[str]]]) -> None:
    for name, argv in commands:
        module = importlib.import_module(f"cryosnake.{STAGES[name]}")
        parser = stage_parser(name, module.__doc__)
        module.add_args(parser)
        try:
            parser.parse_args(argv)
        except SystemExit as err:  # argparse's way of refusing a command line
            pytest.fail(f"cryosnake {name} {shlex.join(argv)}: refused by its parser ({err})")
