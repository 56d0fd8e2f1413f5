"""Progress bars for commands run by hand: on by default on a terminal, never in a pipeline log.

Library functions take ``progress: bool = False`` (so notebooks and stages stay quiet); the CLI turns
``--progress`` / ``--no-progress`` (default: whether stderr is a terminal) into that flag.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from tqdm import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (``args.progress``: ``True``, ``False`` or ``None`` when not given)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="progress bars on stderr (default on a terminal)")  # fmt: skip
    group.add_argument("--no-progress", dest="progress", action="store_false", help="(default when not a terminal)")


def wanted(choice: bool | None) -> bool:
    """The ``--progress`` choice, or, when none was given, whether stderr is a terminal."""
    return sys.stderr.isatty() if choice is None else choice


def bar(iterable: Iterable | None = None, desc: str = "", enabled: bool = False, total: int | None = None) -> tqdm:
    """A transient bar on stderr over ``iterable`` (or ``total`` steps, advanced with ``update``); a no-op when
    not ``enabled``."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, file=sys.stderr)
