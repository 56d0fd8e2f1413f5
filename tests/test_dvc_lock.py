"""A second ``make repro`` while one runs says so at once, in one line."""

import json
import subprocess
import sys
from pathlib import Path

from repnext.dvc_lock import running_pipeline

ROOT = Path(__file__).parents[1]


def _rwlock(root: Path, pid: int) -> None:
    (root / ".dvc" / "tmp").mkdir(parents=True)
    record = {"pid": pid, "cmd": "dvc repro -f erf"}
    (root / ".dvc" / "tmp" / "rwlock").write_text(json.dumps({"write": {"figures/erf": record}, "read": {}}))


def test_a_live_dvc_run_is_named_and_a_dead_one_is_not(tmp_path):
    assert running_pipeline(tmp_path) is None  # no lock file
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as holder:
        _rwlock(tmp_path, holder.pid)
        assert running_pipeline(tmp_path) == f"PID {holder.pid}: dvc repro -f erf"
        holder.kill()
    assert running_pipeline(tmp_path) is None  # the holder is gone: its stale entry does not block


def test_make_repro_checks_before_it_runs_dvc(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as holder:
        try:
            _rwlock(tmp_path, holder.pid)
            check = [sys.executable, str(ROOT / "repnext" / "dvc_lock.py")]
            done = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True)
        finally:
            holder.kill()
    assert done.returncode == 1
    assert done.stderr.strip() == (f"make repro: another pipeline run holds this repository (PID {holder.pid}: "
                                   "dvc repro -f erf); wait for it to finish")  # fmt: skip
    free = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True)
    assert free.returncode == 0 and free.stderr == ""
    recipe = (ROOT / "Makefile").read_text().split("\nrepro: $(STAMP)\n")[1].splitlines()
    assert recipe[0].split("#")[0].strip() == "@$(BIN)/python repnext/dvc_lock.py"
    assert recipe[1].split("#")[0].strip() == "@$(BIN)/python repnext/dvc_cache.py"
    assert recipe[2].strip() == "$(BIN)/dvc repro"
