"""A full file system under an output folder: one line naming the path and "no space left", no half-written file.

The folder is a 256 KiB tmpfs, mounted for the test; where mounting is not permitted (not root), the tests skip."""

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from repnext.cli import main
from repnext.datasets import materialize_dataset
from repnext.registry import create_model

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    mount = tmp_path_factory.mktemp("full")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def folder(full_disk):
    """A fresh, empty folder on the full file system for one test."""
    path = full_disk / uuid.uuid4().hex[:8]
    path.mkdir()
    yield path
    with contextlib.suppress(OSError):
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()


def _one_line(argv, where):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    line = str(raised.value)
    assert "\n" not in line and line.endswith("no space left on device (no file is left half-written)"), line
    assert str(where) in line, line
    return line


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("fmt, name", [("torchscript", "m.pt"), ("onnx", "m.onnx")])
def test_export_to_a_full_disk(fmt, name, folder):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    _one_line(["export", "repnext_m0", "--format", fmt, "--resolution", "32", "-o", str(folder / name)], folder / name)
    assert _files(folder) == []


def test_publish_to_a_full_disk(folder, tmp_path):
    checkpoint = tmp_path / "best.pth"
    model = create_model("repnext_m0", num_classes=3)
    torch.save({"model": model.state_dict(), "epoch": 0, "class_names": ["a", "b", "c"]}, checkpoint)
    _one_line(
        ["publish", str(checkpoint), "--model", "repnext_m0", "--fused", "-o", str(folder / "pub")], folder / "pub"
    )
    assert _files(folder) == []


def test_train_to_a_full_disk(folder, tmp_path):
    data = materialize_dataset("builtin:photos", tmp_path / "photos", size=16, train_per_class=2, val_per_class=1)
    out = folder / "run"
    _one_line(["train", "repnext_m0", "--data", str(data), "--epochs", "1", "--img-size", "32", "--batch-size", "8",
               "--out", str(out)], out)  # fmt: skip
    # Only complete files: at most the log of the finished epoch (resume drops rows past the last checkpoint).
    assert set(_files(folder)) <= {"run", "run/log.txt"}
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in folder.rglob("*"))
