"""Atomic, deterministic file output: a failed run never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts should be as readable as any file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_serialized(path: str | os.PathLike, save: Callable[[io.BytesIO], object]) -> None:
    """Write what ``save(buffer)`` serializes (``torch.save``, ``torch.jit.save``) to ``path`` from memory.

    torch's own file writer aborts the process when the disk fills up; Python's write raises ``OSError``
    (``ENOSPC``), which callers turn into one line and whose temporary files are removed.
    """
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as file:
        file.write(buffer.getbuffer())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` with ``\\n`` line ends, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move directory ``new`` to ``target``, replacing an existing ``target`` only once ``new`` is complete."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old)
