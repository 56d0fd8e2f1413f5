import pytest
import torch

from repnext.analysis.erf import (
    area_ratios,
    erf_map,
    erf_table,
    log_scaled,
    mixer_erfs,
    model_erfs,
    photo_inputs,
    stage_forward,
    support_side,
)
from repnext.models.layers import dwconv
from repnext.models.recnext import RecConv2d


@pytest.mark.parametrize("k", [3, 5, 7])
def test_depthwise_erf_is_its_kernel_with_exact_k_by_k_support(k):
    channels, size = 3, 31
    conv = dwconv(channels, k, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, channels * k * k + 1).reshape(channels, 1, k, k) * (-1) ** torch.arange(
            channels * k * k).reshape(channels, 1, k, k))  # fmt: skip
    erf = erf_map(conv, torch.randn(2, channels, size, size))
    c, r = size // 2, k // 2
    expected = torch.zeros(size, size, dtype=torch.float64)
    # y[c] = sum_ij w[i, j] x[c - r + i]: the centre's gradient is the kernel itself, placed around the centre
    expected[c - r : c + r + 1, c - r : c + r + 1] = conv.weight.detach().abs().sum(dim=(0, 1)).double()
    torch.testing.assert_close(erf, expected)
    assert support_side(erf) == k
    assert (erf > 0).sum() == k * k


def test_area_ratios_on_a_synthetic_map():
    erf = torch.zeros(9, 9, dtype=torch.float64)
    erf[4, 4] = 0.25  # 25% at the centre
    ring3 = torch.zeros(9, 9, dtype=torch.bool)
    ring3[3:6, 3:6] = True
    ring3[4, 4] = False
    erf[ring3] = 0.25 / 8  # 50% within 3x3
    ring5 = torch.zeros(9, 9, dtype=torch.bool)
    ring5[2:7, 2:7] = True
    ring5[3:6, 3:6] = False
    erf[ring5] = 0.49 / 16  # 99% within 5x5
    erf[0, 0] = 0.01  # the last 1% in a corner
    ratios = {r.threshold: r for r in area_ratios(erf)}
    assert [ratios[t].side for t in (0.2, 0.3, 0.5, 0.99)] == [1, 3, 3, 5]
    assert ratios[0.99].side_ratio == pytest.approx(5 / 9) and ratios[0.99].area_ratio == pytest.approx(25 / 81)
    assert area_ratios(erf * 7.0) == area_ratios(erf)  # scale-free
    # 100% needs the corner, which no centred square reaches before the border: the full input
    assert area_ratios(erf, (1.0,))[0].side == 9 and area_ratios(erf, (1.0,))[0].area_ratio == 1.0


def test_area_ratios_reject_bad_maps():
    with pytest.raises(ValueError, match="non-negative"):
        area_ratios(-torch.ones(5, 5))
    with pytest.raises(ValueError, match="thresholds"):
        area_ratios(torch.ones(5, 5), (1.5,))


def test_log_scaled_is_scale_free_in_unit_range():
    erf = torch.tensor([[0.0, 1.0], [10.0, 100.0]], dtype=torch.float64)
    scaled = log_scaled(erf)
    assert scaled.max() == 1 and scaled[0, 0] == 0
    torch.testing.assert_close(log_scaled(erf * 1e-6), scaled)


def test_recconv_erf_does_not_depend_on_the_input_and_reaches_past_k_times_2_to_the_l():
    torch.manual_seed(0)
    mixer = RecConv2d(4, 3, level=2)
    a = erf_map(mixer, torch.randn(1, 4, 48, 48))
    b = erf_map(mixer, torch.randn(3, 4, 48, 48) * 5)
    torch.testing.assert_close(a, b)  # linear: the gradient is a property of the weights
    assert support_side(a) > 3 * 2**2  # reach k * 2**l = 12 is an under-estimate of the support


def test_mixer_erfs_table_rows_and_chunkconv_reach():
    erfs = mixer_erfs(kernel_size=3, levels=(0, 1), channels=4, size=33)
    names = [e.name for e in erfs]
    assert names == ["dw 3x3 (RecConv l=0)", "RecConv l=1 (3x3)", "dw 6x6", "ChunkConv (RepNeXt)"]
    table = erf_table(erfs)
    rows = {row["name"]: row for row in table.rows}
    assert rows["dw 3x3 (RecConv l=0)"]["support"] == 3
    assert rows["dw 6x6"]["support"] == 7  # an even kernel is one pixel off-centre: the centred odd square is 7
    assert rows["ChunkConv (RepNeXt)"]["support"] == 11  # its longest chunk, 1x11 then 11x1
    assert table.render("csv").splitlines()[0].startswith("group,name,weights,input,reach,support,side_20")


def test_stage_erf_of_a_model_is_deterministic_and_photo_inputs_are_seeded():
    inputs = photo_inputs(3, size=32, seed=0)
    assert inputs.shape == (3, 3, 32, 32)
    torch.testing.assert_close(photo_inputs(3, size=32, seed=0), inputs, rtol=0, atol=0)
    assert not torch.equal(photo_inputs(3, size=32, seed=1), inputs)
    first = model_erfs([("recnext_m0", None)], stage=0, size=32, count=2)
    again = model_erfs([("recnext_m0", None)], stage=0, size=32, count=2)
    assert first[0].map.shape == (32, 32) and torch.equal(first[0].map, again[0].map)
    assert first[0].weights == "random" and first[0].group == "stage 0"


def test_stage_forward_rejects_bad_stages():
    import timm

    model = timm.create_model("repnext_m0")
    assert len(stage_forward(model, 3)) == 5
    with pytest.raises(ValueError, match="stage"):
        stage_forward(model, 4)
    with pytest.raises(ValueError, match="inputs"):
        erf_map(model, torch.zeros(3, 8, 8))
