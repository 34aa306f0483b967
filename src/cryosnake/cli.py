"""``cryosnake <stage> ...``: one command per pipeline stage.

Every stage module in :mod:`cryosnake.stages` provides ``add_args(parser)`` and
``main(argv) -> int``; this dispatcher builds the sub-commands from them. The tools
around the stages (data transfer to and from S3, the AWS profile, DAG pictures)
follow the same pattern in their own modules. A
:class:`~cryosnake.errors.CryosnakeError` is printed as one line on stderr, without a
traceback, and the command exits with status 1.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from cryosnake import __version__
from cryosnake.backend import pin_assigned_gpus
from cryosnake.errors import CryosnakeError
from cryosnake.stages._common import OneLineParser

__all__ = ["STAGES", "main"]

# command name -> module in cryosnake (each has add_args(parser) and main(argv) -> int)
STAGES: dict[str, str] = {
    "simulate": "stages.simulate",
    "inspect": "stages.inspect_movie",
    "import": "stages.import_movies",
    "chunk": "stages.chunk",
    "motioncor": "stages.motioncor",
    "ctf": "stages.ctf",
    "curate": "stages.curate",
    "pick": "stages.pick",
    "extract": "stages.extract",
    "merge-particles": "stages.merge_particles",
    "class2d": "stages.class2d",
    "select2d": "stages.select2d",
    "initial3d": "stages.initial3d",
    "class3d": "stages.class3d",
    "refine3d": "stages.refine3d",
    "postprocess": "stages.postprocess",
    "report": "stages.report",
    "live": "live.command",
    "upload": "aws.upload",
    "download": "aws.download",
    "aws": "aws.command",
    "dag": "dag",
}


def _load(command: str) -> object:
    return importlib.import_module(f"cryosnake.{STAGES[command]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(
        prog="cryosnake",
        description="cryo-EM single-particle pipeline; each stage is a sub-command.",
    )
    parser.add_argument("--version", action="version", version=f"cryosnake {__version__}")
    parser.add_argument("command", choices=sorted(STAGES), help="stage to run")
    if not args or args[0] in ("-h", "--help", "--version"):
        parser.parse_args(args)
        return 0
    command, rest = args[0], args[1:]
    if command not in STAGES:
        parser.parse_args([command])  # prints the usage error and exits 2
    pin_assigned_gpus()  # before anything starts CUDA: compute on this job's own GPU
    module = _load(command)
    try:
        return int(module.main(rest))  # type: ignore[attr-defined]
    except CryosnakeError as err:
        print(f"cryosnake {command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"cryosnake {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
