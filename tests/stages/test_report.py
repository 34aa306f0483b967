"""cryosnake report: one self-contained HTML page from whatever the results folder holds."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from cryosnake.io import save_figure, write_star
from cryosnake.stages import report

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
    assert page.count("data:image/png;base64,") == 2  # class averages, the FSC
    # Both pick pictures (as JPEG): a run of at most --show-all (12) micrographs shows
    # every one; --examples counts only above that.
    assert page.count("data:image/jpeg;base64,") == 2
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


# A session at scale: tables only, a handful of pictures.
N_MICS = 3000
WORST_CTF, LARGEST_DRIFT, NOT_SHOWN = "mic_01234", "mic_02222", "mic_00007"
BAD_CTF = range(100, 160)  # 60 micrographs whose CTF fit is worse than 10 Å
BAD_MOVIES = 5  # rejected by inspect


def _mic(i: int) -> str:
    return f"mic_{i:05d}"


def _session_tables(seed: int = 0) -> dict[str, pd.DataFrame]:
    """micrographs_ctf, micrographs_selected, particles, rejected: rows in shuffled order
    (acquisition order is the sorted names), with known particle counts."""
    rng = np.random.default_rng(seed)
    du = rng.uniform(10_000, 20_000, N_MICS)
    mics = pd.DataFrame(
        {
            "rlnMicrographName": [f"results/micrographs/chunk{i // 100:04d}/{_mic(i)}.mrc"
                                  for i in range(N_MICS)],
            "rlnDefocusU": du,
            "rlnDefocusV": du - 300.0,
            "rlnCtfFigureOfMerit": rng.uniform(0.2, 0.4, N_MICS),
            "rlnCtfMaxResolution": rng.uniform(4, 9, N_MICS),
            "rlnAccumMotionTotal": rng.uniform(5, 30, N_MICS),
        }
    )  # fmt: skip
    mics.loc[list(BAD_CTF), "rlnCtfMaxResolution"] = 12.0
    mics.loc[int(WORST_CTF[4:]), "rlnCtfMaxResolution"] = 40.0
    mics.loc[int(LARGEST_DRIFT[4:]), "rlnAccumMotionTotal"] = 300.0
    bad = mics.rlnCtfMaxResolution > 10
    rejected = pd.DataFrame(
        {
            "micrograph": [f"movies/bad_{k}.tiff" for k in range(BAD_MOVIES)]
            + list(mics.rlnMicrographName[bad]),
            "reasons": [f"movies/bad_{k}.tiff: truncated <MRC>" for k in range(BAD_MOVIES)]
            + [f"CTF fit to {r:.1f} Å > 10 Å" for r in mics.rlnCtfMaxResolution[bad]],
            "stage": ["inspect"] * BAD_MOVIES + ["curate"] * int(bad.sum()),
        }
    )
    # Particles per kept micrograph: 1 + index % 7.
    kept = np.flatnonzero(~bad)
    on = np.repeat(kept, 1 + kept % 7)
    particles = pd.DataFrame(
        {"rlnImageName": [f"{k + 1}@s.mrcs" for k in range(on.size)],
         "rlnMicrographName": mics.rlnMicrographName.to_numpy()[on]}
    )  # fmt: skip
    order = rng.permutation(N_MICS)
    return {
        "micrographs": mics.iloc[order].reset_index(drop=True),
        "selected": mics[~bad].reset_index(drop=True),
        "particles": particles,
        "rejected": rejected,
    }


def _session_folder(results: Path) -> None:
    tables = _session_tables()
    write_star(results / "micrographs_ctf.star", {"micrographs": tables["micrographs"]})
    write_star(results / "micrographs_selected.star", {"micrographs": tables["selected"]})
    write_star(results / "particles.star", {"particles": tables["particles"]})
    tables["rejected"].to_csv(results / "rejected.tsv", sep="\t", index=False)
    # The worst CTF fit's pictures in chunk folders, the largest drift's in the stage
    # folder (the flat layout), one of a micrograph that is not shown.
    for name in (
        f"motioncor/chunk0012/{WORST_CTF}_motion.png",
        f"ctf/chunk0012/{WORST_CTF}.png",
        f"pick/{LARGEST_DRIFT}.png",
        f"motioncor/chunk0000/{NOT_SHOWN}_motion.png",
    ):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        _png(results / name)


def test_report_summarises_a_session(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    _session_folder(results)
    config = tmp_path / "config.yaml"
    config.write_text("curate:\n  max_resolution: 10\n  min_figure_of_merit: 0.1\n")
    out = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--results", results, "--out", out, "--config", config])
    assert code == 0, err
    page = out.read_text()
    # A page a browser opens at once: two session plots and the few pictures there are.
    assert len(page.encode()) < 1_000_000
    assert page.count("data:image/png;base64,") == 2  # time series, histograms
    assert page.count("data:image/jpeg;base64,") == 3  # the planted pictures, found
    assert f"{NOT_SHOWN}_motion.png" not in page and f"({WORST_CTF}.png)" in page
    assert f"{WORST_CTF} — worst CTF fit" in page and f"{LARGEST_DRIFT} — largest drift" in page
    assert "CTF fit to 40.0 Å" in page and "total drift 300.0 Å" in page
    assert f"<th>micrographs with a CTF fit</th><td>{N_MICS}</td>" in page
    assert "<th>movies rejected by inspect</th><td>5</td>" in page
    # Rejected: counts per reason, 50 rows, the rest left in rejected.tsv.
    n_bad = len(BAD_CTF) + 1
    assert f"<td>curate</td><td>CTF fit to … Å &gt; … Å</td><td>{n_bad}</td>" in page
    assert "<td>inspect</td><td>truncated &lt;MRC&gt;</td><td>5</td>" in page
    assert f"The first 50 of {n_bad + BAD_MOVIES}; the full list is in rejected.tsv" in page
    listed = page.split("the full list is in rejected.tsv")[1].split("</table>")[0]
    assert listed.count("<tr>") == 51  # header and 50 rows
    assert "Dashed lines: the curation thresholds" in page
    drawn = re.findall(r"<h3>(mic_\d+) — drawn at random</h3>", page)
    assert len(drawn) == 3
    # The same draw again (no --config now: the thresholds are said not to be drawn).
    again = tmp_path / "again.html"
    code, _, err = run_cli(["report", "--results", results, "--out", again])
    assert code == 0, err
    assert re.findall(r"<h3>(mic_\d+) — drawn at random</h3>", again.read_text()) == drawn
    assert "No --config given: the curation thresholds are not drawn." in again.read_text()


def test_session_table_matches_the_planted_values() -> None:
    tables = _session_tables()
    counts = tables["particles"]["rlnMicrographName"].value_counts()
    table = report._session(
        tables["micrographs"], tables["selected"], counts, tables["rejected"], [{}, {}, {}]
    )
    assert list(table.movie) == [_mic(i) for i in range(N_MICS)]  # acquisition order
    index = np.arange(N_MICS)
    rejected = np.isin(index, [*BAD_CTF, int(WORST_CTF[4:])])
    np.testing.assert_array_equal(table.rejected.to_numpy(), rejected)
    np.testing.assert_array_equal(table.particles[~rejected], 1 + index[~rejected] % 7)
    assert table.particles[rejected].isna().all()
    assert table.reasons[int(WORST_CTF[4:])] == "CTF fit to 40.0 Å > 10 Å"
    mics = tables["micrographs"].sort_values("rlnMicrographName")
    expected = (mics.rlnDefocusU.to_numpy() - 150.0) / 1e4  # µm
    np.testing.assert_allclose(table.defocus, expected, rtol=1e-12)
    np.testing.assert_allclose(table.astigmatism, 300.0, rtol=1e-9)


def test_picture_index_reads_both_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "motioncor"
    for name in ("a_motion.png", "b_motion.png", "a.star", "chunk0001/b_motion.png",
                 "chunk0002/c_motion.png", "chunk0002/c.mrc"):  # fmt: skip
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    index = report._picture_index(folder, "_motion.png")
    assert index == {
        "a": folder / "a_motion.png",
        "b": folder / "chunk0001" / "b_motion.png",  # a chunk folder's wins
        "c": folder / "chunk0002" / "c_motion.png",
    }
    assert report._picture_index(tmp_path / "nope", ".png") == {}


def test_reason_kinds() -> None:
    reasons = pd.Series(
        [
            "movies/x.tiff: truncated <MRC>",
            "CTF fit to 14.0 Å > 10.0 Å",
            "CTF figure of merit 0.050 < 0.1",
            "data/m 2.mrc: measured 1.234 e/Å² per frame (off by 30 %)",
        ]
    )
    assert list(report._reason_kinds(reasons)) == [
        "truncated <MRC>",
        "CTF fit to … Å > … Å",
        "CTF figure of merit … < …",
        "measured … e/Å² per frame",
    ]


def _ledger(results: Path, lines: Sequence[tuple[float, str, str, str]]) -> None:
    """A ledger written by hand, with the times given."""
    from cryosnake.live.ledger import HEADER

    path = results / "live" / "events.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{t:.3f}\t{e}\t{m}\t{d}\n" for t, e, m, d in lines)
    path.write_text(f"{HEADER}\n{rows}")


def _live(page: str) -> str:
    return page.split("<h2>Live session</h2>")[1].split("<h2>")[0]


T0 = 1_796_400_000.0  # 2026-12-04T16:00:00 UTC


def test_a_live_session_is_shown_over_time(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    _session_folder(results)
    first, second, bad = _mic(1), _mic(2), _mic(100)  # bad: rejected by curation
    _ledger(
        results,
        [
            (T0, "arrived", first, "/epu/a.tiff"),
            (T0 + 1, "staged", first, "results/live/movies/a.tiff"),
            (T0 + 20, "arrived", second, "/epu/b.tiff"),
            (T0 + 40, "arrived", bad, "/epu/c.tiff"),
            (T0 + 41, "arrived", _mic(3), "/epu/d.tiff"),
            (T0 + 120, "processed", first, "chunk0001"),
            (T0 + 120, "processed", second, "chunk0001"),
            (T0 + 120, "cycle", "", "chunks ok 70.0 s particles=0 kept=0"),
            (T0 + 130, "cycle", "", "curate failed 10.0 s particles=12 kept=0"),
            (T0 + 200, "processed", bad, "chunk0002"),
            (T0 + 300, "cycle", "", "2d ok 150.5 s particles=40 kept=20"),
        ],
    )
    out = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--results", results, "--out", out])
    assert code == 0, err
    page = out.read_text()
    live = _live(page)
    assert "<th>session started</th><td>2026-12-04T16:00:00+00:00</td>" in live
    assert "<th>last movie arrived</th><td>2026-12-04T16:00:41+00:00</td>" in live
    assert "<th>movies arrived</th><td>4</td>" in live
    assert "<th>movies processed</th><td>3</td>" in live
    assert "<th>movies waiting</th><td>1</td>" in live
    # Every row of the report's rejected list (not only the ledger's movies).
    n_bad = len(BAD_CTF) + 1
    assert (
        f"<th>movies and micrographs rejected</th><td>{n_bad + BAD_MOVIES} "
        f"({n_bad} by curate, {BAD_MOVIES} by inspect)</td>"
    ) in live
    # Delays 120, 100 and 160 s.
    assert "<th>arrival to processed (median, max)</th><td>2.0 min, 2.7 min</td>" in live
    assert (
        "<th>workflow runs</th><td>1 chunks (70 s), 1 curate (10 s), 1 2d (2.5 min); "
        "1 failed; 3.8 min in all</td>"
    ) in live
    assert live.count("data:image/png;base64,") == 1
    payload = live.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(live/events.tsv)" in live
    # After the summary, before the session.
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Live session</h2>")
    assert page.index("<h2>Live session</h2>") < page.index("<h2>Session</h2>")


def test_a_batch_run_has_no_live_section(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    _session_folder(results)
    out = tmp_path / "report.html"
    assert run_cli(["report", "--results", results, "--out", out])[0] == 0
    assert "Live session" not in out.read_text()


def test_a_live_session_just_started_is_shown(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    results.mkdir()
    out = tmp_path / "report.html"
    # The header only: no event, no figure.
    _ledger(results, [])
    code, _, err = run_cli(["report", "--results", results, "--out", out])
    assert code == 0, err
    live = _live(out.read_text())
    assert "<th>movies arrived</th><td>0</td>" in live
    assert "<th>session started</th><td>none yet</td>" in live
    assert "<th>workflow runs</th><td>none yet</td>" in live
    assert "No movie has arrived yet." in live and "base64" not in live
    # Arrivals only: nothing processed, no micrograph, no rejected list; a figure.
    _ledger(
        results,
        [(T0, "arrived", "m1", "/epu/m1.tiff"), (T0 + 5, "arrived", "m2", "/epu/m2.tiff")],
    )
    code, _, err = run_cli(["report", "--results", results, "--out", out])
    assert code == 0, err
    live = _live(out.read_text())
    assert "<th>movies waiting</th><td>2</td>" in live
    assert "<th>arrival to processed (median, max)</th><td>none yet</td>" in live
    assert "<th>movies and micrographs rejected</th><td>none yet</td>" in live
    assert live.count("data:image/png;base64,") == 1


def test_a_live_ledger_that_is_not_one_is_said(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    (results / "live").mkdir(parents=True)
    (results / "live" / "events.tsv").write_text("not a ledger\n")
    out = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--results", results, "--out", out])
    assert code == 0, err
    assert "live/events.tsv: not readable" in _live(out.read_text())


def _class3d_folder(results: Path) -> None:
    """A 3D classification of 100 particles into 3 classes; refine3d keeps class 2."""
    folder = results / "class3d"
    general = {
        "rlnNrClasses": 3, "rlnCurrentIteration": 25, "rlnPixelSize": 1.5,
        "rlnOriginalImageSize": 64,
    }  # fmt: skip
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [f"results/class3d/run_class00{k}.mrc" for k in (1, 2, 3)],
            "rlnClassDistribution": [0.25, 0.6, 0.15],
            "rlnEstimatedResolution": [12.5, 6.4, np.inf],
        }
    )
    write_star(
        folder / "run_model.star",
        {"model_general": pd.DataFrame([general]), "model_classes": classes},
    )
    kept = pd.DataFrame(
        {"rlnImageName": [f"{i}@s.mrcs" for i in range(1, 61)], "rlnClassNumber": [2] * 60}
    )
    write_star(folder / "particles_kept.star", {"particles": kept})
    _png(folder / "run_classes.png")


def _rows(page: str) -> list[list[str]]:
    section = page.split("<h2>3D classification</h2>")[1].split("<h2>")[0]
    return [
        re.findall(r"<td>(.*?)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", section)
        if "<td>" in row
    ]


def test_report_shows_the_3d_classes(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    _class3d_folder(results)
    out = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--results", results, "--out", out])
    assert code == 0, err
    page = out.read_text()
    # After the 2D classes, before the 3D maps.
    assert page.index("<h2>2D classification</h2>") < page.index("<h2>3D classification</h2>")
    assert page.index("<h2>3D classification</h2>") < page.index("<h2>3D</h2>")
    # Number, share (%), resolution (Å; an unresolved class has none), kept.
    assert _rows(page) == [
        ["1", "25.0", "12.5", "no"],
        ["2", "60.0", "6.4", "yes"],
        ["3", "15.0", "–", "no"],
    ]
    section = page.split("<h2>3D classification</h2>")[1].split("<h2>")[0]
    assert "60 particles in the kept classes" in section
    assert section.count("data:image/png;base64,") == 1
    assert "(run_classes.png)" in section


def test_report_without_3d_classes_has_no_such_section(tmp_path: Path, run_cli: RunCli) -> None:
    results = tmp_path / "results"
    _class3d_folder(results)
    (results / "class3d" / "run_model.star").unlink()
    out = tmp_path / "report.html"
    assert run_cli(["report", "--results", results, "--out", out])[0] == 0
    assert "3D classification" not in out.read_text()
