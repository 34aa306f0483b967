"""cryosnake ctf and cryosnake curate: outputs, thresholds, bad input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryosnake.io import read_star, read_star_block, write_mrc, write_star
from cryosnake.simulate import load_specimen, make_detector, make_params, simulate_movie

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]
ACQ = ["--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "0.07"]


@pytest.fixture(scope="module")
def micrograph(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 1024 x 1024 micrograph at 1.5 Å/px with counting noise, and its truth."""
    params = make_params("demo", n_movies=1, seed=21)
    specimen, _ = load_specimen(params)
    detector = make_detector(params, np.random.default_rng(0))
    truth, _ = simulate_movie(params, 0, specimen, detector, np.random.default_rng(3), noise=False)
    image = np.random.default_rng(4).poisson(np.maximum(truth.noiseless, 0)).astype(np.float32)
    path = tmp_path_factory.mktemp("ctf") / "mic_0001.mrc"
    write_mrc(path, image, 1.5)
    return path, truth


def test_ctf_stage_writes_one_relion_row(
    micrograph: tuple[Path, object], tmp_path: Path, run_cli: RunCli
) -> None:
    path, truth = micrograph
    out, plot = tmp_path / "mic_0001.star", tmp_path / "mic_0001.png"
    code, stdout, err = run_cli(
        ["ctf", "--micrograph", path, "--out", out, "--pixel-size", "1.5", *ACQ, "--plot", plot]
    )
    assert code == 0, err
    assert stdout.startswith("ctf: ")
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["micrograph"]
    row = blocks["micrograph"].iloc[0]
    for label in (
        "rlnCtfFigureOfMerit",
        "rlnCtfMaxResolution",
        "rlnPhaseShift",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnMicrographPixelSize",
    ):
        assert label in row  # fmt: skip
    mean_true = 0.5 * (truth.defocus_u + truth.defocus_v)  # type: ignore[attr-defined]
    mean_fit = 0.5 * (row.rlnDefocusU + row.rlnDefocusV)
    assert abs(mean_fit - mean_true) <= 0.01 * mean_true
    assert row.rlnDefocusU >= row.rlnDefocusV
    assert plot.stat().st_size > 10_000


