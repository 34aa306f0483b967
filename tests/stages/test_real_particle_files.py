"""Real particle files of RELION 3.0 (RELION's own, and Warp's in RELION 3.0 form),
3.1 (six optics groups) and 5 (``tests/data/``, sources in its README) read by the
reader every particle stage uses, and run through ``class2d``, ``initial3d`` and
``refine3d`` (a few iterations each; RELION's 3.0 file holds 9 particles, too few for
``initial3d``, which says so).

The files are used as they were published. Their image stacks are not public: they
are simulated at 32 px, each particle at the file's own pose, origin, defocus, voltage,
Cs, amplitude contrast and pixel size (:func:`particles_sim.simulate_star_images`).
Checked: what the reader makes of each file (optics groups, pixel sizes, origins in Å
of the right sign), that each stage runs and writes RELION 3.1+ (``data_optics`` with
the file's groups, the same particles in the same order, CTF values unchanged), and the
one-line error for a file that lacks a CTF label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from particles_sim import simulate_star_images

from cryosnake.errors import FileFormatError
from cryosnake.io import read_particles, read_star, write_mrc
from cryosnake.simulate import phantom_atoms, render_volume

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
DATA = Path(__file__).resolve().parents[1] / "data"
BOX = 32
FILES = {
    "relion30": "relion30_ref_it002_data.star",
    "warp30": "relion30_warp_tilt_series.star",
    "relion31": "relion31_6opticsgroups.star",
    "relion5": "relion5_particles.star",
}


def test_relion30_file_as_relion31() -> None:
    """RELION's own 3.0 file: one unnamed block, 14 µm / 39,548× = 3.54 Å/px,
    origins in pixels."""
    optics, particles, values = read_particles(DATA / FILES["relion30"])
    raw = read_star(DATA / FILES["relion30"])[""]
    assert len(optics) == 1 and len(particles) == 9
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(3.540002, abs=1e-6)
    assert optics[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].iloc[
        0
    ].tolist() == [300.0, 2.0, 0.1]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], raw["rlnOriginX"] * 3.540002)
    np.testing.assert_allclose(particles["rlnOriginYAngst"], raw["rlnOriginY"] * 3.540002)
    assert (particles["rlnAnglePsi"] == raw["rlnAnglePsi"]).all()
    assert values["rlnImagePixelSize"].nunique() == 1


def test_relion31_six_optics_groups() -> None:
    optics, particles, values = read_particles(DATA / FILES["relion31"])
    assert len(optics) == 6 and len(particles) == 139
    assert sorted(set(values["rlnImagePixelSize"])) == [1.24, 1.25]
    # Each particle takes its group's values (group 4 has Cs 2.6)
    cs = optics.set_index("rlnOpticsGroup")["rlnSphericalAberration"]
    expected = cs.loc[particles["rlnOpticsGroup"]].to_numpy()
    np.testing.assert_array_equal(values["rlnSphericalAberration"], expected)
    group4 = int((particles["rlnOpticsGroup"] == 4).sum())
    assert group4 > 0 and (values["rlnSphericalAberration"] == 2.6).sum() == group4


def test_relion30_file_without_amplitude_contrast_is_one_line() -> None:
    with pytest.raises(FileFormatError) as err:
        read_particles(DATA / "relion30_pfcrt.star")
    message = str(err.value)
    assert "relion30_pfcrt.star: no data_optics block, and data_images lacks label(s) " in message
    assert message.endswith("rlnAmplitudeContrast") and "\n" not in message


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each file beside its simulated stacks, and a reference map at its first
    particle's pixel size: {form: (star, reference)}."""
    out = {}
    for form, name in FILES.items():
        folder = tmp_path_factory.mktemp(form)
        star = folder / name
        star.write_bytes((DATA / name).read_bytes())
        simulate_star_images(star, folder, box=BOX, seed=len(form))
        px = float(read_particles(star)[2]["rlnImagePixelSize"].iloc[0])
        reference = folder / "reference.mrc"
        volume = render_volume(phantom_atoms(0.7 * BOX * px), BOX, px)
        write_mrc(reference, volume, px, kind="volume")
        out[form] = (star, reference)
    return out


def _check_output(data_star: Path, source: Path) -> None:
    """RELION 3.1+ out: the source's optics groups and particles, CTF unchanged."""
    blocks = read_star(data_star)
    assert list(blocks)[:2] == ["optics", "particles"]
    optics, particles, _ = read_particles(source)
    out = blocks["particles"]
    assert out["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
    for label in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"):
        np.testing.assert_array_equal(out[label], particles[label])
    written = blocks["optics"].set_index("rlnOpticsGroup")
    pd.testing.assert_series_equal(
        written["rlnImagePixelSize"], optics.set_index("rlnOpticsGroup")["rlnImagePixelSize"]
    )
    assert (written["rlnImageSize"] == BOX).all()
    for axis in ("X", "Y"):
        assert f"rlnOrigin{axis}Angst" in out.columns and f"rlnOrigin{axis}" not in out.columns


@pytest.mark.parametrize("form", list(FILES))
def test_stages_run_on_the_file(
    prepared: dict[str, tuple[Path, Path]], run_cli: RunCli, form: str
) -> None:
    star, reference = prepared[form]
    folder = star.parent
    names = ["--names-relative-to", folder]
    code, stdout, stderr = run_cli(
        ["class2d", "--particles", star, "--out-dir", folder / "c2d", "--classes", 2,
         "--iterations", 2, *names]
    )  # fmt: skip
    assert code == 0, stderr
    assert "optics group(s)" in stdout
    _check_output(folder / "c2d" / "run_data.star", star)
    code, _, stderr = run_cli(
        ["initial3d", "--particles", star, "--out-dir", folder / "i3d", "--iterations", 20,
         *names]
    )  # fmt: skip
    if form == "relion30":  # RELION's test file holds 9 particles
        assert code == 1 and stderr.strip().endswith("9 particles; ab initio needs at least 10")
    else:
        assert code == 0, stderr
        _check_output(folder / "i3d" / "initial_model_data.star", star)
    code, stdout, stderr = run_cli(
        ["refine3d", "--particles", star, "--reference", reference, "--out-dir",
         folder / "r3d", "--iterations", 2, *names]
    )  # fmt: skip
    assert code == 0, stderr
    _check_output(folder / "r3d" / "run_data.star", star)
    if form == "relion31":  # 1.24 and 1.25 Å/px: the second brought to the first's grid
        assert "rescaled in Fourier space" in stdout
        assert "not modelled: beam tilt, odd Zernike terms, even Zernike terms" in stdout


def test_pixel_size_given_on_the_command_line(
    prepared: dict[str, tuple[Path, Path]], run_cli: RunCli
) -> None:
    """``--pixel-size`` stands for a RELION 3.0 file's own; a 3.1 file's optics table
    must agree with it."""
    star, _ = prepared["relion30"]
    out = star.parent / "c2d_px"
    args = ["class2d", "--out-dir", out, "--classes", 2, "--iterations", 1,
            "--names-relative-to", star.parent]  # fmt: skip
    code, _, stderr = run_cli([*args, "--particles", star, "--pixel-size", 3.5])
    assert code == 0, stderr
    assert read_star(out / "run_data.star")["optics"]["rlnImagePixelSize"].tolist() == [3.5]
    other, _ = prepared["relion31"]
    code, _, stderr = run_cli([*args, "--particles", other, "--pixel-size", 3.5])
    assert code == 1
    assert "--pixel-size 3.5 differs from data_optics rlnImagePixelSize [1.24, 1.25]" in stderr
