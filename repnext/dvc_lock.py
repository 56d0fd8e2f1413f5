"""Whether another pipeline run holds this repository, said before a second one starts (``make repro``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def running_pipeline(root: str | os.PathLike = ".") -> str | None:
    """Another live process's DVC command that holds outputs of the repository at ``root``, or None.

    DVC records the processes that read or write outputs in ``.dvc/tmp/rwlock``; a second ``dvc repro`` would
    only find out at the first stage they share, after going through the others.
    """
    try:
        lock = json.loads((Path(root) / ".dvc" / "tmp" / "rwlock").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    holders = list(lock.get("write", {}).values()) + [i for v in lock.get("read", {}).values() for i in v]
    for holder in holders:
        pid = holder.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            return f"PID {pid}: {holder.get('cmd', '?')}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


if __name__ == "__main__":  # make repro runs this file itself: importing the package would load torch first
    busy = running_pipeline()
    if busy:
        sys.exit(f"make repro: another pipeline run holds this repository ({busy}); wait for it to finish")