def test_ctf_bad_input(micrograph: tuple[Path, object], tmp_path: Path, run_cli: RunCli) -> None:
    path, _ = micrograph
    stack = tmp_path / "stack.mrcs"
    write_mrc(stack, np.zeros((3, 256, 256), np.float32), 1.5, kind="stack")
    nan = tmp_path / "nan.mrc"
    image = np.ones((256, 256), np.float32)
    image[5, 5] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's header statistics
        write_mrc(nan, image, 1.5)
    out = tmp_path / "out.star"
    base = ["ctf", "--out", out, *ACQ]
    cases = [
        ([*base, "--micrograph", stack, "--pixel-size", "1.5"], "stack.mrcs: expected one 2D"),
        ([*base, "--micrograph", nan, "--pixel-size", "1.5"], "nan.mrc: holds NaN"),
        ([*base, "--micrograph", path, "--pixel-size", "2.0"], "header pixel size 1.5000"),
        ([*base, "--micrograph", path, "--pixel-size", "1.5", "--min-res", "4"], "--min-res"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(args)
        assert code != 0
        assert len(err.strip().splitlines()) == 1 and expected in err, err
        assert not out.exists()


def _fake(
    folder: Path, stem: str, fit_res: float, fom: float, drift_px: float, chunk: str = ""
) -> None:
    write_star(
        folder / "ctf" / chunk / f"{stem}.star",
        {
            "micrograph": pd.DataFrame(
                [
                    {
                        "rlnMicrographName": f"mc/{stem}_noDW.mrc",
                        "rlnDefocusU": 15000.0,
                        "rlnDefocusV": 14000.0,
                        "rlnDefocusAngle": 30.0,
                        "rlnPhaseShift": 0.0,
                        "rlnCtfFigureOfMerit": fom,
                        "rlnCtfMaxResolution": fit_res,
                        "rlnVoltage": 300.0,
                        "rlnSphericalAberration": 2.7,
                        "rlnAmplitudeContrast": 0.07,
                        "rlnMicrographPixelSize": 1.5,
                    }
                ]
            )
        },
    )
    steps = np.linspace(0, drift_px, 10)
    write_star(
        folder / "mc" / chunk / f"{stem}.star",
        {
            "general": pd.DataFrame([{"rlnImageSizeZ": 10}]),
            "global_shift": pd.DataFrame(
                {
                    "rlnMicrographFrameNumber": np.arange(1, 11),
                    "rlnMicrographShiftX": steps,
                    "rlnMicrographShiftY": np.zeros(10),
                }
            ),
        },
    )


def test_curate_selects_and_gives_reasons(tmp_path: Path, run_cli: RunCli) -> None:
    _fake(tmp_path, "good", 6.0, 0.4, 10.0)
    _fake(tmp_path, "blurred", 14.0, 0.4, 10.0)
    _fake(tmp_path, "noise", 25.0, 0.03, 10.0)
    _fake(tmp_path, "drifty", 6.0, 0.4, 300.0)
    stems = ["good", "blurred", "noise", "drifty"]
    code, stdout, err = run_cli(
        ["curate", "--ctf", *(tmp_path / "ctf" / f"{s}.star" for s in stems),
         "--motion", *(tmp_path / "mc" / f"{s}.star" for s in stems),
         "--out-dir", tmp_path, "--pixel-size", "1.5", *ACQ, "--max-resolution", "10",
         "--min-figure-of-merit", "0.1", "--max-total-motion", "200"]
    )  # fmt: skip
    assert code == 0, err
    assert "1 of 4 micrographs selected" in stdout
    every = read_star(tmp_path / "micrographs_ctf.star")
    assert set(every) == {"optics", "micrographs"}
    assert len(every["micrographs"]) == 4
    total = every["micrographs"].set_index("rlnMicrographMetadata").rlnAccumMotionTotal
    assert total[str(tmp_path / "mc" / "drifty.star")] == pytest.approx(300 * 1.5)
    selected = read_star_block(tmp_path / "micrographs_selected.star", "micrographs")
    assert selected.rlnMicrographName.tolist() == [str(tmp_path / "mc" / "good.mrc")]
    rejected = pd.read_csv(tmp_path / "rejected.tsv", sep="\t").set_index("micrograph")
    reasons = {Path(k).stem: v for k, v in rejected.reasons.items()}
    assert reasons["blurred"] == "CTF fit to 14.0 Å > 10.0 Å"
    assert "figure of merit 0.030 < 0.1" in reasons["noise"] and "25.0 Å" in reasons["noise"]
    assert reasons["drifty"] == "total motion 450.0 Å > 200.0 Å"
    assert set(rejected.stage) == {"curate"}


def test_curate_lists_the_movies_inspect_rejected(tmp_path: Path, run_cli: RunCli) -> None:
    _fake(tmp_path, "good", 6.0, 0.4, 10.0)
    movies = tmp_path / "movies_rejected.tsv"
    movies.write_text('movie\treason\nmovies/bad.mrc\tmovies/bad.mrc: truncated ("x")\n')
    common = ["--ctf", tmp_path / "ctf" / "good.star", "--motion", tmp_path / "mc" / "good.star",
              "--out-dir", tmp_path, "--pixel-size", "1.5", *ACQ]  # fmt: skip
    code, _, err = run_cli(["curate", *common, "--rejected-movies", movies])
    assert code == 0, err
    rejected = pd.read_csv(tmp_path / "rejected.tsv", sep="\t")
    assert rejected.to_dict("records") == [
        {"micrograph": "movies/bad.mrc", "reasons": 'movies/bad.mrc: truncated ("x")',
         "stage": "inspect"}
    ]  # fmt: skip
    (tmp_path / "wrong.tsv").write_text("name\tcause\nx\ty\n")
    code, _, err = run_cli(["curate", *common, "--rejected-movies", tmp_path / "wrong.tsv"])
    assert code != 0 and "wrong.tsv: needs the columns movie and reason" in err


def test_curate_needs_a_motion_file_per_micrograph(tmp_path: Path, run_cli: RunCli) -> None:
    _fake(tmp_path, "a", 6.0, 0.4, 1.0)
    _fake(tmp_path, "b", 6.0, 0.4, 1.0)
    code, _, err = run_cli(
        ["curate", "--ctf", tmp_path / "ctf" / "a.star", tmp_path / "ctf" / "b.star",
         "--motion", tmp_path / "mc" / "a.star", "--out-dir", tmp_path, "--pixel-size", "1.5",
         *ACQ]
    )  # fmt: skip
    assert code != 0 and "b.star: no motion STAR named b.star" in err


def test_curate_takes_folders_of_per_movie_files(
    tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk folders (with the other outputs of the per-movie stages beside the STARs),
    mixed with files, give what the files give; motion sums stay per movie."""
    monkeypatch.chdir(tmp_path)
    drift = {"m1": 9.0, "m2": 18.0, "m3": 90.0, "m4": 27.0, "m5": 36.0}
    for i, (stem, px) in enumerate(drift.items()):
        _fake(tmp_path, stem, 6.0, 0.4, px, chunk=f"chunk{i // 2 + 1:04d}")
    for chunk in ("chunk0001", "chunk0002"):
        (tmp_path / "mc" / chunk / "m1.mrc").write_bytes(b"")
        (tmp_path / "mc" / chunk / "m1_motion.png").write_bytes(b"")
        (tmp_path / "mc" / chunk / f".m9.star.tmp{len(chunk)}.star").write_text("partial")
    common = ["--pixel-size", "1.5", *ACQ, "--max-total-motion", "100",
              "--names-relative-to", str(tmp_path)]  # fmt: skip
    files = sorted((tmp_path / "ctf").glob("chunk*/[!.]*.star"))
    motions = sorted((tmp_path / "mc").glob("chunk*/[!.]*.star"))
    code, _, err = run_cli(
        ["curate", "--ctf", *files, "--motion", *motions, "--out-dir", "by_file", *common]
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["curate", "--ctf", "ctf/chunk0001", files[2], "ctf/chunk0002/m4.star", "ctf/chunk0003",
         "--motion", "mc/chunk0001", "mc/chunk0002", "mc/chunk0003/m5.star",
         "--out-dir", "by_folder", *common]
    )  # fmt: skip
    assert code == 0, err
    assert "4 of 5 micrographs selected" in out
    by_file = read_star_block("by_file/micrographs_ctf.star", "micrographs")
    by_folder = read_star_block("by_folder/micrographs_ctf.star", "micrographs")
    pd.testing.assert_frame_equal(by_file, by_folder)
    assert by_folder.rlnMicrographName.tolist() == [
        f"mc/chunk{i // 2 + 1:04d}/{stem}.mrc" for i, stem in enumerate(drift)
    ]
    assert by_folder.rlnMicrographMetadata.tolist() == [
        f"mc/chunk{i // 2 + 1:04d}/{stem}.star" for i, stem in enumerate(drift)
    ]
    # 10 frames, linear drift: 9 equal steps, the first 3 of them "early" (RELION)
    px = np.array(list(drift.values())) * 1.5
    np.testing.assert_allclose(by_folder.rlnAccumMotionTotal, px, rtol=1e-6)
    np.testing.assert_allclose(by_folder.rlnAccumMotionEarly, px * 3 / 9, rtol=1e-6)
    np.testing.assert_allclose(by_folder.rlnAccumMotionLate, px * 6 / 9, rtol=1e-6)
    rejected = pd.read_csv("by_folder/rejected.tsv", sep="\t")
    assert rejected.micrograph.tolist() == ["mc/chunk0002/m3.mrc"]
    assert rejected.reasons.tolist() == ["total motion 135.0 Å > 100.0 Å"]

    empty = tmp_path / "nothing"
    empty.mkdir()
    for option, value, text in [
        ("--ctf", empty, "--ctf: folder nothing holds no .star file"),
        ("--motion", "mc/chunk0009", "--motion: mc/chunk0009: no such file or folder"),
    ]:
        args = ["curate", "--ctf", "ctf/chunk0001", "--motion", "mc/chunk0001",
                "--out-dir", "x", *common]  # fmt: skip
        args[args.index(option) + 1] = str(value)
        code, _, err = run_cli(args)
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert text in err.replace(str(tmp_path) + "/", ""), err
