"""Select particles by their 2D classes: automatically by the class score, or by list.

Reads ``run_data.star`` and ``run_model.star`` of ``cryosnake class2d`` and writes the
optics table and the particles of the selected classes (every column kept) to
``--out``.

The class score (``rlnClassScore`` in ``run_model.star``, between 0 and 1) measures how
particle-like a class average is::

    score = containment x (1 - exp(-2 ssnr_low)) x mass_agreement

``class2d`` measures it on four disjoint subsets of each class's particles, each
averaged at the particles' final poses and low-passed to 1/8 of the diameter:

- ``containment`` (``rlnClassContainment``): the fraction of the class's signal energy
  that lies inside the particle diameter given to ``class2d``. Class2D masks the
  references with the diameter but the images only by the box, so the averages show
  what surrounds the particles: a particle is confined to its circle (containment near
  1), whereas ice and carbon edges, off-centre picks, aggregates and empty boxes spread
  over the box. The energy is the sum of products of different subsets, whose noise is
  independent: unlike the energy of one average it has no noise bias, which would make
  small classes of good particles look spread out. The estimate plus one standard
  error (jackknife over the subsets) is used, so that a class is marked down when its
  spread is shown by the data, not when the data are too noisy to tell.
- ``ssnr_low`` (``rlnClassLowResSsnr``): the class's mean spectral SNR in the shells up
  to 1/5 of the diameter. A class without signal scores near 0.
- ``mass_agreement`` from ``rlnClassMassRatio``, the integral of the class average
  inside the diameter over that of the particle-weighted median class (among the
  classes that pass the first two criteria): every projection of one particle has the
  same integral, whatever the view, so a class more than 1.25x heavier (clumps of
  particles) or lighter (fragments) is scored down in proportion. The tolerance widens
  to three robust standard deviations of the particle-like classes' log mass when they
  scatter more, and the criterion is weighted by ``w = s / (s + 5)``
  (``rlnClassMassWeight``), with ``s`` the class's SSNR in the two lowest shells, where
  the mass lives and the CTF passes little: a mass the data do not determine (the class
  average there is mostly its prior) does not reject a class. This assumes one
  particle species makes up most of the particles in the particle-like classes; for
  mixtures of species select by list.

Automatic selection keeps the classes with score >= ``--min-score`` (default 0.97). On
simulated particle sets with 20 % junk (800 particles, K = 10) particle classes score
0.998-1.0, classes of aggregates 0.83-0.95 and classes of empty boxes, edges and
off-centre picks below 0.2. ``--classes 1,4,7`` selects those classes instead. With
``--plot``, a PNG of the class averages (selected in green, rejected in red) and of the
scores.

Example::

    cryosnake select2d --data results/class2d/run_data.star \\
        --model results/class2d/run_model.star --out results/particles_selected.star \\
        --plot results/select2d.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.io import read_mrc, read_star, read_star_block, save_figure, write_star
from cryosnake.stages._common import add_names_root_arg, resolve_name, stage_main

__all__ = ["DEFAULT_MIN_SCORE", "add_args", "main"]

DEFAULT_MIN_SCORE = 0.97


def _class_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected class numbers like 1,4,7, got {text!r}"
        ) from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected class numbers >= 1, got {text!r}")
    return sorted(set(values))


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score is between 0 and 1, got {text}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="run_data.star of class2d")
    parser.add_argument("--model", required=True, help="run_model.star of class2d")
    parser.add_argument("--out", required=True, help="STAR file of the selected particles")
    parser.add_argument(
        "--classes", type=_class_list, default=None, help="select these classes, e.g. 1,4,7"
    )
    parser.add_argument(
        "--min-score",
        type=_score,
        default=None,
        help=f"automatic selection: classes scoring at least this ({DEFAULT_MIN_SCORE})",
    )
    parser.add_argument("--plot", default=None, help="PNG of the classes and their scores")
    add_names_root_arg(parser)


def _class_images(
    model: pd.DataFrame, model_path: Path, root: str | None
) -> list[np.ndarray | None]:
    """The class averages named by rlnReferenceImage, relative to ``root`` or else in
    the model's folder (None where unreadable)."""
    images: list[np.ndarray | None] = []
    stacks: dict[str, np.ndarray] = {}
    for name in model["rlnReferenceImage"]:
        index, _, path = str(name).partition("@")
        p = resolve_name(path, root, model_path)
        if not p.is_file() and (model_path.parent / p.name).is_file():
            p = model_path.parent / p.name
        try:
            if str(p) not in stacks:
                stacks[str(p)] = read_mrc(p)[0]
            stack = stacks[str(p)]
            images.append(np.asarray(stack[int(index) - 1] if stack.ndim == 3 else stack))
        except (CryosnakeError, ValueError, IndexError):
            images.append(None)
    return images


