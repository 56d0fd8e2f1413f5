"""MMDetection/MMSegmentation (MMCV) JSON logs: an ``env_info`` line, then ``train`` and ``val`` records."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from .base import (
    _FRACTION_METRICS,
    _MM_POSITION_KEYS,
    _Defects,
    _integral,
    _json_records,
    _numeric,
    _records_frame,
    _with_epochs,
)


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
