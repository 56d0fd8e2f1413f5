"""RecNeXt M and A: hub ids, release URLs, distillation switch, RecConv semantics, upstream checkpoints."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import repnext
from repnext.analysis.equivalence import randomize_batchnorm
from repnext.models.recnext import RecConv2d


@pytest.mark.parametrize("name", ["recnext_m3", "recnext_a4"])
@pytest.mark.parametrize("distillation", [False, True])
def test_pretrained_cfg_follows_distillation(name, distillation):
    model = timm.create_model(name, distillation=distillation)
    tag, release = ("dist" if distillation else "base"), ("v2.0" if "_a" in name else "v1.0")
    checkpoint = "distill" if distillation else "without_distill"
    assert model.pretrained_cfg["hf_hub_id"] == f"suous/{name}.{tag}_300e_in1k"
    assert model.pretrained_cfg["url"] == (
        f"https://github.com/suous/RecNeXt/releases/download/{release}/{name}_{checkpoint}_300e.pth")  # fmt: skip
    assert timm.data.resolve_model_data_config(model)["crop_pct"] == 0.875


def test_drop_path_only_without_distillation():
    rates = {m.drop_prob for m in timm.create_model("recnext_m4").modules() if hasattr(m, "drop_prob")}
    assert rates == {0.2}
    assert not [m for m in timm.create_model("recnext_m4", distillation=True).modules() if hasattr(m, "drop_prob")]
    assert {m.drop_prob for m in timm.create_model("recnext_a5").modules() if hasattr(m, "drop_prob")} == {0.3}


def test_recconv_levels_follow_stages():
    model = timm.create_model("recnext_m0")
    levels = [stage.blocks[0].token_mixer.level for stage in model.stages]
    assert levels == [4, 3, 2, 1]
    heads = [stage.blocks[0].token_mixer.down[1].num_heads for stage in timm.create_model("recnext_a0").stages]
    assert heads == [2, 4, 8, 16]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_recconv_matches_its_definition(mode):
    """Level 2 written out: conv2(x + up(conv1(d1 + up(conv0(d2))))) with d1 = down(x), d2 = down(d1)."""
    rec = RecConv2d(4, level=2, mode=mode).double()
    x = torch.randn(1, 4, 13, 10, dtype=torch.float64)
    d1 = rec.down(x)
    d2 = rec.down(d1)
    y = F.interpolate(rec.convs[0](d2), size=d1.shape[-2:], mode=mode)
    y = F.interpolate(rec.convs[1](d1 + y), size=x.shape[-2:], mode=mode)
    assert torch.allclose(rec(x), rec.convs[2](x + y))


def test_nearest_mode_option():
    model = timm.create_model("recnext_m0", mode="nearest")
    assert {b.token_mixer.mode for s in model.stages for b in s.blocks} == {"nearest"}


def test_ablation_kernel_size_and_levels():
    """``levels`` sets each stage's recursion; level 0 is a plain depthwise conv (the papers' 3x3/7x7 baselines)."""
    model = timm.create_model("recnext_m0", kernel_size=7, levels=(2, 0, 1, 0)).eval()
    mixers = [stage.blocks[0].token_mixer for stage in model.stages]
    assert [getattr(mixer, "level", 0) for mixer in mixers] == [2, 0, 1, 0]
    plain = mixers[1]
    assert (type(plain), plain.kernel_size, plain.groups, plain.bias) == (nn.Conv2d, (7, 7), 80, None)
    assert {conv.kernel_size for conv in mixers[0].convs} == {(7, 7)}
    x = torch.randn(1, 3, 64, 48)
    assert torch.allclose(repnext.reparameterize(model)(x), model(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"levels: expected one non-negative level per stage, got \[1, 1, 1\]"):
        timm.create_model("recnext_m0", levels=(1, 1, 1))


def test_upstream_checkpoint_loads_by_hub_name(tmp_path):
    source = randomize_batchnorm(timm.create_model("recnext_a1", distillation=True), seed=5).eval()
    path = tmp_path / "recnext_a1_distill_300e.pth"
    torch.save({"model": source.state_dict(), "epoch": 299}, path)
    model = timm.create_model("recnext_a1", pretrained=True, distillation=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    with pytest.raises(repnext.CheckpointError, match="shape mismatch"):
        repnext.load_checkpoint(timm.create_model("recnext_a2"), path)
