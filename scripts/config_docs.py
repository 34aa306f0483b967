"""Print (or check) the key reference of config/README.md from the config schema.

The table between the ``<!-- keys:begin -->`` and ``<!-- keys:end -->`` markers of
config/README.md is generated from config/schemas/config.schema.yaml, so the two
cannot drift apart.

Usage::

    python scripts/config_docs.py           # rewrite the table in config/README.md
    python scripts/config_docs.py --check   # exit 1 if config/README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "config" / "schemas" / "config.schema.yaml"
README = ROOT / "config" / "README.md"
BEGIN, END = "<!-- keys:begin -->", "<!-- keys:end -->"


def _type(sub: Mapping[str, Any]) -> str:
    if "enum" in sub:
        return " \\| ".join(f"`{v}`" for v in sub["enum"])
    kind = sub.get("type", "")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    bounds = []
    for key, op in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in sub:
            bounds.append(f"{op} {sub[key]}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def rows(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        description = " ".join(str(sub.get("description", "")).split())
        if sub.get("type") == "object" and "properties" in sub:
            yield f"| **`{key}`** | section | | {description} |"
            yield from rows(sub, f"{key}.")
        else:
            default = json.dumps(sub.get("default"), ensure_ascii=False)
            yield f"| `{key}` | {_type(sub)} | `{default}` | {description} |"


def table() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    head = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    return "\n".join([*head, *rows(schema)])


def render(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table() + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    args = parser.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{README}: out of date; run python scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
