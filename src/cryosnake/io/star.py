"""STAR files in RELION 3.1+ layout.

Blocks are :class:`pandas.DataFrame` objects whose columns are RELION labels without
the leading underscore (``rlnDefocusU``), exactly as :func:`starfile.read` returns them
(numeric columns int64/float64, the others strings); what :func:`write_star` writes,
starfile reads back the same, and the other way round. The text is parsed and
formatted by :mod:`cryosnake.io._star_text`: a 10^6-row particles file reads and
writes in seconds, and :func:`read_star_stack` reads one block of thousands of small
per-micrograph files with one parse of their joined rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake import __version__
from cryosnake.errors import FileFormatError
from cryosnake.io._atomic import atomic_path, require_file
from cryosnake.io._star_text import (
    RawBlock,
    format_block,
    loop_frame,
    numericise,
    row_count,
    split_blocks,
)

__all__ = [
    "StarStack",
    "optics_table",
    "read_star",
    "read_star_block",
    "read_star_stack",
    "star_files",
    "write_star",
]

PathLike = str | os.PathLike[str]


def _bytes(path: PathLike) -> tuple[Path, bytes]:
    p = path if isinstance(path, Path) else Path(path)
    try:
        with open(p, "rb") as f:
            return p, f.read()
    except OSError as err:
        require_file(p)  # "no such file" where it is not a file
        raise FileFormatError(f"{p}: cannot read ({err.strerror or err})") from err


def _frame(block: RawBlock, where: str) -> pd.DataFrame:
    if block.values is not None:
        return pd.DataFrame([{k: numericise(v) for k, v in block.values.items()}])
    return loop_frame(block.labels, block.body, f"{where}: data_{block.name}")


def read_star(path: PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file as ``{block name: DataFrame}``.

    Single-row ("simple") blocks come back as one-row DataFrames too, so callers never
    need to tell the two kinds apart.
    """
    p, text = _bytes(path)
    blocks = split_blocks(text, str(p))
    if not blocks:
        raise FileFormatError(f"{p}: STAR file holds no data block")
    return {block.name: _frame(block, str(p)) for block in blocks}


