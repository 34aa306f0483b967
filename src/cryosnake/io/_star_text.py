"""STAR text: split a file into data blocks, parse loop bodies, format blocks.

The parsing follows :mod:`starfile` 0.5 (what RELION-adjacent Python tools read STAR
files with), so that both read a file into the same DataFrames: a block starts at a line
that starts with ``data_NAME`` (RELION writes no indentation; starfile would also take
an indented one); a loop block is ``loop_``, its labels (``_rlnLabel #i``), and rows of
whitespace-separated values until the next ``data_`` line (``#`` starts a comment,
blank lines are skipped, ``'`` and ``"`` quote values); a simple block is lines of
``_rlnLabel value``. Loop bodies go through :func:`pandas.read_csv` (C engine), with
numeric columns as int64/float64 and the others as strings; an empty loop is a zero-row
float64 frame with the labels. Rows with too few or too many values are errors (a
truncated file), where starfile would pad them.

Formatting writes what ``starfile.write(..., float_format="%.6f")`` writes (tab
separated, ``_label #i`` headers, strings with a space or empty quoted with ``"``,
missing values as ``<NA>``), except for the first comment line, with the rows formatted
in chunks with one ``%`` operation each instead of a Python call per value.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd

from cryosnake.errors import FileFormatError

__all__ = ["RawBlock", "format_block", "loop_frame", "numericise", "row_count", "split_blocks"]

_ROW = re.compile(rb"^[ \t]*[^\s#]", re.MULTILINE)
_BLANK = re.compile(rb"\n[ \t\r]*\n")
_START = re.compile(rb"^[ \t]*(loop_|_)", re.MULTILINE)  # a block's first line
_LABEL = re.compile(rb"[ \t]*_(\S*)[^\n]*(?:\n|\Z)")  # a loop's label line
NA_VALUES = ["nan", "NaN", "<NA>"]
NA_REP = "<NA>"
FLOAT_FORMAT = "%.6f"
CHUNK_ROWS = 20_000
SMALL_ROWS = 50  # blocks this small are formatted value by value


@dataclass(frozen=True)
class RawBlock:
    """One data block: a loop (``labels`` and its ``body``, the UTF-8 bytes of its rows)
    or a simple block (``values``: label -> value text)."""

    name: str
    labels: tuple[str, ...]
    body: bytes = b""
    values: dict[str, str] | None = None

    @property
    def is_loop(self) -> bool:
        return self.values is None


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{where}: not a valid STAR file (not UTF-8 text: {err})") from err


def _block(name: str, data: bytes, where: str) -> RawBlock:
    """The block whose bytes (after its ``data_`` line) are ``data``."""
    start = _START.search(data)
    if start is None:
        return RawBlock(name, ())
    if start.group(1) == b"loop_":
        end = data.find(b"\n", start.end())
        pos = len(data) if end < 0 else end + 1
        labels = []
        while (label := _LABEL.match(data, pos)) is not None:
            labels.append(_decode(label.group(1), where))
            pos = label.end()
        return RawBlock(name, tuple(labels), data[pos:])
    values: dict[str, str] = {}
    for raw in _decode(data[start.start() :], where).splitlines():
        line = raw.strip()
        if not line.startswith("_"):
            continue
        parts = shlex.split(line) if ('"' in line or "'" in line) else line.split()
        if len(parts) != 2:
            raise FileFormatError(f"{where}: data_{name}: {line[:60]!r} is not '_label value'")
        values[parts[0][1:]] = parts[1]
    return RawBlock(name, tuple(values), values=values)


def _marks(data: bytes) -> list[int]:
    """Offsets of the lines that start with ``data_``."""
    out = [0] if data.startswith(b"data_") else []
    pos = data.find(b"\ndata_")
    while pos >= 0:
        out.append(pos + 1)
        pos = data.find(b"\ndata_", pos + 1)
    return out


def split_blocks(data: bytes, where: str, only: frozenset[str] | None = None) -> list[RawBlock]:
    """The data blocks of a STAR file's bytes in file order (only those named in
    ``only`` when given); ``where`` names the file in errors."""
    marks = _marks(data)
    out = []
    for i, mark in enumerate(marks):
        stop = marks[i + 1] if i + 1 < len(marks) else len(data)
        eol = data.find(b"\n", mark, stop)
        eol = stop if eol < 0 else eol
        name = _decode(data[mark + 5 : eol], where).strip()
        if only is not None and name not in only:
            continue
        out.append(_block(name, data[eol + 1 : stop], where))
    return out


def row_count(body: bytes) -> int:
    """Rows of a loop body: lines with a value (not blank, not a comment)."""
    text = body.strip()
    if not text:
        return 0
    if b"#" in text or _BLANK.search(text):
        return len(_ROW.findall(text))
    return text.count(b"\n") + 1


def numericise(value: str) -> int | float | str:
    """A simple block's value as starfile reads it: int, else float, else the text."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _short_row(body: bytes, last: pd.Series, columns: int) -> tuple[int, int] | None:
    """(row number from 1, values) of the first row without ``columns`` values, or None.

    read_csv pads a short row with "" up to the last column, so only rows whose last
    value is "" are looked at (a quoted empty string there is a value)."""
    flagged = np.flatnonzero((last == "").to_numpy(dtype=bool))
    if not len(flagged):
        return None
    rows = [line for line in body.splitlines() if _ROW.match(line)]
    for i in flagged:
        line = rows[i].decode("utf-8", "replace").replace("'", '"').split("#")[0].rstrip()
        values = len(shlex.split(line))
        if not (line.endswith('""') and values == columns):
            return int(i) + 1, values
    return None


