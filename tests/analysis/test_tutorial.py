"""The tutorial's helpers: checks that can fail, kernel figures, latency measurement."""

import pytest
import torch
from torch import nn

from repnext import reparam
from repnext.analysis import tutorial
from repnext.analysis.tutorial import (
    Checks,
    Parallel,
    PerPixel,
    check_channels,
    check_dtypes,
    check_seed,
    kernel_figure,
    latency_table,
    timed_block,
)
from repnext.distributed import runtime
from repnext.models.recnext import RecConv2d
from repnext.models.repnext import RepNeXt
from repnext.models.repnext_u import RepNeXtU

SHAPE = (2, 4, 6, 7)


@pytest.fixture(autouse=True)
def _one_thread():
    with runtime(1):  # tiny tensors: extra threads only wait for each other on a busy machine
        yield


def fuse_conv_bn(m):
    return reparam.conv_from_kernel(*reparam.fuse_conv_bn(m[0].weight, m[0].bias, m[1]), padding=m[0].padding)


def ignore_bn(m):
    return m[0]


def conv_bn():
    return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))


def test_a_fusion_passes_and_a_wrong_one_fails_thanks_to_random_batchnorm():
    checks = Checks(seed=3)
    good = checks.fusion("conv + BN", "exact", conv_bn(), fuse_conv_bn, SHAPE)
    assert [row["passed"] for row in checks.rows] == [True, True]
    assert isinstance(good.fused, nn.Conv2d) and good.fused.weight.dtype == torch.float64
    checks.fusion("conv + BN", "BN dropped", conv_bn(), ignore_bn, SHAPE)
    assert [row["passed"] for row in checks.rows] == [True, True, False, False]
    assert checks.failures()[0].startswith("conv + BN: BN dropped (float64): relative error ")
    table = checks.table()
    assert [(row["id"], row["dtype"]) for row in table.sorted_rows()] == [
        (1, "float64"), (1, "float32"), (2, "float64"), (2, "float32"),
    ]  # fmt: skip
    assert (
        repr(good).startswith("| id | paradigm | claim | dtype |")
        and "| false |" in checks.of("conv + BN")._repr_markdown_()
    )


def test_expected_differences_and_crops():
    checks = Checks(dtypes=["float64"])
    pair = nn.Sequential(
        nn.Conv2d(4, 4, (1, 5), padding=(0, 2), groups=4), nn.Conv2d(4, 4, (5, 1), padding=(2, 0), groups=4)
    )

    def plain(m):
        weight, bias, _ = reparam.merge_separable((m[0].weight, m[0].bias), (m[1].weight, m[1].bias))
        return reparam.conv_from_kernel(weight, bias, groups=4)

    checks.fusion("separable", "border differs", pair, plain, SHAPE, expect="differ")
    checks.fusion("separable", "interior equal", pair, plain, SHAPE, crop=2)
    checks.fusion("separable", "no difference to find", pair, lambda m: m, SHAPE, expect="differ")
    assert [row["passed"] for row in checks.rows] == [True, True, False]
    with pytest.raises(ValueError, match="expect must be 'equal' or 'differ'"):
        checks.fusion("separable", "typo", pair, plain, SHAPE, expect="same")


def test_linearity_and_shift_invariance_tell_recconv_from_a_conv():
    checks = Checks(dtypes=["float64"])
    rec = RecConv2d(4, kernel_size=3, level=2)
    assert checks.linearity("RecConv", "linear", rec, SHAPE).table.rows[0]["passed"]
    assert not checks.linearity("GELU", "linear", nn.GELU(), SHAPE).table.rows[0]["passed"]
    conv = nn.Conv2d(4, 4, 5, padding=2)
    assert checks.shift_invariance("conv", "shift-invariant", conv, (1, 4, 9, 9)).table.rows[0]["passed"]
    assert not checks.shift_invariance("RecConv", "shift-invariant", rec, (1, 4, 9, 9)).table.rows[0]["passed"]


