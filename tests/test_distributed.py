"""torchrun with 2 CPU processes (gloo): train writes one complete log whose validation totals are exact, eval equals
one process. Tiny on purpose: 3 classes, 32x32 images, a one-block-per-stage RepNeXt-M0, one epoch."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from repnext.distributed import Distributed, shard
from repnext.evaluation import evaluate_model
from repnext.registry import create_model
from tests.test_evaluation import write_folder

TINY_ARGS = ["--model-kwargs", "embed_dim=(8,16,32,64)", "depth=(1,1,1,1)"]
TINY = dict(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1))


# Both commands in the same two processes, so torch and timm are imported once (most of the time on 2 cores);
# the commands join the script's process group, as they join the one torchrun's environment describes.
SCRIPT = """import sys
import torch.distributed as dist
from repnext.cli import main
dist.init_process_group("gloo")
cut = sys.argv.index("+")
main(sys.argv[1:cut])
main(sys.argv[cut + 1:])
dist.destroy_process_group()
"""


def torchrun(script, *args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_shards_cover_every_item_once():
    shards = [list(shard(7, Distributed(torch.device("cpu"), rank, 3))) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def test_two_process_train_and_eval_match_one_process(tmp_path):
    data = write_folder(tmp_path / "data", per_class=4, splits=("train", "val"))  # 12 train, 12 val images
    (tmp_path / "both.py").write_text(SCRIPT)
    checkpoint = str(tmp_path / "run" / "checkpoint.pth")
    torchrun(tmp_path / "both.py", "train", "repnext_m0", "--data", str(data), "--out", str(tmp_path / "run"),
             "--epochs", "1", "--img-size", "32", "--batch-size", "2", "--warmup-epochs", "0", "--threads", "1",
             "--no-progress", *TINY_ARGS, "+", "eval", "repnext_m0", "--data", str(data), "--weights", checkpoint,
             "--img-size", "32", "--batch-size", "4", "--both", "--threads", "1", *TINY_ARGS,
             "-o", str(tmp_path / "eval.csv"), cwd=tmp_path)  # fmt: skip
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    tiny = create_model("repnext_m0", num_classes=3, **TINY)
    assert row["epoch"] == 0 and row["n_parameters"] == sum(p.numel() for p in tiny.parameters())
    # The validation totals were gathered from both processes: one process evaluating the same weights agrees.
    single = evaluate_model("repnext_m0", str(data), weights=checkpoint,
                            img_size=32, crop_pct=0.875, model_kwargs=TINY, threads=1).rows[0]  # fmt: skip
    assert single["images"] == 12
    assert row["test_acc1"] == pytest.approx(single["top1"], abs=1e-9) and row["test_acc5"] == single["top5"]
    assert row["test_loss"] == pytest.approx(single["loss"], rel=1e-6)  # float32 sums over other batches

    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [r["form"] for r in rows] == ["train", "fused"] and rows[1]["top1_agreement"] == "100.00"
    for got in rows:
        assert got["images"] == "12" and float(got["top1"]) == pytest.approx(single["top1"], abs=5e-3)
        assert float(got["loss"]) == pytest.approx(single["loss"], abs=1e-4)
