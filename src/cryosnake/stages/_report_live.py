"""The report's live section: a session of ``cryosnake live``, over time.

Read from the session's ledger, ``<results>/live/events.tsv``
(:mod:`cryosnake.live.ledger`), with the report's per-micrograph table and its list of
rejected movies and micrographs (``report._session``, ``report._rejected_list``):

- a summary: when the session started (its first event) and its last movie arrived
  (UTC); the movies arrived, processed, waiting (arrived, not processed yet) and
  rejected; the delay from a movie's arrival to its processing (median, max); the
  workflow's runs (per kind, the time they took);
- one figure against the time since the session started (minutes, hours past 2 h):
  A, the movies arrived, processed and rejected (a rejected movie counts when it was
  processed), with the workflow's runs as ticks at their ends, coloured by kind; B,
  each movie's delay from arrival to processed; C, its CTF fit resolution and D, its
  particles, at the movie's arrival (a micrograph's file stem is its movie's name).

The section renders from the ledger's first line on: a value not there yet reads
"none yet". A results folder without a ledger (a batch run) has no live section.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.live.ledger import parse_cycle, read_events
from cryosnake.stages import _report_plots as plots

__all__ = ["LEDGER", "live_section"]

LEDGER = Path("live") / "events.tsv"  # relative to the results folder
NONE_YET = "none yet"
ARRIVED = "#7f8c8d"
# The workflow's runs (kinds of cycle event), by kind; another kind is drawn in grey.
RUNS = {"chunks": "#e67e22", "curate": "#16a085", "2d": "#27ae60", "3d": "#8e44ad"}
RUN_OTHER = "#000000"


def _when(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return NONE_YET
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.isoformat(timespec="seconds")


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _movies(events: pd.DataFrame) -> pd.DataFrame:
    """One row per movie of the ledger (index: movie name), columns ``arrived`` and
    ``processed``: the first time of each (NaN: not yet); in arrival order."""
    rows = events[events["event"].isin(["arrived", "processed"]) & (events["movie"] != "")]
    if rows.empty:
        return pd.DataFrame({"arrived": [], "processed": []}, index=pd.Index([], dtype=str))
    first = rows.groupby(["movie", "event"])["time"].min().unstack("event")
    table = first.reindex(columns=["arrived", "processed"]).astype(float)
    return table.sort_values("arrived", kind="stable", na_position="last")


def _runs(events: pd.DataFrame) -> pd.DataFrame:
    """One row per run of the workflow: ``time`` (its end), ``kind``, ``ok`` and
    ``seconds`` (NaN when the detail does not say)."""
    rows: list[tuple[float, str, bool, float]] = []
    cycles = events[events["event"] == "cycle"]
    for time, detail in zip(cycles["time"], cycles["detail"].astype(str), strict=True):
        record = parse_cycle(detail)
        if record is not None:
            rows.append((time, record.kind, record.ok, record.seconds))
        else:
            rows.append((time, (detail.split() or ["?"])[0], True, np.nan))
    return pd.DataFrame(rows, columns=["time", "kind", "ok", "seconds"])


def _runs_text(runs: pd.DataFrame) -> str:
    if runs.empty:
        return NONE_YET
    kinds = runs.groupby("kind", sort=False)["seconds"]
    parts = [f"{len(s)} {kind} ({_span(s.sum())})" for kind, s in kinds]
    failed = int((~runs["ok"].astype(bool)).sum())
    return (
        ", ".join(parts)
        + (f"; {failed} failed" if failed else "")
        + f"; {_span(runs['seconds'].sum())} in all"
    )


def _rejected(
    rejected: pd.DataFrame | None, movie_names: Callable[[pd.Series], pd.Series]
) -> dict[str, str]:
    """Movie name -> the stage that rejected it (inspect: the movie, curate: its
    micrograph), from the report's list of rejected movies and micrographs."""
    if rejected is None or rejected.empty:
        return {}
    names = movie_names(rejected["micrograph"])
    return dict(zip(names, rejected["stage"].astype(str), strict=True))


def _rejected_text(rejected: pd.DataFrame | None, stages: dict[str, str]) -> str:
    if rejected is None:
        return NONE_YET
    counts = pd.Series(list(stages.values()), dtype=str).value_counts()
    said = ", ".join(f"{n} by {stage}" for stage, n in counts.items())
    return f"{len(stages)}" + (f" ({said})" if said else "")


def _panel_empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#888")


