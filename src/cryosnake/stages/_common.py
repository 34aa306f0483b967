"""Shared helpers of the stage modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["OneLineParser", "point_group", "positive", "positive_int", "run_stage", "stage_parser"]


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
    return run(args)


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
