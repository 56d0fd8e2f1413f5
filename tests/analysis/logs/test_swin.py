"""Swin-Transformer-style text logs (MLLA): the hand-written fixture, EMA accuracies, and defects named by line."""

import warnings
from pathlib import Path

import pytest

from repnext.analysis.logs import LogFormatError, LogWarning, detect_format, read_log, summarize

FIXTURE = Path(__file__).parents[2] / "data" / "swin" / "mlla_nano_recconv_5x5" / "log_rank0.txt"


def parse(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LogWarning)
        run = read_log(path)
    return run, [str(w.message) for w in caught]


def test_fixture_gives_model_and_ema_accuracies_per_epoch():
    run, messages = parse(FIXTURE)
    assert (run.name, run.format, messages) == ("mlla_nano_recconv_5x5", "swin", [])
    assert run.records["epoch"].tolist() == [0, 1, 2]
    assert run.records["top1"].tolist() == [12.346, 28.904, 27.5]
    assert run.records["top5"].tolist() == [30.12, 53.312, 52.004]
    assert run.records["ema_top1"].tolist() == [0.21, 9.876, 21.008]
    assert run.records["train_loss"].tolist() == [6.4127, 5.5043, 5.0102]  # running mean of each epoch's last line
    row = summarize([run]).rows[0]
    assert (row["best_top1"], row["best_epoch"], row["last_top1"], row["best_top5"]) == (28.904, 1, 27.5, 53.312)
    assert (row["best_ema_top1"], row["best_ema_epoch"], row["last_ema_top1"]) == (21.008, 2, 21.008)
    assert row["best_ema_top5"] == 43.7 and row["n_parameters"] == 6121384


def test_recognised_by_content_not_name(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    path = tmp_path / "anything.log"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path, lines) == "swin" and read_log(path).name == "anything"
    config_only = lines[:20]  # config dump and model printout, no evaluation: not a training log
    with pytest.raises(LogFormatError, match="Swin-style text log"):
        detect_format(path, config_only)


def test_without_ema_and_with_defects(tmp_path):
    lines = [line for line in FIXTURE.read_text().splitlines() if "ema network" not in line]
    # drop the EMA Acc@1 lines too: each is the second Acc@1 line of its epoch
    kept, seen = [], 0
    for line in lines:
        if "EPOCH" in line:
            seen = 0
        if "Acc@1" in line:
            seen += 1
            if seen == 2:
                continue
        kept.append(line)
    kept += ["[x](main.py 1): INFO EPOCH 3", "[x](main.py 2): INFO  * Acc@1 30.000 Acc@5 55.000"]  # killed mid-eval
    path = tmp_path / "run" / "log_rank0.txt"
    path.parent.mkdir()
    path.write_text("\n".join(kept) + "\n")
    run, messages = parse(path)
    assert run.name == "run" and "ema_top1" not in run.records.columns
    assert run.records["top1"].tolist()[:3] == [12.346, 28.904, 27.5]
    assert len(messages) == 2
    assert messages[0].startswith(f"{path.as_posix()}:{len(kept) - 1}: epoch 3 has no evaluation")
    assert messages[1].startswith(f"{path.as_posix()}:{len(kept)}: last Acc@1 line has no")