def _plot(
    path: str,
    model: pd.DataFrame,
    images: list[np.ndarray | None],
    selected: np.ndarray,
    threshold: float | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(model)
    cols = min(k, 8)
    rows = math.ceil(k / cols)
    fig = plt.figure(figsize=(1.9 * cols, 2.1 * rows + 2.6))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [1.3])
    scores = model["rlnClassScore"].to_numpy(dtype=float) if "rlnClassScore" in model else None
    counts = model["rlnClassParticleCount"] if "rlnClassParticleCount" in model else None
    for i in range(k):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.set_xticks([])
        ax.set_yticks([])
        colour = "tab:green" if selected[i] else "tab:red"
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(3)
        image = images[i]
        if image is not None:
            ax.imshow(image, cmap="gray")
        label = f"{i + 1}"
        if counts is not None:
            label += f": {int(counts.iloc[i])}"
        if scores is not None:
            label += f"\nscore {scores[i]:.2f}"
        ax.set_title(label, fontsize=8, color=colour)
    ax = fig.add_subplot(grid[rows, :])
    if scores is not None:
        ax.bar(np.arange(1, k + 1), scores, color=np.where(selected, "tab:green", "tab:red"))
        if threshold is not None:
            ax.axhline(threshold, color="k", ls="--", lw=1, label=f"min score {threshold:g}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("class score")
    ax.set_xlabel("class")
    ax.set_xticks(np.arange(1, k + 1))
    fig.suptitle(f"select2d: {int(selected.sum())} of {k} classes selected", fontsize=10)
    save_figure(path, fig)


def _run(args: argparse.Namespace) -> int:
    data_path, model_path = Path(args.data), Path(args.model)
    blocks = read_star(data_path)
    if "particles" not in blocks:
        raise FileFormatError(f"{data_path}: no data_particles block")
    particles = blocks["particles"]
    if "rlnClassNumber" not in particles.columns:
        raise FileFormatError(f"{data_path}: data_particles lacks label rlnClassNumber")
    model = read_star_block(model_path, "model_classes", required=("rlnReferenceImage",))
    k = len(model)
    classes = particles["rlnClassNumber"].astype(int).to_numpy()
    if classes.min() < 1 or classes.max() > k:
        raise FileFormatError(
            f"{data_path}: rlnClassNumber outside 1..{k}, the classes of {model_path}"
        )
    threshold: float | None = None
    if args.classes is not None:
        if args.min_score is not None:
            raise CryosnakeError("--classes and --min-score: give one or the other")
        bad = [c for c in args.classes if c > k]
        if bad:
            raise CryosnakeError(f"--classes: {model_path} has {k} classes, not {bad}")
        selected = np.isin(np.arange(1, k + 1), args.classes)
        how = f"classes {','.join(map(str, args.classes))}"
    else:
        if "rlnClassScore" not in model.columns:
            raise FileFormatError(
                f"{model_path}: data_model_classes has no rlnClassScore; give --classes"
            )
        threshold = DEFAULT_MIN_SCORE if args.min_score is None else args.min_score
        selected = model["rlnClassScore"].to_numpy(dtype=float) >= threshold
        how = f"score >= {threshold:g}"
    keep = selected[classes - 1]
    out_blocks = {name: df for name, df in blocks.items() if name != "particles"}
    out_blocks["particles"] = particles[keep].reset_index(drop=True)
    write_star(args.out, out_blocks)
    if args.plot:
        _plot(
            args.plot, model, _class_images(model, model_path, args.names_root), selected, threshold
        )
    chosen = [str(i + 1) for i in np.nonzero(selected)[0]]
    print(
        f"select2d: {how}: {len(chosen)} of {k} classes ({','.join(chosen) or 'none'}), "
        f"{int(keep.sum())} of {len(particles)} particles -> {args.out}"
    )
    return 0


main = stage_main("select2d", __doc__, add_args, _run)
