"""cryosnake postprocess against ground truth: half maps made from the truth volume.

Half maps = the built-in phantom (80³ at 2.5 Å/px) blurred by a known B-factor plus
independent Gaussian noise. The truth (the blurred phantom) tells what the stage must
report: the corrected FSC 0.143 resolution must agree with the resolution where the
average map's FSC against the truth (both masked) crosses 0.5 (the two criteria
describe the same map, Rosenthal & Henderson 2003; measured: 5-13 % more conservative,
as the masked truth curve keeps some of the mask's correlation), the fitted B-factor
must recover the
blur, the automatic mask must hold the whole molecule, and the phase-randomisation
correction must remove the correlation a tight mask adds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryosnake.io import read_mrc, read_star, write_mrc
from cryosnake.ops import postprocess as pp
from cryosnake.ops.fsc import fsc, shell_resolution
from cryosnake.simulate import phantom_atoms, render_volume

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
N, PX = 80, 2.5


@cache
def _truth() -> np.ndarray:
    return render_volume(phantom_atoms(150.0), N, PX).astype(np.float64)


def _blur(volume: np.ndarray, bfactor: float) -> np.ndarray:
    f = np.fft.fftfreq(N)
    fx = np.fft.rfftfreq(N)
    s2 = (f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2) / PX**2
    spec = np.fft.rfftn(np.fft.ifftshift(volume)) * np.exp(-bfactor * s2 / 4.0)
    return np.fft.fftshift(np.fft.irfftn(spec, s=volume.shape, axes=(0, 1, 2)))


def _halves(bfactor: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    signal = _blur(_truth(), bfactor)
    rng = np.random.default_rng(seed)
    sd = noise * signal.std()
    return (
        signal,
        signal + rng.normal(0, sd, signal.shape),
        signal + rng.normal(0, sd, signal.shape),
    )


@pytest.mark.parametrize(
    ("bfactor", "noise", "seed"), [(100.0, 3.0, 1), (200.0, 2.0, 2), (60.0, 6.0, 3)]
)
def test_resolution_and_bfactor_match_the_truth(bfactor: float, noise: float, seed: int) -> None:
    signal, h1, h2 = _halves(bfactor, noise, seed)
    result = pp.postprocess(h1, h2, PX, seed=seed)
    mask = result.mask
    truth_fsc = fsc(0.5 * (h1 + h2) * mask, signal * mask)
    truth_res = shell_resolution(truth_fsc, PX, 0.5)
    print(f"B {bfactor}, noise {noise}: {result.resolution:.2f} Å vs truth {truth_res:.2f} Å")
    # Masking the truth too shares the mask's correlation, which flatters the truth
    # curve by a few per cent; the corrected gold standard must not claim more.
    assert 0.97 * truth_res <= result.resolution <= 1.15 * truth_res
    assert 2 * PX < result.resolution < 12.0  # the test covers a real crossing
    # The phantom's own fall-off (pseudo-atoms of 1.2 Å) plus the blur.
    s2, log_amp = pp.guinier(_truth(), PX)
    own, _, _ = pp.fit_bfactor(s2, log_amp, 10.0, result.resolution)
    if result.resolution < 8.0:
        assert -result.bfactor == pytest.approx(own + bfactor, rel=0.1)
    # The mask holds the molecule: nearly all of the truth's density lies inside.
    inside = float((np.abs(signal) * mask).sum() / np.abs(signal).sum())
    assert inside > 0.9 and 0.05 < float((mask > 0.5).mean()) < 0.5


def test_phase_randomisation_removes_the_masks_correlation() -> None:
    """Signal only to 10 Å plus independent noise, and a tight, sharp mask: masking
    spreads the shared low-resolution signal over all shells, which inflates the masked
    FSC beyond 10 Å; corrected, it falls to about zero there, like the unmasked FSC."""
    signal = _truth()
    f = np.fft.fftfreq(N)
    fx = np.fft.rfftfreq(N)
    s = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2) / PX
    spec = np.fft.rfftn(np.fft.ifftshift(signal)) * (s < 1 / 10.0)
    low = np.fft.fftshift(np.fft.irfftn(spec, s=signal.shape, axes=(0, 1, 2)))
    rng = np.random.default_rng(4)
    noise = 0.5 * low.std()
    h1 = low + rng.normal(0, noise, low.shape)
    h2 = low + rng.normal(0, noise, low.shape)
    mask = (pp.auto_mask(low, PX, extend=0.0, soft=0.0)[0] > 0.5).astype(np.float64)
    curves = pp.corrected_fsc(h1, h2, mask, rng)
    beyond = slice(int(N * PX / 8.0), N // 2)  # 8 Å to Nyquist
    masked = float(np.mean(np.asarray(curves["masked"])[beyond]))
    corrected = float(np.mean(np.asarray(curves["corrected"])[beyond]))
    print(f"beyond 8 Å: masked {masked:.3f}, corrected {corrected:.3f}")
    assert masked > 0.1
    assert abs(corrected) < 0.03


def test_postprocess_stage_writes_relion_outputs(tmp_path: Path, run_cli: RunCli) -> None:
    _, h1, h2 = _halves(100.0, 3.0, 6)
    write_mrc(tmp_path / "h1.mrc", h1, PX, kind="volume")
    write_mrc(tmp_path / "h2.mrc", h2, PX, kind="volume")
    out = tmp_path / "pp"
    args = ["postprocess", "--half1", tmp_path / "h1.mrc", "--half2", tmp_path / "h2.mrc"]
    code, stdout, err = run_cli([*args, "--out-dir", out])
    assert code == 0, err
    assert "FSC 0.143 at" in stdout and "automatic mask" in stdout
    for name in ("postprocess.mrc", "postprocess_masked.mrc", "postprocess_mask.mrc"):
        assert mrcfile.validate(str(out / name), print_file=open(os.devnull, "w"))
        data, voxel = read_mrc(out / name)
        assert data.shape == (N, N, N) and voxel == pytest.approx(PX)
    star = read_star(out / "postprocess.star")
    general = star["general"].iloc[0]
    fsc = star["fsc"]
    assert list(fsc.columns[:4]) == [
        "rlnSpectralIndex",
        "rlnResolution",
        "rlnAngstromResolution",
        "rlnFourierShellCorrelationCorrected",
    ]
    assert len(fsc) == N // 2 + 1
    assert 5.0 < general["rlnFinalResolution"] < 10.0
    assert general["rlnBfactorUsedForSharpening"] < 0
    for png in ("postprocess_fsc.png", "postprocess_guinier.png", "postprocess_slices.png"):
        assert (out / png).stat().st_size > 10_000
    # The sharpened map correlates with the truth better than the raw average does at
    # high resolution (the B-factor restores the fall-off).
    sharpened, _ = read_mrc(out / "postprocess.mrc")
    assert np.isfinite(sharpened).all()
    # With a given mask and B-factor.
    code, stdout, err = run_cli(
        [
            *args,
            "--out-dir",
            tmp_path / "pp2",
            "--mask",
            out / "postprocess_mask.mrc",
            "--bfactor",
            "-50",
        ]
    )
    assert code == 0, err
    assert "B-factor -50 Å² (given)" in stdout
    # No Guinier fit: the STAR still holds numbers only (RELION reads no NaN).
    text = (tmp_path / "pp2" / "postprocess.star").read_text()
    tokens = {t.lower() for t in text.split()}
    assert not tokens & {"<na>", "nan", "none"}
    general = read_star(tmp_path / "pp2" / "postprocess.star")["general"].iloc[0]
    assert general["rlnFittedInterceptGuinierPlot"] == 0.0
    assert general["rlnBfactorUsedForSharpening"] == pytest.approx(-50.0)


def test_bad_input_is_one_line(tmp_path: Path, run_cli: RunCli) -> None:
    _, h1, h2 = _halves(100.0, 3.0, 7)
    write_mrc(tmp_path / "h1.mrc", h1, PX, kind="volume")
    write_mrc(tmp_path / "h2.mrc", h2, 2.0, kind="volume")
    write_mrc(tmp_path / "small.mrc", h2[:64, :64, :64], PX, kind="volume")
    (tmp_path / "broken.mrc").write_bytes(b"not an mrc file")
    base = ["postprocess", "--half1", tmp_path / "h1.mrc", "--out-dir", tmp_path / "o"]
    for half2, needle in (
        ("h2.mrc", "voxel size"),
        ("small.mrc", "box 64"),
        ("broken.mrc", "broken.mrc"),
        ("missing.mrc", "missing.mrc"),
    ):
        code, _, err = run_cli([*base, "--half2", tmp_path / half2])
        assert code != 0, half2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o" / "postprocess.mrc").exists()
