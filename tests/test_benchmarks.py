"""Smoke run of benchmarks/pipeline_time.py: its times need an idle machine, so only the table's shape is checked."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(importlib.util.find_spec("dvc") is None, reason="needs the pipeline extra (dvc)")
def test_pipeline_time_writes_one_row_per_stage_it_saw_run(tmp_path):
    out = tmp_path / "latency_pipeline"
    script = ROOT / "benchmarks" / "pipeline_time.py"
    run = subprocess.run([sys.executable, script, "--dvc-args", "--dry -f -s dataset", "--out", out],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["stage"] for r in rows] == ["dataset", "total", "peak_rss_gb (largest process)"]
    assert all(float(r["seconds"]) >= 0 for r in rows)
    assert out.with_suffix(".md").read_text().startswith("| stage | seconds |")
    failing = subprocess.run([sys.executable, script, "--dvc-args", "no_such_stage", "--out", tmp_path / "x"],
                             capture_output=True, text=True)  # fmt: skip
    assert failing.returncode == 1 and "nothing written" in failing.stderr and not list(tmp_path.glob("x.*"))
