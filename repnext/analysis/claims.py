"""The claims ledger: each checkable claim of the papers and model cards, judged by a rule on a pipeline table.

``repnext/data/claims.csv`` holds one claim per row: ``id``, ``kind``, ``source`` (document and section) and the
``claim`` paraphrased in one line, then how it is judged: ``evidence`` (a CSV table the pipeline writes),
``select`` (a pandas query picking its rows; empty for all), ``rule`` (a boolean expression every selected row must
satisfy), optionally ``strict`` (a stronger expression) with the ``qualification`` that applies when the rule holds
and ``strict`` does not; or, for a claim no table here can speak to, ``needs`` (what a test would take).

A claim judged on a time measurement (an evidence file named ``latency*``) goes to a ledger of its own, so that
the exact ledger stays byte-identical across reruns and machines.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..tables import Table

VERDICTS = ("holds", "holds with a qualification", "does not hold here", "not testable here")
KINDS = ("architecture count", "accuracy from logs", "latency", "equivalence", "scaling", "receptive field",
         "precision", "downstream")  # fmt: skip
LEDGER_COLUMNS = ("id", "kind", "claim", "source", "verdict", "detail", "evidence")
_SHOWN = 3  # failing rows named in a detail
# The columns that name a row in the evidence tables, in the order a detail gives them
_KEYS = ("model", "run", "name", "group", "context", "target", "form", "setting", "metric", "backend", "level")


class ClaimError(ValueError):
    """A claim that cannot be judged (bad row, missing evidence); the message is one line naming file:line."""


@dataclass(frozen=True)
class Claim:
    id: str
    kind: str
    source: str
    claim: str
    evidence: str
    select: str
    rule: str
    strict: str
    qualification: str
    needs: str
    where: str = ""  # file:line, for messages


def read_claims(path: str | os.PathLike) -> list[Claim]:
    """The claims of ``path``, each checked for a known kind, a unique id and one way of being judged."""
    names = [f.name for f in fields(Claim) if f.name != "where"]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != names:
            got = ",".join(reader.fieldnames or [])
            raise ClaimError(f"{path}:1: expected the columns {','.join(names)}, got {got}")
        claims = [Claim(**row, where=f"{path}:{reader.line_num}") for row in reader]
    seen: set[str] = set()
    for claim in claims:
        if claim.kind not in KINDS:
            raise ClaimError(f"{claim.where}: claim {claim.id}: kind {claim.kind!r} is not one of {', '.join(KINDS)}")
        if claim.id in seen or not claim.id:
            raise ClaimError(f"{claim.where}: claim id {claim.id!r} is empty or repeated")
        seen.add(claim.id)
        if bool(claim.evidence) == bool(claim.needs) or bool(claim.evidence) != bool(claim.rule):
            raise ClaimError(f"{claim.where}: claim {claim.id}: give evidence and a rule, or what it needs, not both")
        if bool(claim.strict) != bool(claim.qualification):
            raise ClaimError(f"{claim.where}: claim {claim.id}: a strict rule comes with its qualification")
    return claims


def judge(claim: Claim, root: str | os.PathLike = ".") -> dict[str, str]:
    """One ledger row: the claim's verdict (one of :data:`VERDICTS`) and a one-line detail computed from its rows."""
    row = dict(id=claim.id, kind=claim.kind, claim=claim.claim, source=claim.source, evidence=claim.evidence)
    if not claim.evidence:
        return dict(row, verdict=VERDICTS[3], detail=f"needs {claim.needs}")
    rows = _selected(claim, Path(root))
    failing = _failing(claim, rows, claim.rule)
    if len(failing):
        detail = f"{len(failing)} of {len(rows)} rows fail {claim.rule}: {_describe(failing, claim.rule)}"
        return dict(row, verdict=VERDICTS[2], detail=detail)
    loose = _failing(claim, rows, claim.strict) if claim.strict else rows.iloc[:0]
    if len(loose):
        detail = f"{claim.qualification} ({len(loose)} of {len(rows)} rows: {_describe(loose, claim.strict)})"
        return dict(row, verdict=VERDICTS[1], detail=detail)
    return dict(row, verdict=VERDICTS[0], detail=f"{len(rows)} of {len(rows)} rows meet {claim.strict or claim.rule}")


def is_timed(claim: Claim) -> bool:
    """Whether the claim is judged on a time measurement (its evidence is a ``latency*`` file)."""
    return Path(claim.evidence).name.startswith("latency")


def ledger(claims: list[Claim], root: str | os.PathLike = ".") -> Table:
    """The judged claims as a table, in the order of the claims file."""
    rows = [dict(judge(claim, root), order=index) for index, claim in enumerate(claims)]
    return Table(LEDGER_COLUMNS, rows, sort_by=("order",))


def verdict_counts(rows: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """How many of the ledger's ``rows`` got each verdict, in the order of :data:`VERDICTS` (zeros included)."""
    counted = Counter(row["verdict"] for row in rows)
    return {verdict: counted[verdict] for verdict in VERDICTS}


def _selected(claim: Claim, root: Path) -> pd.DataFrame:
    path = root / claim.evidence
    if not path.is_file():
        raise ClaimError(f"{claim.where}: claim {claim.id}: evidence {claim.evidence} does not exist")
    frame = pd.read_csv(path, true_values=["true"], false_values=["false"], keep_default_na=True)
    try:
        rows = frame.query(claim.select, engine="python") if claim.select else frame
    except Exception as error:  # pandas raises many kinds for a bad expression
        raise ClaimError(f"{claim.where}: claim {claim.id}: select {claim.select!r}: {error}") from None
    if rows.empty:
        raise ClaimError(f"{claim.where}: claim {claim.id}: select {claim.select!r} finds no row of {claim.evidence}")
    return rows


def _failing(claim: Claim, rows: pd.DataFrame, expression: str) -> pd.DataFrame:
    try:
        held = rows.eval(expression, engine="python")
    except Exception as error:
        raise ClaimError(f"{claim.where}: claim {claim.id}: rule {expression!r}: {error}") from None
    if not isinstance(held, pd.Series) or held.dtype != bool:
        raise ClaimError(f"{claim.where}: claim {claim.id}: rule {expression!r} is not true or false for each row")
    return rows[~held]


def _describe(rows: pd.DataFrame, expression: str) -> str:
    """The first rows, each by its key (the columns of :data:`_KEYS` it has, else its first column) and the values
    of the columns the expression names."""
    keys = [c for c in _KEYS if c in rows.columns] or [rows.columns[0]]
    named = [c for c in rows.columns if re.search(rf"(?<![\w`]){re.escape(c)}(?![\w`])|`{re.escape(c)}`", expression)]
    shown = []
    for _, row in rows.head(_SHOWN).iterrows():
        key = " ".join(_value(row[c]) for c in keys if _value(row[c]))
        values = ", ".join(f"{c}={_value(row[c])}" for c in named if c not in keys)
        shown.append(f"{key} ({values})" if values else key)
    return "; ".join(shown) + ("; ..." if len(rows) > _SHOWN else "")


def _value(value: object) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:g}"
    return str(value).lower() if isinstance(value, bool | np.bool_) else str(value)
