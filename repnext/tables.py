"""Deterministic rendering of result tables as CSV, Markdown, LaTeX and JSON.

Rows are sorted by the given keys, columns keep their given order, floats use one fixed format
per column and every line ends in ``\\n``, so reruns produce byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .io import write_text

FORMATS = ("csv", "md", "latex", "json")
_LATEX_ESCAPES = {"\\": r"\textbackslash{}"}


@dataclass
class Table:
    """Rows of values under named columns; ``floats`` maps a column to its format (default ``.4g``)."""

    columns: Sequence[str]
    rows: list[Mapping[str, object]]
    floats: Mapping[str, str] = field(default_factory=dict)
    sort_by: Sequence[str] = ()

    def sorted_rows(self) -> list[Mapping[str, object]]:
        return sorted(self.rows, key=lambda row: tuple(_sort_key(row.get(c)) for c in self.sort_by))

    def cell(self, row: Mapping[str, object], column: str) -> str:
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return format(value, self.floats.get(column, ".4g"))
        return str(value)

    def render(self, fmt: str) -> str:
        if fmt not in FORMATS:
            raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
        rows = [[self.cell(row, c) for c in self.columns] for row in self.sorted_rows()]
        return {"csv": _csv, "md": _markdown, "latex": _latex, "json": self._json}[fmt](list(self.columns), rows)

    def _json(self, columns: list[str], rows: list[list[str]]) -> str:
        records = [{c: _json_value(row.get(c), self.cell(row, c)) for c in columns} for row in self.sorted_rows()]
        return json.dumps(records, indent=2) + "\n"

    def write(self, path: str | os.PathLike, fmt: str | None = None) -> None:
        """Write atomically; the format defaults to the file suffix (``.csv``, ``.md``, ``.tex``, ``.json``)."""
        suffix = os.path.splitext(os.fspath(path))[1].lstrip(".")
        write_text(path, self.render(fmt or {"tex": "latex"}.get(suffix, suffix)))


def _sort_key(value: object) -> tuple:
    return (value is None, str(type(value).__name__), value if value is not None else 0)


def _json_value(value: object, text: str) -> object:
    if isinstance(value, float):
        return float(text) if text else None
    return value


def _csv(columns: list[str], rows: list[list[str]]) -> str:
    def quote(text: str) -> str:
        return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(ch in text for ch in ',"\n') else text

    return "".join(",".join(quote(t) for t in line) + "\n" for line in [columns, *rows])


def _markdown(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |\n"

    return line(columns) + line(["---"] * len(columns)) + "".join(line(r) for r in rows)


def _latex(columns: list[str], rows: list[list[str]]) -> str:
    def escape(text: str) -> str:
        return re.sub(r"[\\&%$#_{}]", lambda m: _LATEX_ESCAPES.get(m.group(), "\\" + m.group()), text)

    body = "".join(" & ".join(escape(c) for c in r) + " \\\\\n" for r in rows)
    head = " & ".join(escape(c) for c in columns) + " \\\\\n"
    spec = "l" * len(columns)
    return f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n{head}\\midrule\n{body}\\bottomrule\n\\end{{tabular}}\n"
