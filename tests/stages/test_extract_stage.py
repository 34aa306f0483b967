"""cryosnake extract and cryosnake merge-particles against the simulator's ground truth.

The micrographs are the simulator's noiseless dose sums (particles only: no junk,
solvent, ice variation or local motion), the coordinates and CTF those of
``truth/``. The centre of every extracted particle is measured by cross-correlation
with the truth volume projected at the particle's true angles and modulated by its true
CTF, centred on the box centre; it must lie within 1 px of the box centre.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import starfile

from cryosnake.io import optics_table, read_mrc, write_star
from cryosnake.ops import (
    ctf_2d,
    euler_to_matrix,
    fourier_crop,
    project_volume,
    register_translation,
)
from cryosnake.simulate import make_params, simulate_dataset

RunCli = Callable[[Sequence[str]], tuple[int, str, str]]
CLEAN = {"junk": False, "solvent_noise": 0.0, "ice_thickness_variation": 0.0, "local_motion": 0.0}
PX = 2.5
DIAMETER = 150.0  # Å, as a user would give it (the phantom is ~154 Å across)
BOX = 108  # the automatic box for 150 Å at 2.5 Å/px: fast_size(ceil(1.8 * 60))
EDGE = (10.0, 200.0)  # an extra coordinate whose box crosses the edge


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clean 512 x 512 micrographs at 2.5 Å/px with 20 particles each."""
    out = tmp_path_factory.mktemp("extract") / "data"
    params = make_params(
        "tiny", seed=7, width=512, height=512, particles_per_micrograph=20, **CLEAN
    )
    simulate_dataset(params, out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def truth(dataset: Path) -> pd.DataFrame:
    return starfile.read(dataset / "truth" / "particles.star")["particles"]


def stem_of(name: str) -> str:
    return Path(name).stem


def write_coords(dataset: Path, truth: pd.DataFrame, stem: str, folder: Path) -> Path:
    """A picker-like coordinate STAR of one micrograph: the true centres plus EDGE."""
    rows = truth[truth.rlnMicrographName.map(stem_of) == stem]
    table = pd.DataFrame(
        {
            "rlnCoordinateX": [*rows.rlnCoordinateX, EDGE[0]],
            "rlnCoordinateY": [*rows.rlnCoordinateY, EDGE[1]],
            "rlnAutopickFigureOfMerit": np.arange(len(rows) + 1, dtype=float),
            "rlnMicrographName": f"{stem}.mrc",
        }
    )
    path = folder / f"{stem}_coords.star"
    write_star(path, {"coordinates": table})
    return path


def extract_args(dataset: Path, coords: Path, stem: str, out_dir: str) -> list[str]:
    return [
        "extract",
        "--micrograph",
        str(dataset / "truth" / f"{stem}_noiseless.mrc"),
        "--coords",
        str(coords),
        "--ctf",
        str(dataset / "truth" / f"{stem}_ctf.star"),
        "--out-dir",
        out_dir,
        "--diameter",
        str(DIAMETER),
    ]


def inside(x: np.ndarray, y: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """RELION's rule: the box about the rounded coordinate lies inside the micrograph."""
    x0 = np.floor(x + 0.5) - box // 2
    y0 = np.floor(y + 0.5) - box // 2
    return (x0 >= 0) & (y0 >= 0) & (x0 + box <= shape[1]) & (y0 + box <= shape[0])


def white_reference(dataset: Path, row: pd.Series, box: int) -> np.ndarray:
    """The particle as extraction should show it: CTF-modulated projection, inverted,
    centred on (box // 2, box // 2)."""
    volume, _ = read_mrc(dataset / "truth" / "volume.mrc")
    n = volume.shape[0]
    proj = project_volume(
        volume, euler_to_matrix(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
    )
    pad = (box - n) // 2
    proj = np.pad(proj, ((pad, box - n - pad), (pad, box - n - pad)))
    ctf = ctf_2d(
        (box, box),
        PX,
        row.rlnDefocusU,
        row.rlnDefocusV,
        row.rlnDefocusAngle,
        phase_shift=row.rlnPhaseShift,
        bfactor=30.0,
    )
    image = scipy.fft.irfft2(scipy.fft.rfft2(proj) * ctf, s=proj.shape)
    return -image.astype(np.float32)  # micrographs show 1 + 2 psi; extraction inverts


@pytest.fixture(scope="module")
def references(dataset: Path, truth: pd.DataFrame) -> dict[int, np.ndarray]:
    """White references of the truth particles, by row of truth/particles.star."""
    return {i: white_reference(dataset, row, BOX) for i, row in truth.iterrows()}


def centre_errors(
    stack: np.ndarray, rows: list[int], references: dict[int, np.ndarray], box: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (px of the stack) of each particle from the box centre, and the normalised
    correlation with its reference at zero shift (positive: particles are white)."""
    errors, correlations = [], []
    for image, index in zip(stack, rows, strict=True):
        ref = references[index]
        if ref.shape[0] != box:
            ref = fourier_crop(ref, (box, box))
        dy, dx = register_translation(ref, image, upsample=20, max_shift=box / 8)
        errors.append(float(np.hypot(dy, dx)))
        a, b = image - image.mean(), ref - ref.mean()
        correlations.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())))
    return np.array(errors), np.array(correlations)


def truth_rows(table: pd.DataFrame, truth: pd.DataFrame) -> list[int]:
    """Row of truth/particles.star of each extracted particle (by coordinates)."""
    out = []
    for x, y in zip(table.rlnCoordinateX, table.rlnCoordinateY, strict=True):
        d = np.hypot(truth.rlnCoordinateX - x, truth.rlnCoordinateY - y)
        assert d.min() < 1e-3
        out.append(int(d.idxmin()))
    return out


def background(stack: np.ndarray, diameter_px: float) -> np.ndarray:
    b = stack.shape[-1]
    g = np.arange(b) - b // 2
    return stack[:, (g[:, None] ** 2 + g[None, :] ** 2) > (diameter_px / 2) ** 2]


def test_extract_centres_within_1px_of_truth(
    dataset: Path,
    truth: pd.DataFrame,
    references: dict[int, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: RunCli,
) -> None:
    monkeypatch.chdir(tmp_path)
    all_errors = []
    for stem in ("movie_0001", "movie_0002"):
        coords = write_coords(dataset, truth, stem, tmp_path)
        code, out, err = run_cli(extract_args(dataset, coords, stem, "particles"))
        assert code == 0, err
        mine = truth[truth.rlnMicrographName.map(stem_of) == stem]
        keep = inside(
            mine.rlnCoordinateX.to_numpy(), mine.rlnCoordinateY.to_numpy(), BOX, (512, 512)
        )
        n_kept, n_skipped = int(keep.sum()), int((~keep).sum()) + 1  # + EDGE
        assert n_kept >= 12
        assert f"{n_kept} particles of {BOX} px" in out and f"{n_skipped} skipped" in out

        blocks = starfile.read(tmp_path / "particles" / f"{stem}_noiseless.star", always_dict=True)
        assert list(blocks) == ["optics", "particles"]
        optics, table = blocks["optics"].iloc[0], blocks["particles"]
        assert optics.rlnImagePixelSize == pytest.approx(PX)
        assert optics.rlnImageSize == BOX and optics.rlnImageDimensionality == 2
        assert (optics.rlnVoltage, optics.rlnSphericalAberration) == (300.0, 2.7)
        assert optics.rlnAmplitudeContrast == pytest.approx(0.07)
        assert len(table) == n_kept
        stack_name = f"particles/{stem}_noiseless.mrcs"
        assert list(table.rlnImageName) == [f"{i:06d}@{stack_name}" for i in range(1, n_kept + 1)]
        assert (table.rlnMicrographName == str(dataset / "truth" / f"{stem}_noiseless.mrc")).all()
        assert (table.rlnOriginXAngst == 0).all() and (table.rlnOriginYAngst == 0).all()
        assert (table.rlnOpticsGroup == 1).all()
        rows = truth_rows(table, truth)
        for label in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"):
            np.testing.assert_allclose(table[label], truth.loc[rows, label], atol=1e-3)
        np.testing.assert_array_equal(table.rlnAutopickFigureOfMerit, np.flatnonzero(keep))

        assert mrcfile.validate(stack_name, print_file=io.StringIO())
        with mrcfile.open(stack_name) as mrc:
            assert mrc.is_image_stack() and mrc.data.dtype == np.float32
            assert mrc.data.shape == (n_kept, BOX, BOX)
            assert float(mrc.voxel_size.x) == pytest.approx(PX)
            stack = np.array(mrc.data)
        bg = background(stack, DIAMETER / PX)
        np.testing.assert_allclose(bg.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-3)

        errors, correlations = centre_errors(stack, rows, references, BOX)
        assert (correlations > 0.5).all(), correlations  # white particles, right place
        all_errors.extend(errors)
    errors = np.array(all_errors)
    assert errors.max() < 1.0, errors
    assert np.median(errors) < 0.1, errors  # sub-pixel: rounding alone gives ~0.45


def test_extract_bin_to_scales_the_pixel_size(
    dataset: Path,
    truth: pd.DataFrame,
    references: dict[int, np.ndarray],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    stem = "movie_0001"
    coords = write_coords(dataset, truth, stem, tmp_path)
    args = extract_args(dataset, coords, stem, str(tmp_path / "bin"))
    code, _, err = run_cli([*args, "--box", str(BOX), "--bin-to", "54", "--pixel-size", str(PX)])
    assert code == 0, err
    blocks = starfile.read(tmp_path / "bin" / f"{stem}_noiseless.star", always_dict=True)
    optics, table = blocks["optics"].iloc[0], blocks["particles"]
    assert optics.rlnImagePixelSize == pytest.approx(2 * PX)
    assert optics.rlnMicrographPixelSize == pytest.approx(PX)
    assert optics.rlnImageSize == 54
    stack, voxel = read_mrc(tmp_path / "bin" / f"{stem}_noiseless.mrcs")
    assert voxel == pytest.approx(2 * PX) and stack.shape == (len(table), 54, 54)
    bg = background(stack, DIAMETER / (2 * PX))
    np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-3)
    errors, correlations = centre_errors(stack, truth_rows(table, truth), references, 54)
    assert (correlations > 0.5).all(), correlations
    assert errors.max() < 0.5, errors  # binned px: within 1 micrograph px
    assert np.median(errors) < 0.05, errors


def test_zero_particles_are_not_an_error(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "none.star"
    write_star(empty, {"coordinates": pd.DataFrame(columns=["rlnCoordinateX", "rlnCoordinateY"])})
    code, out, err = run_cli(extract_args(dataset, empty, "movie_0001", "ex"))
    assert code == 0, err
    assert "0 particles" in out
    stack = Path("ex/movie_0001_noiseless.mrcs")
    assert mrcfile.validate(stack, print_file=io.StringIO())
    data, voxel = read_mrc(stack)
    assert data.shape == (0, BOX, BOX) and voxel == pytest.approx(PX)
    blocks = starfile.read("ex/movie_0001_noiseless.star", always_dict=True)
    assert len(blocks["particles"]) == 0 and len(blocks["optics"]) == 1

    code, out, err = run_cli(
        ["merge-particles", "--stars", "ex/movie_0001_noiseless.star", "--out", "particles.star"]
    )
    assert code == 0, err
    assert "no particles" in err and "0 particles" in out
    blocks = starfile.read("particles.star", always_dict=True)
    assert list(blocks) == ["optics", "particles"] and len(blocks["particles"]) == 0

    # An empty block without labels (a DataFrame made from no rows) is no particle too.
    write_star(empty, {"coordinates": pd.DataFrame()})
    code, out, err = run_cli(extract_args(dataset, empty, "movie_0001", "ex2"))
    assert code == 0, err
    assert len(starfile.read("ex2/movie_0001_noiseless.star", always_dict=True)["particles"]) == 0


def test_merge_particles(
    dataset: Path,
    truth: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: RunCli,
) -> None:
    monkeypatch.chdir(tmp_path)
    stars = []
    for stem in ("movie_0001", "movie_0002"):
        coords = write_coords(dataset, truth, stem, tmp_path)
        assert run_cli(extract_args(dataset, coords, stem, "ex"))[0] == 0
        stars.append(f"ex/{stem}_noiseless.star")
    empty = tmp_path / "none.star"
    write_star(empty, {"coordinates": pd.DataFrame(columns=["rlnCoordinateX", "rlnCoordinateY"])})
    micrograph = dataset / "truth" / "movie_0001_noiseless.mrc"
    none_args = extract_args(dataset, empty, "movie_0001", "ex")
    none_args[2] = str(tmp_path / "copy" / "movie_0003.mrc")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "movie_0003.mrc").write_bytes(micrograph.read_bytes())
    assert run_cli(none_args)[0] == 0
    stars.append("ex/movie_0003.star")

    code, out, err = run_cli(["merge-particles", "--stars", *stars, "--out", "particles.star"])
    assert code == 0, err
    inputs = [starfile.read(s, always_dict=True)["particles"] for s in stars[:2]]
    merged = starfile.read("particles.star", always_dict=True)
    assert list(merged) == ["optics", "particles"] and len(merged["optics"]) == 1
    table = merged["particles"]
    assert len(table) == sum(len(t) for t in inputs)
    assert f"{len(table)} particles from 2 of 3" in out and "1 without particles" in out
    assert list(table.rlnImageName) == [*inputs[0].rlnImageName, *inputs[1].rlnImageName]
    for name in table.rlnImageName:  # every image name resolves from the working folder
        index, stack = name.split("@")
        with mrcfile.mmap(stack) as mrc:
            assert 1 <= int(index) <= mrc.data.shape[0]

    # --selected keeps the particles of the listed micrographs (matched by stem).
    selected = tmp_path / "selected.star"
    write_star(
        selected,
        {"micrographs": pd.DataFrame({"rlnMicrographName": ["x/movie_0002_noiseless.mrc"]})},
    )
    code, out, err = run_cli(
        ["merge-particles", "--stars", *stars, "--selected", selected, "--out", "sel.star"]
    )
    assert code == 0, err
    table = starfile.read("sel.star", always_dict=True)["particles"]
    assert list(table.rlnImageName) == list(inputs[1].rlnImageName)

    # Different optics (a binned extraction) is a one-line error naming the file.
    coords = write_coords(dataset, truth, "movie_0002", tmp_path)
    args = extract_args(dataset, coords, "movie_0002", "binned")
    assert run_cli([*args, "--box", str(BOX), "--bin-to", "54"])[0] == 0
    code, _, err = run_cli(
        [
            "merge-particles",
            "--stars",
            stars[0],
            "binned/movie_0002_noiseless.star",
            "--out",
            "m.star",
        ]
    )
    assert code == 1
    assert err.count("\n") == 1 and "binned/movie_0002_noiseless.star" in err
    assert "optics differ" in err and "rlnImagePixelSize" in err
    assert not Path("m.star").exists()


def test_bad_input_is_one_line_naming_the_file(
    dataset: Path, truth: pd.DataFrame, tmp_path: Path, run_cli: RunCli
) -> None:
    stem = "movie_0001"
    coords = write_coords(dataset, truth, stem, tmp_path)
    good = extract_args(dataset, coords, stem, str(tmp_path / "out"))
    no_y = tmp_path / "no_y.star"
    write_star(no_y, {"coordinates": pd.DataFrame({"rlnCoordinateX": [100.0]})})
    garbage = tmp_path / "garbage.star"
    garbage.write_text("this is not a STAR file\n")
    no_df = tmp_path / "no_defocus.star"
    write_star(no_df, {"micrograph": pd.DataFrame([{"rlnVoltage": 300.0}])})
    particles_only = tmp_path / "particles_only.star"
    write_star(particles_only, {"particles": pd.DataFrame({"rlnImageName": ["1@a.mrcs"]})})

    def with_(option: str, value: str, args: list[str] = good) -> list[str]:
        out = list(args)
        if option in out:
            out[out.index(option) + 1] = value
        else:
            out += [option, value]
        return out

    cases = [
        (with_("--coords", str(no_y)), 1, "no_y.star: no data block with rlnCoordinateX"),
        (with_("--coords", str(garbage)), 1, "garbage.star"),
        (with_("--coords", str(tmp_path / "missing.star")), 1, "missing.star"),
        (
            with_("--ctf", str(no_df)),
            1,
            "no_defocus.star: data_micrograph lacks label(s) rlnDefocusU",
        ),
        (with_("--ctf", str(coords)), 1, f"{coords.name}: no data_micrograph block"),
        (with_("--box", "101"), 2, "--box"),
        (with_("--bin-to", "200", with_("--box", "100")), 1, "--bin-to: 200 px is larger"),
        (with_("--pixel-size", "2.0"), 1, "header pixel size 2.5"),
        (with_("--diameter", "400", with_("--box", "100")), 1, "--diameter: 400 Å"),
        (good[:-2], 1, "--box or --diameter"),
        (
            ["merge-particles", "--stars", str(particles_only), "--out", str(tmp_path / "m.star")],
            1,
            "particles_only.star: no data_optics block",
        ),
    ]
    for args, expected_code, expected in cases:
        code, _, err = run_cli(args)
        assert code == expected_code, (args, err)
        assert err.count("\n") == 1, err
        assert expected in err, err
    assert not (tmp_path / "out").exists()


def test_help_has_an_example(run_cli: RunCli) -> None:
    for stage in ("extract", "merge-particles"):
        code, out, _ = run_cli([stage, "--help"])
        assert code == 0 and "Example::" in out and f"cryosnake {stage} --" in out


def _extract_star(path: Path, stem: str, n: int, *, autopick: bool = True) -> pd.DataFrame:
    """A per-micrograph STAR as extract writes it, without the stack (merge reads none)."""
    optics = optics_table(
        pixel_size=1.25, voltage=300, cs=2.7, amplitude_contrast=0.1, image_size=64,
        image_pixel_size=PX,
    )  # fmt: skip
    particles = pd.DataFrame(
        {
            "rlnImageName": [
                f"{i + 1:06d}@extract/{path.parent.name}/{stem}.mrcs" for i in range(n)
            ],
            "rlnMicrographName": [f"mc/{path.parent.name}/{stem}.mrc"] * n,
            "rlnCoordinateX": np.arange(n) * 10.5,
            "rlnDefocusU": np.full(n, 15000.0),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        }
    )
    if autopick:
        particles["rlnAutopickFigureOfMerit"] = np.linspace(0, 1, n)
    write_star(path, {"optics": optics, "particles": particles})
    return particles


def test_merge_particles_takes_chunk_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    monkeypatch.chdir(tmp_path)
    counts = {"m1": 3, "m2": 0, "m3": 4, "m4": 2, "m5": 5}
    tables = {}
    for i, (stem, n) in enumerate(counts.items()):
        star = tmp_path / "extract" / f"chunk{i // 2 + 1:04d}" / f"{stem}.star"
        star.parent.mkdir(parents=True, exist_ok=True)
        tables[stem] = _extract_star(star, stem, n, autopick=stem != "m4")
        star.with_suffix(".mrcs").write_bytes(b"")  # the stacks sit beside the STARs
    (tmp_path / "extract" / "chunk0001" / ".m0.star.tmp1.star").write_text("data_optics\n")
    code, out, err = run_cli(
        ["merge-particles", "--stars", "extract/chunk0001", "extract/chunk0002/m3.star",
         "extract/chunk0002/m4.star", "extract/chunk0003", "--out", "particles.star"]
    )  # fmt: skip
    assert code == 0, err
    assert "14 particles from 4 of 5 micrograph STAR files (1 without particles)" in out
    assert "dropped label(s) rlnAutopickFigureOfMerit" in err
    merged = starfile.read("particles.star", always_dict=True)
    expected = pd.concat(
        [
            t.drop(columns="rlnAutopickFigureOfMerit", errors="ignore")
            for t in tables.values()
            if len(t)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(merged["particles"], expected)
    assert "\t1\n" in Path("particles.star").read_text()  # rlnOpticsGroup stays an integer
    assert len(merged["optics"]) == 1

    selected = tmp_path / "selected.star"
    names = ["mc/chunk0001/m1.mrc", "mc/chunk0003/m5.mrc"]
    write_star(selected, {"micrographs": pd.DataFrame({"rlnMicrographName": names})})
    code, out, err = run_cli(
        ["merge-particles", "--stars", "extract/chunk0001", "extract/chunk0002",
         "extract/chunk0003", "--selected", selected, "--out", "sel.star"]
    )  # fmt: skip
    assert code == 0, err
    assert "8 particles from 2 of 5" in out and "6 particles of 2 micrographs not selected" in out
    table = starfile.read("sel.star", always_dict=True)["particles"]
    assert table.rlnImageName.tolist() == [
        *tables["m1"].rlnImageName,
        *tables["m5"].rlnImageName,
    ]
    assert "rlnAutopickFigureOfMerit" in table.columns  # every selected input has it

    # optics that differ in a later input: one line naming that file and the label
    odd = tmp_path / "extract" / "chunk0003" / "m6.star"
    _extract_star(odd, "m6", 2)
    text = odd.read_text().replace("\t64\t", "\t96\t", 1)
    odd.write_text(text)
    code, _, err = run_cli(
        ["merge-particles", "--stars", "extract/chunk0001", "extract/chunk0003", "--out", "x.star"]
    )
    assert code == 1 and err.count("\n") == 1, err
    assert "extract/chunk0003/m6.star: optics differ" in err and "rlnImageSize 96 vs 64" in err
    code, _, err = run_cli(
        ["merge-particles", "--stars", "extract/chunk0001", "extract/chunk0001/m1.star",
         "--out", "x.star"]
    )  # fmt: skip
    assert code == 1 and "extract/chunk0001/m1.star is given twice" in err
    assert not Path("x.star").exists()
