"""The papers' own tables regenerated from the training logs the authors publish, each number beside its published one.

Published numbers come from ``repnext/data/published_paper_results.csv``: one row per value (``table, model,
setting, metric, value, log, source``), ``log`` naming the vendored file (under ``logs/upstream``) that backs it and
``source`` the README table it was copied from. :func:`compare` recovers each value from its log (the **best**
evaluation of the metric: the maximum top-1 over epochs, or the best box AP, mask AP or mIoU over evaluations) and
checks it under the source's rounding (:data:`ROUNDING`): the READMEs print the maximum with ``%.1f`` (``%.2f`` for
the RepNeXt ablation and compact-model tables), so a value agrees when the recovered one, printed with as many
decimals as the published one, is the same text. A mismatch keeps its row, with the reason found: the published
value is the last evaluation rather than the best, it truncates instead of rounding, it matches another log of the
same backbone (``repnext_m3_coco_4073.json`` beside ``repnext_m3_coco.json``), or it differs by the amount shown.

Ablation logs carry their best top-1 in their name (``recnext_m1_120e_224x224_rec_5x5_7603.txt``: 76.03);
:func:`ablation_name_check` compares every such file with its log.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from ..tables import Table
from .logs import DOWNSTREAM_METRICS, RunLog, assign_groups, best_and_last, layout, read_logs, summarize
from .vendored import verify_vendored

PUBLISHED_COLUMNS = ("table", "model", "setting", "metric", "value", "log", "source")
# How each source prints a logged maximum; the check formats the recovered value the same way.
ROUNDING = {
    "suous/RepNeXt": "printf %.Nf of the maximum (N: the published decimals, 2 in the ablation and compact tables)",
    "suous/RecNeXt": "printf %.1f of the maximum (the README's jq validation commands)",
}
COMPARISON_COLUMNS = (
    "table", "model", "setting", "metric", "published", "recovered", "best_at", "last", "agrees", "explained",
    "reason", "log", "source",
)  # fmt: skip
UNEXPLAINED = "recovered best differs"
_HEADLINES = {
    "bbox_mAP_50": "bbox_mAP",
    "bbox_mAP_75": "bbox_mAP",
    "segm_mAP_50": "segm_mAP",
    "segm_mAP_75": "segm_mAP",
}
_ABLATION_NAME = re.compile(r"_(\d{4})$")
_COMPACT = re.compile(r"(?P<model>.+)_(?P<dataset>cifar|imgnet)_(?P<epochs>\d+)e")
_CLASSIFICATION_FLOATS = {"top1": ".2f", "last": ".2f", "params_m": ".1f", "macs_g": ".1f"}


def published_paper_results() -> list[dict[str, str]]:
    """Rows of ``published_paper_results.csv`` (every value as printed in its source, with that source)."""
    text = resources.files("repnext").joinpath("data", "published_paper_results.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    for number, row in enumerate(rows, start=2):
        if any(not row.get(column) for column in PUBLISHED_COLUMNS):
            raise ValueError(f"published_paper_results.csv:{number}: every column needs a value: {row}")
    return rows


def decimals(text: str) -> int:
    """Decimals printed in a published number: ``"43.5"`` -> 1, ``"72.37"`` -> 2, ``"80"`` -> 0."""
    return len(text.split(".")[1]) if "." in text else 0


def metric_column(metric: str) -> str:
    """The record column a published metric is read from (``top1``, ``top5``, or an MMCV key such as ``bbox_mAP``)."""
    return DOWNSTREAM_METRICS.get(metric, metric)


def agreement(
    published: str, best: float | None, last: float | None = None, others: Mapping[str, float] | None = None,
    at_headline: float | None = None, history: Sequence[tuple[int, float]] = (),
) -> tuple[bool, str]:  # fmt: skip
    """Whether ``best`` printed like ``published`` is ``published``; otherwise the reason found, if any.

    Tried in order: ``at_headline`` (this metric at the evaluation with the best box or mask AP); the last evaluation;
    the best rounded half up (MMCV logs fractions to 4 decimals, so ``0.6345`` is ``63.45`` and a float that prints
    ``63.4``); the best truncated; the best of one of ``others`` (other logs of the model, by path); one of
    ``history`` (``(step, value)`` of every evaluation). Otherwise the reason says by how much the best differs.
    """
    if best is None:
        return False, "metric not in the log"
    places = decimals(published)
    scale = 10**places

    def shown(value: float) -> str:
        return format(value, f".{places}f")

    if shown(best) == published:
        return True, ""
    exact = f"{best:.{places + 2}f}"
    if at_headline is not None and shown(at_headline) == published:
        return False, f"published value is from the evaluation with the best AP; this metric's own best is {exact}"
    if last is not None and shown(last) == published:
        return False, f"published value is the last evaluation; the best is {exact}"
    if shown(math.floor(best * scale + 0.5 + 1e-9) / scale) == published:
        return False, f"published value rounds the best ({exact}) half up"
    if shown(math.floor(best * scale + 1e-9) / scale) == published:
        return False, f"published value truncates the best ({exact}) instead of rounding it"
    for path, value in sorted((others or {}).items()):
        if shown(value) == published:
            return False, f"published value matches the best of {Path(path).name}"
    for step, value in history:
        if shown(value) == published:
            return False, f"published value is the evaluation at step {step}, not the best ({exact})"
    return False, f"{UNEXPLAINED} by {best - float(published):+.{places + 2}f}"


def _history(run: RunLog, column: str) -> list[tuple[int, float]]:
    """``(epoch or iteration, value)`` of every logged evaluation of ``column``."""
    if column not in run.records.columns:
        return []
    data = run.records[[run.step, column]].dropna()
    return [(int(step), float(value)) for step, value in zip(data[run.step], data[column], strict=True)]


def _at_best(run: RunLog, column: str, headline: str) -> float | None:
    """``column`` at the evaluation where ``headline`` (e.g. ``bbox_mAP``) is best; ``None`` if either is missing."""
    records = run.records
    if column not in records.columns or headline not in records.columns or records[headline].isna().all():
        return None
    value = records.loc[records[headline].idxmax(), column]
    return None if math.isnan(value) else float(value)


def _alternatives(run: RunLog, runs: Mapping[str, RunLog]) -> list[RunLog]:
    """Other logs of the same model: files in the same folder named ``<stem>_<suffix>`` (``repnext_m3_coco_4073``)."""
    return [
        other
        for other in runs.values()
        if other.path.parent == run.path.parent and other.name.startswith(run.name + "_")
    ]


def compare(runs: Mapping[str, RunLog], published: Sequence[Mapping[str, str]]) -> Table:
    """Every published number beside the value recovered from its log (:data:`COMPARISON_COLUMNS`).

    ``runs`` maps each vendored log's path relative to the vendored root (``RepNeXt/logs/...``) to its parsed run.
    A published row whose log is not among them raises ``ValueError`` naming the log.
    """
    rows = []
    for row in published:
        run = runs.get(row["log"])
        if run is None:
            raise ValueError(f"published_paper_results.csv: log {row['log']!r} of {row['model']} is not vendored")
        column = metric_column(row["metric"])
        best, best_at, last = best_and_last(run, column)
        others = {o.path.as_posix(): best_and_last(o, column)[0] for o in _alternatives(run, runs)}
        others = {path: value for path, value in others.items() if value is not None}
        at_headline = _at_best(run, column, _HEADLINES[column]) if column in _HEADLINES else None
        history = _history(run, column)
        agrees, reason = agreement(row["value"], best, last, others, at_headline, history)
        rows.append({
            "table": row["table"], "model": row["model"], "setting": row["setting"], "metric": row["metric"],
            "published": row["value"], "recovered": best, "best_at": best_at, "last": last, "agrees": agrees,
            "explained": agrees or not reason.startswith(UNEXPLAINED), "reason": reason, "log": row["log"],
            "source": row["source"],
        })  # fmt: skip
    return Table(
        list(COMPARISON_COLUMNS),
        rows,
        floats={"recovered": ".3f", "last": ".3f"},
        sort_by=("table", "model", "setting"),
    )


def classification_table(comparison: Table, stats: Sequence[Mapping[str, object]] = ()) -> Table:
    """One row per model of the ``classification`` table: top-1 with and without distillation from the logs, the
    published value and agreement of each, and params (M) / MACs (G) from ``model_stats.csv`` rows where present.
    """
    deploy = {row["model"]: row for row in stats if row.get("form") == "deploy"}
    rows: dict[str, dict] = {}
    for item in comparison.rows:
        if item["table"] != "classification":
            continue
        model = item["model"]
        suffix = "distill" if item["setting"] == "distill" else "no_distill"
        stat = deploy.get(model, {})
        row = rows.setdefault(model, {"model": model, "params_m": _float(stat.get("params_paper_m")),
                                      "macs_g": _float(stat.get("macs_g"))})  # fmt: skip
        row.update({f"top1_{suffix}": item["recovered"], f"published_{suffix}": item["published"],
                    f"agrees_{suffix}": item["agrees"], f"reason_{suffix}": item["reason"] or None})  # fmt: skip
    columns = ["model", "params_m", "macs_g"]
    for suffix in ("distill", "no_distill"):
        columns += [f"top1_{suffix}", f"published_{suffix}", f"agrees_{suffix}", f"reason_{suffix}"]
    floats = {"params_m": ".1f", "macs_g": ".1f", "top1_distill": ".2f", "top1_no_distill": ".2f"}
    return Table(columns, list(rows.values()), floats=floats, sort_by=("model",))


def _float(value: object) -> float | None:
    return None if value in (None, "") else float(value)


def wide_table(comparison: Table, table: str, index: Sequence[str], pivot: str, floats: str = ".2f") -> Table:
    """Rows of one published ``table`` laid out wide: ``index`` columns, then for each level of ``pivot`` (a
    comparison column such as ``metric`` or ``setting``) the recovered value, the published one and agreement.
    """
    rows: dict[tuple, dict] = {}
    levels: dict[str, None] = {}
    for item in comparison.sorted_rows():
        if item["table"] != table:
            continue
        level = item[pivot]
        levels[level] = None
        row = rows.setdefault(tuple(item[c] for c in index), {c: item[c] for c in index})
        row.update({level: item["recovered"], f"{level} published": item["published"],
                    f"{level} agrees": item["agrees"]})  # fmt: skip
        if item["reason"]:
            row["reason"] = "; ".join(filter(None, [row.get("reason"), f"{level}: {item['reason']}"]))
    columns = [*index, *(f"{lv}{s}" for lv in levels for s in ("", " published", " agrees")), "reason"]
    return Table(columns, list(rows.values()), floats=dict.fromkeys(levels, floats), sort_by=tuple(index))


def ablation_name_check(runs: Sequence[RunLog]) -> Table:
    """Every run in an ``ablation`` folder whose name ends in ``_NNNN`` (best top-1 x 100): that number beside the
    log's best top-1, agreeing under ``%.2f`` rounding (the reason is given otherwise)."""
    rows = []
    for run in runs:
        match = _ABLATION_NAME.search(run.name)
        if not match or "ablation" not in run.path.parts:
            continue
        best, best_at, last = best_and_last(run, "top1")
        named = f"{int(match.group(1)) / 100:.2f}"
        agrees, reason = agreement(named, best, last, {})
        rows.append({"run": run.name, "named": named, "best_top1": best, "best_epoch": best_at, "last_top1": last,
                     "agrees": agrees, "reason": reason or None, "log": run.path.as_posix()})  # fmt: skip
    columns = ["run", "named", "best_top1", "best_epoch", "last_top1", "agrees", "reason", "log"]
    return Table(columns, rows, floats={"best_top1": ".3f", "last_top1": ".2f"}, sort_by=("log",))


