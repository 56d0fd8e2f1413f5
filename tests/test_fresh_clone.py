"""The newcomer path: clone the repository, edit one params.yaml section, rebuild that stage through DVC."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repnext.report import dir_md5, file_md5, is_time_measurement

ROOT = Path(__file__).parents[1]
# The cheapest stage that reads params.yaml: the dataset, here reduced to 8 classes x (2 train + 1 val) crops of 16 px.
REDUCED = {"size": 16, "train_per_class": 2, "val_per_class": 1}


def _in_git_checkout() -> bool:
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True)
    return found.returncode == 0 and Path(found.stdout.strip()).resolve() == ROOT.resolve()


def _edit_section(text: str, section: str, values: dict) -> str:
    """``text`` of params.yaml with ``values`` set in the block ``section`` (other lines untouched, byte for byte)."""
    block = re.search(rf"^{section}:\n(?:[ ]+.*\n)+", text, re.MULTILINE)
    assert block, f"params.yaml has no block section {section!r}"
    edited = block.group()
    for key, value in values.items():
        edited, count = re.subn(rf"^(  {key}: ).*$", rf"\g<1>{value}", edited, flags=re.MULTILINE)
        assert count == 1, f"params.yaml: {section}.{key} not found"
    return text[: block.start()] + edited + text[block.end() :]


@pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout of the repository")
def test_a_fresh_clone_rebuilds_an_edited_stage_through_dvc(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    params = clone / "params.yaml"
    params.write_text(_edit_section(params.read_text(), "dataset", REDUCED))
    env = {**os.environ, "PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, capture_output=True, text=True)

    repro = dvc("repro", "--single-item", "dataset")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    status = dvc("status", "dataset", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr

    # What the edit asked for was built, and dvc.lock records it ...
    root = yaml.safe_load(params.read_text())["dataset"]["root"]
    images = sorted(p.relative_to(clone / root).parts[0] for p in (clone / root).rglob("*.png"))
    assert images.count("train") == 8 * REDUCED["train_per_class"] and images.count("val") == 8
    locked = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["dataset"]
    assert locked["params"]["params.yaml"]["dataset"]["size"] == REDUCED["size"]
    assert locked["outs"][0]["md5"] == dir_md5(clone / root)
    # ... and nothing else changed: every committed output is byte-identical, no file appeared or vanished.
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert sorted(changed.stdout.splitlines()) == [" M dvc.lock", " M params.yaml"], changed.stdout


@functools.cache
def _stages() -> dict:
    """Every stage of dvc.yaml (name -> dvc's stage)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.addressing: stage for stage in repo.index.stages}


def _cached_stages() -> dict:
    """Stages with an output in DVC's cache only: a fresh clone has to rebuild them."""
    return {name: stage for name, stage in _stages().items() if any(out.use_cache for out in stage.outs)}


# Another revision of matplotlib's DejaVu Sans (same outlines) that the font list holds first, as another machine's
# file system may list a system copy: the figures must still embed matplotlib's own (repnext.plotting.use_style).
_FONT_FIRST = """
import tempfile
from pathlib import Path
import matplotlib as mpl
from fontTools.ttLib import TTFont
from matplotlib import font_manager
font = TTFont(Path(mpl.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
font["head"].fontRevision += 1
copy = Path(tempfile.mkdtemp()) / "DejaVuSans.ttf"
font.save(copy)
font_manager.fontManager.addfont(str(copy))
font_manager.fontManager.ttflist.insert(0, font_manager.fontManager.ttflist.pop())
"""


def test_the_stages_a_fresh_clone_rebuilds_are_the_ones_made_portable():
    """Every other output is committed. These two use no float32 result: the dataset crops photos with a seeded
    generator; publishing reads the committed weights, folds BatchNorms (elementwise) and writes files."""
    assert sorted(_cached_stages()) == ["dataset", "publish"]


@pytest.mark.xdist_group("other_cpu")  # one worker probes the simulated CPU (other_cpu_env) once
@pytest.mark.parametrize("name", ["dataset", "publish", "paper_results"])
def test_a_stage_of_exact_inputs_writes_the_same_bytes_on_another_cpu(name, tmp_path, other_cpu_env):
    """The stages a fresh clone rebuilds and the papers' results (from the authors' logs), whose inputs hold no
    float32 result, run on the simulated CPU with another machine's font list: their command writes the bytes
    dvc.lock records from this project's machine (time measurements, ``latency*``, aside)."""
    stage = _stages()[name]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_FONT_FIRST)
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **other_cpu_env,
           "PYTHONPATH": str(tmp_path / "site"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    work = tmp_path / "clone"
    for dep in stage.deps:  # the stage's data inputs, as a fresh clone has them; code runs from this checkout
        source, target = ROOT / str(dep.def_path), work / str(dep.def_path)
        if str(dep.def_path).startswith("repnext/") and not str(dep.def_path).startswith("repnext/data/"):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.is_file():
            target.write_bytes(source.read_bytes())
    (work / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    done = subprocess.run(stage.cmd, shell=True, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"][name]
    outs = [out for out in locked["outs"] + locked.get("metrics", []) if not is_time_measurement(out["path"])]
    assert outs and len(locked["outs"]) == len(stage.outs)
    for out in outs:
        path = work / out["path"]
        assert (dir_md5(path) if path.is_dir() else file_md5(path)) == out["md5"], out["path"]
