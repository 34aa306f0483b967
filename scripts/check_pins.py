"""Check that every dependency of pyproject.toml is pinned in envs/constraints.txt.

Each requirement of ``[project] dependencies`` and of the optional extras (except
``gpu``, pinned in envs/gpu.yaml) must appear in envs/constraints.txt as
``name==version``, the pinned version must satisfy the range in pyproject.toml, and
the installed version must be the pinned one. Exit status 1 with one line per problem.

Usage::

    python scripts/check_pins.py
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UNPINNED_EXTRAS = {"gpu"}


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, pinned = line.partition("==")
        if not sep:
            sys.exit(f"{path}:{number}: expected name==version, got {line!r}")
        pins[canonicalize_name(name)] = pinned.strip()
    return pins


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = read_pins(ROOT / "envs" / "constraints.txt")
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra not in UNPINNED_EXTRAS:
            requirements += [Requirement(r) for r in items]
    problems = []
    for req in requirements:
        name = canonicalize_name(req.name)
        pinned = pins.get(name)
        if pinned is None:
            problems.append(f"{req.name}: not pinned in envs/constraints.txt")
            continue
        if not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: pinned {pinned} is outside {req.specifier}")
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name}: not installed (pinned {pinned})")
            continue
        if installed != pinned:
            problems.append(f"{req.name}: installed {installed}, pinned {pinned}")
    for line in problems:
        print(f"check_pins: {line}", file=sys.stderr)
    if not problems:
        print(f"check_pins: {len(requirements)} requirements pinned and installed as pinned")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
