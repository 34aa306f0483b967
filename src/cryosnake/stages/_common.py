"""Shared helpers of the stage modules.

Every stage module builds its ``main`` with :func:`stage_main`. Options whose default
is a setting of the workflow configuration take :class:`SchemaDefault` as their
default: the value is then read from the configuration schema (the one place that
holds the defaults) when the option is not given, not when the parser is built.
Stages that write file names into STAR files take ``--names-relative-to``
(:func:`add_names_root_arg`), and the name helpers :func:`file_name` and
:func:`resolve_name` write and read such names.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

__all__ = [
    "NAMES_ROOT_OPTION",
    "OneLineParser",
    "SchemaDefault",
    "StageMain",
    "add_acquisition_args",
    "add_device_arg",
    "add_header_check_arg",
    "add_names_root_arg",
    "file_name",
    "point_group",
    "positive",
    "positive_int",
    "resolve_name",
    "run_stage",
    "schema_defaults",
    "stage_main",
    "stage_parser",
]

NAMES_ROOT_OPTION = "--names-relative-to"


class StageMain(Protocol):
    """``main(argv=None) -> int`` of a stage module."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


class SchemaDefault:
    """argparse default: the default of configuration key(s) ``keys`` in the schema.

    Read only when the option is not given (:func:`schema_defaults`), so a command line
    that gives every such option needs no schema. Several keys give a tuple (an option
    with ``nargs``). In ``--help`` (``%(default)s``) it shows the schema's value.
    """

    def __init__(self, *keys: str) -> None:
        self.keys = keys

    def value(self) -> Any:
        from cryosnake.config import schema_default

        values = tuple(schema_default(key) for key in self.keys)
        return values[0] if len(values) == 1 else values

    def __str__(self) -> str:
        from cryosnake.errors import CryosnakeError

        try:
            value = self.value()
        except CryosnakeError:
            return f"the config schema's {', '.join(self.keys)}"
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    def __repr__(self) -> str:
        return f"SchemaDefault({', '.join(map(repr, self.keys))})"


def _convert(action: argparse.Action, value: Any) -> Any:
    """A schema value as the option would have parsed it from its text."""
    if action.type is None:
        return str(value) if action.choices is not None else value
    convert: Callable[[str], Any] = action.type  # type: ignore[assignment]
    return convert(str(value))


def schema_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Replace every :class:`SchemaDefault` left in ``args`` (option not given) by the
    schema's value, converted by the option's type."""
    for action in parser._actions:
        default = getattr(args, action.dest, None)
        if isinstance(default, SchemaDefault):
            value = default.value()
            if isinstance(value, tuple):
                setattr(args, action.dest, tuple(_convert(action, v) for v in value))
            else:
                setattr(args, action.dest, _convert(action, value))


class OneLineParser(argparse.ArgumentParser):
    """Reports a usage error in one line (``--help`` still prints the full usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def stage_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is the stage module's docstring."""
    return OneLineParser(
        prog=f"cryosnake {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_stage(
    name: str,
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run the stage; user errors raise CryosnakeError to the caller."""
    parser = stage_parser(name, doc)
    add_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    schema_defaults(parser, args)
    return run(args)


def stage_main(
    name: str,
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> StageMain:
    """The ``main(argv=None) -> int`` of stage ``name`` (``cryosnake NAME``): parses
    ``argv`` (default: ``sys.argv[1:]``) with ``add_args``' options and runs ``run``."""

    def main(argv: Sequence[str] | None = None) -> int:
        return run_stage(name, doc, add_args, run, argv)

    main.__doc__ = f"``cryosnake {name}``: parse ``argv`` and run the stage; returns 0."
    return main


def add_acquisition_args(parser: argparse.ArgumentParser, *, pixel_help: str) -> None:
    """``--pixel-size``, ``--voltage``, ``--cs`` and ``--amplitude-contrast`` (required)."""
    parser.add_argument("--pixel-size", type=positive, required=True, help=pixel_help)
    parser.add_argument("--voltage", type=positive, required=True, help="kV")
    parser.add_argument("--cs", type=float, required=True, help="spherical aberration, mm")
    parser.add_argument(
        "--amplitude-contrast", type=float, required=True, help="amplitude contrast fraction"
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|gpu`` (auto: the GPU when CuPy finds one)."""
    parser.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto", help="where to compute"
    )


def add_header_check_arg(parser: argparse.ArgumentParser) -> None:
    """``--ignore-header-pixel-size``: do not compare ``--pixel-size`` with the header."""
    parser.add_argument(
        "--ignore-header-pixel-size",
        action="store_true",
        help="do not compare --pixel-size with the file header",
    )


def add_names_root_arg(parser: argparse.ArgumentParser) -> None:
    """``--names-relative-to ROOT``: the folder that file names in STAR files (written
    and read) are relative to."""
    parser.add_argument(
        NAMES_ROOT_OPTION,
        dest="names_root",
        metavar="ROOT",
        default=None,
        help="folder that the file names written into (and read from) STAR files are "
        "relative to, e.g. the local copy of the storage prefix in a remote job "
        "(default: names as given, relative names relative to the working directory)",
    )


def file_name(path: str | os.PathLike[str], root: str | None) -> str:
    """The name of ``path`` to write into a STAR file: relative to ``root`` when ``path``
    lies below it; as given without ``root`` or outside it (e.g. an absolute movie)."""
    if root is None:
        return str(path)
    relative = os.path.relpath(path, root)
    return str(path) if relative.split(os.sep)[0] == os.pardir else relative


def resolve_name(name: str, root: str | None, star: Path) -> Path:
    """The file a relative ``name`` read from ``star`` means: below ``root`` (default:
    the working directory), else, if only there, below the STAR file's folder."""
    path = Path(name)
    if path.is_absolute():
        return path
    base = path if root is None else Path(root) / path
    if not base.exists() and (star.parent / path).exists():
        return star.parent / path
    return base


def positive(text: str) -> float:
    """argparse type: a float > 0."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def point_group(text: str) -> str:
    """argparse type: a point group (C1, C<n>, D<n>, T, O, I), upper-cased."""
    from cryosnake.ops.symmetry import symmetry_group

    try:
        symmetry_group(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text.strip().upper()
