"""Find and repair corrupt objects in DVC's cache before a pipeline run (``make repro``).

DVC trusts its cache: a cached output (``data/photos``, the published folder) missing from the workspace is
copied back from the cache without checking the bytes, so a damaged object would come back as a damaged input
(DVC issue #5978). This check hashes every cache object that ``dvc.lock`` names. A corrupt object is replaced by
the workspace's copy when that copy has the right hash; otherwise it is removed, with the workspace copy DVC made
from it (which DVC records as intact), so that ``dvc repro`` runs the stage again instead of restoring it. Each
repair is one line naming the object and the output.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import yaml


def cache_dir(root: Path) -> Path:
    """DVC's cache folder: ``cache.dir`` of ``.dvc/config.local`` or ``.dvc/config`` (relative to ``.dvc``)."""
    for name in ("config.local", "config"):
        config = configparser.ConfigParser()
        config.read(root / ".dvc" / name)
        if config.has_option("cache", "dir"):
            return (root / ".dvc" / config.get("cache", "dir")).resolve()
    return root / ".dvc" / "cache"


def _md5(path: Path) -> str:
    """As ``repnext.report.file_md5``, which this file cannot import without loading torch through the package."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def locked_objects(root: Path) -> list[tuple[str, str, str]]:
    """``(output, workspace path, md5)`` of every output in ``dvc.lock``: its own object, and for a folder (a
    ``.dir`` object listing its files) one entry per file, once that listing is intact."""
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) if (root / "dvc.lock").is_file() else {}
    cache, objects = cache_dir(root), []
    for stage in (lock or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            md5 = out.get("md5")
            if not md5:
                continue
            objects.append((out["path"], out["path"], md5))
            listing = _object(cache, md5)
            if md5.endswith(".dir") and listing.is_file() and _md5(listing) == md5.removesuffix(".dir"):
                entries = json.loads(listing.read_text(encoding="utf-8"))
                objects += [(out["path"], f"{out['path']}/{e['relpath']}", e["md5"]) for e in entries]
    return objects


def repair_cache(root: str | os.PathLike = ".") -> list[str]:
    """Repair every corrupt cache object that ``dvc.lock`` names; return one line per repair."""
    root = Path(root)
    cache, lines = cache_dir(root), []
    for output, path, md5 in locked_objects(root):
        stored = _object(cache, md5)
        found = _md5(stored) if stored.is_file() else None
        if found in (None, md5.removesuffix(".dir")):
            continue  # not cached here (cache: false, or never built), or intact
        workspace = root / path
        if not md5.endswith(".dir") and workspace.is_file() and _md5(workspace) == md5:
            stored.chmod(0o644)
            shutil.copyfile(workspace, stored)
            stored.chmod(0o444)  # as DVC keeps its objects: read-only
            lines.append(f"DVC cache: {stored} (of {path}) was corrupt; restored it from the workspace copy")
            continue
        stored.unlink()
        if workspace.is_file() and _md5(workspace) == found:  # DVC restored it from the corrupt object as intact
            workspace.unlink()
        lines.append(f"DVC cache: {stored} (of {path}) was corrupt; removed it and the copy restored from it, so "
                     f"that dvc repro rebuilds {output}")  # fmt: skip
    return lines


if __name__ == "__main__":  # make repro runs this file itself: importing the package would load torch first
    for line in repair_cache():
        print(f"make repro: {line}", file=sys.stderr)
