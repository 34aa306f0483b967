"""cryosnake pick: outputs, picks against the simulator's truth, bad input.

Fast tests use demo-like micrographs at 3 Å per pixel on 512 x 512 pixels (the demo's
field of view at half its sampling). The slow tests measure precision, recall and junk
rejection at the demo's own sampling (1024 x 1024 px, 1.5 Å per pixel) on micrographs
of three seeds, blob and template picking side by side, and once more on movies that
went through ``cryosnake motioncor``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cryosnake.io import read_star_block, write_mrc, write_star
from cryosnake.ops.pick import resample_images
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix
from cryosnake.simulate import (
    MovieTruth,
    SimulationParams,
    load_specimen,
    make_detector,
    make_params,
    matched_picks,
    simulate_dataset,
    simulate_movie,
)
from cryosnake.stages import pick as pick_stage

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]
DIAMETER = 150.0
LABELS = list(pick_stage.LABELS)
VIEWS = [(rot, tilt) for tilt in (45.0, 90.0, 135.0) for rot in (0.0, 90.0, 180.0, 270.0)]
VIEWS += [(0.0, 0.0), (0.0, 180.0)]


def junk_picked(picks: np.ndarray, junk: list[tuple[float, float, float]]) -> int:
    """Junk items (x, y, radius px) with a pick within their radius."""
    return sum(
        bool(len(picks)) and bool(np.any(np.hypot(*(picks - [x, y]).T) < radius))
        for x, y, radius in junk
    )


@functools.cache
def _specimen(pixel_size: float) -> tuple[object, np.ndarray]:
    return load_specimen(make_params("demo", pixel_size=pixel_size))


def dataset_micrograph(params: SimulationParams, index: int) -> tuple[MovieTruth, np.ndarray]:
    """Movie ``index`` of ``simulate_dataset(params)`` (same seeding), as the expected dose
    sum with Poisson counting noise."""
    seeds = np.random.SeedSequence(params.seed).spawn(params.n_movies + 1)
    specimen, _ = _specimen(params.pixel_size)
    detector = make_detector(params, np.random.default_rng(seeds[0]))
    truth, _ = simulate_movie(
        params, index, specimen, detector, np.random.default_rng(seeds[index + 1]), noise=False
    )
    assert truth.noiseless is not None
    rng = np.random.default_rng([params.seed, index])
    return truth, rng.poisson(np.maximum(truth.noiseless, 0)).astype(np.float32)


def write_ctf_star(
    path: Path, params: SimulationParams, truth: MovieTruth, micrograph: str
) -> Path:
    """The CTF STAR file as ``cryosnake ctf`` writes it, with the true values."""
    row = {
        "rlnMicrographName": micrograph,
        "rlnDefocusU": truth.defocus_u,
        "rlnDefocusV": truth.defocus_v,
        "rlnDefocusAngle": truth.defocus_angle,
        "rlnPhaseShift": 0.0,
        "rlnCtfFigureOfMerit": 0.3,
        "rlnCtfMaxResolution": 6.0,
        "rlnVoltage": params.voltage,
        "rlnSphericalAberration": params.cs,
        "rlnAmplitudeContrast": params.amplitude_contrast,
        "rlnMicrographPixelSize": params.pixel_size,
    }
    return write_star(path, {"micrograph": pd.DataFrame([row])})


def write_templates(path: Path, pixel_size: float, views: list[tuple[float, float]]) -> Path:
    """Projections of the true volume (rot, tilt, psi = 0), low-passed at ~4.5 Å."""
    _, volume = _specimen(pixel_size)
    images = [project_volume(volume, euler_to_matrix(rot, tilt, 0.0)) for rot, tilt in views]
    stack = np.array([ndimage.gaussian_filter(im, 4.5 / pixel_size) for im in images])
    return write_mrc(path, stack.astype(np.float32), pixel_size, kind="stack")


class Case:
    """One simulated micrograph on disk with its CTF STAR file and truth."""

    def __init__(self, folder: Path, params: SimulationParams, index: int) -> None:
        self.params = params
        self.truth, image = dataset_micrograph(params, index)
        folder.mkdir(parents=True, exist_ok=True)
        stem = params.movie_stem(index)
        self.micrograph = write_mrc(folder / f"{stem}.mrc", image, params.pixel_size)
        self.ctf = write_ctf_star(folder / f"{stem}_ctf.star", params, self.truth, stem)
        px = params.pixel_size
        self.junk = [(j["x"], j["y"], 0.5 * j["diameter"] / px) for j in self.truth.junk]

    def args(self, out: Path) -> list[object]:
        return [
            "pick", "--micrograph", self.micrograph, "--ctf", self.ctf, "--out", out,
            "--pixel-size", self.params.pixel_size, "--diameter", DIAMETER,
        ]  # fmt: skip

    def score(self, star: Path) -> tuple[int, int, int, int]:
        """(matched, picks, particles, junk items picked) of a pick STAR file."""
        table = read_star_block(star, "particles", required=tuple(LABELS))
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
        m = matched_picks(xy, self.truth.coordinates, 0.2 * DIAMETER / self.params.pixel_size)
        return m, len(xy), len(self.truth.coordinates), junk_picked(xy, self.junk)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    params = make_params("demo", n_movies=2, seed=7, width=512, height=512, pixel_size=3.0)
    return Case(tmp_path_factory.mktemp("pick"), params, 1)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_templates(tmp_path_factory.mktemp("templates") / "proj.mrcs", 3.0, VIEWS)


def test_help_shows_an_example(run_cli: RunCli) -> None:
    code, out, _ = run_cli(["pick", "--help"])
    assert code == 0
    assert "Example::" in out and "cryosnake pick --micrograph" in out
    assert pick_stage.__doc__ is not None and "Example::" in pick_stage.__doc__


def test_blob_picking_writes_relion_autopick_star(
    case: Case, tmp_path: Path, run_cli: RunCli
) -> None:
    out, plot = tmp_path / "picks.star", tmp_path / "picks.png"
    code, stdout, err = run_cli([*case.args(out), "--plot", plot, "--device", "cpu"])
    assert code == 0, err
    assert stdout.startswith("pick: ") and "blob picking on cpu" in stdout
    table = read_star_block(out, "particles", required=tuple(LABELS))
    assert list(table.columns) == LABELS
    assert (table.rlnClassNumber == 0).all() and (table.rlnAnglePsi == -999).all()
    m, n, total, _ = case.score(out)
    assert m >= 0.9 * n and m >= 0.9 * total, (m, n, total)
    assert table.rlnAutopickFigureOfMerit.min() > 0
    assert plot.stat().st_size > 10_000


def test_template_picking_from_a_stack(
    case: Case, templates: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    out = tmp_path / "picks.star"
    code, stdout, err = run_cli(
        [*case.args(out), "--templates", templates, "--angle-step", "15", "--plot",
         tmp_path / "p.png"]
    )  # fmt: skip
    assert code == 0, err
    assert "template picking" in stdout
    table = read_star_block(out, "particles", required=tuple(LABELS))
    assert table.rlnClassNumber.between(1, len(VIEWS)).all()
    assert table.rlnAnglePsi.between(0, 360).all()
    assert (table.rlnAutopickFigureOfMerit > 0).all()
    m, n, total, _ = case.score(out)
    assert m >= 0.9 * n and m >= 0.9 * total, (m, n, total)


def test_templates_written_at_another_pixel_size(
    case: Case, templates: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    """Templates at 1.5 Å/px for a 3 Å/px micrograph: rescaled from the header, or from
    --template-pixel-size when the header has none."""
    with mrcfile.open(templates) as mrc:  # 3 Å/px -> 1.5 Å/px by Fourier padding
        fine_stack = np.asarray(resample_images(np.asarray(mrc.data), 2.0))
    fine = write_mrc(tmp_path / "fine.mrcs", fine_stack, 1.5, kind="stack")
    out = tmp_path / "picks.star"
    code, _, err = run_cli([*case.args(out), "--templates", fine, "--angle-step", "15"])
    assert code == 0, err
    m, n, total, _ = case.score(out)
    assert m >= 0.9 * total and m >= 0.9 * n, (m, n, total)
    with mrcfile.open(fine, mode="r+") as mrc:
        mrc.voxel_size = 0.0
    code, _, err = run_cli([*case.args(out), "--templates", fine])
    assert code == 1 and "fine.mrcs" in err and "--template-pixel-size" in err
    code, _, err = run_cli(
        [*case.args(out), "--templates", fine, "--template-pixel-size", "1.5", "--angle-step", "30"]
    )
    assert code == 0, err


def test_empty_micrograph_gives_an_empty_table(tmp_path: Path, run_cli: RunCli) -> None:
    noise = np.random.default_rng(2).poisson(50.0, (512, 512)).astype(np.float32)
    mic = write_mrc(tmp_path / "empty.mrc", noise, 3.0)
    out = tmp_path / "empty.star"
    code, stdout, err = run_cli(
        ["pick", "--micrograph", mic, "--out", out, "--pixel-size", "3", "--diameter", "150",
         "--plot", tmp_path / "empty.png"]
    )  # fmt: skip
    assert code == 0, err
    assert ": 0 particles" in stdout
    table = read_star_block(out, "particles", required=tuple(LABELS))
    assert len(table) == 0 and list(table.columns) == LABELS
    assert "_rlnCoordinateX" in out.read_text()
    assert (tmp_path / "empty.png").stat().st_size > 5_000


def test_user_threshold_overrides_the_automatic_one(
    case: Case, tmp_path: Path, run_cli: RunCli
) -> None:
    auto, strict = tmp_path / "auto.star", tmp_path / "strict.star"
    assert run_cli(case.args(auto))[0] == 0
    scores = read_star_block(auto, "particles").rlnAutopickFigureOfMerit.to_numpy()
    cut = float(np.median(scores))
    code, stdout, err = run_cli([*case.args(strict), "--threshold", str(cut)])
    assert code == 0, err
    assert f"threshold {cut:.3f}" in stdout
    kept = read_star_block(strict, "particles").rlnAutopickFigureOfMerit.to_numpy()
    assert 0 < len(kept) <= len(scores) // 2 + 1 and (kept >= cut).all()  # STAR: 4 decimals


def test_ctf_from_a_relion_micrographs_table(case: Case, tmp_path: Path, run_cli: RunCli) -> None:
    """micrographs_ctf.star (optics + micrographs, several rows): the row of this stem."""
    row = read_star_block(case.ctf, "micrograph").iloc[0].to_dict()
    optics = {
        k: row.pop(k) for k in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
    }
    other = {**row, "rlnMicrographName": "mc/other.mrc", "rlnDefocusU": 30000.0}
    row["rlnMicrographName"] = f"mc/{case.micrograph.stem}.mrc"
    star = write_star(
        tmp_path / "micrographs_ctf.star",
        {"optics": pd.DataFrame([optics]), "micrographs": pd.DataFrame([other, row])},
    )
    out = tmp_path / "picks.star"
    args = case.args(out)
    args[args.index("--ctf") + 1] = star
    code, _, err = run_cli(args)
    assert code == 0, err
    m, n, total, _ = case.score(out)
    assert m >= 0.9 * n and m >= 0.9 * total


def test_bad_input_is_one_line_naming_the_file(case: Case, tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "out.star"
    garbage = tmp_path / "garbage.star"
    garbage.write_bytes(b"\x00\x01 not a star file \xff")
    no_defocus = write_star(tmp_path / "nodefocus.star", {"micrograph": pd.DataFrame([{"a": 1}])})
    other_px = tmp_path / "px.star"
    table = read_star_block(case.ctf, "micrograph").assign(rlnMicrographPixelSize=1.0)
    write_star(other_px, {"micrograph": table})
    row = read_star_block(case.ctf, "micrograph").iloc[0].to_dict()
    optics_only = write_star(tmp_path / "optics.star", {"optics": pd.DataFrame([row])})
    others = [{**row, "rlnMicrographName": f"mc/other_{k}.mrc"} for k in (1, 2)]
    wrong = write_star(tmp_path / "wrong.star", {"micrographs": pd.DataFrame(others)})
    volume = write_mrc(tmp_path / "volume.mrc", np.zeros((64, 64, 64), np.float32), 3.0)
    small = write_mrc(tmp_path / "small.mrcs", np.ones((2, 30, 30), np.float32), 3.0, kind="stack")
    oblong = write_mrc(
        tmp_path / "oblong.mrcs", np.ones((2, 64, 60), np.float32), 3.0, kind="stack"
    )
    nan = tmp_path / "nan.mrc"
    image = np.ones((512, 512), np.float32)
    image[3, 3] = np.nan
    with pytest.warns(RuntimeWarning):
        write_mrc(nan, image, 3.0)
    base = case.args(out)
    mic = base.index("--micrograph") + 1
    ctf = base.index("--ctf") + 1
    px = base.index("--pixel-size") + 1

    def replace(position: int, value: object) -> list[object]:
        args = list(base)
        args[position] = value
        return args

    cases = [
        (replace(mic, tmp_path / "missing.mrc"), "missing.mrc: no such file"),
        (replace(mic, nan), "nan.mrc: holds NaN"),
        (replace(px, "2.0"), "header pixel size 3.0000"),
        (replace(ctf, garbage), "garbage.star"),
        (replace(ctf, no_defocus), "nodefocus.star: lacks label(s) rlnDefocusU"),
        (replace(ctf, tmp_path / "nothere.star"), "nothere.star: no such file"),
        (replace(ctf, other_px), "px.star: rlnMicrographPixelSize 1.0000"),
        (replace(ctf, optics_only), "optics.star: no data_micrograph block"),
        (replace(ctf, wrong), f"wrong.star: no single row for micrograph {case.micrograph.stem}"),
        ([*base, "--templates", volume], "volume.mrc: a 3D volume"),
        ([*base, "--templates", small], "small.mrcs: templates span 90 Å"),
        ([*base, "--templates", oblong], "oblong.mrcs: expected a stack of square"),
        ([*base, "--templates", tmp_path / "none.mrcs"], "none.mrcs: no such file"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(args)
        assert code == 1, (args, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, err
        assert not out.exists()
    code, _, err = run_cli([*base, "--diameter", "0"])
    assert code == 2 and "--diameter" in err


# --------------------------------------------------------------------------------------
# slow: the acceptance measurement at the demo's sampling


@pytest.mark.slow
def test_demo_micrographs_blob_and_template_against_truth(tmp_path: Path, run_cli: RunCli) -> None:
    """Twelve demo micrographs (three seeds): precision and recall >= 0.9 at 0.2 x
    diameter, >= 80 % of the junk (aggregates and ice) not picked, by either picker;
    template picking as good as blob picking (F1 within 0.02, the sampling noise of
    ~500 particles)."""
    templates = write_templates(tmp_path / "proj.mrcs", 1.5, VIEWS)
    totals = {"blob": np.zeros(4), "template": np.zeros(4)}
    junk_items = 0
    for seed in (101, 102, 103):
        params = make_params("demo", n_movies=4, seed=seed)
        for index in range(4):
            case = Case(tmp_path / f"s{seed}", params, index)
            junk_items += len(case.junk)
            for kind, extra in (("blob", []), ("template", ["--templates", templates])):
                out = tmp_path / f"{kind}_{seed}_{index}.star"
                code, _, err = run_cli([*case.args(out), *extra])
                assert code == 0, err
                totals[kind] += case.score(out)
    f1 = {}
    for kind, (m, n, total, junk) in totals.items():
        precision, recall = m / n, m / total
        f1[kind] = 2 * precision * recall / (precision + recall)
        assert precision >= 0.9 and recall >= 0.9, (kind, precision, recall)
        assert junk <= 0.2 * junk_items, (kind, junk, junk_items)
    assert junk_items >= 20
    assert f1["template"] >= f1["blob"] - 0.02, f1


@pytest.mark.slow
def test_picks_on_motion_corrected_movies(tmp_path: Path, run_cli: RunCli) -> None:
    """simulate -> motioncor -> pick (with the true CTF): the whole path a user runs."""
    data = tmp_path / "data"
    simulate_dataset(make_params("demo", n_movies=2, seed=17), data, log=lambda _: None)
    particles = read_star_block(data / "truth" / "particles.star", "particles")
    found = picked = total = 0
    for movie in sorted((data / "movies").glob("*.mrc")):
        code, _, err = run_cli(
            ["motioncor", "--movie", movie, "--out-dir", tmp_path / "mc", "--pixel-size", "1.5",
             "--dose-per-frame", "1.0", "--gain", data / "gain.mrc", "--no-plot"]
        )  # fmt: skip
        assert code == 0, err
        out = tmp_path / f"{movie.stem}.star"
        code, _, err = run_cli(
            ["pick", "--micrograph", tmp_path / "mc" / f"{movie.stem}.mrc", "--ctf",
             data / "truth" / f"{movie.stem}_ctf.star", "--out", out, "--pixel-size", "1.5",
             "--diameter", DIAMETER]
        )  # fmt: skip
        assert code == 0, err
        xy = read_star_block(out, "particles")[["rlnCoordinateX", "rlnCoordinateY"]]
        truth = particles[particles.rlnMicrographName.str.contains(movie.stem)]
        t = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
        found += matched_picks(xy.to_numpy(dtype=float), t, 0.2 * DIAMETER / 1.5)
        picked, total = picked + len(xy), total + len(t)
    assert found >= 0.9 * picked and found >= 0.9 * total, (found, picked, total)