def recovered_counts(comparison: Table) -> dict[str, dict[str, int]]:
    """Per published table and in ``total``: how many numbers, how many recovered (agreeing), how many
    mismatches have a known reason (``explained``) and how many not."""
    counts: dict[str, dict[str, int]] = {}
    for row in comparison.rows:
        for key in (row["table"], "total"):
            entry = counts.setdefault(key, {"published": 0, "recovered": 0, "explained": 0, "unexplained": 0})
            entry["published"] += 1
            entry["recovered"] += bool(row["agrees"])
            entry["explained"] += bool(row["explained"] and not row["agrees"])
            entry["unexplained"] += not row["explained"]
    return dict(sorted(counts.items()))


def load_upstream(root: str | Path) -> dict[str, RunLog]:
    """Check the vendored folder against its manifest, then parse every log in it; keys are paths under ``root``.

    A file failing its checksum raises :class:`~repnext.analysis.vendored.ManifestError`, a file in no known format
    :class:`~repnext.analysis.logs.LogFormatError`; both name the file.
    """
    root = Path(root)
    verify_vendored(root)
    return {run.path.relative_to(root).as_posix(): run for run in read_logs([root])}


def compact_table(runs: Mapping[str, RunLog], comparison: Table) -> Table:
    """The compact-model study: best top-1 of every ``compact/<dataset>/<model>_<dataset>_<N>e`` run, with the
    published value where the README has one (StarNet-S1 has logs but no published row)."""
    published = {item["log"]: item for item in comparison.rows if item["table"] == "compact"}
    rows = []
    for key, run in runs.items():
        match = _COMPACT.fullmatch(run.name)
        if "compact" not in run.path.parts or not match:
            continue
        item = published.get(key, {})
        rows.append({"dataset": match["dataset"], "model": match["model"], "epochs": int(match["epochs"]),
                     "best_top1": best_and_last(run, "top1")[0], "published": item.get("published"),
                     "agrees": item.get("agrees"), "log": key})  # fmt: skip
    columns = ["dataset", "model", "epochs", "best_top1", "published", "agrees", "log"]
    return Table(columns, rows, floats={"best_top1": ".2f"}, sort_by=("dataset", "model", "epochs"))


