"""The roofline bound: operators of the fused graph with their MACs and bytes, held against measured rates."""

import math
from pathlib import Path

import pandas as pd
import pytest
import timm
from torch import nn

import repnext
from repnext.analysis.roofline import KINDS, Rates, bound_ms, cache_sizes, layer_bound_s, layers

ROOT = Path(__file__).parents[2]


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 3, padding=1),
                         nn.GELU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()  # fmt: skip


def test_each_operator_has_its_kind_macs_and_bytes():
    found = [layer for layer in layers(_net(), resolution=8)]
    by_op = [(layer.kind, layer.macs) for layer in found if layer.kind != "layout"]
    assert by_op == [("1x1 conv", 8 * 64 * 3), ("depthwise kxk", 8 * 64 * 9), ("dense kxk", 4 * 64 * 8 * 9),
                     ("element-wise", 0), ("matmul", 5 * 256)]  # fmt: skip
    first = found[0]
    assert (first.weight_bytes, first.input_bytes, first.output_bytes) == ((8 * 3 + 8) * 4, 3 * 64 * 4, 8 * 64 * 4)
    (flatten,) = [layer for layer in found if layer.op == "view"]  # nn.Flatten, as the dispatcher runs it
    assert flatten.kind == "layout" and flatten.bytes == 0  # a view moves no data


def test_the_operators_macs_are_fvcores_count():
    """Against the model_stats stage's fvcore count of the same fused form at 224x224 (GMACs to 3 decimals)."""
    stats = pd.read_csv(ROOT / "artifacts" / "tables" / "model_stats.csv")
    (counted,) = stats[(stats.model == "repnext_m0") & (stats.form == "deploy") & (stats.resolution == 224)].macs_g
    fused = repnext.reparameterize(timm.create_model("repnext_m0").eval())
    assert round(sum(layer.macs for layer in layers(fused)) / 1e9, 3) == counted


def test_a_layer_is_bound_by_compute_or_by_the_level_its_working_set_fits_in():
    rates = Rates(gemm_gmacs=100.0, dwconv_gmacs=((9, 10.0), (49, 18.0)),
                  levels=((1e6, 100.0), (1e8, 20.0), (math.inf, 5.0)))  # fmt: skip
    assert rates.bandwidth(5e5) == 100.0 and rates.bandwidth(5e6) == 20.0 and rates.bandwidth(5e9) == 5.0
    found = layers(_net(), resolution=8)
    depthwise = next(layer for layer in found if layer.kind == "depthwise kxk")
    assert depthwise.taps == 9  # a 3x3 kernel: the 3x3 reference rate
    compute, traffic = depthwise.macs / 10e9, depthwise.bytes / 100e9
    assert layer_bound_s(depthwise, rates) == pytest.approx(max(compute, traffic))
    total, by_kind = bound_ms(found, rates)
    assert list(by_kind) == list(KINDS) and total == pytest.approx(sum(by_kind.values()))
    assert total == pytest.approx(sum(layer_bound_s(layer, rates) for layer in found) * 1e3)


def test_cache_sizes_read_the_data_and_unified_caches(tmp_path):
    for index, (kind, level, size) in enumerate([("Data", 1, "48K"), ("Instruction", 1, "32K"),
                                                 ("Unified", 2, "2048K"), ("Unified", 3, "32M")]):  # fmt: skip
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("type", kind), ("level", level), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    assert cache_sizes(tmp_path) == {1: 48 * 1024, 2: 2 * 2**20, 3: 32 * 2**20}
    assert cache_sizes(tmp_path / "missing") == {}


def test_a_conv_is_depthwise_only_when_each_group_has_one_input_channel():
    grouped = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)).eval()
    _, conv = layers(grouped, resolution=4)
    assert conv.kind == "dense kxk" and conv.macs == 8 * 16 * 4 * 9


def test_a_depthwise_rate_is_interpolated_in_kernel_taps_between_the_measured_kernels():
    rates = Rates(gemm_gmacs=100.0, dwconv_gmacs=((9, 10.0), (49, 18.0), (121, 30.0)), levels=((math.inf, 5.0),))
    rates_at = [rates.depthwise_gmacs(taps) for taps in (3, 9, 29, 49, 85, 121, 400)]
    assert rates_at == [10.0, 10.0, 14.0, 18.0, 24.0, 30.0, 30.0]  # clamped outside 3x3 ... 11x11
