"""The ledger of a live session: ``results/live/events.tsv``, what happened and when.

One line per event, appended and flushed as it happens, never rewritten::

    time            event      movie                         detail
    1764860000.125  arrived    FoilHole_1_Data_2_3_..._frac  Images-Disc1/GridSquare_7/Data/...
    1764860000.310  staged     FoilHole_1_Data_2_3_..._frac  results/live/movies/...tiff
    1764860031.870  processed  FoilHole_1_Data_2_3_..._frac  chunk0001
    1764860031.900  cycle                                    chunks ok 31.5 s particles=0 kept=0

``time`` is in seconds since the epoch (UTC); ``arrived``: the movie was complete (its
size stable for the settle time, or its EPU ``.xml`` written); ``staged``: it was
handed to the workflow (linked into the staging folder, or uploaded to S3);
``processed``: its chunk's per-movie stages finished (motion correction, CTF, picks,
particles); ``cycle``: one run of the workflow, when it ended (:func:`cycle_detail`:
its kind, whether it succeeded, how long it took, the particles and those kept after
it).

The ledger is the session's memory: a restarted ``cryosnake live`` reads it to know
which movies it has already staged and processed, so that it loses none and does
none twice. A line cut short by a crash (no newline at its end) is ignored.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cryosnake.errors import FileFormatError
from cryosnake.io import atomic_path

__all__ = [
    "EVENTS",
    "HEADER",
    "CycleRecord",
    "Ledger",
    "cycle_detail",
    "parse_cycle",
    "read_events",
]

HEADER = "time\tevent\tmovie\tdetail"
# The kinds of event, in the order a movie meets them (and the workflow's runs).
EVENTS = ("arrived", "staged", "processed", "cycle")


class CycleRecord(NamedTuple):
    """What a ``cycle`` event says of a run of the workflow."""

    kind: str  # chunks, curate, 2d, 3d, final
    ok: bool
    seconds: float
    particles: int  # in particles.star after it (the session lane's runs)
    kept: int  # in particles_selected.star after it


_CYCLE = re.compile(r"^(\w+) (ok|failed) ([0-9.]+) s particles=(\d+) kept=(\d+)$")


def cycle_detail(record: CycleRecord) -> str:
    """The detail of a ``cycle`` event: ``2d ok 12.5 s particles=400 kept=120``."""
    status = "ok" if record.ok else "failed"
    return (
        f"{record.kind} {status} {record.seconds:.1f} s "
        f"particles={record.particles} kept={record.kept}"
    )


def parse_cycle(detail: str) -> CycleRecord | None:
    """The record of a ``cycle`` event's detail (None: not one :func:`cycle_detail` wrote)."""
    m = _CYCLE.match(detail)
    if m is None:
        return None
    return CycleRecord(m[1], m[2] == "ok", float(m[3]), int(m[4]), int(m[5]))


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The events of a ledger (columns time, event, movie, detail); an empty table when
    there is no ledger yet.

    Raises
    ------
    FileFormatError
        The file is not a ledger (a header other than :data:`HEADER`, a line with
        another number of fields, an unknown event, a time that is not a number).
    """
    p = Path(path)
    columns = ["time", "event", "movie", "detail"]
    if not p.exists():
        return pd.DataFrame({c: pd.Series(dtype=float if c == "time" else str) for c in columns})
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines[0] != HEADER:
        raise FileFormatError(f"{p}: not a live session ledger (first line must be {HEADER!r})")
    complete = lines[1:-1]  # the last piece has no newline: empty, or a line cut short
    rows = []
    for number, line in enumerate(complete, start=2):
        fields = line.split("\t")
        if len(fields) != 4 or fields[1] not in EVENTS:
            raise FileFormatError(
                f"{p}: line {number} is not 'time<TAB>event<TAB>movie<TAB>detail'"
            )
        try:
            rows.append((float(fields[0]), *fields[1:]))
        except ValueError:
            raise FileFormatError(
                f"{p}: line {number}: time {fields[0]!r} is not a number"
            ) from None
    return pd.DataFrame(rows, columns=columns).astype({"time": float})


@dataclass
class Ledger:
    """An open ledger: what it holds (``arrived``, ``staged``, ``processed``: movie ->
    detail) and :meth:`add` to append to it."""

    path: Path
    mirror: Callable[[str], None] | None = None  # given the ledger's text by sync()
    arrived: dict[str, str] = field(default_factory=dict)
    staged: dict[str, str] = field(default_factory=dict)
    processed: dict[str, str] = field(default_factory=dict)
    _unsynced: bool = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        kept: str | None = None,
        mirror: Callable[[str], None] | None = None,
    ) -> Ledger:
        """The ledger at ``path`` (created with its header when missing; a line cut short
        by a crash is dropped from the file, so that the next event starts a line).

        kept : the text of the ledger kept elsewhere (in S3), used when ``path`` is
            missing or shorter (a session restarted on another machine)
        mirror : called with the ledger's text by :meth:`sync` (to keep it in S3)
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if kept is not None and (not p.exists() or p.stat().st_size < len(kept.encode())):
            with atomic_path(p) as tmp:
                tmp.write_text(kept, encoding="utf-8")
        events = read_events(p)
        if not p.exists():
            p.write_text(HEADER + "\n", encoding="utf-8")
        else:
            text = p.read_text(encoding="utf-8")
            if not text.endswith("\n"):
                with atomic_path(p) as tmp:
                    tmp.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
        ledger = cls(p, mirror)
        for kind, movie, detail in events[["event", "movie", "detail"]].itertuples(index=False):
            if kind != "cycle":
                getattr(ledger, kind)[movie] = detail
        return ledger

    def add(self, event: str, movie: str = "", detail: str = "") -> None:
        """Append one event (now), flushed to disk before it returns."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        for text in (movie, detail):
            if "\t" in text or "\n" in text:
                raise ValueError(f"a tab or newline in {text!r}")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.3f}\t{event}\t{movie}\t{detail}\n")
            f.flush()
            os.fsync(f.fileno())
        if event != "cycle":
            getattr(self, event)[movie] = detail
        self._unsynced = True

    def sync(self) -> None:
        """Give the ledger's text to ``mirror`` when events were added since the last
        call (the session calls it after each look and each cycle, not per event)."""
        if self.mirror is not None and self._unsynced:
            self.mirror(self.path.read_text(encoding="utf-8"))
        self._unsynced = False
