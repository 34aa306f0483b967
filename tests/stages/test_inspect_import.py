"""``cryosnake inspect`` and ``cryosnake import`` on the tiny simulated dataset."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryosnake.io import open_movie, read_mrc, read_star, read_star_block, write_movie, write_mrc
from cryosnake.stages import import_movies, inspect_movie

PX, DOSE = 2.5, 3.0  # the tiny preset


def inspect_args(movie: Path, out: Path, *extra: object) -> list[str]:
    return [
        "inspect",
        "--movie",
        str(movie),
        "--out",
        str(out),
        "--pixel-size",
        str(PX),
        "--dose-per-frame",
        str(DOSE),
        *map(str, extra),
    ]


def assert_one_line_error(code: int, err: str, *names: object) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryosnake")
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0]


@pytest.fixture(scope="module")
def reports(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """inspect run (through main) on both tiny movies, with the gain."""
    out = tmp_path_factory.mktemp("inspect")
    paths = {}
    for movie in sorted((tiny_dataset / "movies").iterdir()):
        report = out / f"{movie.stem}.json"
        code = inspect_movie.main(
            inspect_args(movie, report, "--gain", tiny_dataset / "gain.mrc",
                         "--thumbnail", out / f"{movie.stem}.png")[1:]
        )  # fmt: skip
        assert code == 0
        paths[movie.stem] = report
    return paths


def test_inspect_report_matches_truth(
    tiny_dataset: Path, reports: dict[str, Path], replay_movie: Callable
) -> None:
    defects = read_star_block(tiny_dataset / "truth" / "defects.star", "defects")
    for i, (stem, path) in enumerate(sorted(reports.items())):
        report = json.loads(path.read_text())
        assert report["movie"].endswith(f"movies/{stem}.mrc")
        assert (report["n_frames"], report["width"], report["height"]) == (8, 256, 256)
        assert report["dtype"] == "uint16"
        assert report["header_pixel_size"] == pytest.approx(PX, abs=1e-5)
        assert report["dose_per_frame_given"] == DOSE
        # measured dose = gain-corrected counts per Å^2 = the simulator's expected counts
        _, _, expected = replay_movie(tiny_dataset, i, noise=False)
        truth_dose = np.array([f.mean() for f in expected]) / PX**2
        np.testing.assert_allclose(report["frame_dose"], truth_dose, rtol=3e-3)
        assert report["dose_per_frame_measured"] == pytest.approx(truth_dose.mean(), rel=3e-3)
        assert report["total_dose"] == pytest.approx(8 * truth_dose.mean(), rel=3e-3)
        # ice absorbs a few per cent of the beam: within the tolerance of the given dose
        assert 0.85 * DOSE < report["dose_per_frame_measured"] < 1.01 * DOSE
        assert report["hot_pixels"] == len(defects)
        png = path.with_suffix(".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000


def test_import_writes_relion_movies_star(
    reports: dict[str, Path], tmp_path: Path, run_cli: Callable
) -> None:
    out, summary = tmp_path / "movies.star", tmp_path / "movies_summary.tsv"
    code, stdout, err = run_cli(
        ["import", "--reports", *reports.values(), "--out", out, "--summary", summary,
         "--pixel-size", PX, "--voltage", 300, "--cs", 2.7, "--amplitude-contrast", 0.07]
    )  # fmt: skip
    assert code == 0, err
    assert "2 movies" in stdout
    blocks = read_star(out)
    assert list(blocks) == ["optics", "movies"]
    optics = blocks["optics"].iloc[0]
    assert optics.rlnOpticsGroup == 1
    assert optics.rlnMicrographOriginalPixelSize == pytest.approx(PX)
    assert optics.rlnVoltage == pytest.approx(300.0)
    assert optics.rlnSphericalAberration == pytest.approx(2.7)
    assert optics.rlnAmplitudeContrast == pytest.approx(0.07)
    movies = blocks["movies"]
    names = [json.loads(p.read_text())["movie"] for p in reports.values()]
    assert movies.rlnMicrographMovieName.tolist() == names
    assert movies.rlnOpticsGroup.tolist() == [1, 1]
    assert set(starfile.read(out)) == {"optics", "movies"}
    table = pd.read_csv(summary, sep="\t")
    assert table.movie.tolist() == names
    assert table.n_frames.tolist() == [8, 8]


def test_wrong_dose_per_frame_is_detected(
    tiny_dataset: Path, tmp_path: Path, run_cli: Callable
) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    gain = tiny_dataset / "gain.mrc"
    for wrong in ("1.0", "6.0"):
        args = inspect_args(movie, tmp_path / "r.json", "--gain", gain)
        args[args.index("--dose-per-frame") + 1] = wrong
        code, _, err = run_cli(args)
        assert code == 1
        assert_one_line_error(code, err, movie, "dose")
        assert not (tmp_path / "r.json").exists()
    # the check can be switched off
    args = inspect_args(movie, tmp_path / "r.json", "--gain", gain, "--dose-tolerance", "0")
    args[args.index("--dose-per-frame") + 1] = "1.0"
    code, _, err = run_cli(args)
    assert code == 0, err


def test_gain_orientation_options(tiny_dataset: Path, tmp_path: Path) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    gain, _ = read_mrc(tiny_dataset / "gain.mrc")
    reference = json.loads(
        _inspect(movie, tmp_path / "ref.json", "--gain", tiny_dataset / "gain.mrc").read_text()
    )
    rotated = write_mrc(tmp_path / "rotated.mrc", np.ascontiguousarray(np.rot90(gain, -1)), PX)
    flipped = write_mrc(tmp_path / "flipped.mrc", np.ascontiguousarray(gain[:, ::-1]), PX)
    both = write_mrc(
        tmp_path / "both.mrc", np.ascontiguousarray(np.rot90(gain[::-1, :], -1)), PX
    )  # rotate 1 then flip y restores it
    for path, extra in (
        (rotated, ["--gain-rotate", "1"]),
        (flipped, ["--gain-flip", "x"]),
        (both, ["--gain-rotate", "1", "--gain-flip", "y"]),
    ):
        report = json.loads(
            _inspect(movie, tmp_path / "r.json", "--gain", path, *extra).read_text()
        )
        assert report["frame_dose"] == reference["frame_dose"], extra
        assert report["hot_pixels"] == reference["hot_pixels"]


def _inspect(movie: Path, out: Path, *extra: object) -> Path:
    assert inspect_movie.main(inspect_args(movie, out, *extra)[1:]) == 0
    return out


def test_tiff_copy_gives_the_same_report(tiny_dataset: Path, tmp_path: Path) -> None:
    movie = tiny_dataset / "movies" / "movie_0002.mrc"
    with open_movie(movie) as m:
        tif = write_movie(
            tmp_path / "movie_0002.tif",
            (m.frame(i) for i in range(m.n_frames)),
            n_frames=m.n_frames,
            frame_shape=m.frame_shape,
            dtype=m.dtype,
            pixel_size=m.pixel_size,
        )
    gain = ("--gain", tiny_dataset / "gain.mrc")
    a = json.loads(_inspect(movie, tmp_path / "a.json", *gain).read_text())
    b = json.loads(_inspect(tif, tmp_path / "b.json", *gain).read_text())
    for key in ("n_frames", "width", "height", "dtype", "frame_dose", "hot_pixels"):
        assert a[key] == b[key]
    assert b["header_pixel_size"] == pytest.approx(PX)


def test_gain_problems(tiny_dataset: Path, tmp_path: Path, run_cli: Callable) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    gain, _ = read_mrc(tiny_dataset / "gain.mrc")
    small = write_mrc(tmp_path / "small_gain.mrc", gain[:128], PX)
    code, _, err = run_cli(inspect_args(movie, tmp_path / "r.json", "--gain", small))
    assert_one_line_error(code, err, small, "gain")
    negative = gain.copy()
    negative[5, 5] = -1.0
    neg = write_mrc(tmp_path / "negative.mrc", negative, PX)
    code, _, err = run_cli(inspect_args(movie, tmp_path / "r.json", "--gain", neg))
    assert_one_line_error(code, err, neg)
    stack = write_mrc(tmp_path / "stack.mrcs", np.stack([gain, gain]), PX)
    code, _, err = run_cli(inspect_args(movie, tmp_path / "r.json", "--gain", stack))
    assert_one_line_error(code, err, stack)
    missing = tmp_path / "missing_gain.mrc"
    code, _, err = run_cli(inspect_args(movie, tmp_path / "r.json", "--gain", missing))
    assert_one_line_error(code, err, missing)
    assert not (tmp_path / "r.json").exists()


def test_movie_problems(tiny_dataset: Path, tmp_path: Path, run_cli: Callable) -> None:
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(movie.read_bytes()[:-5000])
    code, _, err = run_cli(inspect_args(truncated, tmp_path / "r.json"))
    assert_one_line_error(code, err, truncated)

    with open_movie(movie) as m:
        frames = m.read(np.uint16)
    frames[3] = 0
    blank = write_movie(
        tmp_path / "blank.mrc",
        iter(frames),
        n_frames=8,
        frame_shape=(256, 256),
        dtype=np.uint16,
        pixel_size=PX,
    )
    code, _, err = run_cli(inspect_args(blank, tmp_path / "r.json"))
    assert_one_line_error(code, err, blank, "blank", "4")

    # the header says 2.5 Å/px
    args = inspect_args(movie, tmp_path / "r.json")
    args[args.index("--pixel-size") + 1] = "1.5"
    code, _, err = run_cli(args)
    assert_one_line_error(code, err, movie, "pixel size")
    code, _, err = run_cli([*args, "--ignore-header-pixel-size", "--dose-tolerance", "0"])
    assert code == 0, err


def test_import_problems(reports: dict[str, Path], tmp_path: Path, run_cli: Callable) -> None:
    common = ["--out", tmp_path / "m.star", "--pixel-size", PX, "--voltage", 300, "--cs", 2.7,
              "--amplitude-contrast", 0.07]  # fmt: skip
    first = next(iter(reports.values()))
    code, _, err = run_cli(["import", "--reports", first, first, *common])
    assert_one_line_error(code, err, "twice")

    report = json.loads(first.read_text())
    del report["n_frames"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(report))
    code, _, err = run_cli(["import", "--reports", partial, *common])
    assert_one_line_error(code, err, partial, "n_frames")

    odd = json.loads(first.read_text())
    odd.update(movie="movies/odd.mrc", width=512)
    odd_path = tmp_path / "odd.json"
    odd_path.write_text(json.dumps(odd))
    code, _, err = run_cli(["import", "--reports", *reports.values(), odd_path, *common])
    assert_one_line_error(code, err, "movies/odd.mrc", "512")

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    code, _, err = run_cli(["import", "--reports", broken, *common])
    assert_one_line_error(code, err, broken)
    assert not (tmp_path / "m.star").exists()


def test_reject_records_a_bad_movie_and_goes_on(
    tiny_dataset: Path, reports: dict[str, Path], tmp_path: Path, run_cli: Callable
) -> None:
    """--reject (as the workflow runs inspect): a truncated movie gives a report with the
    reason, a thumbnail saying so, exit 0; import leaves it out and lists it; a bad gain
    is still an error."""
    movie = tiny_dataset / "movies" / "movie_0001.mrc"
    truncated = tmp_path / "movie_0009.mrc"
    truncated.write_bytes(movie.read_bytes()[:-5000])
    out, png = tmp_path / "movie_0009.json", tmp_path / "movie_0009.png"
    args = inspect_args(truncated, out, "--reject", "--thumbnail", png)
    code, stdout, err = run_cli([*args, "--gain", tiny_dataset / "gain.mrc"])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert set(report) == {"movie", "rejected"} and report["movie"] == str(truncated)
    assert report["rejected"].startswith(str(truncated)) and "REJECTED" in stdout
    assert png.stat().st_size > 1000
    # the dose check rejects too; the gain's problems stop the run as before
    wrong_dose = inspect_args(movie, tmp_path / "dose.json", "--reject")
    wrong_dose[wrong_dose.index("--dose-per-frame") + 1] = "6.0"
    assert run_cli(wrong_dose)[0] == 0
    assert "dose" in json.loads((tmp_path / "dose.json").read_text())["rejected"]
    gain, _ = read_mrc(tiny_dataset / "gain.mrc")
    small = write_mrc(tmp_path / "small_gain.mrc", gain[:128], PX)
    code, _, err = run_cli(inspect_args(movie, tmp_path / "g.json", "--reject", "--gain", small))
    assert_one_line_error(code, err, small, "gain")

    common = ["--pixel-size", PX, "--voltage", 300, "--cs", 2.7, "--amplitude-contrast", 0.07]
    star, listed = tmp_path / "movies.star", tmp_path / "movies_rejected.tsv"
    summary = tmp_path / "movies_summary.tsv"
    code, stdout, err = run_cli(
        ["import", "--reports", *reports.values(), out, "--out", star, "--rejected", listed,
         "--summary", summary, *common]
    )  # fmt: skip
    assert code == 0, err
    assert "2 movies" in stdout and "1 rejected" in stdout
    names = read_star_block(star, "movies").rlnMicrographMovieName
    assert [Path(n).stem for n in names] == sorted(reports)
    table = pd.read_csv(listed, sep="\t")
    assert table.to_dict("records") == [{"movie": str(truncated), "reason": report["rejected"]}]
    assert [Path(m).stem for m in table.movie] == ["movie_0009"]
    assert sorted(Path(m).stem for m in pd.read_csv(summary, sep="\t").movie) == sorted(reports)
    # a folder of reports (a chunk's, as the workflow gives them) is every *.json in it
    folder = tmp_path / "chunk0001"
    folder.mkdir()
    for path in [*reports.values(), out]:
        shutil.copy(path, folder)
    (folder / "movie_0001.png").write_bytes(b"not a report")
    code, stdout, err = run_cli(["import", "--reports", folder, "--out", star, *common])
    assert code == 0 and "2 movies" in stdout and "1 rejected" in stdout, err
    # nothing rejected: the table has its header only
    code, _, err = run_cli(
        ["import", "--reports", *reports.values(), "--out", star, "--rejected", listed, *common]
    )
    assert code == 0 and len(pd.read_csv(listed, sep="\t")) == 0
    # every movie rejected: an error that gives the first reason
    code, _, err = run_cli(["import", "--reports", out, "--out", star, *common])
    assert_one_line_error(code, err, "every movie (1) was rejected", truncated)


def test_stage_modules_follow_the_convention() -> None:
    for module in (inspect_movie, import_movies):
        assert module.__doc__ and "Example::" in module.__doc__
        assert callable(module.add_args) and callable(module.main)


def test_report_folders_are_read_in_movie_name_order(tmp_path: Path) -> None:
    """Chunks of a live session hold movies in arrival order; movies.star does not."""
    report_files = import_movies.report_files
    first, second = tmp_path / "chunk0001", tmp_path / "chunk0002"
    for folder, names in ((first, ["m3.json", "m1.json"]), (second, ["m2.json"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("{}")
    assert report_files([str(first), str(second)]) == [
        first / "m1.json",
        second / "m2.json",
        first / "m3.json",
    ]
    lone = tmp_path / "z.json"
    lone.write_text("{}")
    assert report_files([str(lone), str(first / "m1.json")]) == [lone, first / "m1.json"]
