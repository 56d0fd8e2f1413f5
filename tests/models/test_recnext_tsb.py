"""RecNeXt T/S/B: the partial-channel blocks, shared-channel stages, drop path, distillation and the RepVGG mixer."""

import pytest
import timm
import torch
from torch import nn

import repnext
from repnext.analysis.equivalence import randomize_batchnorm
from repnext.models.recnext import LinearAttention, RecAttn2d
from repnext.models.recnext_tsb import PartialChannelMixer, RepDWConv, SharedChannelMixer


def mixers(model: nn.Module) -> list[list[str]]:
    """Per stage, each block's token mixer: 'rec', 'linear' or 'shared'."""
    kinds = {RecAttn2d: "rec", LinearAttention: "linear"}
    return [
        [
            "shared" if isinstance(b.token_mixer, SharedChannelMixer) else kinds[type(b.token_mixer.attn)]
            for b in s.blocks
        ]
        for s in model.stages
    ]


def test_block_layout_with_and_without_shared_channels():
    plain, shared = timm.create_model("recnext_b"), timm.create_model("recnext_b_share_channel")
    assert mixers(plain) == [["rec"] * 2, ["rec"] * 8, ["rec"] * 8, ["linear"] * 12]
    assert mixers(shared)[:3] == [["rec"] * 2, ["rec"] * 8, ["linear"] * 8]
    assert mixers(shared)[3] == (["linear"] * 4 + ["shared"]) * 2 + ["linear"] * 2  # every fifth block shares
    assert [stage.shared for stage in shared.stages] == [False, False, False, True]
    parts = {b.token_mixer.part for s in plain.stages for b in s.blocks}
    assert parts == {c // 4 for c in (128, 256, 384, 512)}  # a quarter of each stage's channels
    assert [len(s.blocks) for s in timm.create_model("recnext_t").stages] == [0, 2, 8, 10]


def test_shared_block_adds_the_partial_outputs_before_it():
    """Stage 3 written out: a shared block's token mixer is ``z + cat(partials of the four blocks before it)``."""
    model = randomize_batchnorm(timm.create_model("recnext_t_share_channel"), seed=2).eval()
    stage = model.stages[3]
    x = torch.randn(1, 256, 4, 2)
    with torch.no_grad():
        y, partials = stage.downsample(x), []
        for block in stage.blocks:
            z = block.rep_mixer(y)
            if isinstance(block.token_mixer, SharedChannelMixer):
                mixed, partials = z + torch.cat(partials, dim=1), []
            else:
                partials.append(block.token_mixer.attn(z[:, :128]))
                mixed = torch.cat([partials[-1], z[:, 128:]], dim=1)
            y = z + block.channel_mixer(mixed)
        assert torch.allclose(stage(x), y, atol=1e-6)
    with pytest.raises(RuntimeError, match="needs the partial outputs"):
        SharedChannelMixer()(torch.randn(1, 8, 2, 2))


@pytest.mark.parametrize("name, rate", [("recnext_t", 0.0), ("recnext_s", 0.1), ("recnext_b_share_channel", 0.2)])
def test_drop_path_grows_linearly_without_distillation(name, rate):
    model = timm.create_model(name)
    blocks = [b for s in model.stages for b in s.blocks]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, rate, len(blocks)).tolist())
    assert model.pretrained_cfg["tag"] == "base_300e_in1k" and not model.distillation
    distilled = timm.create_model(f"{name}.dist_300e_in1k")
    assert distilled.distillation and not [m for m in distilled.modules() if hasattr(m, "drop_prob")]
    assert distilled.pretrained_cfg["hf_hub_id"] == f"suous/{name}.dist_300e_in1k"
    assert distilled.pretrained_cfg["url"] == (
        f"https://github.com/suous/RecNeXt/releases/download/v2.0/{name}_distill_300e.pth")  # fmt: skip


def test_repvgg_mixer_fuses_to_one_depthwise_3x3():
    mixer = randomize_batchnorm(RepDWConv(6), seed=1).eval().double()
    conv = mixer.fuse()
    assert (type(conv), conv.kernel_size, conv.groups, conv.padding) == (nn.Conv2d, (3, 3), 6, (1, 1))
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(conv(x), mixer(x), rtol=0, atol=1e-12)
    fused = repnext.reparameterize(timm.create_model("recnext_t").eval())
    assert not any(isinstance(m, RepDWConv) for m in fused.modules())
    assert all(isinstance(b.rep_mixer, nn.Conv2d) for s in fused.stages for b in s.blocks)


def test_partial_mixer_leaves_the_other_channels():
    mixer = PartialChannelMixer(nn.Conv2d(2, 2, 1), part=2)
    x = torch.randn(1, 8, 3, 3)
    partials: list[torch.Tensor] = []
    out = mixer(x, partials)
    assert torch.equal(out[:, 2:], x[:, 2:]) and torch.equal(partials[0], out[:, :2])
    with pytest.raises(ValueError, match=r"embed_dim \[64, 130, 256, 512\].*split_rate=4"):
        timm.create_model("recnext_t", embed_dim=(64, 130, 256, 512))
