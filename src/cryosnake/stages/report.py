"""One self-contained HTML report of a run: the session summarised, the numbers, provenance.

Reads the workflow's results folder (``--results``) and writes ``--out``, one HTML file
with the plots embedded (base64), so it can be mailed or archived as is. It reads the
aggregated tables, each once: ``movies.star``, ``micrographs_ctf.star`` (every
micrograph's CTF and motion values), ``micrographs_selected.star``,
``particles.star``, ``particles_selected.star``, ``rejected.tsv`` (and
``movies_rejected.tsv`` when ``rejected.tsv`` lists no movie rejected by inspect), and
the 2D and 3D results; never one file per movie but the pictures it shows.

Sections: summary (movies accepted and rejected, micrographs kept, particles picked and
kept, classes kept, final resolution and B-factor); for a session of ``cryosnake live``,
the session over time (:mod:`._report_live`); the session: total drift, mean
defocus, astigmatism, CTF fit resolution, CTF figure of merit and particles per
micrograph against acquisition order (the sorted movie names) and as histograms, with
the curation thresholds of ``--config`` drawn and the rejected micrographs marked;
the rejected movies and micrographs (counts per reason, the first rows; the full list
stays in ``rejected.tsv``); micrographs in full (motion plot, CTF fit, picks): every
micrograph when there are at most ``--show-all``, else the ``--examples`` worst CTF
fits, the ``--examples`` largest drifts and ``--examples`` more drawn at random (the
same draw for the same table), their pictures re-encoded as JPEG (a third of the PNG's
bytes), so the page stays a few MB at any session size; 2D classes; 3D classes when
class3d ran (:mod:`._report_class3d`); 3D (initial model, angular distribution and
FSC, post-processing); provenance (the configuration, the
cryosnake and library versions, the git commit of the workflow when it is a checkout,
the date).

The per-movie pictures (``motioncor/<movie>_motion.png``, ``ctf/<movie>.png``,
``pick/<movie>.png``) are found with one scan of each stage folder and its
subfolders, keyed by movie name, so both the flat layout and per-chunk subfolders
(``motioncor/chunk0001/<movie>_motion.png``) work; when a movie has a picture in both,
the one in a subfolder wins.

Example::

    cryosnake report --results results --config config/config.yaml \\
        --out results/report.html
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import importlib.metadata
import io
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, read_star, read_yaml
from cryosnake.stages import _report_plots as plots
from cryosnake.stages._common import positive_int, stage_main
from cryosnake.stages._report_class3d import class3d_section
from cryosnake.stages._report_live import live_section
from cryosnake.stages.curate import THRESHOLDS

__all__ = ["add_args", "main"]

LIBRARIES = ("cryosnake", "numpy", "scipy", "mrcfile", "starfile", "tifffile", "snakemake")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } img { max-width: 100%; margin: 0.4em 0; }
figure { margin: 0.5em 0 1.2em 0; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.missing { color: #a33; } .rejected { color: #c0392b; }
"""
# The per-movie pictures: stage folder, file name after the movie name, caption.
PICTURES = (
    ("motioncor", "_motion.png", "drift and dose weighting"),
    ("ctf", ".png", "CTF fit"),
    ("pick", ".png", "picks"),
)
ROW_LIMIT = 50  # rows of the rejected table shown; the rest stays in rejected.tsv
SAMPLE_SEED = 0  # the random micrographs: the same ones for the same table
JPEG_QUALITY = 85
NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
PATH_PREFIX = re.compile(r"^[^:]*[/.][^:]*: ")  # "movies/c.mrc: truncated" -> "truncated"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="the workflow's results folder")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument(
        "--config", default=None, help="configuration file (provenance, curation thresholds)"
    )
    parser.add_argument(
        "--examples",
        type=positive_int,
        default=3,
        help="micrographs shown in full per criterion when there are more than --show-all: "
        "the N worst CTF fits, the N largest drifts, N drawn at random (3)",
    )
    parser.add_argument(
        "--show-all",
        type=positive_int,
        default=12,
        help="runs of at most this many micrographs show every micrograph in full (12)",
    )


def _table_of(path: Path, block: str) -> pd.DataFrame | None:
    """Block ``block`` of a STAR file (empty when the file lacks it); None: no file."""
    if not path.is_file():
        return None
    return read_star(path).get(block, pd.DataFrame())


