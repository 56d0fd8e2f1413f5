from fractions import Fraction

import pytest
import torch

from repnext.analysis.erf import same_depthwise
from repnext.analysis.scaling import (
    depthwise_counts,
    level_sides,
    paper_flops_ratio,
    paper_params_ratio,
    recattn_counts,
    recconv_counts,
    scaling_table,
)
from repnext.analysis.stats import count_macs, count_parameters
from repnext.models.layers import dwconv
from repnext.models.recnext import RecAttn2d, RecConv2d
from repnext.reparam import reparameterize


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("side", [32, 23])  # a power of two and an odd size (ceil at every level)
def test_recconv_analytic_counts_equal_fvcore_at_every_level(level, side, mode):
    module = RecConv2d(4, 5, level, mode) if level else dwconv(4, 5, bias=False)
    counts = recconv_counts(4, 5, level, side, mode)
    assert counts.params == count_parameters(module)
    assert counts.macs == count_macs(module, side, in_chans=4)[0]


@pytest.mark.parametrize("form, stage", [(1, 0), (2, 3)])
@pytest.mark.parametrize("side", [14, 7])
def test_recattn_analytic_counts_equal_fvcore_on_the_fused_module(form, stage, side):
    fused = reparameterize(RecAttn2d(16, 4, stage, forms=(1, 1, 1, 2)).eval())
    counts = recattn_counts(16, 4, form, 5, side)
    assert counts.params == count_parameters(fused)
    assert counts.macs == count_macs(fused, side, in_chans=16)[0]


@pytest.mark.parametrize("kernel", [5, 10])
def test_depthwise_of_any_reach_keeps_the_size_and_matches_the_formula(kernel):
    conv = same_depthwise(2, kernel)
    assert conv(torch.zeros(1, 2, 9, 9)).shape == (1, 2, 9, 9)
    counts = depthwise_counts(2, kernel, 9)
    assert (counts.params, counts.macs) == (count_parameters(conv), count_macs(conv, 9, in_chans=2)[0])


def test_paper_formulas_are_exact_for_exact_halving_and_not_for_ceil_sides():
    assert level_sides(56, 4) == [56, 28, 14, 7, 4] and level_sides(7, 1, 3) == [7, 4]
    for level in range(1, 5):
        counts, base = recconv_counts(3, 5, level, 64), depthwise_counts(3, 5, 64)
        assert Fraction(counts.params, base.params) == paper_params_ratio(level) == level + 2
        assert Fraction(counts.conv_macs, base.conv_macs) == paper_flops_ratio(level) < Fraction(5, 3)
        # a depthwise kernel of reach k * 2**l costs 4**l times the k x k one
        dense = depthwise_counts(3, 5 * 2**level, 64)
        assert dense.params == 4**level * base.params and dense.macs == 4**level * base.macs
    odd = recconv_counts(3, 5, 1, 7)
    assert Fraction(odd.conv_macs, depthwise_counts(3, 5, 7).conv_macs) == Fraction(49 + 2 * 16, 49) > Fraction(3, 2)
    tiny = recconv_counts(1, 5, 1, 3)  # 3 -> 2: the 5/3 bound itself fails on tiny odd maps
    assert Fraction(tiny.conv_macs, 25 * 9) > Fraction(5, 3)
    # bilinear upsampling (4 MACs per output element) is outside the formula
    assert recconv_counts(3, 5, 4, 64).macs / depthwise_counts(3, 5, 64).macs > Fraction(5, 3)


def test_scaling_table_rows_agree_with_fvcore():
    table = scaling_table(channels=4, levels=(0, 1, 2), sides=(16,), models=("recnext_m0",), resolutions=(64,),
                          reach_fvcore_max_macs=1e6)  # fmt: skip
    rows = table.sorted_rows()
    assert [r["context"] for r in rows] == ["module"] * 3 + ["recnext_m0"] * 4
    assert all(r["fvcore_agrees"] for r in rows)
    assert [r["level"] for r in rows[3:]] == [4, 3, 2, 1] and [r["side"] for r in rows[3:]] == [16, 8, 4, 2]
    assert all(r["reach_dw_macs_fvcore"] in (None, r["reach_dw_macs"]) for r in rows)
    assert "params_formula_exact" in table.render("csv").splitlines()[0]
