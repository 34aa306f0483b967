"""Small outputs: JSON reports and figures, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path, require_file

__all__ = ["read_json", "read_yaml", "save_figure", "write_json", "write_yaml"]


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return p


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as YAML (keys in insertion order), atomically."""
    import yaml

    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing or malformed file raises FileFormatError."""
    p = require_file(path)
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FileFormatError(f"{p}: not valid JSON ({err})") from err


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file; a missing or malformed file raises FileFormatError."""
    import yaml

    p = require_file(path)
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise FileFormatError(f"{p}: not valid YAML{line}") from err


def save_figure(path: str | os.PathLike[str], figure: Any, *, dpi: int = 100) -> Path:
    """Save a Matplotlib figure (format from the suffix), atomically, and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    with atomic_path(p) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return p
