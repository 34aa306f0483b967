"""Post-process two gold-standard half maps: mask, corrected FSC, resolution, sharpening.

Reads the unfiltered half maps of ``refine3d`` (or any two independent half maps of
one box and voxel size) and writes, in RELION's names, to ``--out-dir``:

- ``postprocess.mrc``: the average map, FSC-weighted, sharpened with the B-factor and
  low-passed at the resolution; ``postprocess_masked.mrc``: the same times the mask;
  ``postprocess_mask.mrc``: the mask.
- ``postprocess.star``: ``data_general`` (``rlnFinalResolution``,
  ``rlnBfactorUsedForSharpening``, ``rlnRandomiseFrom``, the Guinier fit),
  ``data_fsc`` (per shell: ``rlnFourierShellCorrelationCorrected``,
  ``rlnFourierShellCorrelationUnmaskedMaps``, ``rlnFourierShellCorrelationMaskedMaps``,
  ``rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps``) and
  ``data_guinier``.
- ``postprocess_fsc.png`` (FSC curves and the 0.143 line), ``postprocess_guinier.png``
  (the Guinier plot and the fitted line), ``postprocess_slices.png`` (central slices and
  projections of the masked map along z, y and x).

Method (details in :mod:`cryosnake.ops.postprocess`): without ``--mask``, a soft mask
from the average map low-passed to 15 Å, thresholded automatically (at 5 % of the peak
density or six standard deviations of the noise in the box corners), extended by 3 and
softened over 6 voxels. Masked FSC corrected by phase randomisation beyond the shell
where the unmasked FSC drops below 0.8 (Chen et al. 2013); resolution at FSC 0.143; the
B-factor from the Guinier plot between 10 Å and the resolution, or ``--bfactor``.

Example::

    cryosnake postprocess --half1 results/refine3d/run_half1_class001_unfil.mrc \\
        --half2 results/refine3d/run_half2_class001_unfil.mrc \\
        --out-dir results/postprocess
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import read_mrc, save_figure, write_mrc, write_star
from cryosnake.ops import postprocess as pp
from cryosnake.stages._common import positive, stage_main

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--half1", required=True, help="first unfiltered half map (MRC)")
    parser.add_argument("--half2", required=True, help="second unfiltered half map (MRC)")
    parser.add_argument("--out-dir", required=True, help="folder of the outputs")
    parser.add_argument("--mask", default=None, help="soft mask (MRC, 0-1); default automatic")
    parser.add_argument(
        "--bfactor",
        type=float,
        default=None,
        help="B-factor (Å², negative sharpens) instead of the Guinier fit",
    )
    parser.add_argument(
        "--pixel-size",
        type=positive,
        default=None,
        help="Å per voxel, overriding the maps' headers",
    )
    parser.add_argument("--seed", type=int, default=0, help="phase randomisation seed (0)")


def _read_map(path: str, label: str) -> tuple[np.ndarray, float]:
    data, voxel = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise FileFormatError(f"{path}: {label} must be a cubic 3D map, got shape {data.shape}")
    if data.shape[0] % 2:
        raise FileFormatError(f"{path}: {label} has an odd box ({data.shape[0]}); even expected")
    if not np.isfinite(data).all():
        raise FileFormatError(f"{path}: {label} holds NaN or infinite values")
    return np.asarray(data, dtype=np.float64), float(voxel)


def _plots(out: Path, result: pp.PostprocessResult, masked: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.curves
    freq = c["frequency"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(freq, c["corrected"], "k", lw=2, label="corrected")
    ax.plot(freq, c["unmasked"], "tab:green", label="unmasked maps")
    ax.plot(freq, c["masked"], "tab:blue", label="masked maps")
    ax.plot(freq, c["randomised"], "tab:red", label="phase-randomised masked maps")
    ax.axhline(pp.FSC_THRESHOLD, color="0.5", ls="--", lw=1)
    ax.axvline(1.0 / result.resolution, color="0.5", ls=":", lw=1)
    ax.set_xlabel("resolution (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(f"FSC 0.143 at {result.resolution:.2f} Å")
    ax.legend(fontsize=8)
    top = ax.secondary_xaxis(
        "top", functions=(lambda f: 1.0 / np.maximum(f, 1e-6), lambda a: 1.0 / np.maximum(a, 1e-6))
    )
    top.set_xlabel("Å")
    save_figure(out / "postprocess_fsc.png", fig)

    g = result.guinier
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(g["s2"], g["original"], "tab:gray", label="masked map")
    ax.plot(g["s2"], g["weighted"], "tab:blue", label="FSC-weighted")
    ax.plot(g["s2"], g["sharpened"], "tab:orange", label="sharpened")
    if g["used"].any():
        s2 = g["s2"][g["used"]]
        ax.plot(s2, result.intercept + result.bfactor * s2 / 4.0, "k--", lw=1, label="fit")
    ax.set_xlabel("s² (1/Å²)")
    ax.set_ylabel("ln |F|")
    ax.set_title(f"Guinier plot: B-factor {result.bfactor:.0f} Å²")
    ax.legend(fontsize=8)
    save_figure(out / "postprocess_guinier.png", fig)

    n = masked.shape[0]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2))
    for j, name in enumerate(("z", "y", "x")):
        section = np.take(masked, n // 2, axis=j)
        axes[0, j].imshow(section, cmap="gray", origin="lower")
        axes[0, j].set_title(f"central slice, normal {name}", fontsize=9)
        axes[1, j].imshow(masked.sum(axis=j), cmap="gray", origin="lower")
        axes[1, j].set_title(f"projection along {name}", fontsize=9)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"postprocess: {result.resolution:.2f} Å, B {result.bfactor:.0f} Å²")
    save_figure(out / "postprocess_slices.png", fig)


def _run(args: argparse.Namespace) -> int:
    h1, px1 = _read_map(args.half1, "--half1")
    h2, px2 = _read_map(args.half2, "--half2")
    if h1.shape != h2.shape:
        raise CryosnakeError(
            f"{args.half2}: box {h2.shape[0]} differs from {args.half1} ({h1.shape[0]})"
        )
    if args.pixel_size is not None:
        pixel_size = float(args.pixel_size)
    else:
        if abs(px1 - px2) > 1e-3 * max(px1, px2):
            raise CryosnakeError(
                f"{args.half2}: voxel size {px2:g} Å differs from {args.half1} ({px1:g} Å); "
                "give --pixel-size"
            )
        pixel_size = px1
    mask = None
    if args.mask:
        mask, _ = _read_map(args.mask, "--mask")
        if mask.shape != h1.shape:
            raise CryosnakeError(f"{args.mask}: box {mask.shape[0]} differs from the half maps")
        if mask.min() < -1e-3 or mask.max() > 1.0 + 1e-3 or mask.max() <= 0:
            raise FileFormatError(f"{args.mask}: a mask holds values in [0, 1], not all zero")
        mask = np.clip(mask, 0.0, 1.0)
    try:
        result = pp.postprocess(h1, h2, pixel_size, mask=mask, bfactor=args.bfactor, seed=args.seed)
    except ValueError as err:
        raise CryosnakeError(f"{args.half1}: {err}") from err
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masked = result.sharpened * result.mask
    write_mrc(out / "postprocess.mrc", result.sharpened, pixel_size, kind="volume")
    write_mrc(out / "postprocess_masked.mrc", masked, pixel_size, kind="volume")
    write_mrc(out / "postprocess_mask.mrc", result.mask, pixel_size, kind="volume")
    c = result.curves
    n = h1.shape[0]
    shells = np.arange(n // 2 + 1)
    angstrom = np.where(shells > 0, n * pixel_size / np.maximum(shells, 1), 999.0)
    g = result.guinier
    general = pd.DataFrame(
        [
            {
                "rlnFinalResolution": result.resolution,
                "rlnBfactorUsedForSharpening": result.bfactor,
                "rlnUnfilteredMapHalf1": str(args.half1),
                "rlnUnfilteredMapHalf2": str(args.half2),
                "rlnMaskName": str(args.mask or out / "postprocess_mask.mrc"),
                "rlnRandomiseFrom": float(angstrom[result.randomise_shell]),
                "rlnFittedSlopeGuinierPlot": result.bfactor / 4.0,
                # No fit (a given B-factor, or no shells beyond 10 Å): RELION's readers
                # want a number, not NaN.
                "rlnFittedInterceptGuinierPlot": (
                    result.intercept if np.isfinite(result.intercept) else 0.0
                ),
            }
        ]
    )
    fsc = pd.DataFrame(
        {
            "rlnSpectralIndex": shells,
            "rlnResolution": c["frequency"],
            "rlnAngstromResolution": angstrom,
            "rlnFourierShellCorrelationCorrected": c["corrected"],
            "rlnFourierShellCorrelationUnmaskedMaps": c["unmasked"],
            "rlnFourierShellCorrelationMaskedMaps": c["masked"],
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": c["randomised"],
        }
    )
    guinier = pd.DataFrame(
        {
            "rlnResolutionSquared": g["s2"],
            "rlnLogAmplitudesOriginal": np.nan_to_num(g["original"], neginf=-99.0),
            "rlnLogAmplitudesWeighted": np.nan_to_num(g["weighted"], neginf=-99.0),
            "rlnLogAmplitudesSharpened": np.nan_to_num(g["sharpened"], neginf=-99.0),
        }
    )
    write_star(out / "postprocess.star", {"general": general, "fsc": fsc, "guinier": guinier})
    _plots(out, result, masked)
    if args.bfactor is not None:
        how = "given"
    elif result.guinier["used"].any():
        how = "fitted"
    else:
        how = "not sharpened: too few shells beyond 10 Å to fit"
    mask_note = (
        f"automatic mask (threshold {result.mask_threshold:.4g}, "
        f"{100 * float((result.mask > 0.5).mean()):.1f} % of the box)"
        if result.mask_threshold is not None
        else f"mask {args.mask}"
    )
    print(
        f"postprocess: {mask_note}; FSC 0.143 at {result.resolution:.2f} Å "
        f"(phases randomised beyond {angstrom[result.randomise_shell]:.1f} Å), "
        f"B-factor {result.bfactor:.0f} Å² ({how}) -> {out / 'postprocess.mrc'}"
    )
    return 0


main = stage_main("postprocess", __doc__, add_args, _run)
