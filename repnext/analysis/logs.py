"""Training logs to tables and curves: DeiT/LeViT ``log.txt``, timm ``summary.csv``, MMDetection/MMSegmentation JSON.

Formats are detected from the content, never from the file name:

* ``deit``: one JSON object per epoch and line (``train_lr, train_loss, test_loss, test_acc1, test_acc5, epoch,
  n_parameters``), the ``log.txt`` of DeiT, LeViT and the RepNeXt/RecNeXt repositories.
* ``timm``: timm ``train.py``'s ``summary.csv`` (``epoch, train_loss, eval_loss, eval_top1, eval_top5[, lr]``); the
  sibling ``args.yaml`` (``X_args.yaml`` beside ``X_summary.csv``) becomes :attr:`RunLog.args`.
* ``mmdet`` / ``mmseg``: MMCV JSON logs, an ``env_info`` line then ``train`` and ``val`` records. There is one record
  per evaluation; its ``train_loss`` is the mean training loss since the previous evaluation and its ``iter`` the
  last training iteration before it. A run evaluated several times within one logged epoch (MMSegmentation's
  iteration-based schedules) is indexed by ``iter`` instead of ``epoch``.

Records use common names: ``lr, train_loss, eval_loss, top1, top5`` (DeiT's ``train_lr, test_loss, test_acc1,
test_acc5``, timm's ``eval_top1, eval_top5``); other numeric keys keep their names (per-class ``IoU.*`` and ``Acc.*``
of MMSegmentation are left out). Detection and segmentation metrics logged as fractions (``bbox_mAP`` 0.42,
``mIoU`` 0.41, judged per column: every value at most 1) are scaled to percent.

A run is named after its file's stem (``recnext_m1_120e_224x224_rec_5x5_7603.txt`` is
``recnext_m1_120e_224x224_rec_5x5_7603``), except for the names trainers always write: ``log.txt``,
``summary.csv`` and MMCV's ``<YYYYmmdd_HHMMSS>.log.json`` are named after their folder, ``X_summary.csv`` and
``X.log.json`` after ``X``.

Real logs are messy. Blank lines, a truncated last line (a killed run), unparseable lines, NaN/Infinity values
(kept as missing), missing keys, and epochs logged twice (a resumed run; the last record wins) are tolerated:
each kind of defect gives one :class:`LogWarning` naming ``file:line`` of its first occurrence and how many lines
had it (notes on a whole file, such as a run without records or a name the group-by regex does not match, name
the file). A file in no known format raises :class:`LogFormatError` naming it. No run is dropped: a run without
usable records still gets a row in :func:`summarize`.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..tables import Table

LOG_FORMATS = ("deit", "timm", "mmdet", "mmseg")
DEFAULT_PATTERNS = ("**/*.txt", "**/*summary.csv", "**/*.json")
SUMMARY_COLUMNS = (
    "run", "format", "epochs", "iters", "best_top1", "best_epoch", "last_top1", "best_top5", "n_parameters",
    "box_ap", "mask_ap", "miou", "warnings", "path",
)  # fmt: skip
CURVE_METRICS = ("top1", "top5", "train_loss", "eval_loss", "bbox_mAP", "segm_mAP", "mIoU")
PLOT_METRICS = ("top1", "train_loss", "eval_loss")

# Shown only when some run has a value: classification tables need no detection columns and vice versa.
_OPTIONAL_COLUMNS = frozenset({"iters", "box_ap", "mask_ap", "miou"})
_FLOATS = {"best_top1": ".2f", "last_top1": ".2f", "best_top5": ".2f", "box_ap": ".1f", "mask_ap": ".1f", "miou": ".1f"}
_FOLDER_NAMED = ("log.txt", "summary.csv")
_TIMESTAMP = re.compile(r"\d{8}_\d{6}")
_EXPECTED = {
    "deit": ("epoch", "train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "n_parameters"),
    "timm": ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5"),
}
_RENAMES = {
    "deit": {"train_lr": "lr", "test_loss": "eval_loss", "test_acc1": "top1", "test_acc5": "top5"},
    "timm": {"eval_top1": "top1", "eval_top5": "top5"},
}
_FRACTION_METRICS = re.compile(r"(bbox_mAP|segm_mAP)\w*|mIoU|mAcc|aAcc")
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')
_MM_POSITION_KEYS = ("mode", "epoch", "iter", "lr")
_LABELS = {
    "top1": "top-1 accuracy (%)", "top5": "top-5 accuracy (%)", "train_loss": "training loss",
    "eval_loss": "validation loss", "bbox_mAP": "box AP", "segm_mAP": "mask AP", "mIoU": "mIoU (%)",
}  # fmt: skip
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("", "o", "s", "^", "v", "D")


class LogFormatError(ValueError):
    """A file that is not a training log in a known format (or cannot be read); the message names the file."""


class LogWarning(UserWarning):
    """A defect in a training log that was worked around; the message names ``file:line``."""


@dataclass
class RunLog:
    """One training run: its epoch records (one row per ``step``, sorted) and what else its log says."""

    name: str
    path: Path
    format: str
    records: pd.DataFrame
    step: str = "epoch"  # "iter" for runs evaluated several times per logged epoch
    args: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, object] = field(default_factory=dict)


class _Defects:
    """Defects of one file, one message per kind: where the kind first occurred and how many lines had it."""

    def __init__(self, path: Path):
        self.path = path
        self._kinds: dict[str, list] = {}

    def add(self, kind: str, line: int, message: str, path: Path | None = None) -> None:
        if kind in self._kinds:
            self._kinds[kind][2] += 1
        else:
            self._kinds[kind] = [path or self.path, line, 1, message]

    def messages(self) -> list[str]:
        ordered = sorted(self._kinds.values(), key=lambda item: (item[0] != self.path, item[1]))
        return [f"{p.as_posix()}:{line}: {text}" + (f" ({n} lines)" if n > 1 else "") for p, line, n, text in ordered]


def run_name(path: str | Path) -> str:
    """The run a log belongs to: its stem, or its folder for names every run shares (see the module docstring)."""
    path = Path(path)
    name = path.name
    if name in _FOLDER_NAMED or (name.endswith(".log.json") and _TIMESTAMP.fullmatch(name[: -len(".log.json")])):
        return path.resolve().parent.name
    if name.endswith("_summary.csv"):
        return name[: -len("_summary.csv")]
    if name.endswith(".log.json"):
        return name[: -len(".log.json")]
    return path.stem


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LogFormatError(f"{path.as_posix()}: not a text file ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise LogFormatError(f"{path.as_posix()}: cannot read: {error.strerror}") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines[-1] == "" else lines


def detect_format(path: str | Path, lines: Sequence[str]) -> str:
    """Which of :data:`LOG_FORMATS` the ``lines`` of ``path`` are in, from their first non-blank line.

    Keys are read from that line's text, so a log whose only line was cut short is still recognised.
    """
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise LogFormatError(f"{Path(path).as_posix()}: empty file, not a training log")
    header = set(next(csv.reader([first])))
    if "epoch" in header and header & {"eval_top1", "eval_loss", "train_loss"}:
        return "timm"
    keys = set(_JSON_KEY.findall(first)) if first.lstrip().startswith("{") else set()
    if keys & {"env_info", "mode"}:
        segmentation = '"mmseg_version"' in first or any('"mIoU"' in line for line in lines)
        return "mmseg" if segmentation else "mmdet"
    if keys & {"epoch", "train_lr", "train_loss", "test_acc1"}:
        return "deit"
    raise LogFormatError(
        f"{Path(path).as_posix()}: not a training log in a known format (DeiT/LeViT log.txt, timm summary.csv, "
        f"MMDetection/MMSegmentation JSON); it starts with {first.strip()[:60]!r}"
    )


def _json_records(lines: Sequence[str], defects: _Defects) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every line holding a JSON object; other lines become defects."""
    last = max((index for index, line in enumerate(lines) if line.strip()), default=-1)
    for index, line in enumerate(lines[: last + 1]):
        number = index + 1
        if not line.strip():
            defects.add("blank", number, "blank line skipped")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if index == last:
                defects.add("truncated", number, "truncated last line ignored (killed run?)")
            else:
                defects.add("unparseable", number, f"unparseable line skipped ({error.msg})")
            continue
        if not isinstance(record, dict):
            defects.add("not-object", number, "line is not a JSON object; skipped")
            continue
        yield number, record


