"""Interrupted pipeline runs recover: ``dvc repro`` killed with SIGKILL (its whole process group, as a closed
terminal or an out-of-memory kill would) in a notebook stage or in a training stage leaves no partial file where
an output belongs and no process behind, and the next run finishes with ``dvc status`` clean."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from repnext.datasets import materialize_dataset
from repnext.train import LOCK_NAME, LOG_KEYS

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout of the repository")


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip


def _clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    return clone


def _run(clone: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=clone, env=_env(), capture_output=True, text=True)


def _processes_in(folder: Path) -> dict[int, str]:
    """Live processes working inside ``folder`` (pid -> command line); zombies have no working directory."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = Path(os.readlink(entry / "cwd"))
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cwd == folder or folder in cwd.parents:
                found[int(entry.name)] = command
    return found


def _session(pid: int) -> int | None:
    """The session of ``pid`` (``/proc/PID/stat``: fields after the command are state, ppid, pgrp, session)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _kill_when(clone: Path, argv: list[str], ready: Callable[[int], bool], log: Path) -> None:
    """Start ``argv`` in a session of its own, wait until ``ready(its pid)``, then SIGKILL its process group."""
    with open(log, "w") as output:
        process = subprocess.Popen(argv, cwd=clone, env=_env(), start_new_session=True, stdout=output, stderr=output)
    deadline = time.monotonic() + 180
    while not ready(process.pid):
        assert process.poll() is None, f"{argv} ended before it could be killed: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{argv} never reached the point to kill it at"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _assert_nothing_left_running(clone: Path) -> None:
    """Kernels have sessions of their own, so the group's SIGKILL misses them: they notice their server is gone."""
    deadline = time.monotonic() + 20
    while _processes_in(clone) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_in(clone), _processes_in(clone)


def _stage(name: str) -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]


def _outputs(stage: dict) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"] + stage.get("metrics", [])]


def test_a_run_killed_in_a_notebook_stage_leaves_no_partial_output_and_no_kernel(tmp_path):
    clone = _clone(tmp_path)

    def kernel_running(pid: int) -> bool:  # a kernel is the one process of the run in a session of its own
        return any(_session(other) not in (pid, None) for other in _processes_in(clone))

    dvc = [sys.executable, "-m", "dvc", "repro", "--single-item"]
    _kill_when(clone, [*dvc, "--force", "ablation"], kernel_running, tmp_path / "killed.log")
    _assert_nothing_left_running(clone)
    committed = subprocess.run(["git", "ls-files", *_outputs(_stage("ablation"))], cwd=clone, capture_output=True,
                               text=True, check=True).stdout.split()  # fmt: skip
    assert len(committed) >= 4
    for path in committed:  # an output is either gone (DVC removed it first) or complete: the committed bytes
        shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=clone, capture_output=True, check=True).stdout
        assert not (clone / path).exists() or (clone / path).read_bytes() == shown, path
    assert _run(clone, sys.executable, "repnext/dvc_lock.py").returncode == 0  # make repro is not told to wait
    rerun = _run(clone, *dvc, "ablation")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    status = _run(clone, sys.executable, "-m", "dvc", "status", "ablation", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    changed = _run(clone, "git", "status", "--porcelain")
    assert changed.stdout == "", changed.stdout  # the rerun wrote the committed bytes back


def test_a_run_killed_in_a_training_stage_leaves_no_partial_output_and_no_trainer(tmp_path):
    clone = _clone(tmp_path)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    small = dict(size=16, train_per_class=2, val_per_class=1)  # a small dataset and a short schedule
    params["dataset"].update(small)
    params["training"].update(epochs=1, img_size=32, batch_size=8, warmup_epochs=0)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    materialize_dataset(params["dataset"]["name"], clone / params["dataset"]["root"], **small)  # the dataset stage's
    runs = list(params["experiments_with_weights"])
    started = [clone / "logs" / "photos" / run / LOCK_NAME for run in runs]
    first_seen = []

    def training(_pid: int) -> bool:  # shortly after the first run took its --out folder
        if not first_seen and any(path.exists() for path in started):
            first_seen.append(time.monotonic())
        return bool(first_seen) and time.monotonic() > first_seen[0] + 0.3

    dvc = [sys.executable, "-m", "dvc", "repro", "--single-item", "train_weights"]
    _kill_when(clone, dvc, training, tmp_path / "killed.log")
    _assert_nothing_left_running(clone)
    for run in runs:  # what a killed run leaves is complete: whole log lines, a loadable checkpoint
        log, best = clone / "logs" / "photos" / run / "log.txt", clone / "artifacts" / "checkpoints" / run / "best.pth"
        if log.exists():
            assert all(list(json.loads(line)) == list(LOG_KEYS) for line in log.read_text().splitlines())
        if best.exists():
            assert {"model", "epoch", "args"} <= set(torch.load(best, map_location="cpu", weights_only=True))
    assert _run(clone, sys.executable, "repnext/dvc_lock.py").returncode == 0
    rerun = _run(clone, *dvc)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    status = _run(clone, sys.executable, "-m", "dvc", "status", "train_weights", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    assert not list(clone.rglob(LOCK_NAME)) and not list((clone / "logs").rglob("*.tmp"))
    for run in runs:
        assert len((clone / "logs" / "photos" / run / "log.txt").read_text().splitlines()) == 1