def _figure(
    movies: pd.DataFrame, runs: pd.DataFrame, session: pd.DataFrame, rejected: set[str],
    start: float, end: float,
) -> bytes:  # fmt: skip
    plt = plots._pyplot()
    unit, scale = ("h", 3600.0) if end - start > 7200 else ("min", 60.0)
    arrival = (movies["arrived"] - start) / scale
    is_rejected = movies.index.isin(rejected)
    size = 2.0 if len(movies) > 2000 else 3.0
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    (a, b), (c, d) = axes
    for label, times, colour in (
        ("arrived", movies["arrived"], ARRIVED),
        ("processed", movies["processed"], plots.KEPT),
        ("rejected", movies["processed"][is_rejected], plots.REJECTED),
    ):
        t = np.sort(((times.dropna() - start) / scale).to_numpy())
        a.step(t, np.arange(1, t.size + 1), where="post", color=colour, label=label)
    for kind, group in runs.groupby("kind", sort=False):
        a.vlines(
            (group["time"] - start) / scale, 0, 0.08, transform=a.get_xaxis_transform(),
            color=RUNS.get(str(kind), RUN_OTHER), lw=1, label=f"{kind} run",
        )  # fmt: skip
    a.set_ylabel("movies", fontsize=8)
    a.legend(fontsize=7, loc="upper left", ncol=2)
    delay = (movies["processed"] - movies["arrived"]) / 60
    done = delay.notna().to_numpy()
    b.plot(arrival[done], delay[done], "o", ms=size, color=plots.KEPT)
    if not done.any():
        _panel_empty(b, "no movie processed yet")
    b.set_ylabel("arrival to processed (min)", fontsize=8)
    by_movie = session.drop_duplicates("movie").set_index("movie")
    for ax, column, label in (
        (c, "resolution", "CTF fit resolution (Å)"),
        (d, "particles", "particles per micrograph"),
    ):
        values = by_movie[column].reindex(movies.index) if column in by_movie else None
        if values is None or values.isna().all():
            _panel_empty(ax, "no micrograph yet")
        else:
            ax.plot(arrival[~is_rejected], values[~is_rejected], "o", ms=size, color=plots.KEPT,
                    label="kept")  # fmt: skip
            if values[is_rejected].notna().any():  # a rejected micrograph has no particles
                ax.plot(arrival[is_rejected], values[is_rejected], "x", ms=2 * size,
                        color=plots.REJECTED, label="rejected")  # fmt: skip
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel(label, fontsize=8)
    for ax, letter in zip(axes.ravel(), "ABCD", strict=True):
        when = "time" if ax is a else "the movie's arrival"
        ax.set_xlabel(f"{when}, since the session started ({unit})", fontsize=8)
        ax.set_title(letter, loc="left", fontsize=10, fontweight="bold")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8, labelbottom=True)
    fig.tight_layout()
    return plots._png(fig)


def live_section(
    results: Path,
    session: pd.DataFrame,
    rejected: pd.DataFrame | None,
    table: Callable[[list[tuple[str, str]]], str],
    embed: Callable[[bytes, str, str, str], str],
    missing: Callable[[str, str], str],
    movie_names: Callable[[pd.Series], pd.Series],
) -> str | None:
    """The HTML of the live section; None when ``results`` has no ledger.

    ``session`` is the report's per-micrograph table (``movie``, ``resolution``,
    ``particles``), ``rejected`` its list of rejected movies and micrographs (None: no
    list yet); ``table``, ``embed``, ``missing`` and ``movie_names`` its helpers.
    """
    path = results / LEDGER
    if not path.is_file():
        return None
    try:
        events = read_events(path)
    except (CryosnakeError, OSError, UnicodeDecodeError) as err:
        return missing(str(LEDGER), f"not readable ({html.escape(str(err))})")
    events = events[np.isfinite(events["time"].to_numpy(dtype=float))]
    movies = _movies(events)
    runs = _runs(events)
    stages = _rejected(rejected, movie_names)
    arrived = movies["arrived"].dropna()
    processed = movies["processed"].notna()
    delays = (movies["processed"] - movies["arrived"]).dropna()
    start = float(events["time"].min()) if len(events) else None
    rows = [
        ("session started", _when(start)),
        ("last movie arrived", _when(float(arrived.max()) if len(arrived) else None)),
        ("movies arrived", str(len(arrived))),
        ("movies processed", str(int(processed.sum()))),
        ("movies waiting", str(int((movies["arrived"].notna() & ~processed).sum()))),
        ("movies and micrographs rejected", _rejected_text(rejected, stages)),
        (
            "arrival to processed (median, max)",
            f"{_span(delays.median())}, {_span(delays.max())}" if len(delays) else NONE_YET,
        ),
        ("workflow runs", _runs_text(runs)),
    ]
    out = table(rows)
    if start is None or movies.empty:
        return out + "<p>No movie has arrived yet.</p>"
    png = _figure(movies, runs, session, set(stages), start, float(events["time"].max()))
    caption = "the session over time: movies, delays, CTF fits and particles"
    return out + embed(png, "image/png", caption, str(LEDGER))