def _particles(path: Path) -> tuple[int | None, pd.Series | None]:
    """(rows of a particles STAR file, particles per ``rlnMicrographName``); the table
    itself (10^6 rows at session size) is not kept."""
    table = _table_of(path, "particles")
    if table is None:
        return None, None
    counts = table["rlnMicrographName"].value_counts() if "rlnMicrographName" in table else None
    return len(table), counts


def _value(path: Path, block: str, label: str) -> float | None:
    table = _table_of(path, block)
    if table is None or label not in table.columns or len(table) == 0:
        return None
    return float(table[label].iloc[0])


def _embed(data: bytes, mime: str, caption: str, name: str) -> str:
    payload = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="data:{mime};base64,{payload}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)} ({html.escape(name)})</figcaption></figure>"
    )


def _missing(caption: str, why: str = "not produced") -> str:
    return f'<p class="missing">{html.escape(caption)}: {why}</p>'


def _figure(path: Path, caption: str, *, jpeg: bool = False) -> str:
    """``path`` embedded: as is (PNG), or re-encoded as JPEG (about 3 times smaller)."""
    if not path.is_file():
        return _missing(caption)
    if not jpeg:
        return _embed(path.read_bytes(), "image/png", caption, path.name)
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except OSError as err:
        return _missing(caption, f"{html.escape(path.name)} is not readable ({err})")
    white = Image.new("RGBA", rgba.size, "white")
    buffer = io.BytesIO()
    Image.alpha_composite(white, rgba).convert("RGB").save(
        buffer, "JPEG", quality=JPEG_QUALITY, optimize=True
    )
    return _embed(buffer.getvalue(), "image/jpeg", caption, path.name)