def _numeric(column: pd.Series) -> pd.Series | None:
    """The column as numbers, as starfile makes them (None: it stays text)."""
    first = column.iloc[0]
    if isinstance(first, str) and first:
        try:
            float(first)
        except ValueError:
            return None  # to_numeric would fail on it
    try:
        numeric = pd.to_numeric(column)
    except (ValueError, TypeError):
        return None
    # starfile keeps the text where every value turned into NaN ("" strings)
    return None if numeric.isna().all() else numeric


def loop_frame(labels: tuple[str, ...], body: bytes, where: str) -> pd.DataFrame:
    """A loop body (rows of values, one per line) as a DataFrame with ``labels``."""
    empty = pd.DataFrame(np.zeros((0, len(labels))), columns=list(labels))
    if not body or body.isspace():
        return empty if labels else pd.DataFrame()
    data = body.replace(b"'", b'"') if b"'" in body else body
    try:
        df = pd.read_csv(
            io.BytesIO(data),
            sep=r"\s+",
            header=None,
            comment="#",
            keep_default_na=False,
            na_values=NA_VALUES,
            engine="c",
            low_memory=False,
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError:  # comments only
        return empty if labels else pd.DataFrame()
    except (ValueError, pd.errors.ParserError) as err:
        reason = str(err).strip().splitlines()[-1]
        raise FileFormatError(f"{where}: not a valid STAR loop ({reason})") from err
    if df.shape[1] != len(labels):
        if not labels:
            raise FileFormatError(f"{where}: rows of values without a loop_ header")
        raise FileFormatError(f"{where}: rows of {df.shape[1]} values under {len(labels)} labels")
    df.columns = list(labels)
    last = df.iloc[:, -1]
    if not (pd.api.types.is_numeric_dtype(last) or pd.api.types.is_bool_dtype(last)):
        short = _short_row(data, last, len(labels))
        if short is not None:
            raise FileFormatError(
                f"{where}: row {short[0]} has {short[1]} of {len(labels)} values "
                "(truncated or corrupt)"
            )
    for label in labels:
        column = df[label]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            numeric = _numeric(column)
            if numeric is not None:
                df[label] = numeric
    return df


def _float_text(values: list[float]) -> list[str]:
    return [NA_REP if x != x else FLOAT_FORMAT % x for x in values]


def _float_column(array: np.ndarray) -> tuple[str, list[object]]:
    """(% format, values) of a float column. Particle tables repeat values in runs (a
    micrograph's defocus in each of its rows): each run's value is formatted once."""
    if len(array) >= 1000:
        with np.errstate(invalid="ignore"):
            starts = np.flatnonzero(np.concatenate([[True], array[1:] != array[:-1]]))
        negative_zero = bool((np.signbit(array) & (array == 0)).any())
        if len(starts) <= len(array) // 4 and not negative_zero:
            text = np.array(_float_text(array[starts].tolist()), dtype=object)
            lengths = np.diff(np.append(starts, len(array)))
            return "%s", np.repeat(text, lengths).tolist()
    if not np.isnan(array).any():
        return FLOAT_FORMAT, array.tolist()
    return "%s", list(_float_text(array.tolist()))


def _column(values: pd.Series) -> tuple[str, list[object]]:
    """(% format, Python values) of one column, as starfile's writer renders it."""
    if pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
        return "%s", values.tolist()
    if pd.api.types.is_float_dtype(values.dtype) and values.dtype != object:
        return _float_column(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if pd.api.types.is_integer_dtype(values.dtype):
        if not values.isna().any():
            return "%d", values.to_numpy(dtype=np.int64).tolist()
        return "%s", [NA_REP if pd.isna(x) else str(x) for x in values.tolist()]
    if pd.api.types.is_string_dtype(values.dtype) and not values.isna().any():
        text = values.astype(str)
        quote = text.str.contains(" ", regex=False) | (text.str.len() == 0)
        if quote.any():
            text = text.where(~quote, '"' + text + '"')
        return "%s", text.tolist()
    return "%s", [_text(x) for x in values.tolist()]


def _text(x: object) -> str:
    """One value as starfile's writer renders it (the same as :func:`_column`)."""
    if isinstance(x, str):
        return f'"{x}"' if (not x or " " in x) else x
    if x is None or x is pd.NA or (isinstance(x, float | np.floating) and x != x):
        return NA_REP
    if isinstance(x, float | np.floating):
        return FLOAT_FORMAT % x
    return str(x)


def format_block(name: str, df: pd.DataFrame) -> Iterator[str]:
    """Text of one loop block, in pieces of up to :data:`CHUNK_ROWS` rows."""
    header = [f"data_{name}", "", "loop_"]
    header += [f"_{label} #{i}" for i, label in enumerate(df.columns, 1)]
    yield "\n".join(header) + "\n"
    if len(df) and len(df.columns) and len(df) <= SMALL_ROWS:  # one row of a CTF fit...
        rows = df.to_numpy(dtype=object)
        yield "".join("\t".join([_text(x) for x in row]) + "\n" for row in rows.tolist())
    elif len(df) and len(df.columns):
        formats, columns = zip(*(_column(df.iloc[:, j]) for j in range(df.shape[1])), strict=True)
        line = "\t".join(formats) + "\n"
        for start in range(0, len(df), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(df))
            values = tuple(chain.from_iterable(zip(*(c[start:stop] for c in columns), strict=True)))
            yield (line * (stop - start)) % values
    yield "\n\n"
