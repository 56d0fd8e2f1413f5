"""RepNeXt M0-M5: timm integration, exact re-parameterization, upstream-compatible checkpoints."""

import argparse

import pytest
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import repnext
from repnext.analysis.equivalence import check_reparameterization, randomize_batchnorm
from repnext.analysis.stats import standalone_batchnorm_parameters
from repnext.checkpoint import CheckpointError
from repnext.models.layers import ChannelShuffle
from repnext.models.repnext import ChunkConv, SquareSeparableMixer

MODELS = [f"repnext_m{i}" for i in range(6)]
# Fused parameter counts (M) as published in the paper and the upstream README.
PUBLISHED_PARAMS_M = dict(zip(MODELS, [2.3, 4.8, 6.5, 7.8, 13.3, 21.7], strict=True))
# Single-branch "E" forms published in the upstream README (StarNet-recipe table).
PUBLISHED_SINGLE_BRANCH_PARAMS_M = {"repnext_m0": 2.5, "repnext_m1": 5.3, "repnext_m2": 7.0}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_fused_structure_and_published_params(name):
    """Published counts are the papers' convention (see ``standalone_batchnorm_parameters``)."""
    model = timm.create_model(name).eval()
    fused = repnext.reparameterize(model)
    allowed = (nn.Conv2d, nn.Linear, nn.GELU, nn.Identity, nn.Dropout, nn.Sequential, ChannelShuffle)
    leaves = {type(m) for m in fused.modules() if not list(m.children())}
    assert all(issubclass(t, allowed) for t in leaves), leaves
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    standalone = standalone_batchnorm_parameters(model)
    assert round((n_params(fused) + standalone) / 1e6, 1) == PUBLISHED_PARAMS_M[name]
    assert n_params(fused) < n_params(model)
    single = repnext.reparameterize(model, single_branch=True)
    depthwise = {m.kernel_size for m in single.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert depthwise == {(11, 11), (7, 7)}
    if name in PUBLISHED_SINGLE_BRANCH_PARAMS_M:
        assert round((n_params(single) + standalone) / 1e6, 1) == PUBLISHED_SINGLE_BRANCH_PARAMS_M[name]


def test_two_branch_form_keeps_the_separable_chunk_and_is_exact():
    """Each ChunkConv becomes one depthwise 7x7 over three chunks beside the separable 1x11 then 11x1; CopyConv and
    everything else stay as in the deploy form."""
    model = randomize_batchnorm(timm.create_model("repnext_m0"), seed=5).eval().double()
    deploy, two = repnext.reparameterize(model), repnext.reparameterize(model, two_branch=True)
    mixers = [m for m in two.modules() if isinstance(m, SquareSeparableMixer)]
    assert len(mixers) == sum(isinstance(m, ChunkConv) for m in model.modules()) > 0
    for mixer in mixers:
        square, (first, second) = mixer.square, mixer.separable
        assert square.kernel_size == (7, 7) and square.groups == square.in_channels == 3 * first.in_channels
        assert (first.kernel_size, second.kernel_size) == ((1, 11), (11, 1))
    # the identity and 3x3 chunks gain zero taps in the 7x7: more weights than deploy, fewer than one 11x11
    single = repnext.reparameterize(model, single_branch=True)
    assert n_params(deploy) < n_params(two) < n_params(single)
    for size in [(64, 64), (33, 47)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(two(x), model(x), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="choose one"):
        repnext.reparameterize(model, single_branch=True, two_branch=True)


def test_single_branch_training_form():
    """``single_branch=True`` trains the "E" structure directly; fused, it has the published E parameter count."""
    model = timm.create_model("repnext_m0", single_branch=True).eval()
    mixer, down = model.stages[1].blocks[0].token_mixer, model.stages[1].downsample.token_mixer
    assert (type(mixer), mixer.kernel_size, mixer.groups) == (nn.Conv2d, (11, 11), 80)
    assert (down.kernel_size, down.stride, down.groups, down.out_channels) == ((7, 7), (2, 2), 40, 80)
    fused = repnext.reparameterize(model)
    assert round(n_params(fused) / 1e6, 1) == PUBLISHED_SINGLE_BRANCH_PARAMS_M["repnext_m0"]
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(fused(x), model(x), atol=1e-5)


def test_fusion_keeps_device_and_dtype():
    model = timm.create_model("repnext_m0").eval().to(torch.float64)
    for merge in ({}, {"single_branch": True}, {"two_branch": True}):
        fused = repnext.reparameterize(model, **merge)
        assert {p.dtype for p in fused.parameters()} == {torch.float64}
        assert {b.dtype for b in fused.buffers()} <= {torch.float64}


def test_distillation_heads():
    model = timm.create_model("repnext_m0", distillation=True, num_classes=5).train()
    cls, dist = model(torch.randn(2, 3, 64, 64))
    assert cls.shape == dist.shape == (2, 5)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x), (model.head.head(features) + model.head.head_dist(features)) / 2)


