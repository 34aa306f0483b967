"""One self-contained HTML report of a run: every stage's plots, the numbers, provenance.

Reads the workflow's results folder (``--results``): movies, curated micrographs,
picked and selected particles, 2D classes, the ab initio model, the refinement and the
post-processed map, whichever exist, and writes ``--out``, one HTML file with the
plots embedded (PNG, base64), so it can be mailed or archived as is. Sections: summary
(movies accepted and rejected, micrographs kept, particles picked and kept, classes
kept, final resolution and B-factor), the rejected movies and micrographs with their
reasons (``rejected.tsv``), motion correction, CTF, picking (up to ``--examples``
micrographs each), 2D classes, 3D (initial model, angular distribution and FSC,
post-processing), and provenance (the configuration, the cryosnake and library
versions, the git commit of the workflow when it is a checkout, the date).

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
import subprocess
from pathlib import Path

from cryosnake.errors import CryosnakeError
from cryosnake.io import atomic_path, read_star
from cryosnake.stages._common import positive_int, stage_main

__all__ = ["add_args", "main"]

LIBRARIES = ("cryosnake", "numpy", "scipy", "mrcfile", "starfile", "tifffile", "snakemake")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } img { max-width: 100%; margin: 0.4em 0; }
figure { margin: 0.5em 0 1.2em 0; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.missing { color: #a33; }
"""


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="the workflow's results folder")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--config", default=None, help="configuration file (provenance)")
    parser.add_argument(
        "--examples", type=positive_int, default=3, help="micrographs shown per stage (3)"
    )


def _rows(path: Path, block: str) -> int | None:
    if not path.is_file():
        return None
    blocks = read_star(path)
    return len(blocks[block]) if block in blocks else 0


def _value(path: Path, block: str, label: str) -> float | None:
    if not path.is_file():
        return None
    table = read_star(path).get(block)
    if table is None or label not in table.columns or len(table) == 0:
        return None
    return float(table[label].iloc[0])


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return f'<p class="missing">{html.escape(caption)}: not produced</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>"
    )


def _examples(folder: Path, pattern: str, count: int, caption: str) -> str:
    files = sorted(folder.glob(pattern))[:count]
    if not files:
        return f'<p class="missing">{html.escape(caption)}: not produced</p>'
    return "".join(_figure(f, f"{caption}: {f.stem}") for f in files)


def _rejected(path: Path, limit: int = 50) -> tuple[int | None, str]:
    """(movies rejected by inspect, HTML table of rejected.tsv's first ``limit`` rows)."""
    if not path.is_file():
        return None, '<p class="missing">rejected.tsv: not produced</p>'
    import pandas as pd

    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if table.empty:
        return 0, "<p>No movie or micrograph was rejected.</p>"
    movies = int((table.get("stage", pd.Series(dtype=str)) == "inspect").sum())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.head(limit).itertuples(index=False)
    )
    more = f"<p>… and {len(table) - limit} more in {path.name}</p>" if len(table) > limit else ""
    return movies, f"<table><tr>{head}</tr>{rows}</table>{more}"


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


def _fmt(value: float | int | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _run(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.is_dir():
        raise CryosnakeError(f"--results {results}: no such folder")
    config_text = ""
    if args.config:
        config_path = Path(args.config)
        if not config_path.is_file():
            raise CryosnakeError(f"--config {config_path}: no such file")
        config_text = config_path.read_text()
    movies = _rows(results / "movies.star", "movies")
    micrographs = _rows(results / "micrographs_ctf.star", "micrographs")
    selected_mics = _rows(results / "micrographs_selected.star", "micrographs")
    picked = _rows(results / "particles.star", "particles")
    kept = _rows(results / "particles_selected.star", "particles")
    classes = _rows(results / "class2d" / "run_model.star", "model_classes")
    resolution = _value(
        results / "postprocess" / "postprocess.star", "general", "rlnFinalResolution"
    )
    bfactor = _value(
        results / "postprocess" / "postprocess.star", "general", "rlnBfactorUsedForSharpening"
    )
    refined = _value(results / "refine3d" / "fsc.star", "general", "rlnFinalResolution")
    rejected_movies, rejected_table = _rejected(results / "rejected.tsv")
    summary = _table(
        [
            ("movies imported", _fmt(movies)),
            ("movies rejected by inspect", _fmt(rejected_movies)),
            ("micrographs with a CTF fit", _fmt(micrographs)),
            ("micrographs kept by curation", _fmt(selected_mics)),
            ("particles picked and extracted", _fmt(picked)),
            ("2D classes", _fmt(classes)),
            ("particles kept by 2D selection", _fmt(kept)),
            ("refine3d resolution (FSC 0.143)", _fmt(refined, " Å", 2)),
            ("final resolution (postprocess, FSC 0.143)", _fmt(resolution, " Å", 2)),
            ("B-factor used for sharpening", _fmt(bfactor, " Å²", 0)),
        ]
    )
    n = args.examples
    sections = [
        ("Summary", summary),
        ("Rejected movies and micrographs", rejected_table),
        (
            "Motion correction",
            _examples(results / "motioncor", "*_motion.png", n, "drift and dose weighting"),
        ),
        ("CTF estimation", _examples(results / "ctf", "*.png", n, "CTF fit")),
        ("Picking", _examples(results / "pick", "*.png", n, "picks")),
        (
            "2D classification",
            _figure(results / "class2d" / "run_classes.png", "2D class averages")
            + _figure(results / "class2d" / "selection.png", "class selection"),
        ),
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
        f"{_fmt(resolution, ' Å', 2)} -> {args.out}"
    )
    return 0


main = stage_main("report", __doc__, add_args, _run)