def _picture_index(folder: Path, ending: str) -> dict[str, Path]:
    """Movie name -> its picture ``<movie><ending>`` in ``folder`` or a subfolder of it.

    One scan of the folder and its subfolders (the per-chunk layout), not one look-up
    per movie; a picture in a subfolder wins over one of the same movie in ``folder``.
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    folders = [str(folder)]
    for where in folders:  # the folder, then the subfolders its pass appends
        with os.scandir(where) as entries:
            for entry in entries:
                if where == folders[0] and entry.is_dir():
                    folders.append(entry.path)
                elif entry.name.endswith(ending) and entry.is_file():
                    found[entry.name[: -len(ending)]] = Path(entry.path)
    return found


def _movie_names(names: pd.Series) -> pd.Series:
    """Movie name (the file name without its suffix) of each micrograph file name."""
    files = names.astype(str).str.rsplit("/", n=1).str[-1]
    return files.str.replace(r"\.[^.]*$", "", regex=True)


def _rejected_list(results: Path) -> tuple[pd.DataFrame | None, str]:
    """(rejected.tsv's rows ``micrograph``, ``reasons``, ``stage``, the file that holds the
    full list); movies_rejected.tsv's rows are added when rejected.tsv has no movie
    rejected by inspect (curate has not run yet, or ran without --rejected-movies)."""
    tables, source = [], "rejected.tsv"
    path = results / "rejected.tsv"
    if path.is_file():
        tables.append(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False))
    movies_path = results / "movies_rejected.tsv"
    has_movies = any("stage" in t and (t["stage"] == "inspect").any() for t in tables)
    if movies_path.is_file() and not has_movies:
        movies = pd.read_csv(movies_path, sep="\t", dtype=str, keep_default_na=False)
        if {"movie", "reason"} <= set(movies.columns) and len(movies):
            tables.insert(
                0,
                pd.DataFrame(
                    {"micrograph": movies.movie, "reasons": movies.reason, "stage": "inspect"}
                ),
            )
            source = "rejected.tsv and movies_rejected.tsv" if tables[1:] else movies_path.name
    if not tables:
        return None, source
    table = pd.concat(tables, ignore_index=True)
    for column in ("micrograph", "reasons", "stage"):
        if column not in table:
            table[column] = ""
    return table, source


def _reason_kinds(reasons: pd.Series) -> pd.Series:
    """Each reason's kind: without the file name it starts with, details in
    parentheses, and numbers ("CTF fit to 14.0 Å > 10.0 Å" -> "CTF fit to … Å > … Å")."""
    kinds = reasons.str.replace(PATH_PREFIX, "", regex=True)
    kinds = kinds.str.replace(r"\s*\(.*$", "", regex=True).str.replace(NUMBER, "…", regex=True)
    return kinds.str.strip()


def _rejected_section(table: pd.DataFrame | None, source: str) -> str:
    if table is None:
        return _missing("rejected.tsv")
    if table.empty:
        return "<p>No movie or micrograph was rejected.</p>"
    parts = table[["stage", "reasons"]].copy()
    parts["reasons"] = parts["reasons"].str.split("; ")
    parts = parts.explode("reasons")
    parts["kind"] = _reason_kinds(parts["reasons"].fillna(""))
    counts = parts.groupby(["stage", "kind"], sort=False).size().sort_values(ascending=False)
    stages = table["stage"].value_counts()
    out = [
        "<p>"
        + ", ".join(f"{n} rejected by {html.escape(str(s))}" for s, n in stages.items())
        + ". A micrograph with several reasons counts under each.</p>",
        _html_table(
            ["stage", "reason", "rejected"],
            [(str(s), str(k), str(n)) for (s, k), n in counts.items()],
        ),
    ]
    shown = table.head(ROW_LIMIT)
    if len(table) > ROW_LIMIT:
        out.append(
            f"<p>The first {ROW_LIMIT} of {len(table)}; the full list is in "
            f"{html.escape(source)}.</p>"
        )
    out.append(
        _html_table(
            list(shown.columns),
            [tuple(str(v) for v in row) for row in shown.itertuples(index=False)],
        )
    )
    return "".join(out)


def _session(
    micrographs: pd.DataFrame | None,
    selected: pd.DataFrame | None,
    particles: pd.Series | None,
    rejected: pd.DataFrame | None,
    pictures: list[dict[str, Path]],
) -> pd.DataFrame:
    """One row per micrograph, in acquisition order (sorted movie names).

    Columns: ``movie``, ``rejected`` (bool, by curation), ``reasons``, and what the
    tables hold of ``drift`` (total, Å), ``defocus`` (mean, µm), ``astigmatism`` (dfU −
    dfV, Å), ``resolution`` (CTF fit, Å), ``figure_of_merit`` and ``particles``
    (extracted, from ``particles``: counts per micrograph name; NaN for a rejected
    micrograph). Without ``micrographs_ctf.star``: the movies that have pictures, and no
    values.
    """
    from_table = micrographs is not None and "rlnMicrographName" in micrographs
    if micrographs is None or not from_table:
        movies = sorted(set().union(*pictures))
        table = pd.DataFrame({"movie": pd.Series(movies, dtype=str)})
    else:
        m = micrographs
        table = pd.DataFrame({"movie": _movie_names(m["rlnMicrographName"])})
        columns = {
            "drift": ("rlnAccumMotionTotal",),
            "defocus": ("rlnDefocusU", "rlnDefocusV"),
            "astigmatism": ("rlnDefocusU", "rlnDefocusV"),
            "resolution": ("rlnCtfMaxResolution",),
            "figure_of_merit": ("rlnCtfFigureOfMerit",),
        }
        for name, labels in columns.items():
            if all(label in m for label in labels):
                values = [pd.to_numeric(m[label], errors="coerce") for label in labels]
                if name == "defocus":
                    table[name] = 0.5 * (values[0] + values[1]) / 1e4
                elif name == "astigmatism":
                    table[name] = values[0] - values[1]
                else:
                    table[name] = values[0]
    table["reasons"] = ""
    if rejected is not None:
        curated = rejected[rejected["stage"] == "curate"]
        reasons = dict(zip(_movie_names(curated["micrograph"]), curated["reasons"], strict=True))
        table["reasons"] = table["movie"].map(reasons).fillna("")
    if selected is not None and "rlnMicrographName" in selected:
        table["rejected"] = ~table["movie"].isin(set(_movie_names(selected["rlnMicrographName"])))
    else:
        table["rejected"] = table["reasons"] != ""
    if particles is not None and from_table:
        counts = particles.copy()
        counts.index = _movie_names(counts.index.to_series())
        per_movie = counts.groupby(level=0).sum()
        table["particles"] = table["movie"].map(per_movie).fillna(0).astype(float)
        table.loc[table["rejected"], "particles"] = np.nan
    return table.sort_values("movie", kind="stable").reset_index(drop=True)


def _chosen(table: pd.DataFrame, examples: int, show_all: int) -> list[tuple[int, str]]:
    """(row, why it is shown) of the micrographs shown in full: every one when there are
    at most ``show_all``; else the worst CTF fits, the largest drifts, a random draw."""
    if len(table) <= show_all:
        return [(i, "") for i in range(len(table))]
    why: dict[int, list[str]] = {}
    for column, text in (("resolution", "worst CTF fit"), ("drift", "largest drift")):
        if column in table:
            for i in table[column].nlargest(examples).index:
                why.setdefault(int(i), []).append(text)
    rest = np.array([i for i in range(len(table)) if i not in why])
    draw = np.random.default_rng(SAMPLE_SEED).choice(rest, min(examples, rest.size), replace=False)
    for i in sorted(int(i) for i in draw):
        why[i] = ["drawn at random"]
    return [(i, ", ".join(reasons)) for i, reasons in why.items()]


def _card(row: Any, why: str, pictures: list[dict[str, Path]]) -> str:
    values = [
        ("drift", "total drift {:.1f} Å"),
        ("defocus", "defocus {:.2f} µm"),
        ("astigmatism", "astigmatism {:.0f} Å"),
        ("resolution", "CTF fit to {:.1f} Å"),
        ("figure_of_merit", "figure of merit {:.3f}"),
        ("particles", "{:.0f} particles"),
    ]
    facts = [f.format(getattr(row, c)) for c, f in values if pd.notna(getattr(row, c, np.nan))]
    if row.rejected:
        facts.append(f'<span class="rejected">rejected: {html.escape(row.reasons)}</span>')
    title = html.escape(row.movie) + (f" — {html.escape(why)}" if why else "")
    figures = "".join(
        _figure(index[row.movie], f"{row.movie}: {caption}", jpeg=True)
        if row.movie in index
        else _missing(f"{row.movie}: {caption}")
        for index, (_, _, caption) in zip(pictures, PICTURES, strict=True)
    )
    return f"<h3>{title}</h3><p>{' · '.join(facts)}</p>{figures}"


def _thresholds(config_path: Path | None) -> tuple[dict[str, float], str]:
    """(curation thresholds of the configuration, a note for the page)."""
    if config_path is None:
        return {}, "No --config given: the curation thresholds are not drawn."
    try:
        config = read_yaml(config_path)
    except CryosnakeError as err:
        return {}, f"The curation thresholds are not drawn: {err}"
    section = config.get("curate") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        section = {}
    out = {}
    for key in THRESHOLDS:
        value = section.get(key)
        if value is None:
            from cryosnake.config import schema_default

            try:
                value = schema_default(f"curate.{key}")
            except CryosnakeError:
                continue
        out[key] = float(value)
    return out, "Dashed lines: the curation thresholds (configuration, curate section)."


def _session_section(table: pd.DataFrame, thresholds: dict[str, float], note: str) -> str:
    metrics = plots.present(table)
    if not metrics:
        return _missing("micrographs_ctf.star", "not produced, or no micrograph in it")
    parts = [f"<p>{html.escape(note)} Red crosses: micrographs rejected by curation.</p>"]
    for data, caption in (
        (plots.time_series(table, thresholds), "per micrograph, in acquisition order"),
        (plots.histograms(table, thresholds), "distributions"),
    ):
        if data is not None:
            parts.append(_embed(data, "image/png", caption, "session"))
    rows = [
        (key, f"{value:g}" if value else "not applied", text)
        for key, text in THRESHOLDS.items()
        if (value := thresholds.get(key)) is not None
    ]
    if rows:
        parts.append("<h3>Curation thresholds</h3>" + _html_table(["key", "value", ""], rows))
    stats = [
        (m.label, *(_fmt(float(v), "", 2) for v in table[m.column].quantile([0, 0.5, 1])))
        for m in metrics
    ]
    parts.append("<h3>Range</h3>" + _html_table(["", "min", "median", "max"], stats))
    return "".join(parts)


def _git_commit(start: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "not a git checkout"


def _versions() -> list[tuple[str, str]]:
    rows = []
    for name in LIBRARIES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return rows


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    top = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{top}</tr>{body}</table>"


def _fmt(value: float | int | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _count(table: pd.DataFrame | None) -> int | None:
    return None if table is None else len(table)


def _run(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.is_dir():
        raise CryosnakeError(f"--results {results}: no such folder")
    config_text, config_path = "", None
    if args.config:
        config_path = Path(args.config)
        if not config_path.is_file():
            raise CryosnakeError(f"--config {config_path}: no such file")
        config_text = config_path.read_text()
    micrographs = _table_of(results / "micrographs_ctf.star", "micrographs")
    selected = _table_of(results / "micrographs_selected.star", "micrographs")
    picked, per_micrograph = _particles(results / "particles.star")
    kept, _ = _particles(results / "particles_selected.star")
    movies = _count(_table_of(results / "movies.star", "movies"))
    classes = _count(_table_of(results / "class2d" / "run_model.star", "model_classes"))
    post = results / "postprocess" / "postprocess.star"
    resolution = _value(post, "general", "rlnFinalResolution")
    bfactor = _value(post, "general", "rlnBfactorUsedForSharpening")
    refined = _value(results / "refine3d" / "fsc.star", "general", "rlnFinalResolution")
    rejected, source = _rejected_list(results)
    pictures = [_picture_index(results / folder, ending) for folder, ending, _ in PICTURES]
    session = _session(micrographs, selected, per_micrograph, rejected, pictures)
    thresholds, note = _thresholds(config_path)
    by_inspect = None if rejected is None else int((rejected["stage"] == "inspect").sum())
    summary = _table(
        [
            ("movies imported", _fmt(movies)),
            ("movies rejected by inspect", _fmt(by_inspect)),
            ("micrographs with a CTF fit", _fmt(_count(micrographs))),
            ("micrographs kept by curation", _fmt(_count(selected))),
            ("particles picked and extracted", _fmt(picked)),
            ("2D classes", _fmt(classes)),
            ("particles kept by 2D selection", _fmt(kept)),
            ("refine3d resolution (FSC 0.143)", _fmt(refined, " Å", 2)),
            ("final resolution (postprocess, FSC 0.143)", _fmt(resolution, " Å", 2)),
            ("B-factor used for sharpening", _fmt(bfactor, " Å²", 0)),
        ]
    )
    chosen = _chosen(session, args.examples, args.show_all)
    every = len(chosen) == len(session)
    if session.empty:
        shown = _missing("per-micrograph pictures")
    else:
        shown = (
            "<p>Every micrograph.</p>"
            if every
            else f"<p>{len(chosen)} of {len(session)} micrographs: the {args.examples} worst "
            f"CTF fits, the {args.examples} largest drifts and {args.examples} drawn at random."
            "</p>"
        ) + "".join(_card(session.iloc[i], why, pictures) for i, why in chosen)
    live = live_section(results, session, rejected, _table, _embed, _missing, _movie_names)
    class3d = class3d_section(results, _html_table, _figure, _missing)
    sections = [
        ("Summary", summary),
        *([("Live session", live)] if live is not None else []),
        ("Session", _session_section(session, thresholds, note)),
        ("Rejected movies and micrographs", _rejected_section(rejected, source)),
        ("Micrographs", shown),
        (
            "2D classification",
            _figure(results / "class2d" / "run_classes.png", "2D class averages")
            + _figure(results / "class2d" / "selection.png", "class selection"),
        ),
        *([("3D classification", class3d)] if class3d is not None else []),
        (
            "3D",
            _figure(results / "initial3d" / "initial_model.png", "ab initio model")
            + _figure(
                results / "refine3d" / "run_angdist.png", "orientations and gold-standard FSC"
            )
            + _figure(results / "postprocess" / "postprocess_fsc.png", "post-processing FSC")
            + _figure(results / "postprocess" / "postprocess_guinier.png", "Guinier plot")
            + _figure(results / "postprocess" / "postprocess_slices.png", "final map"),
        ),
        (
            "Provenance",
            _table(
                [
                    (
                        "generated",
                        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    ),
                    ("workflow commit", _git_commit(Path.cwd())),
                    *_versions(),
                ]
            )
            + (
                f"<h3>Configuration</h3><pre>{html.escape(config_text)}</pre>"
                if config_text
                else ""
            ),
        ),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cryosnake report</title><style>{STYLE}</style></head><body>"
        f"<h1>cryosnake report</h1><p>{html.escape(str(results.resolve()))}</p>{body}"
        "</body></html>"
    )
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(
        f"report: {movies or 0} movies, {kept or 0} particles kept, final resolution "
        f"{_fmt(resolution, ' Å', 2)} -> {args.out} ({len(page.encode()) / 1e6:.1f} MB)"
    )
    return 0


main = stage_main("report", __doc__, add_args, _run)