def test_features_only():
    model = timm.create_model("repnext_m1", features_only=True, out_indices=(0, 1, 2, 3))
    features = model(torch.randn(1, 3, 160, 192))
    assert model.feature_info.channels() == [48, 96, 192, 384]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(f.shape[-2:]) for f in features] == [(40, 48), (20, 24), (10, 12), (5, 6)]
    partial = timm.create_model("repnext_m0", features_only=True, out_indices=(2, 3))
    assert partial.feature_info.channels() == [160, 320]


def test_head_api():
    model = timm.create_model("repnext_m0").eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.forward_features(x).shape == (2, 320, 2, 2)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 320)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 320)
    assert timm.create_model("repnext_m0", num_classes=0)(x).shape == (2, 320)


def test_odd_input_sizes_are_supported():
    model = randomize_batchnorm(timm.create_model("repnext_m0")).eval().double()
    for size in [(97, 131), (33, 32)]:
        agreement = check_reparameterization(model, torch.randn(1, 3, *size, dtype=torch.float64), single_branch=True)
        assert agreement.max_rel <= 1e-9
    assert model.forward_features(torch.randn(1, 3, 97, 131, dtype=torch.float64)).shape[-2:] == (4, 5)


def test_pretrained_cfg():
    model = timm.create_model("repnext_m3")
    cfg = model.pretrained_cfg
    assert cfg["url"] == "https://github.com/suous/RepNeXt/releases/download/v1.0/repnext_m3_distill_300e.pth"
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875
    assert data["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def _upstream_checkpoint(path, name="repnext_m1", **kwargs):
    model = randomize_batchnorm(timm.create_model(name, **kwargs), seed=3)
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 299}, path)
    return model


