"""Vendored data checked against its manifest: every file's size and sha256, and no file left unlisted.

A vendored folder (``logs/upstream``) holds one sub-folder per source repository (``RepNeXt/``, ``RecNeXt/``) and a
``MANIFEST.tsv`` with the columns ``repository, commit, path, sha256, bytes``: ``path`` is the file's path inside
``repository`` (``suous/RepNeXt``), vendored at ``<root>/<repository name>/<path>``. Besides the listed files the
folder may hold only ``README.md`` and the manifest itself.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.tsv"
MANIFEST_COLUMNS = ("repository", "commit", "path", "sha256", "bytes")
UNLISTED_OK = frozenset({MANIFEST, "README.md"})


class ManifestError(ValueError):
    """A vendored file that is missing, altered or unlisted, or a malformed manifest; the message names it."""


@dataclass(frozen=True)
class VendoredFile:
    """One manifest row: where the file came from and where it is vendored (``local``, relative to the root)."""

    repository: str
    commit: str
    path: str
    sha256: str
    size: int
    local: str


def read_manifest(root: str | Path) -> list[VendoredFile]:
    """The rows of ``<root>/MANIFEST.tsv``; a malformed row raises :class:`ManifestError` naming ``file:line``."""
    manifest = Path(root) / MANIFEST
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ManifestError(f"{manifest.as_posix()}: cannot read: {error.strerror}") from None
    rows = list(csv.reader(lines, delimiter="\t"))
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
        raise ManifestError(f"{manifest.as_posix()}:1: header must be {' '.join(MANIFEST_COLUMNS)}")
    files = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(MANIFEST_COLUMNS) or "/" not in row[0] or not row[4].isdecimal() or len(row[3]) != 64:
            raise ManifestError(f"{manifest.as_posix()}:{number}: malformed row {row!r}")
        repository, commit, path, sha256, size = row
        files.append(VendoredFile(repository, commit, path, sha256, int(size), f"{repository.split('/')[1]}/{path}"))
    return files


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_vendored(root: str | Path) -> list[VendoredFile]:
    """Check every file under ``root`` against its manifest; return the rows, or raise :class:`ManifestError`.

    The first problem found is reported, naming the file: missing, a size or sha256 other than the manifest's, or
    a file the manifest does not list.
    """
    root = Path(root)
    files = read_manifest(root)
    for item in files:
        path = root / item.local
        if not path.is_file():
            raise ManifestError(f"{path.as_posix()}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != item.size:
            raise ManifestError(f"{path.as_posix()}: {size} bytes, {MANIFEST} says {item.size} (file altered?)")
        if sha256_file(path) != item.sha256:
            raise ManifestError(f"{path.as_posix()}: sha256 differs from {MANIFEST} (file altered?)")
    listed = {item.local for item in files} | UNLISTED_OK
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.relative_to(root).as_posix() not in listed:
            raise ManifestError(f"{path.as_posix()}: not listed in {root.as_posix()}/{MANIFEST}")
    return files
