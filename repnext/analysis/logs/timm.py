"""timm ``train.py``'s ``summary.csv`` and the sibling ``args.yaml``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from .base import _EXPECTED, _RENAMES, _Defects, _numeric, _records_frame, _with_epochs


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