def _numeric(record: Mapping[str, object], number: int, defects: _Defects, expected: Sequence[str] = ()) -> dict:
    """The numeric values of ``record``; NaN/Infinity become NaN, non-numeric expected keys are reported."""
    values = {}
    for key, value in record.items():
        if value is None and key in expected:
            defects.add(f"missing:{key}", number, f"missing {key}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            if key in expected:
                defects.add(f"non-numeric:{key}", number, f"{key} is not a number ({value!r}); treated as missing")
        elif not math.isfinite(value):
            defects.add(f"non-finite:{key}", number, f"{key} is {_json_constant(value)}; treated as missing")
            values[key] = math.nan
        else:
            values[key] = value
    return values


def _json_constant(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _integral(value: object) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def _records_frame(rows: Sequence[tuple[int, dict]], step: str, defects: _Defects) -> pd.DataFrame:
    """One row per ``step`` value, the last logged record winning, sorted by ``step``."""
    kept: dict[object, dict] = {}
    for number, row in rows:
        key = row.get(step)
        if key in kept:
            defects.add("duplicate", number, f"{step} {key} logged again (resumed run?); keeping the last record")
            del kept[key]
        kept[key] = row
    if not kept:
        return pd.DataFrame({step: pd.Series(dtype="int64")})
    return pd.DataFrame(list(kept.values())).sort_values(step, kind="stable").reset_index(drop=True)


def _with_epochs(rows: Sequence[tuple[int, dict]], defects: _Defects) -> list[tuple[int, dict]]:
    """Give each record an integer epoch; a missing or non-integer one is taken as the previous epoch + 1."""
    previous = -1
    for number, row in rows:
        epoch = _integral(row.get("epoch"))
        if epoch is None:
            defects.add("epoch", number, "no integer epoch; taken as the previous epoch + 1")
            epoch = previous + 1
        row["epoch"] = previous = epoch
    return list(rows)


def _parse_deit(path: Path, lines: Sequence[str], defects: _Defects) -> tuple[pd.DataFrame, str, dict]:
    fields = [key for key in _EXPECTED["deit"] if key != "epoch"]  # _with_epochs reports a missing epoch
    rows = []
    for number, record in _json_records(lines, defects):
        for key in fields:
            if key not in record:
                defects.add(f"missing:{key}", number, f"missing {key}")
        rows.append((number, _numeric(record, number, defects, fields)))
    frame = _records_frame(_with_epochs(rows, defects), "epoch", defects)
    return frame.rename(columns=_RENAMES["deit"]), "epoch", {}


def _parse_timm(path: Path, lines: Sequence[str], defects: _Defects) -> tuple[pd.DataFrame, str, dict]:
    start = next(index for index, line in enumerate(lines) if line.strip())
    last = max(index for index, line in enumerate(lines) if line.strip())
    header = next(csv.reader([lines[start]]))
    for key in _EXPECTED["timm"]:
        if key not in header:
            defects.add(f"missing:{key}", start + 1, f"no {key} column")
    rows = []
    for index in range(start + 1, last + 1):
        number = index + 1
        if not lines[index].strip():
            defects.add("blank", number, "blank line skipped")
            continue
        cells = next(csv.reader([lines[index]]))
        if len(cells) != len(header):
            kind, text = ("truncated", "truncated last line ignored (killed run?)") if index == last else (
                "malformed", f"row with {len(cells)} fields (header has {len(header)}) skipped")  # fmt: skip
            defects.add(kind, number, text)
            continue
        values = {key: _csv_number(cell.strip(), key, number, defects) for key, cell in zip(header, cells, strict=True)}
        rows.append((number, _numeric({k: v for k, v in values.items() if v is not None}, number, defects)))
    frame = _records_frame(_with_epochs(rows, defects), "epoch", defects)
    return frame.rename(columns=_RENAMES["timm"]), "epoch", _timm_args(path, defects)


def _csv_number(cell: str, key: str, number: int, defects: _Defects) -> float | None:
    if not cell:
        defects.add(f"missing:{key}", number, f"missing {key}")
        return None
    try:
        return float(cell)
    except ValueError:
        defects.add(f"non-numeric:{key}", number, f"{key} is not a number ({cell!r}); treated as missing")
        return None


def _timm_args(path: Path, defects: _Defects) -> dict:
    """The ``args.yaml`` timm writes beside ``summary.csv`` (``X_args.yaml`` beside ``X_summary.csv``), if any."""
    sibling = path.with_name(path.name.removesuffix("summary.csv") + "args.yaml")
    if sibling == path or not sibling.is_file():
        return {}
    try:
        args = yaml.safe_load(sibling.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        line = error.problem_mark.line + 1 if getattr(error, "problem_mark", None) else 1
        defects.add("args", line, f"unreadable YAML ignored ({getattr(error, 'problem', error)})", path=sibling)
        return {}
    if not isinstance(args, dict):
        defects.add("args", 1, "not a mapping of arguments; ignored", path=sibling)
        return {}
    return args


def _parse_mm(path: Path, lines: Sequence[str], defects: _Defects) -> tuple[pd.DataFrame, str, dict]:
    args: dict = {}
    rows = []
    epoch, iteration, losses = None, None, []
    for number, record in _json_records(lines, defects):
        if "env_info" in record:
            args = {key: value for key, value in record.items() if key != "env_info"}
            continue
        values = _numeric(record, number, defects)
        if record.get("mode") == "train":
            epoch, iteration = _integral(values.get("epoch")), _integral(values.get("iter"))
            if not math.isnan(values.get("loss", math.nan)):
                losses.append(values["loss"])
            continue
        if record.get("mode") != "val":
            defects.add("mode", number, "record with neither mode 'train' nor 'val' skipped")
            continue
        row = {"epoch": _integral(values.get("epoch", epoch)), "iter": iteration, "lr": values.get("lr", math.nan),
               "train_loss": sum(losses) / len(losses) if losses else math.nan}  # fmt: skip
        for key, value in values.items():
            if key not in _MM_POSITION_KEYS and "." not in key:
                row["eval_loss" if key == "loss" else key] = value
        rows.append((number, row))
        losses = []
    step = "iter" if _evaluated_within_epochs(row for _, row in rows) else "epoch"
    if step == "epoch":
        rows = _with_epochs(rows, defects)
    frame = _records_frame(rows, step, defects)
    for column in frame.columns:
        if _FRACTION_METRICS.fullmatch(column) and frame[column].max() <= 1:
            frame[column] = frame[column] * 100
    return frame, step, args


def _evaluated_within_epochs(rows: Iterator[dict]) -> bool:
    """Whether two evaluations share a logged epoch at different iterations (an iteration-based schedule)."""
    seen: dict[object, object] = {}
    for row in rows:
        if seen.setdefault(row["epoch"], row["iter"]) != row["iter"]:
            return True
    return False


_PARSERS = {"deit": _parse_deit, "timm": _parse_timm, "mmdet": _parse_mm, "mmseg": _parse_mm}


def read_log(path: str | Path) -> RunLog:
    """Parse one training log; each kind of defect is warned about once as a :class:`LogWarning`.

    The warnings are also kept in the run's ``warnings``. Raises :class:`LogFormatError` naming the file if it is
    unreadable, empty or in no known format.
    """
    path = Path(path)
    lines = _read_lines(path)
    fmt = detect_format(path, lines)
    defects = _Defects(path)
    records, step, args = _PARSERS[fmt](path, lines, defects)
    messages = defects.messages()
    if records.empty:
        messages.append(f"{path.as_posix()}: no records (run killed before its first evaluation?)")
    for message in messages:
        warnings.warn(message, LogWarning, stacklevel=2)
    return RunLog(run_name(path), path, fmt, records, step, args, messages)


def find_logs(paths: Sequence[str | Path], patterns: Sequence[str] | str = DEFAULT_PATTERNS) -> list[Path]:
    """Files named by ``paths``: a file itself, a folder's files matching ``patterns``, or a glob's matches.

    Each folder's and glob's files come sorted; a file named twice is listed once. A path that names nothing, or
    a folder with no matching file, raises :class:`FileNotFoundError` naming it.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found: dict[Path, None] = {}
    for item in paths:
        path = Path(item)
        if path.is_dir():
            matches = sorted({match for pattern in patterns for match in path.glob(pattern) if match.is_file()})
            if not matches:
                raise FileNotFoundError(f"{item}: no training logs in this folder match {', '.join(patterns)}")
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(match) for match in glob.glob(str(item), recursive=True) if Path(match).is_file())
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no file matches it as a glob")
        found.update(dict.fromkeys(matches))
    return list(found)


def compile_group_by(regex: str | re.Pattern | None, where: str = "group_by") -> re.Pattern | None:
    """Compile a run-name regex whose named groups become table columns; errors name ``where``."""
    if regex is None or isinstance(regex, re.Pattern):
        pattern = regex
    elif not isinstance(regex, str):
        raise ValueError(f"{where}: expected a regular expression string, got {regex!r}")
    elif not regex:
        return None
    else:
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise ValueError(f"{where}: invalid regular expression {regex!r}: {error}") from None
    if pattern is not None and not pattern.groupindex:
        raise ValueError(f"{where}: {pattern.pattern!r} has no named group such as (?P<model>[^_]+)")
    clash = sorted(set(pattern.groupindex) & set(SUMMARY_COLUMNS)) if pattern is not None else []
    if clash:
        raise ValueError(f"{where}: group name {clash[0]!r} is also a summary column; rename the group")
    return pattern


def assign_groups(runs: Sequence[RunLog], group_by: str | re.Pattern | None) -> list[str]:
    """Set each run's ``groups`` from the named groups of ``group_by`` searched in its name; returns their names.

    A run whose name does not match keeps empty groups and gets a :class:`LogWarning`. A group whose every
    value is a decimal integer (a resolution, an epoch count) holds ints, so tables sort it numerically.
    """
    pattern = compile_group_by(group_by)
    names = sorted(pattern.groupindex, key=pattern.groupindex.get) if pattern else []
    for run in runs:
        match = pattern.search(run.name) if pattern else None
        run.groups = {name: match.group(name) if match else None for name in names}
        if pattern and not match:
            message = f"{run.path.as_posix()}: run name {run.name!r} does not match the group-by regex; no groups"
            run.warnings.append(message)
            warnings.warn(message, LogWarning, stacklevel=2)
    for name in names:
        values = [run.groups[name] for run in runs if run.groups[name] is not None]
        if values and all(value.isdecimal() for value in values):
            for run in runs:
                run.groups[name] = int(run.groups[name]) if run.groups[name] is not None else None
    return names


def read_logs(
    paths: Sequence[str | Path], patterns: Sequence[str] | str = DEFAULT_PATTERNS,
    group_by: str | re.Pattern | None = None,
) -> list[RunLog]:  # fmt: skip
    """Parse every log :func:`find_logs` finds under ``paths`` and group the runs by ``group_by``."""
    pattern = compile_group_by(group_by)
    runs = [read_log(path) for path in find_logs(paths, patterns)]
    assign_groups(runs, pattern)
    return runs


def _group_names(runs: Sequence[RunLog]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name in run.groups))


def _values(records: pd.DataFrame, column: str) -> pd.Series:
    return records[column].dropna() if column in records.columns else pd.Series(dtype="float64")


def _last(records: pd.DataFrame, column: str, cast: type = float) -> object:
    values = _values(records, column)
    return cast(values.iloc[-1]) if len(values) else None


def run_metrics(run: RunLog) -> dict[str, object]:
    """The summary of one run: epochs, best/last top-1, top-5, parameters, final box/mask AP and mIoU (percent).

    ``best_top1`` and ``best_top5`` are maxima over epochs (``best_epoch`` is the first epoch reaching
    ``best_top1``, as logged); ``last_top1`` is the last logged top-1; ``epochs`` counts the epochs logged
    (``iters`` is the last iteration of iteration-based runs). Values are unrounded.
    """
    records = run.records
    top1 = _values(records, "top1")
    top5 = _values(records, "top5")
    by_epoch = run.step == "epoch"
    return {
        "epochs": len(records) if by_epoch else None,
        "iters": None if by_epoch else _last(records, "iter", int),
        "best_top1": float(top1.max()) if len(top1) else None,
        "best_epoch": int(records.loc[top1.idxmax(), "epoch"]) if len(top1) else None,
        "last_top1": float(top1.iloc[-1]) if len(top1) else None,
        "best_top5": float(top5.max()) if len(top5) else None,
        "n_parameters": _last(records, "n_parameters", int),
        "box_ap": _last(records, "bbox_mAP"),
        "mask_ap": _last(records, "segm_mAP"),
        "miou": _last(records, "mIoU"),
    }


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
