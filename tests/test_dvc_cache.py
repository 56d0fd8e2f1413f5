"""A corrupt object in DVC's cache is never restored as an output: ``make repro`` repairs it or has it rebuilt."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repnext.dvc_cache import cache_dir, repair_cache

ROOT = Path(__file__).parents[1]
# A stage with a cached folder output, as the dataset and publish stages have (with a dependency: DVC reruns a stage
# without one every time).
DVC_YAML = """stages:
  make:
    cmd: python -c "import pathlib; p = pathlib.Path('out'); p.mkdir(); [(p / f'{i}.txt').write_text(str(i) * 9)
      for i in range(3)]"
    deps:
      - seed.txt
    outs:
      - out
"""


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _object(repo: Path, md5: str) -> Path:
    return cache_dir(repo) / "files" / "md5" / md5[:2] / md5[2:]


def _corrupt(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"flipped")
    path.chmod(0o444)


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _dvc(tmp_path, "init", "-q")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "seed.txt").write_text("0\n")
    _dvc(tmp_path, "repro", "-q")
    return tmp_path


def test_a_corrupt_object_dvc_would_restore_is_removed_and_its_output_rebuilt(repo):
    expected = _md5(repo / "out" / "1.txt")
    _corrupt(_object(repo, expected))
    (repo / "out" / "1.txt").unlink()
    _dvc(repo, "repro", "-q")  # DVC alone restores the corrupt bytes and calls the pipeline up to date
    assert _md5(repo / "out" / "1.txt") != expected and "up to date" in _dvc(repo, "status").stdout
    check = subprocess.run([sys.executable, str(ROOT / "repnext" / "dvc_cache.py")], cwd=repo, capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0
    stored = _object(repo, expected).relative_to(repo)
    assert check.stderr.splitlines() == [f"make repro: DVC cache: {stored} (of out/1.txt) was corrupt; removed it "
                                         "and the copy restored from it, so that dvc repro rebuilds out"]  # fmt: skip
    assert "Running stage 'make'" in _dvc(repo, "repro").stdout
    assert _md5(repo / "out" / "1.txt") == expected == _md5(_object(repo, expected))
    assert repair_cache(repo) == []


def test_a_corrupt_object_whose_workspace_copy_is_intact_is_restored_from_it(repo):
    expected = _md5(repo / "out" / "2.txt")
    _corrupt(_object(repo, expected))
    assert repair_cache(repo) == [f"DVC cache: {_object(repo, expected)} (of out/2.txt) was corrupt; restored it "
                                  "from the workspace copy"]  # fmt: skip
    assert _md5(_object(repo, expected)) == expected and oct(_object(repo, expected).stat().st_mode)[-3:] == "444"


def test_a_corrupt_folder_listing_is_removed_and_the_folder_recached(repo):
    lock = (repo / "dvc.lock").read_text()
    listing = _object(repo, next(word for word in lock.split() if word.endswith(".dir")))
    _corrupt(listing)
    (line,) = repair_cache(repo)
    assert line.startswith(f"DVC cache: {listing} (of out) was corrupt") and not listing.exists()
    _dvc(repo, "repro", "-q")
    assert json.loads(listing.read_text())[0]["relpath"] == "0.txt" and repair_cache(repo) == []
