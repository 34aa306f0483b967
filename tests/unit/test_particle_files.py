"""Particle STAR files in RELION 3.0 and 3.1+ forms (:func:`cryosnake.io.read_particles`),
read as RELION 3.1, and written back as 3.1 with the same particles, CTF and poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile

from cryosnake.errors import FileFormatError
from cryosnake.io import read_particles, write_star

# RELION 3.0 as relion_refine wrote it: one unnamed block, acquisition values on every
# particle, pixel size from the detector and magnification, origins in pixels.
RELION30 = """
data_

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnVoltage #6
_rlnSphericalAberration #7
_rlnAmplitudeContrast #8
_rlnMagnification #9
_rlnDetectorPixelSize #10
_rlnAngleRot #11
_rlnAngleTilt #12
_rlnAnglePsi #13
_rlnOriginX #14
_rlnOriginY #15
000001@P/m1.mrcs m1.mrc 21000.5 20500.0 33.2 300 2.7 0.1 100000 14.0 10.0 20.0 30.0 1.5 -2.25
000002@P/m1.mrcs m1.mrc 21000.5 20500.0 33.2 300 2.7 0.1 100000 14.0 -40.0 90.0 -170.0 -3.0 0.5
000001@P/m2.mrcs m2.mrc 15000.0 14800.0 -12.0 200 2.7 0.1 100000 14.0 0.0 5.0 175.0 0.0 4.0
"""

RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
opticsGroup1 1 300.0 2.7 0.1 1.24 64 2
opticsGroup2 2 300.0 2.0 0.07 1.25 64 2

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnOpticsGroup #5
_rlnOriginXAngst #6
_rlnOriginYAngst #7
000001@a.mrcs 10000 10000 0 2 1.0 2.0
000002@a.mrcs 12000 11000 5 1 -1.0 0.0
"""


def _write(tmp_path: Path, text: str, name: str = "particles.star") -> Path:
    path = tmp_path / name
    path.write_text(text.lstrip("\n"))
    return path


def test_relion30_is_read_as_relion31(tmp_path: Path) -> None:
    optics, particles, values = read_particles(_write(tmp_path, RELION30))
    # One optics group per (voltage, Cs, Q0, pixel size): 300 kV and 200 kV
    assert optics["rlnOpticsGroup"].tolist() == [1, 2]
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]
    np.testing.assert_allclose(optics["rlnImagePixelSize"], 1.4)  # 14 µm / 100,000
    assert particles["rlnOpticsGroup"].tolist() == [1, 1, 2]
    np.testing.assert_allclose(particles["rlnOriginXAngst"], [2.1, -4.2, 0.0])
    np.testing.assert_allclose(particles["rlnOriginYAngst"], [-3.15, 0.7, 5.6])
    for gone in ("rlnOriginX", "rlnVoltage", "rlnMagnification", "rlnDetectorPixelSize"):
        assert gone not in particles.columns
    np.testing.assert_allclose(values["rlnVoltage"], [300, 300, 200])
    np.testing.assert_allclose(values["rlnImagePixelSize"], 1.4)
    assert particles["rlnAnglePsi"].tolist() == [30.0, -170.0, 175.0]


def test_relion30_round_trip_to_relion31(tmp_path: Path) -> None:
    """A RELION 3.0 file in, RELION 3.1 out: the same particles, CTF and poses; origins
    in Å (pixels × pixel size, the same direction), as starfile reads them back."""
    source = _write(tmp_path, RELION30)
    optics, particles, _ = read_particles(source)
    out = write_star(tmp_path / "out.star", {"optics": optics, "particles": particles})
    back = starfile.read(out)
    old = starfile.read(source)
    assert set(back) == {"optics", "particles"}
    new = back["particles"]
    for label in ("rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV",
                  "rlnDefocusAngle", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):  # fmt: skip
        assert new[label].tolist() == old[label].tolist(), label
    pixel = back["optics"].set_index("rlnOpticsGroup").loc[new["rlnOpticsGroup"]]
    for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        np.testing.assert_allclose(pixel[label], old[label])
    np.testing.assert_allclose(new["rlnOriginXAngst"], old["rlnOriginX"] * 1.4)
    np.testing.assert_allclose(new["rlnOriginYAngst"], old["rlnOriginY"] * 1.4)
    # And read again, it is the same as the first read
    again = read_particles(out)
    np.testing.assert_allclose(again[1]["rlnOriginXAngst"], particles["rlnOriginXAngst"])


@pytest.mark.parametrize("block", ["images", "particles"])
def test_relion30_named_blocks_and_a_given_pixel_size(tmp_path: Path, block: str) -> None:
    text = RELION30.replace("data_\n", f"data_{block}\n")
    optics, _, values = read_particles(_write(tmp_path, text), pixel_size=1.06)
    np.testing.assert_allclose(optics["rlnImagePixelSize"], 1.06)
    np.testing.assert_allclose(values["rlnImagePixelSize"], 1.06)


def test_relion31_optics_groups_per_particle(tmp_path: Path) -> None:
    optics, particles, values = read_particles(_write(tmp_path, RELION31))
    assert len(optics) == 2
    np.testing.assert_allclose(values["rlnImagePixelSize"], [1.25, 1.24])
    np.testing.assert_allclose(values["rlnSphericalAberration"], [2.0, 2.7])
    np.testing.assert_allclose(values["rlnAmplitudeContrast"], [0.07, 0.1])
    assert particles["rlnOriginXAngst"].tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    ("text", "pixel_size", "message"),
    [
        (RELION30.replace("_rlnMagnification #9", "_rlnMagnificationX #9"), None,
         r"data_ states no pixel size \(rlnImagePixelSize, or rlnDetectorPixelSize and "
         r"rlnMagnification\); give --pixel-size"),
        (RELION30.replace("_rlnVoltage #6", "_rlnKV #6"), None,
         "no data_optics block, and data_ lacks label.s. rlnVoltage"),
        (RELION30.replace("_rlnDefocusV #4", "_rlnDefocusW #4"), None,
         "data_ lacks label.s. rlnDefocusV"),
        (RELION30.replace("_rlnImageName #1", "_rlnImageNames #1"), None,
         r"no particles block with rlnImageName \(found: data_\)"),
        (RELION31, 1.3, r"--pixel-size 1.3 differs from data_optics rlnImagePixelSize"),
        (RELION31.replace("_rlnImagePixelSize #6", "_rlnPixel #6"), None,
         "data_optics lacks label rlnImagePixelSize"),
        (RELION31.replace("10000 10000 0 2", "10000 10000 0 3"), None,
         r"optics group\(s\) \[3\] not in data_optics"),
        (RELION30, -1.0, "--pixel-size must be positive"),
        (RELION31.replace("_rlnImageDimensionality #8", "_rlnImageDimensionality #8\n"
                          "_rlnCtfDataAreCtfPremultiplied #9").replace(" 64 2\n", " 64 2 1\n"),
         None, "rlnCtfDataAreCtfPremultiplied is 1"),
    ],
)  # fmt: skip
def test_bad_particle_files_get_one_line_naming_the_label(
    tmp_path: Path, text: str, pixel_size: float | None, message: str
) -> None:
    with pytest.raises(FileFormatError, match=message) as err:
        read_particles(_write(tmp_path, text), pixel_size)
    assert "\n" not in str(err.value)
