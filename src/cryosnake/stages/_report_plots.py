"""The report's session plots: every micrograph's values against acquisition order, and
their distributions, with the curation thresholds drawn and rejected micrographs marked.

Both take the report's session table (one row per micrograph, in acquisition order:
the sorted movie names) and return PNG bytes, so a session of 10,000 micrographs is two
pictures of fixed size rather than 10,000.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["METRICS", "Metric", "histograms", "present", "time_series"]


@dataclass(frozen=True)
class Metric:
    """One per-micrograph value of the session table.

    Attributes
    ----------
    column : the session table's column.
    label : axis label, with the unit.
    thresholds : the curation thresholds (keys of the configuration's ``curate``
        section) that apply to this value, in its unit.
    """

    column: str
    label: str
    thresholds: tuple[str, ...] = ()


METRICS = (
    Metric("drift", "total drift (Å)", ("max_total_motion",)),
    Metric("defocus", "mean defocus (µm)", ("min_defocus", "max_defocus")),
    Metric("astigmatism", "astigmatism dfU − dfV (Å)", ("max_astigmatism",)),
    Metric("resolution", "CTF fit resolution (Å)", ("max_resolution",)),
    Metric("figure_of_merit", "CTF figure of merit", ("min_figure_of_merit",)),
    Metric("particles", "particles per micrograph"),
)
KEPT, REJECTED, THRESHOLD = "#3b6ea8", "#c0392b", "#c0392b"


def present(table: pd.DataFrame) -> list[Metric]:
    """The metrics of which ``table`` holds at least one value."""
    return [m for m in METRICS if m.column in table and table[m.column].notna().any()]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def time_series(table: pd.DataFrame, thresholds: dict[str, float]) -> bytes | None:
    """Each metric against acquisition order, one panel each (None: no metric present).

    Parameters
    ----------
    table : the session table: a ``rejected`` bool column and the metric columns
        (NaN where a micrograph has no value), rows in acquisition order.
    thresholds : curation threshold values by key (0 or absent: not applied), in the
        metrics' units.
    """
    metrics = present(table)
    if not metrics:
        return None
    plt = _pyplot()
    n = len(table)
    x = np.arange(1, n + 1)
    rejected = table["rejected"].to_numpy(dtype=bool)
    size = 4.0 if n > 2000 else 10.0 if n > 200 else 18.0
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(10, 1.6 * len(metrics) + 0.6), sharex=True, squeeze=False
    )
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        y = table[metric.column].to_numpy(dtype=float)
        ax.scatter(x[~rejected], y[~rejected], s=size, color=KEPT, lw=0, label="kept")
        if rejected.any():
            ax.scatter(
                x[rejected], y[rejected], s=2 * size, color=REJECTED, marker="x", lw=0.8,
                label="rejected",
            )  # fmt: skip
        if n >= 50:  # the trend: a running median over 2 % of the session
            window = max(5, n // 50)
            trend = pd.Series(y).rolling(window, center=True, min_periods=1).median()
            ax.plot(x, trend, color="k", lw=1, label=f"running median ({window})")
        _thresholds(ax.axhline, metric, thresholds)
        ax.set_ylabel(metric.label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    if any(_applied(m, thresholds) for m in metrics):
        axes[0, 0].plot([], [], color=THRESHOLD, ls="--", lw=1, label="curation threshold")
    axes[0, 0].legend(fontsize=7, loc="upper right", ncol=4)
    axes[0, 0].set_title(f"{n} micrographs, {int(rejected.sum())} rejected", fontsize=10)
    axes[-1, 0].set_xlabel("micrograph, in acquisition order (sorted movie names)")
    axes[-1, 0].set_xlim(0, n + 1)
    fig.tight_layout()
    return _png(fig)


def histograms(table: pd.DataFrame, thresholds: dict[str, float]) -> bytes | None:
    """The distribution of each metric, kept and rejected micrographs stacked."""
    metrics = present(table)
    if not metrics:
        return None
    plt = _pyplot()
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    rejected = table["rejected"].to_numpy(dtype=bool)
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        y = table[metric.column].to_numpy(dtype=float)
        ok = np.isfinite(y)
        count = min(50, max(5, int(np.sqrt(ok.sum()))))
        bins = np.histogram_bin_edges(y[ok], bins=count)
        if metric.column == "particles":  # counts: bins of whole numbers, no comb
            step = max(1, int(np.ceil((bins[-1] - bins[0]) / count)))
            bins = np.arange(np.floor(bins[0]) - 0.5, bins[-1] + step, step)
        ax.hist(
            [y[ok & ~rejected], y[ok & rejected]], bins=bins, stacked=True,
            color=[KEPT, REJECTED], label=["kept", "rejected"],
        )  # fmt: skip
        _thresholds(ax.axvline, metric, thresholds)
        ax.set_xlabel(metric.label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_axis_off()
    axes[0, 0].set_ylabel("micrographs", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _applied(metric: Metric, thresholds: dict[str, float]) -> list[float]:
    """The thresholds of ``metric`` that are applied (> 0), in the metric's unit."""
    scale = 1e-4 if metric.column == "defocus" else 1.0  # Å -> µm
    return [scale * v for key in metric.thresholds if (v := thresholds.get(key) or 0.0) > 0]


def _thresholds(line: Callable[..., object], metric: Metric, thresholds: dict[str, float]) -> None:
    for value in _applied(metric, thresholds):
        line(value, color=THRESHOLD, ls="--", lw=1)
