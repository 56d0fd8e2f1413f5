"""Timing within one process: interleaved calls of configurations that share one backend, and their spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call for each entry of ``calls``: ``warmup`` untimed calls each, then ``rounds``
    rounds that call every entry once, in an order rotated each round.

    Only for entries that run on one backend in this process (e.g. training and fused forms in eager
    mode, as the tutorial compares them); different backends belong in separate workers (:func:`benchmark`).
    """
    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key]()
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - start)
    return times


def spread(times: Sequence[float]) -> tuple[float, float, float]:
    """Median, inter-quartile range and minimum of ``times`` (seconds), in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    if len(ms) < 2:
        return ms[0], 0.0, ms[0]
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return statistics.median(ms), q3 - q1, ms[0]
