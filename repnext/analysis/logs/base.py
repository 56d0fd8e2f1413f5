"""Shared pieces of the log readers: the run record, defect bookkeeping, JSON-line and epoch helpers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

LOG_FORMATS = ("deit", "timm", "mmdet", "mmseg", "swin")
DEFAULT_PATTERNS = ("**/*.txt", "**/*summary.csv", "**/*.json")
SUMMARY_COLUMNS = (
    "run", "format", "epochs", "iters", "best_top1", "best_epoch", "last_top1", "best_top5", "n_parameters",
    "best_ema_top1", "best_ema_epoch", "last_ema_top1", "best_ema_top5",
    "box_ap", "best_box_ap", "best_box_ap_at", "mask_ap", "best_mask_ap", "best_mask_ap_at",
    "miou", "best_miou", "best_miou_at", "warnings", "path",
)  # fmt: skip
# Detection and segmentation metrics by their summary names: the MMCV record key each one is read from.
DOWNSTREAM_METRICS = {
    "box_ap": "bbox_mAP", "box_ap50": "bbox_mAP_50", "box_ap75": "bbox_mAP_75",
    "mask_ap": "segm_mAP", "mask_ap50": "segm_mAP_50", "mask_ap75": "segm_mAP_75",
    "miou": "mIoU", "aacc": "aAcc", "macc": "mAcc",
}  # fmt: skip
CURVE_METRICS = ("top1", "top5", "train_loss", "eval_loss", "bbox_mAP", "segm_mAP", "mIoU")
PLOT_METRICS = ("top1", "train_loss", "eval_loss")

# Shown only when some run has a value: classification tables need no detection columns and vice versa.
_OPTIONAL_COLUMNS = frozenset(
    {"iters", "best_ema_top1", "best_ema_epoch", "last_ema_top1", "best_ema_top5", "box_ap", "best_box_ap",
     "best_box_ap_at", "mask_ap", "best_mask_ap", "best_mask_ap_at", "miou", "best_miou", "best_miou_at"}
)  # fmt: skip
_FLOATS = {
    "best_top1": ".2f", "last_top1": ".2f", "best_top5": ".2f", "best_ema_top1": ".2f", "last_ema_top1": ".2f",
    "best_ema_top5": ".2f", "box_ap": ".1f", "best_box_ap": ".1f", "mask_ap": ".1f", "best_mask_ap": ".1f",
    "miou": ".1f", "best_miou": ".1f",
}  # fmt: skip
_FOLDER_NAMED = ("log.txt", "summary.csv", "log_rank0.txt")
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
