"""Smoke runs of the benchmark scripts: their times need an idle machine, so only tables and arithmetic are checked."""

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


def test_training_portability_writes_the_ratio_and_the_projected_stage_time(tmp_path, monkeypatch):
    """The script's arithmetic and table, with the two trainings stubbed (each takes a minute: a benchmark's job)."""
    path = ROOT / "benchmarks" / "training_portability.py"
    spec = importlib.util.spec_from_file_location("training_portability", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seconds = iter([10.0, 25.0])

    def train(out, epochs, env):
        out.mkdir(parents=True)
        (out / "log.txt").write_text("same\n" if env.get("ATEN_CPU_CAPABILITY") != "default" else "other\n")
        return next(seconds)

    monkeypatch.setattr(script, "train", train)
    assert {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES"} <= set(
        script.portable_env()
    )
    assert script.main(["--epochs", "1", "--stage-seconds", "100", "--out", str(tmp_path / "latency_x")]) == 0
    (row,) = csv.DictReader((tmp_path / "latency_x.csv").open())
    assert (row["ratio"], row["same_log"], row["projected_stage_s"], row["extra_s"]) == ("2.50", "false", "250.0",
                                                                                         "150.0")  # fmt: skip
