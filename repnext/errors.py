"""Every failure the user sees is one line: how an exception from a library becomes one."""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first non-blank line of the message`` (just ``Type`` without one), at most ``limit`` characters."""
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return (f"{type(error).__name__}: {reason}" if reason else type(error).__name__)[:limit]
