"""Figures of the regenerated paper results: learning curves in panels, and top-1 against training length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..tables import Table
from .logs import RunLog

_LABELS = {"top1": "top-1 (%)", "bbox_mAP": "box AP", "segm_mAP": "mask AP", "mIoU": "mIoU (%)"}
_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Panel:
    """One axes: ``metric`` (a record column) of each of ``runs`` against its step, titled ``title``."""

    title: str
    runs: Sequence[RunLog]
    metric: str = "top1"


def plot_panels(panels: Sequence[Panel], ncols: int = 2, label: Mapping[str, str] | None = None) -> Figure:
    """A grid of :class:`Panel` (``ncols`` wide), one line per run named by ``label[run.name]`` or its name.

    Runs are drawn in name order; colors cycle through ten, then line styles change, so every line stays distinct.
    ``ValueError`` if a panel has no run logging its metric.
    """
    if not panels:
        raise ValueError("no panels to plot")
    nrows = -(-len(panels) // ncols)
    entries = max(len(panel.runs) for panel in panels)  # each legend goes under its panel, one run per line
    fig = Figure(figsize=(4.2 * ncols, (3.0 + 0.1 * entries) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        runs = sorted((r for r in panel.runs if panel.metric in r.records.columns), key=lambda r: r.name)
        if not runs:
            raise ValueError(f"panel {panel.title!r}: no run logs {panel.metric!r}")
        for number, run in enumerate(runs):
            data = run.records[[run.step, panel.metric]].dropna()
            name = (label or {}).get(run.name, run.name)
            style = _STYLES[number // 10 % len(_STYLES)]
            ax.plot(
                data[run.step], data[panel.metric], linewidth=1.0, color=f"C{number % 10}", linestyle=style, label=name
            )
        ax.set(title=panel.title, xlabel=runs[0].step, ylabel=_LABELS.get(panel.metric, panel.metric))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.legend(fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
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
        ax.legend(fontsize=7)
    return fig
