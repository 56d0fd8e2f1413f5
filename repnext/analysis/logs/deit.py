"""DeiT/LeViT ``log.txt``: one JSON object per epoch and line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .base import _EXPECTED, _RENAMES, _Defects, _json_records, _numeric, _records_frame, _with_epochs


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
