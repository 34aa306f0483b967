"""cryosnake report: one self-contained HTML page from whatever the results folder holds."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import pandas as pd

from cryosnake.io import save_figure, write_star

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]


def _png(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    save_figure(path, fig)


def test_report_embeds_plots_and_numbers(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    write_star(
        results / "movies.star",
        {"movies": pd.DataFrame({"rlnMicrographMovieName": ["a", "b", "c"]})},
    )
    write_star(
        results / "particles_selected.star",
        {"particles": pd.DataFrame({"rlnImageName": [f"{i}@s.mrcs" for i in range(1, 43)]})},
    )
    write_star(
        results / "postprocess" / "postprocess.star",
        {
            "general": pd.DataFrame(
                [{"rlnFinalResolution": 4.321, "rlnBfactorUsedForSharpening": -85.0}]
            )
        },
    )
    for name in (
        "class2d/run_classes.png",
        "pick/m1.png",
        "pick/m2.png",
        "postprocess/postprocess_fsc.png",
    ):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        _png(results / name)
    (results / "rejected.tsv").write_text(
        "micrograph\treasons\tstage\n"
        "movies/c.mrc\tmovies/c.mrc: truncated <MRC>\tinspect\n"
        "mc/b.mrc\tCTF fit to 14.0 Å > 10.0 Å\tcurate\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text("results: results  # <configured>\n")
    out = results / "report.html"
    code, stdout, err = run_cli(
        ["report", "--results", results, "--out", out, "--config", config, "--examples", "1"]
    )
    assert code == 0, err
    assert "3 movies, 42 particles kept, final resolution 4.32 Å" in stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Plots are embedded, not linked: the page stands alone.
    images = page.count("data:image/png;base64,")
    assert images == 3  # class averages, one pick example (--examples 1), the FSC
    payload = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4.32 Å" in page and "-85 Å²" in page and "42" in page
    assert "not produced" in page  # missing stages are said, not hidden
    assert "&lt;configured&gt;" in page  # the configuration, escaped
    # The rejected movies and micrographs, with their reasons.
    assert "<th>movies rejected by inspect</th><td>1</td>" in page
    assert "movies/c.mrc: truncated &lt;MRC&gt;" in page and "CTF fit to 14.0 Å" in page
    assert "numpy" in page and "cryosnake" in page


def test_report_bad_input_is_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    for args, needle in (
        (["--results", tmp_path / "nope"], "nope"),
        (["--results", tmp_path, "--config", tmp_path / "missing.yaml"], "missing.yaml"),
    ):
        code, _, err = run_cli(["report", *args, "--out", tmp_path / "r.html"])
        assert code != 0
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "r.html").exists()
