"""File helpers: atomic writes (temporary sibling, then rename) and input checks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cryosnake.errors import FileFormatError

__all__ = ["atomic_path", "require_file"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name keeps the suffix (libraries pick the format from it) and starts
    with a dot so that globs of the output folder never see half-written files. On an
    exception the temporary file is removed and the target is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def require_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; FileFormatError naming it if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: no such file")
    return p