def recconv_ablation_table(runs: Sequence[RunLog], group_by: str) -> Table:
    """RecConv ablations: one row per ``variant``, best top-1 and parameters (M, from the logs) per resolution.

    ``group_by`` must have the named groups ``variant`` and ``resolution``.
    """
    assign_groups(runs, group_by)
    summary = summarize(runs)
    for row in summary.rows:
        row["params_m"] = row["n_parameters"] / 1e6 if row["n_parameters"] is not None else None
    summary.floats = {**summary.floats, "params_m": ".2f"}
    return layout(summary, ["variant"], ["best_top1", "params_m"], "resolution", where="paper_results.recconv")


def downstream_logs(comparison: Table, runs: Mapping[str, RunLog]) -> Table:
    """For every backbone with published COCO numbers: each of its logs (the published one and others named
    ``<stem>_<suffix>``) and how many published metrics its best values reproduce, so it is clear which one the
    paper reports."""
    by_model: dict[str, list[Mapping]] = {}
    for item in comparison.rows:
        if item["table"] == "coco":
            by_model.setdefault(item["model"], []).append(item)
    rows = []
    for model, items in by_model.items():
        reported = runs[items[0]["log"]]
        for run in [reported, *_alternatives(reported, runs)]:
            matches = sum(
                agreement(i["published"], best_and_last(run, metric_column(i["metric"]))[0])[0] for i in items
            )
            rows.append({"model": model, "log": run.path.name, "published_log": run is reported,
                         "matches": matches, "published_metrics": len(items)})  # fmt: skip
    columns = ["model", "log", "published_log", "matches", "published_metrics"]
    return Table(columns, rows, sort_by=("model", "log"))
