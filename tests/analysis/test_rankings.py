"""The published phone rankings against latency measured here: Spearman per family and phone, flipped pairs."""

from pathlib import Path

import pandas as pd
import pytest

from repnext.analysis.rankings import latency_rankings, plot_rankings, published_mobile_latency
from repnext.plotting import save_figure, use_style

ROOT = Path(__file__).parents[2]
REPVIT = ["repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5"]  # published 0.89, 1.02, 1.13, 1.51 ms


def _runs(latencies: dict[str, float], backend: str = "openvino") -> pd.DataFrame:
    rows = [dict(model=m, form="fused", backend=backend, median_ms=ms, status="ok") for m, ms in latencies.items()]
    rows.append(dict(model=REPVIT[0], form="unfused", backend="eager", median_ms=99.0, status="ok"))  # not ranked
    return pd.DataFrame(rows)


def test_published_latency_is_one_row_per_model_with_its_phone():
    published = published_mobile_latency().set_index("model")
    assert published.index.is_unique
    assert published.loc["repnext_m1", "phone_ms"] == 0.86  # the smaller of its two published rows (0.86, 0.87)
    assert published.loc["repnext_m1", "phone"] == "iPhone 12" and published.loc["recnext_t", "phone"] == "iPhone 13"
    assert published.loc["recnext_a0", "phone"] == "iPhone 13"  # "iPhone 13 (iOS 18)" and "iPhone 13" are one phone
    phone_ms = published.loc[REPVIT, "phone_ms"]
    assert phone_ms.is_monotonic_increasing and phone_ms.is_unique


def test_the_same_order_correlates_fully_and_a_swap_is_one_flipped_pair():
    same = {model: 1.0 + i for i, model in enumerate(REPVIT)}
    ranks, flips = latency_rankings(_runs(same))
    rows = {(r["phone"], r["group"]): r for r in ranks.rows}
    assert set(rows) == {("iPhone 12", "all"), ("iPhone 12", "RepViT")}
    assert rows["iPhone 12", "all"]["spearman"] == pytest.approx(1.0) and flips.rows == []
    assert rows["iPhone 12", "all"]["pairs"] == 6 and rows["iPhone 12", "all"]["flipped_pairs"] == 0
    swapped = {**same, REPVIT[1]: same[REPVIT[2]], REPVIT[2]: same[REPVIT[1]]}
    ranks, flips = latency_rankings(_runs(swapped))
    assert ranks.rows[0]["spearman"] == pytest.approx(0.8) and ranks.rows[0]["flipped_pairs"] == 1
    (flip,) = flips.rows
    assert (flip["faster_on_phone"], flip["slower_on_phone"], flip["measured_ms"]) == (*REPVIT[1:3], "3.00 > 2.00")


def test_unverified_configurations_and_small_groups_rank_nothing():
    runs = _runs({model: 1.0 + i for i, model in enumerate(REPVIT)})
    runs.loc[runs.model == REPVIT[3], "status"] = "output differs from PyTorch"
    ranks, _ = latency_rankings(pd.concat([runs, _runs({"repnext_m1": 5.0, "repnext_m2": 6.0})]))
    assert {(r["group"], r["models"]) for r in ranks.rows} == {("RepViT", 3), ("all", 5)}  # RepNeXt: two models


def test_phones_are_never_ranked_against_each_other_and_ties_order_nothing():
    ranks, _ = latency_rankings(_runs({"recnext_t": 1.0, "recnext_t_share_channel": 2.0, "recnext_s": 3.0,
                                       "repvit_m0_9": 0.5}))  # fmt: skip
    (row,) = ranks.rows  # RecNeXt T/S/B on the iPhone 13; one iPhone 12 model ranks nothing
    assert row["phone"] == "iPhone 13" and row["models"] == 3 and row["pairs"] == 2  # T and T-shared: both 1.8 ms


def test_the_figure_passes_the_figure_checks(tmp_path):
    runs = pd.read_csv(ROOT / "tests" / "data" / "latency_cpu_runs.csv")
    ranks, _ = latency_rankings(runs)
    use_style()
    save_figure(plot_rankings(runs, pd.DataFrame(ranks.rows), "test CPU"), tmp_path / "ranks", ("png",))
    assert (tmp_path / "ranks.png").stat().st_size > 0
