"""Tables and learning curves from parsed runs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ...tables import Table
from .base import (
    _FLOATS,
    _LABELS,
    _LINESTYLES,
    _MARKERS,
    _OPTIONAL_COLUMNS,
    CURVE_METRICS,
    DOWNSTREAM_METRICS,
    PLOT_METRICS,
    SUMMARY_COLUMNS,
    LogWarning,
    RunLog,
)


def _group_names(runs: Sequence[RunLog]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name in run.groups))


def _values(records: pd.DataFrame, column: str) -> pd.Series:
    return records[column].dropna() if column in records.columns else pd.Series(dtype="float64")


def _last(records: pd.DataFrame, column: str, cast: type = float) -> object:
    values = _values(records, column)
    return cast(values.iloc[-1]) if len(values) else None


def best_and_last(run: RunLog, column: str) -> tuple[float | None, int | None, float | None]:
    """``(best, step of the best, last)`` of one logged metric: its maximum over evaluations, the first ``step``
    (epoch, or iteration of iteration-based runs) reaching it, and its last logged value; ``None`` if never logged.
    """
    values = _values(run.records, column)
    if not len(values):
        return None, None, None
    return float(values.max()), int(run.records.loc[values.idxmax(), run.step]), float(values.iloc[-1])


def downstream_metrics(run: RunLog) -> list[dict[str, object]]:
    """Best and last of each detection/segmentation metric the run logged (:data:`DOWNSTREAM_METRICS`, percent).

    One row per metric: ``metric`` (summary name, e.g. ``box_ap50``), ``key`` (the MMCV key), ``best``,
    ``best_at`` (the epoch or iteration of the best, per ``unit``), ``last`` and ``unit``. Published COCO and ADE20K
    tables report the best evaluation of each metric, which need not be the last one.
    """
    rows = []
    for metric, key in DOWNSTREAM_METRICS.items():
        best, best_at, last = best_and_last(run, key)
        if best is not None:
            rows.append({"metric": metric, "key": key, "best": best, "best_at": best_at, "last": last,
                         "unit": run.step})  # fmt: skip
    return rows


def run_metrics(run: RunLog) -> dict[str, object]:
    """The summary of one run: epochs, best/last top-1 and top-5 (of the EMA model too), parameters, and the last
    and best box AP, mask AP and mIoU (percent) with the epoch or iteration of the best (``*_at``).

    ``best_top1`` and ``best_top5`` are maxima over epochs (``best_epoch`` is the first epoch reaching
    ``best_top1``, as logged); ``last_top1`` is the last logged top-1; ``epochs`` counts the epochs logged
    (``iters`` is the last iteration of iteration-based runs). Values are unrounded.
    """
    records = run.records
    best_top1, _, last_top1 = best_and_last(run, "top1")
    best_ema, best_ema_epoch, last_ema = best_and_last(run, "ema_top1")
    by_epoch = run.step == "epoch"
    metrics = {
        "epochs": len(records) if by_epoch else None,
        "iters": None if by_epoch else _last(records, "iter", int),
        "best_top1": best_top1,
        "best_epoch": int(records.loc[_values(records, "top1").idxmax(), "epoch"]) if best_top1 is not None else None,
        "last_top1": last_top1,
        "best_top5": best_and_last(run, "top5")[0],
        "best_ema_top1": best_ema, "best_ema_epoch": best_ema_epoch, "last_ema_top1": last_ema,
        "best_ema_top5": best_and_last(run, "ema_top5")[0],
        "n_parameters": _last(records, "n_parameters", int),
    }  # fmt: skip
    for name in ("box_ap", "mask_ap", "miou"):
        best, best_at, last = best_and_last(run, DOWNSTREAM_METRICS[name])
        metrics.update({name: last, f"best_{name}": best, f"best_{name}_at": best_at})
    return metrics


def summarize(runs: Sequence[RunLog]) -> Table:
    """One row per run (none dropped): ``run``, its group columns, then :data:`SUMMARY_COLUMNS`.

    The columns of detection/segmentation metrics and ``iters`` appear only when some run has a value (a
    :func:`layout` may still name them). Rows sort by the group columns, then run name and path; values are
    rounded only when rendered.
    """
    groups = _group_names(runs)
    rows = [
        {"run": run.name, **dict.fromkeys(groups), **run.groups, "format": run.format, **run_metrics(run),
         "warnings": len(run.warnings), "path": run.path.as_posix()}
        for run in runs
    ]  # fmt: skip
    shown = [c for c in SUMMARY_COLUMNS[1:] if c not in _OPTIONAL_COLUMNS or any(r[c] is not None for r in rows)]
    return Table(["run", *groups, *shown], rows, floats=_FLOATS, sort_by=(*groups, "run", "path"))


def _check_columns(names: object, table: Table, where: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: expected a list of column names, got {names!r}")
    known = dict.fromkeys([*table.columns, *(key for row in table.rows for key in row)])
    for name in names:
        if name not in known:
            raise ValueError(f"{where}: unknown column {name!r}; available: {', '.join(known)}")
    return list(names)


def layout(table: Table, index: Sequence[str], values: Sequence[str], pivot: str = "", where: str = "layout") -> Table:
    """Rearrange a :func:`summarize` table: ``index`` columns then ``values``, or a pivot on column ``pivot``.

    Without ``pivot`` every row is kept, sorted by ``index`` (ties keep the summary's order). With ``pivot``,
    rows are the distinct ``index`` tuples and each ``value`` gets one column per level of ``pivot``, named
    ``"{value} {pivot}={level}"``; two runs landing in one cell raise ``ValueError`` naming both, so no run is
    hidden. Errors name ``where`` (e.g. ``params.yaml: ablation``).
    """
    index = _check_columns(index, table, f"{where}.index")
    values = _check_columns(values, table, f"{where}.values")
    if not values:
        raise ValueError(f"{where}.values: name at least one column to show")
    if not pivot:
        return Table([*index, *values], table.sorted_rows(), floats=table.floats, sort_by=index)
    (pivot,) = _check_columns([pivot], table, f"{where}.pivot")
    if pivot in index or pivot in values:
        raise ValueError(f"{where}.pivot: {pivot!r} cannot also be an index or value column")
    rows = table.sorted_rows()
    probe = Table([pivot], [{pivot: level} for level in {row.get(pivot) for row in rows}], sort_by=[pivot])
    labels = [probe.cell(row, pivot) for row in probe.sorted_rows()]
    cells: dict[tuple, dict] = {}
    owners: dict[tuple, str] = {}
    for row in rows:
        key = tuple(row.get(c) for c in index)
        label = probe.cell(row, pivot)
        if (key, label) in owners:
            raise ValueError(
                f"{where}.pivot: runs {owners[key, label]!r} and {row['run']!r} both fall in row {key} "
                f"at {pivot}={label!r}; add a column to {where}.index"
            )
        owners[key, label] = row["run"]
        cell = cells.setdefault(key, {c: row.get(c) for c in index})
        cell.update({f"{value} {pivot}={label}": row.get(value) for value in values})
    columns = {f"{value} {pivot}={label}": value for value in values for label in labels}
    floats = {column: table.floats[value] for column, value in columns.items() if value in table.floats}
    return Table([*index, *columns], list(cells.values()), floats=floats, sort_by=index)


def curves(runs: Sequence[RunLog]) -> pd.DataFrame:
    """Long-form learning curves: one row per run, metric and step.

    Columns ``run, path, <groups>, unit, step, metric, value`` cover the :data:`CURVE_METRICS` each run logged;
    ``unit`` is ``epoch`` or ``iter`` (the run's ``step``) and missing values are left out.
    """
    groups = _group_names(runs)
    columns = ["run", "path", *groups, "unit", "step", "metric", "value"]
    parts = []
    for run in runs:
        for metric in CURVE_METRICS:
            if metric not in run.records.columns:
                continue
            data = run.records[[run.step, metric]].dropna()
            identity = {"run": run.name, "path": run.path.as_posix(), **{g: run.groups.get(g) for g in groups}}
            steps, values = data[run.step].astype("int64"), data[metric].astype("float64")
            parts.append(pd.DataFrame({**identity, "unit": run.step, "step": steps, "metric": metric, "value": values}))
    parts = [part for part in parts if len(part)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def plot_curves(
    curves: pd.DataFrame, hue: str | None = None, metrics: Sequence[str] = PLOT_METRICS, where: str = "hue"
) -> Figure:
    """One panel per metric against epoch, one line per run, colored by the ``hue`` column (e.g. a group).

    Runs sharing a color differ in line style, so the figure reads in black and white. Iteration-based runs are
    not plotted against epochs (a :class:`LogWarning` names each); ``ValueError`` if no per-epoch data is left.
    An unknown ``hue`` raises ``ValueError`` naming ``where`` (e.g. ``params.yaml: ablation.hue``).
    """
    if hue and hue not in curves.columns:
        raise ValueError(f"{where}: unknown column {hue!r}; available: {', '.join(curves.columns)}")
    for path in sorted(set(curves.loc[curves["unit"] != "epoch", "path"])):
        warnings.warn(f"{path}: iteration-based run not plotted against epochs", LogWarning, stacklevel=2)
    data = curves[(curves["unit"] == "epoch") & curves["metric"].isin(list(metrics))]
    if data.empty:
        raise ValueError(f"no per-epoch {', '.join(metrics)} values to plot")
    keys = ["path", "run", *([hue] if hue else [])]
    first_rows = data[keys].drop_duplicates("path").to_dict("records")
    runs = [{key: None if pd.isna(value) else value for key, value in run.items()} for run in first_rows]
    order = Table([], runs, sort_by=[*keys[2:], "run", "path"]).sorted_rows()
    styles = _line_styles(order, hue)
    fig = Figure(figsize=(3.3 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for run in order:
            points = data[(data["path"] == run["path"]) & (data["metric"] == metric)]
            ax.plot(points["step"], points["value"], linewidth=1.2, **styles[run["path"]])
        ax.set(xlabel="epoch", title=_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], linewidth=1.2, label=run["run"], **styles[run["path"]]) for run in order]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), title=hue or None, fontsize=7)
    return fig


def _line_styles(runs: Sequence[Mapping[str, object]], hue: str | None) -> dict[str, dict]:
    """Color per ``hue`` level (per run without one), line style then marker cycling among a color's runs."""
    levels: dict[object, list] = {}
    for run in runs:
        level = run[hue] if hue and run[hue] is not None else ("run", run["path"])
        levels.setdefault(level, []).append(run["path"])
    styles = {}
    for number, members in enumerate(levels.values()):
        for position, path in enumerate(members):
            shift = position + number // 10  # past ten colors the styles shift, so reused colors stay distinct
            styles[path] = dict(color=f"C{number % 10}", linestyle=_LINESTYLES[shift % len(_LINESTYLES)],
                                marker=_MARKERS[shift // len(_LINESTYLES) % len(_MARKERS)], markevery=0.1,
                                markersize=3)  # fmt: skip
    return styles