def test_helper_modules_and_shape_mismatch():
    x, a, b = torch.randn(SHAPE), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 3, 1)
    assert torch.equal(Parallel(a, b, combine="cat")(x), torch.cat([a(x), b(x)], 1))
    assert torch.allclose(Parallel(a, a)(x), 2 * a(x))
    linear = nn.Linear(4, 2)
    assert torch.allclose(PerPixel(linear)(x)[:, :, 1, 2], linear(x[:, :, 1, 2]))
    with pytest.raises(ValueError, match="combine must be 'sum' or 'cat'"):
        Parallel(a, combine="max")
    with pytest.raises(ValueError, match=r"p: c: shapes differ, \[2, 2, 6, 7\] vs \[2, 3, 6, 7\]"):
        Checks().compare("p", "c", lambda dtype: (a.to(dtype)(x.to(dtype)), b.to(dtype)(x.to(dtype))))


def test_parameter_checks_name_the_parameter():
    assert check_dtypes(["float32"], "w") == ["float32"] and check_channels(8, "w") == 8 and check_seed(0, "w") == 0
    with pytest.raises(ValueError, match=r"^p: reparam_tutorial.dtypes: expected a non-empty list from"):
        check_dtypes(["float16"], "p: reparam_tutorial.dtypes")
    with pytest.raises(ValueError, match=r"^p: c: must be a positive multiple of 4 .*, got 6$"):
        check_channels(6, "p: c")
    with pytest.raises(ValueError, match=r"^p: s: must be a non-negative integer, got -1$"):
        check_seed(-1, "p: s")
    with pytest.raises(ValueError, match="dtypes must be a non-empty list"):
        Checks(dtypes=[])


def test_kernel_figure_panels_share_one_scale_per_tap():
    fig = kernel_figure([("a", torch.ones(1, 3)), ("b", torch.ones(3, 3))], [("c", torch.ones(5, 5))], "t")
    axes = fig.get_axes()
    assert len(axes) == 4 and not axes[2].axison  # the arrow
    assert axes[0].get_xlim() == (-1.5, 3.5) and axes[0].get_ylim() == (2.5, -2.5)  # 1x3, centred in 5x5
    assert axes[3].get_xlim() == (-0.5, 4.5)
    alone = kernel_figure([("a", torch.ones(1, 3))], [("c", torch.ones(5, 5))], same_scale=False).get_axes()[0]
    assert alone.get_xlim() == (-0.5, 2.5) and alone.get_ylim() == (0.5, -0.5)
    assert len(kernel_figure([("a", torch.ones(2, 2))], []).get_axes()) == 1
    with pytest.raises(ValueError, match=r"a: expected a 2-D kernel \[h, w\], got shape \[1, 3, 3\]"):
        kernel_figure([("a", torch.ones(1, 3, 3))], [])


def test_latency_table_times_a_model_and_its_block(monkeypatch):
    tiny = RepNeXt(embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1), num_classes=10)
    monkeypatch.setattr(tutorial, "create_model", lambda name: tiny)  # the registry's smallest model is slow here
    table = latency_table(["tiny"], image_size=32, repeats=2)
    rows = table.sorted_rows()
    assert [(row["target"], row["kind"], row["input"]) for row in rows] == [
        ("tiny", "model", "1x3x32x32"), ("tiny.stages.2.blocks.0", "block", "1x32x2x2"),
    ]  # fmt: skip
    assert all(row["train_ms"] > 0 and row["speedup"] == row["train_ms"] / row["fused_ms"] for row in rows)
    assert timed_block(RepNeXtU(depths=(1, 1, 1, 1), dims=(6, 12, 24, 48))) == "stages.2.0"
    with pytest.raises(ValueError, match=r"no MetaNeXt or RepNeXt-u block in stages\.2"):
        timed_block(nn.Linear(2, 2))
