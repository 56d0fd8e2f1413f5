"""Swin-Transformer-style text logs, as MLLA-based runs write them (``log_rank0.txt``).

A YAML config dump and a model printout, then per epoch a line ending in ``EPOCH n``, training lines
(``Train: [n/N][i/I] ... loss L (mean) ...``), `` * Acc@1 A Acc@5 B`` and ``Accuracy of the network on the N test
images: X%``, optionally followed by the same two lines for the EMA model (``Accuracy of the ema network ...``).
Logger prefixes (``[date name](file line): INFO``) may precede any line. Records: ``epoch, top1, top5`` of the model,
``ema_top1, ema_top5`` of its EMA, ``train_loss`` (the running mean of the epoch's last training line) and
``n_parameters`` (from ``number of params: P``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .base import _Defects, _records_frame

_EPOCH = re.compile(r"\bEPOCH\s+(\d+)\s*$")
_ACC = re.compile(r"\*\s*Acc@1\s+(\S+)\s+Acc@5\s+(\S+)\s*$")
_NETWORK = re.compile(r"Accuracy of the (ema )?network on the \d+ test images:\s*(\S+?)%")
_PARAMS = re.compile(r"number of params:\s*(\d+)")
_TRAIN = re.compile(r"Train: \[\d+/\d+\]\[\d+/\d+\].*?\bloss\s+\S+\s+\((\S+)\)")


def looks_like_swin(lines: Sequence[str]) -> bool:
    """Whether ``lines`` hold both a `` * Acc@1 .. Acc@5 ..`` line and an ``Accuracy of the network`` line."""
    return any(_ACC.search(line) for line in lines) and any(_NETWORK.search(line) for line in lines)


def _number(text: str, number: int, key: str, defects: _Defects) -> float | None:
    try:
        return float(text)
    except ValueError:
        defects.add(f"non-numeric:{key}", number, f"{key} is not a number ({text!r}); treated as missing")
        return None


def _parse_swin(path: Path, lines: Sequence[str], defects: _Defects) -> tuple[pd.DataFrame, str, dict]:
    rows: list[tuple[int, dict]] = []
    row: dict | None = None
    pending: tuple[int, float | None, float | None] | None = None  # the last Acc@1/Acc@5 line, not yet attributed
    parameters = None
    for number, line in enumerate(lines, start=1):
        if match := _EPOCH.search(line):
            if pending:
                defects.add("orphan", pending[0], "Acc@1 line without an 'Accuracy of the network' line; skipped")
            row, pending = {"epoch": int(match.group(1))}, None
            rows.append((number, row))
        elif match := _PARAMS.search(line):
            parameters = int(match.group(1))
        elif match := _TRAIN.search(line):
            if row is not None:
                row["train_loss"] = _number(match.group(1), number, "loss", defects)
        elif match := _ACC.search(line):
            pending = (number, _number(match.group(1), number, "Acc@1", defects),
                       _number(match.group(2), number, "Acc@5", defects))  # fmt: skip
        elif match := _NETWORK.search(line):
            prefix = "ema_" if match.group(1) else ""
            if row is None:
                defects.add("no-epoch", number, "evaluation before any 'EPOCH n' line; skipped")
            elif pending is None:
                defects.add("no-acc", number, f"no ' * Acc@1 .. Acc@5 ..' line before this {prefix}accuracy; skipped")
            else:
                row[f"{prefix}top1"], row[f"{prefix}top5"] = pending[1], pending[2]
            pending = None
    if pending:
        defects.add("truncated", pending[0], "last Acc@1 line has no 'Accuracy of the network' line (killed run?)")
    for _, record in rows:
        if "top1" not in record:
            defects.add("no-eval", _line_of(rows, record), f"epoch {record['epoch']} has no evaluation")
        record["n_parameters"] = parameters
    frame = _records_frame(rows, "epoch", defects)
    return frame, "epoch", {}


def _line_of(rows: Sequence[tuple[int, dict]], record: dict) -> int:
    return next(number for number, item in rows if item is record)