def test_upstream_checkpoint_loads_strictly(tmp_path):
    path = tmp_path / "repnext_m1_distill_300e.pth"
    source = _upstream_checkpoint(path).eval()
    model = timm.create_model("repnext_m1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    direct = repnext.load_checkpoint(timm.create_model("repnext_m1").eval(), path).state_dict()
    assert all(torch.equal(value, direct[key]) for key, value in source.state_dict().items())
    overlay = dict(file=str(path))
    headless = timm.create_model("repnext_m1", pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    assert torch.equal(headless.stem.stem[0].conv.weight, source.stem.stem[0].conv.weight)
    finetune = timm.create_model("repnext_m1", pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    assert finetune.head.head.linear.out_features == 10


@pytest.mark.parametrize("tag, run", [("starnet_300e_in1k", "sz224_4xbs512_ep300"),
                                      ("starnet_dist_300e_in1k", "sz224_4xbs256_ep300_distill")])  # fmt: skip
def test_starnet_recipe_tags(tag, run):
    for name in ("repnext_m0", "repnext_m1", "repnext_m2"):
        cfg = timm.create_model(f"{name}.{tag}").pretrained_cfg
        assert cfg["url"] == f"https://github.com/suous/RepNeXt/releases/download/v1.0/{name}_{run}.pth.tar"
        assert cfg["crop_pct"] == 0.9 and cfg["custom_load"]
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model(f"repnext_m3.{tag}")


def test_timm_training_checkpoint_loads_strictly(tmp_path):
    """timm's train.py writes ``state_dict`` beside its argparse ``args``; it loads under ``weights_only``."""
    source = randomize_batchnorm(timm.create_model("repnext_m0"), seed=4).eval()
    path = tmp_path / "repnext_m0_sz224_4xbs512_ep300.pth.tar"
    args = argparse.Namespace(model="repnext_m0", crop_pct=0.9, distillation_type="none")
    torch.save({"epoch": 299, "arch": "repnext_m0", "state_dict": source.state_dict(), "args": args}, path)
    overlay = dict(file=str(path))
    model = timm.create_model("repnext_m0.starnet_300e_in1k", pretrained=True, pretrained_cfg_overlay=overlay)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))
    finetune = timm.create_model("repnext_m0.starnet_300e_in1k", pretrained=True, num_classes=10, in_chans=1,
                                 pretrained_cfg_overlay=overlay)  # fmt: skip
    assert finetune.head.head.linear.out_features == 10
    assert torch.allclose(finetune.stem.stem[0].conv.weight[:, 0], source.stem.stem[0].conv.weight.sum(1))
    assert torch.equal(finetune.stages[2].blocks[0].token_mixer.conv_s.conv_3_3.weight,
                       source.stages[2].blocks[0].token_mixer.conv_s.conv_3_3.weight)  # fmt: skip
    torch.save({"state_dict": timm.create_model("repnext_m1").state_dict(), "args": args}, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        timm.create_model("repnext_m0.starnet_300e_in1k", pretrained=True, pretrained_cfg_overlay=overlay)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "m1.pth"
    _upstream_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"'stem.stem.0.conv.weight'.*\[24, 3, 3, 3\].*\[28, 3, 3, 3\]"):
        timm.create_model("repnext_m2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(CheckpointError, match=r"m1.pth: shape mismatch at 'stem.stem.0.conv.weight'"):
        repnext.load_checkpoint(timm.create_model("repnext_m2"), path)
    _upstream_checkpoint(path, name="repnext_m0")
    with pytest.raises(CheckpointError, match=r"m1\.pth"):
        repnext.load_checkpoint(timm.create_model("repnext_m1"), path)


def test_truncated_state_dict_is_refused(tmp_path):
    state = timm.create_model("repnext_m0").state_dict()
    state.pop("head.head_dist.linear.bias")
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'head\.head_dist\.linear\.bias'"):
        repnext.load_checkpoint(timm.create_model("repnext_m0"), tmp_path / "partial.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"weights\.pth: not a PyTorch checkpoint"):
        repnext.load_checkpoint(timm.create_model("repnext_m0"), path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        repnext.load_checkpoint(timm.create_model("repnext_m0"), tmp_path / "absent.pth")


def test_wrong_input_channels_fail_before_compute():
    model = timm.create_model("repnext_m0")
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 3, H, W\], got \[1, 1, 64, 64\]"):
        model(torch.randn(1, 1, 64, 64))
    assert timm.create_model("repnext_m0", in_chans=1).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'repnext_m9'; available: .*repnext_m0"):
        repnext.create_model("repnext_m9")


def test_channel_shuffle_is_torchs_permutation_and_exports_to_onnx(tmp_path):
    """The single-branch downsampling mixer's shuffle: nn.ChannelShuffle's output, as ops ONNX has."""
    pytest.importorskip("onnx")
    import onnx

    x = torch.randn(2, 12, 5, 7)
    for groups in (2, 3, 12):
        assert torch.equal(ChannelShuffle(groups)(x), nn.ChannelShuffle(groups)(x))
    torch.onnx.export(ChannelShuffle(3), (x,), str(tmp_path / "shuffle.onnx"), dynamo=False, opset_version=18)
    assert {n.op_type for n in onnx.load(str(tmp_path / "shuffle.onnx")).graph.node} <= {
        "Shape",
        "Gather",
        "Reshape",
        "Transpose",
        "Constant",
        "Div",
        "Unsqueeze",
        "Concat",
        "Cast",
    }
