"""Finding, recognising and reading logs; run names and group-by columns."""

from __future__ import annotations

import csv
import glob
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from .base import (
    _JSON_KEY,
    DEFAULT_PATTERNS,
    SUMMARY_COLUMNS,
    LogFormatError,
    LogWarning,
    RunLog,
    _Defects,
    _read_lines,
    run_name,
)
from .deit import _parse_deit
from .mm import _parse_mm
from .swin import _parse_swin, looks_like_swin
from .timm import _parse_timm


def detect_format(path: str | Path, lines: Sequence[str]) -> str:
    """Which of :data:`LOG_FORMATS` the ``lines`` of ``path`` are in, from their first non-blank line (a Swin-style
    text log, from its `` * Acc@1`` and ``Accuracy of the network`` lines).

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
    if not keys and looks_like_swin(lines):
        return "swin"
    raise LogFormatError(
        f"{Path(path).as_posix()}: not a training log in a known format (DeiT/LeViT log.txt, timm summary.csv, "
        f"MMDetection/MMSegmentation JSON, Swin-style text log); it starts with {first.strip()[:60]!r}"
    )


_PARSERS = {"deit": _parse_deit, "timm": _parse_timm, "mmdet": _parse_mm, "mmseg": _parse_mm, "swin": _parse_swin}


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