def read_star_block(path: PathLike, block: str, *, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read one block and check that it has the ``required`` labels."""
    p = Path(path)
    blocks = read_star(p)
    if block not in blocks:
        raise FileFormatError(
            f"{p}: no data_{block} block (found: {', '.join(sorted(blocks)) or 'none'})"
        )
    df = blocks[block]
    missing = [label for label in required if label not in df.columns]
    if missing:
        raise FileFormatError(f"{p}: data_{block} lacks label(s) {', '.join(missing)}")
    return df


def star_files(given: Sequence[PathLike], option: str) -> list[Path]:
    """The STAR files that ``given`` names: files as given, and for a folder every
    ``*.star`` file directly inside it (an error names ``option`` and a path that is
    neither, or a folder without STAR file).

    When a folder is given, the files come in the order of their names, whatever
    folder they are in, so that how a set is split into folders (chunks of movies) does
    not change the order of the rows read from them; otherwise in the order given."""
    out: list[Path] = []
    folders = False
    for item in given:
        p = Path(item)
        if p.is_dir():
            names = sorted(
                entry.name
                for entry in os.scandir(p)
                if entry.name.endswith(".star")
                and not entry.name.startswith(".")  # atomic writes' temporary files
                and entry.is_file()
            )
            found = [p / name for name in names]
            if not found:
                raise FileFormatError(f"{option}: folder {p} holds no .star file")
            out += found
            folders = True
        elif p.is_file():
            out.append(p)
        else:
            raise FileFormatError(f"{option}: {p}: no such file or folder")
    return sorted(out, key=lambda path: path.name) if folders else out


@dataclass
class StarStack:
    """One block of many STAR files, their rows stacked in file order.

    table : the rows of every file, with the labels of any file (a label some files
        lack is missing in their rows: NaN, or ``<NA>`` in an integer column, which is
        then of pandas' nullable ``Int64`` dtype); index 0..n-1
    counts : (files,) int64, the rows each file contributed
    labels : per file, its labels in file order
    """

    paths: list[Path]
    table: pd.DataFrame
    counts: np.ndarray
    labels: list[tuple[str, ...]]

    @property
    def file_index(self) -> np.ndarray:
        """(rows,) int64: the file (index into ``paths``) of each row of ``table``."""
        return np.repeat(np.arange(len(self.paths)), self.counts)

    @property
    def starts(self) -> np.ndarray:
        """(files,) int64: the first row of each file in ``table``."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


def _stack_group(
    items: list[tuple[int, Path, RawBlock]], name: str
) -> tuple[pd.DataFrame, list[int]]:
    """The rows of blocks that share their labels as one DataFrame (one parse), and the
    rows of each block."""
    first = items[0][2]
    if first.values is not None:
        rows = [{k: numericise(v) for k, v in (b.values or {}).items()} for _, _, b in items]
        return pd.DataFrame(rows), [1] * len(items)
    if not first.labels:
        return pd.DataFrame(), [0] * len(items)
    bodies = [b.body if b.body.endswith(b"\n") else b.body + b"\n" for _, _, b in items]
    sizes = [row_count(body) for body in bodies]
    if len(items) == 1:
        where = f"{items[0][1]}: data_{name}"
    else:
        where = f"{items[0][1]} (and {len(items) - 1} more files): data_{name}"
    try:
        frame = loop_frame(first.labels, b"".join(bodies), where)
        if len(frame) == sum(sizes):
            return frame, sizes
    except FileFormatError:
        if len(items) == 1:
            raise
    for _, path, block in items:  # find the file at fault and name it
        loop_frame(block.labels, block.body, f"{path}: data_{name}")
    raise FileFormatError(f"{where}: rows do not add up to the files' rows")


def read_star_stack(paths: Sequence[PathLike], blocks: Sequence[str]) -> dict[str, StarStack]:
    """Block(s) ``blocks`` of every file of ``paths``, each stacked into one table.

    Every file must have every block (an error names the first that lacks one). Files
    whose block has the same labels are parsed together, so reading 10^4 small files
    costs little more than reading their bytes.
    """
    files = [p if isinstance(p, Path) else Path(p) for p in paths]
    wanted = frozenset(blocks)
    found: dict[str, list[tuple[int, Path, RawBlock]]] = {name: [] for name in blocks}
    for i, path in enumerate(files):
        p, text = _bytes(path)
        got = {b.name: b for b in split_blocks(text, str(p), wanted)}
        for name in blocks:
            if name not in got:
                every = [b.name for b in split_blocks(text, str(p))]
                raise FileFormatError(
                    f"{p}: no data_{name} block (found: {', '.join(sorted(every)) or 'none'})"
                )
            found[name].append((i, p, got[name]))
    out: dict[str, StarStack] = {}
    for name, items in found.items():
        groups: dict[tuple[bool, tuple[str, ...]], list[tuple[int, Path, RawBlock]]] = {}
        for item in items:
            groups.setdefault((item[2].is_loop, item[2].labels), []).append(item)
        frames, owners = [], []
        counts = np.zeros(len(files), dtype=np.int64)
        for group in groups.values():
            frame, sizes = _stack_group(group, name)
            for (i, _, _), size in zip(group, sizes, strict=True):
                counts[i] = size
            frames.append(frame)
            owners.append(np.repeat([i for i, _, _ in group], sizes))
        out[name] = StarStack(
            files, _stacked(frames, owners), counts, [b.labels for _, _, b in items]
        )
    return out


def _stacked(frames: list[pd.DataFrame], owners: list[np.ndarray]) -> pd.DataFrame:
    """The rows of ``frames`` (groups of files) in file order (``owners``: the file of
    each row), with every label of any of them."""
    if len(frames) <= 1:
        return frames[0] if frames else pd.DataFrame()
    full = [(f, o) for f, o in zip(frames, owners, strict=True) if len(f)]
    labels = list(dict.fromkeys(label for f in frames for label in f.columns))
    if not full:
        return pd.DataFrame(np.zeros((0, len(labels))), columns=labels)
    table = pd.concat([f for f, _ in full], ignore_index=True)
    order = np.argsort(np.concatenate([o for _, o in full]), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    for label in table.columns:  # integers padded with NaN: nullable integers
        kinds = [f[label].dtype for f, _ in full if label in f.columns]
        if all(pd.api.types.is_integer_dtype(k) for k in kinds) and not (
            pd.api.types.is_integer_dtype(table[label].dtype)
        ):
            table[label] = table[label].astype("Int64")
    return table.reindex(columns=labels)


def write_star(path: PathLike, blocks: Mapping[str, pd.DataFrame]) -> Path:
    """Write data blocks (``{name: DataFrame}``) atomically, in loop form.

    The layout is starfile's (tab-separated rows, floats ``%.6f``, integers as
    integers, strings with a space or empty in double quotes, missing values ``<NA>``).
    """
    p = Path(path)
    if not blocks:
        raise FileFormatError(f"{p}: refusing to write a STAR file with no block")
    for name, df in blocks.items():
        bad = [
            c
            for c in df.columns
            if not str(c) or str(c).startswith("_") or len(str(c).split()) != 1
        ]
        if bad:
            raise FileFormatError(f"{p}: block {name!r} has invalid label(s) {bad}")
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
        out.write(f"# Created by cryosnake (version {__version__})\n\n\n")
        for name, df in blocks.items():
            for piece in format_block(name, df):
                out.write(piece)
    return p


def optics_table(
    *,
    pixel_size: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    image_size: int | None = None,
    group_name: str = "opticsGroup1",
    image_pixel_size: float | None = None,
) -> pd.DataFrame:
    """A one-group RELION 3.1 ``data_optics`` table.

    ``rlnMicrographPixelSize`` describes micrographs; particle STARs also need
    ``rlnImagePixelSize`` and ``rlnImageSize`` (``image_pixel_size``, ``image_size``).
    """
    row: dict[str, object] = {
        "rlnOpticsGroupName": group_name,
        "rlnOpticsGroup": 1,
        "rlnMicrographOriginalPixelSize": float(pixel_size),
        "rlnVoltage": float(voltage),
        "rlnSphericalAberration": float(cs),
        "rlnAmplitudeContrast": float(amplitude_contrast),
        "rlnMicrographPixelSize": float(pixel_size),
    }
    if image_pixel_size is not None:
        row["rlnImagePixelSize"] = float(image_pixel_size)
    if image_size is not None:
        row["rlnImageSize"] = int(image_size)
        row["rlnImageDimensionality"] = 2
    return pd.DataFrame([row])
