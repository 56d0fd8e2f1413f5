import csv
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import repnext
from repnext.analysis.stats import count_macs, known_macs, model_stats, published_results
from repnext.cli import main

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("single_branch", [False, True])
def test_fvcore_macs_agree_with_flop_counter_mode(single_branch):
    fused = repnext.reparameterize(timm.create_model("repnext_m1").eval(), single_branch=single_branch)
    macs, uncounted = count_macs(fused, (224, 192))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fused(torch.zeros(1, 3, 224, 192))
    assert macs * 2 == counter.get_total_flops()  # FlopCounterMode counts a multiply-add as two flops
    assert "aten::gelu" in uncounted and not any("conv" in op for op in uncounted)


def _agrees_with_published(row: dict) -> bool:
    # upstream READMEs round their own count inconsistently (RecNeXt-M2: 6.859 M printed as 6.8)
    params = {round(float(row["params_paper_m"]), 1), round(float(row["params_m"]), 1)}
    return float(row["published_params_m"]) in params and round(float(row["macs_g"]), 1) == float(
        row["published_macs_g"])  # fmt: skip


def test_model_stats_computes_published_numbers():
    table = model_stats(["repnext_m1", "recnext_m2", "recnext_a4"], 224, forms=("deploy", "single_branch"))
    compared = [row for row in table.sorted_rows() if row["published_params_m"] is not None]
    assert [(row["model"], row["form"]) for row in compared] == [
        ("recnext_a4", "deploy"),
        ("recnext_m2", "deploy"),
        ("repnext_m1", "deploy"),
        ("repnext_m1", "single_branch"),
    ]
    assert all(_agrees_with_published(row) for row in compared), compared


def test_pipeline_table_reproduces_every_published_number():
    """The committed model_stats.csv (kept in sync with dvc.lock) matches every published row."""
    rows = list(csv.DictReader((ROOT / "artifacts" / "tables" / "model_stats.csv").read_text().splitlines()))
    compared = {(row["model"], row["form"]): row for row in rows if row["published_params_m"]}
    assert set(compared) == {(row["model"], row["form"]) for row in published_results()}
    assert {m for m in repnext.list_models()} == {row["model"] for row in rows}
    disagreeing = [key for key, row in compared.items() if not _agrees_with_published(row)]
    assert not disagreeing
    header = list(rows[0])
    required = ["model", "family", "resolution", "params_train_m", "params_m", "macs_g", "published_params_m"]
    assert [column for column in header if column in required] == required


def test_known_macs_are_fvcore_counts_from_the_committed_table():
    """The latency stage takes its variants' MACs from model_stats.csv instead of counting them again."""
    table = ROOT / "artifacts" / "tables" / "model_stats.csv"
    known = known_macs(table, 224)
    assert set(known) == set(repnext.list_models()) and known_macs(table, 32) == {}
    fused = repnext.reparameterize(timm.create_model("recnext_m0").eval())
    assert abs(known["recnext_m0"] - count_macs(fused, 224)[0]) <= 0.5e6  # the table rounds to 1e6


def test_published_results_name_their_source():
    rows = published_results()
    assert rows and all(row["source"] and row["family"] and row["model"] for row in rows)
    assert len({(row["model"], row["form"]) for row in rows}) == len(rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution must be a positive integer, got 0"):
        model_stats(["repnext_m0"], 0)
    with pytest.raises(ValueError, match="unknown form 'fused'"):
        model_stats(["repnext_m0"], 64, forms=("fused",))


def test_stats_cli(capsys):
    main(["stats", "repnext_m0", "--resolution", "64", "--unfused", "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("repnext_m0,repnext,train,64,2.716,2.716,")
