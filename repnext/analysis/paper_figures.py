"""Figures of the regenerated paper results: learning curves in panels, and top-1 against training length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..tables import Table
from .logs import RunLog

_LABELS = {"top1": "top-1 (%)", "bbox_mAP": "box AP", "segm_mAP": "mask AP", "mIoU": "mIoU (%)"}
_STYLES = ("-", "--", ":", "-.")
_LEGEND_COLUMNS = 3
_PANEL_CHARS = 70  # legend characters at 8 pt across one 4.6-inch panel


@dataclass(frozen=True)
class Panel:
    """One axes: ``metric`` (a record column) of each of ``runs`` against its step, titled ``title``."""

    title: str
    runs: Sequence[RunLog]
    metric: str = "top1"


def short_labels(names: Sequence[str]) -> dict[str, str]:
    """Each name without the ``_``-separated words that all ``names`` share: ``repnext_m0_distill_300e`` -> ``m0``."""
    words = [name.split("_") for name in names]
    shared = set.intersection(*map(set, words)) if len(names) > 1 else set()
    return {
        name: "_".join(w for w in split if w not in shared) or name for name, split in zip(names, words, strict=True)
    }


def _fitted_ylim(curves: Sequence[pd.DataFrame], step: str, metric: str, warmup: float) -> tuple[float, float]:
    """A y-range for the curves after the first ``warmup`` share of their steps, where the runs differ."""
    last = max(float(curve[step].max()) for curve in curves)
    values = pd.concat([curve.loc[curve[step] >= warmup * last, metric] for curve in curves])
    low, high = float(values.min()), float(values.max())
    pad = 0.05 * (high - low or abs(high) or 1.0)
    return low - pad, high + pad


def plot_panels(
    panels: Sequence[Panel], ncols: int = 2, label: Mapping[str, str] | None = None, warmup: float = 0.1
) -> Figure:
    """A grid of :class:`Panel` (``ncols`` wide), one line per run named by ``label[run.name]``, or by the words
    of its name that the panel's other runs do not share (the title says the rest).

    The y-axis fits the curves after the first ``warmup`` share of the steps, where the runs differ (the steep
    first epochs leave through the bottom). Runs are drawn in name order; colors cycle through ten, then line
    styles change, so every line stays distinct. ``ValueError`` if a panel has no run logging its metric.
    """
    if not panels:
        raise ValueError("no panels to plot")
    nrows = -(-len(panels) // ncols)
    legend_rows = max(len(panel.runs) for panel in panels) // 2 + 1  # enough room for two columns
    fig = Figure(figsize=(4.6 * ncols, (3.0 + 0.16 * legend_rows) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        runs = sorted((r for r in panel.runs if panel.metric in r.records.columns), key=lambda r: r.name)
        if not runs:
            raise ValueError(f"panel {panel.title!r}: no run logs {panel.metric!r}")
        names = {**short_labels([run.name for run in runs]), **(label or {})}
        curves = [run.records[[run.step, panel.metric]].dropna() for run in runs]
        for number, (run, data) in enumerate(zip(runs, curves, strict=True)):
            style = _STYLES[number // 10 % len(_STYLES)]
            ax.plot(data[run.step], data[panel.metric], linewidth=1.0, color=f"C{number % 10}", linestyle=style,
                    label=names.get(run.name, run.name))  # fmt: skip
        ax.set(title=panel.title, xlabel=runs[0].step, ylabel=_LABELS.get(panel.metric, panel.metric))
        ax.set_ylim(*_fitted_ylim(curves, runs[0].step, panel.metric, warmup))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        longest = max(len(name) for name in names.values())
        columns = max(1, min(_LEGEND_COLUMNS, len(runs), _PANEL_CHARS // (longest + 6)))  # stays under its panel
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=columns)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def plot_top1_vs_epochs(table: Table, panel: str = "dataset", titles: Mapping[str, str] | None = None) -> Figure:
    """Best top-1 against the training length: one panel per level of column ``panel``, one line per ``model``.

    ``table`` has the columns ``model``, ``panel``, ``epochs`` and ``best_top1`` (e.g. the compact-model study);
    ``titles`` maps a level to its panel title (default: the level).
    """
    rows = table.sorted_rows()
    levels = list(dict.fromkeys(row[panel] for row in rows))
    if not levels:
        raise ValueError("no rows to plot")
    fig = Figure(figsize=(4.0 * len(levels), 3.2), layout="constrained")
    for ax, level in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels, strict=True):
        models = sorted({row["model"] for row in rows if row[panel] == level})
        for number, model in enumerate(models):
            points = sorted(
                (row["epochs"], row["best_top1"]) for row in rows if (row[panel], row["model"]) == (level, model)
            )
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, color=f"C{number}", label=model)
        ax.set(title=(titles or {}).get(level, str(level)), xlabel="training epochs", ylabel="best top-1 (%)")
        ax.legend()
    return fig
