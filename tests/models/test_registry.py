"""Every registered variant, in timm's manner (timm's tests/test_models.py contract): creation by every
pretrained tag, default cfgs that match the model, heads and pooling, features, TorchScript and FX of the
training and fused forms, torch.export of the fused form, and exact fusion. Each variant is built, fused and
scripted once (``variant``), and every test of one variant runs in the same xdist worker (``by_model``)."""

import copy
import functools
import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import yaml
from timm.models import get_arch_pretrained_cfgs
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import repnext
from repnext.analysis.equivalence import TOLERANCES, compare_outputs, randomize_batchnorm
from repnext.analysis.latency.backends import has_single_branch
from repnext.export import exported_program

MODELS = repnext.list_models()
TAGGED = [name for model in MODELS for name in get_arch_pretrained_cfgs(model)]
ROOT = Path(__file__).parents[2]
UPSTREAM = json.loads((ROOT / "tests" / "data" / "upstream_state_dicts.json").read_text())
FAMILY_EXAMPLES = ["repnext_m0", "recnext_m0", "recnext_a0", "recnext_t_share_channel", "repnext_u1_tiny"]
# Two sizes per family, one non-square with odd maps in the late stages, small enough for the suite's budget on
# two cores (RepNeXt's first stage sees every tap of its largest kernel; RecNeXt's deepest RecConv level still
# sees a map of 2x2 or more); the papers' 224x224 (and 160x192) is checked for every variant by the pipeline's
# reparam_check stage.
DEFAULT_SIZES = [(64, 64), (48, 80)]
SIZES = {"recnext": [(96, 96), (80, 128)], "recnext_tsb": [(128, 128), (96, 160)], "repnext_u": [(32, 32), (64, 96)]}


def family(name: str) -> str:
    return repnext.registry.models_by_family()[name]


class Variant:
    """One variant with random weights and random BatchNorm statistics (eval), its fused form and their
    TorchScript, each made on first use; shared by the tests of the variant, so never modified."""

    def __init__(self, name: str) -> None:
        self.name = name

    @functools.cached_property
    def built(self) -> nn.Module:
        return randomize_batchnorm(timm.create_model(self.name), seed=7).eval()

    @functools.cached_property
    def fused(self) -> nn.Module:
        return repnext.reparameterize(self.built)

    @functools.cached_property
    def scripted_fused(self) -> torch.jit.ScriptModule:
        return torch.jit.script(self.fused)


def _block_key(module: nn.Module) -> tuple:
    """What TorchScript compiles a block as: its layers and the shapes of its tensors (drop-path rates, which grow
    along the depth, are values of one attribute type)."""
    tensors = tuple((name, tuple(t.shape)) for name, t in [*module.named_parameters(), *module.named_buffers()])
    return re.sub(r"drop_prob=[\d.e-]+", "", str(module)), tensors


def distinct_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose runs of blocks (a stage's ``*Block`` modules) end after the first block of each
    distinct :func:`_block_key` has been seen: every block TorchScript would compile, in order (a shared-channel
    block still follows the blocks it reads), without compiling each repeat again (the per-instance cost of
    ``torch.jit.script`` is about 2.5 ms a module, 4 s for RepNeXt-M5's 1528). Other lists (a RecConv's levels) are
    read in pairs and stay whole."""
    model = copy.deepcopy(model)
    for container in list(model.modules()):
        is_run = isinstance(container, nn.Sequential | nn.ModuleList) and len(container)
        if is_run and all(type(child).__name__.endswith("Block") for child in container):
            keys = [_block_key(child) for child in container]
            end = max(keys.index(key) for key in keys) + 1
            container._modules = {str(index): child for index, child in enumerate(list(container)[:end])}
    return model


@pytest.fixture(scope="module")
def variant(request) -> Variant:
    """Module-scoped and parametrized indirectly: pytest runs the tests of one variant together, so each worker
    holds one variant at a time (all of them together take several GB)."""
    return Variant(request.param)


def by_model(names: list[str]) -> list:
    """Parameters grouped per variant, so that ``--dist loadgroup`` builds each variant in one worker only."""
    return [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in names]


def test_registry_is_complete():
    assert len([m for m in MODELS if m.startswith("repnext_m")]) == 6
    assert len([m for m in MODELS if m.startswith("recnext_")]) == 18
    assert {"recnext_t", "recnext_s", "recnext_b"} <= set(MODELS)
    assert {f"recnext_{s}_share_channel" for s in "tsb"} <= set(MODELS)
    assert {"repnext_u3_tiny", "repnext_u3_small", "repnext_u3_base"} <= set(MODELS)
    assert set(MODELS) <= set(timm.list_models())
    assert len([t for t in TAGGED if t.startswith("recnext_")]) == 36
    assert len([t for t in TAGGED if ".starnet" in t]) == 6


@pytest.mark.parametrize("variant", by_model(sorted(UPSTREAM)), indirect=True)
def test_state_dict_names_and_shapes_match_upstream(variant):
    state = variant.built.state_dict()
    text = "\n".join(f"{k} {list(v.shape)}" for k, v in state.items())
    assert len(state) == UPSTREAM[variant.name]["keys"]
    assert hashlib.sha256(text.encode()).hexdigest() == UPSTREAM[variant.name]["sha256"]


@pytest.mark.parametrize("tagged", TAGGED)
def test_created_by_pretrained_tag_headless_and_unpooled(tagged):
    """``name.tag`` selects that cfg (and, for RecNeXt, the distillation it names); num_classes=0, global_pool=''."""
    model = timm.create_model(tagged, num_classes=0, global_pool="").eval()
    name, _, tag = tagged.partition(".")
    assert model.pretrained_cfg.get("tag", "") == tag and model.pretrained_cfg["architecture"] == name
    if name.startswith("recnext_"):
        assert model.distillation == tag.startswith("dist")
    x = torch.randn(1, 3, 32, 32)  # shapes and the identity head: the smallest input every variant takes
    with torch.no_grad():
        out = model(x)
    assert out.dim() == 4 and out.shape[1] == model.num_features
    assert torch.equal(out, model.forward_features(x))


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_meta_device_build_loads_to_the_model_built_normally(variant):
    """Built under ``torch.device("meta")`` (no memory, no initialisation: what large-checkpoint loaders do), then
    given storage and the normally built model's state dict: the same function. ``to_empty`` for a family's first
    variant, ``load_state_dict(assign=True)`` for the others."""
    with torch.device("meta"):
        model = timm.create_model(variant.name).eval()
    if variant.name in FAMILY_EXAMPLES:
        model.to_empty(device="cpu")
    model.load_state_dict(variant.built.state_dict(), strict=True, assign=variant.name not in FAMILY_EXAMPLES)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    x = torch.randn(1, 3, 32, 32)  # the smallest input every variant takes
    with torch.no_grad():
        assert torch.equal(model(x), variant.built(x))


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_default_cfg_matches_model(variant):
    model, cfg = variant.built, variant.built.pretrained_cfg
    state = model.state_dict()
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert features.shape[1:] == (model.num_features, *cfg["pool_size"])
    assert pre_logits.shape == (1, model.num_features) and logits.shape == (1, cfg["num_classes"])
    assert state[f"{cfg['first_conv']}.weight"].shape[1] == cfg["input_size"][0]
    classifiers = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    for classifier in classifiers:
        assert state[f"{classifier}.weight"].shape[0] == cfg["num_classes"] == model.num_classes
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == cfg["input_size"] and data["crop_pct"] == cfg["crop_pct"]


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_reset_classifier(variant):
    model = distinct_blocks(variant.built)  # the head does not see how many blocks a stage repeats
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7) and model.get_classifier() is not None
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        model.reset_classifier(0, "max")


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_fusion_is_exact_and_complete(variant):
    """Fused in each dtype (fusion arithmetic is part of the test): float32 is the shared ``variant.fused`` of the
    whole model; float64 checks every distinct block (:func:`distinct_blocks`), and one variant per family whole.
    The single- and two-branch forms, where there are, merged from the fused form, as ``reparameterize`` merges
    after fusing."""
    model, merge = variant.built, repnext.reparam.has_single_branch_form(variant.built)
    assert has_single_branch(variant.name) == merge  # the latency stage times the single-branch form by this rule
    for dtype in (torch.float64, torch.float32):
        whole = dtype == torch.float32 or variant.name in FAMILY_EXAMPLES
        source = model if dtype == torch.float32 else (copy.deepcopy if whole else distinct_blocks)(model).to(dtype)
        inputs = [torch.randn(1, 3, *size, dtype=dtype) for size in SIZES.get(family(variant.name), DEFAULT_SIZES)]
        with torch.no_grad():  # batch 1: BatchNorm runs in eval, per sample
            expected = [source(x) for x in inputs]
        deploy = variant.fused if source is model else repnext.reparameterize(source, inplace=True)
        for merged in (None, "two_branch", "single_branch") if merge else (None,):
            form = repnext.reparameterize(deploy, **{merged: True}) if merged else deploy  # deploy stays intact
            assert not any(isinstance(m, _BatchNorm) for m in form.modules())
            for x, reference in zip(inputs, expected, strict=True):
                with torch.no_grad():
                    agreement = compare_outputs(reference, form(x))
                assert agreement.max_rel <= TOLERANCES[str(dtype)[6:]], (dtype, x.shape, merged, agreement)


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_fusion_leaves_source_is_idempotent_and_matches_timm(variant):
    model = variant.built
    assert any(isinstance(m, _BatchNorm) for m in model.modules()), "inplace=False must not touch the source"
    via_timm = timm.utils.reparameterize_model(model)
    again = repnext.reparameterize(variant.fused)
    assert str(variant.fused) == str(via_timm) == str(again)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(variant.fused(x), via_timm(x)) and torch.equal(variant.fused(x), again(x))


@pytest.mark.parametrize("name", by_model(MODELS))
def test_forward_backward(name):
    model = distinct_blocks(timm.create_model(name, num_classes=10, drop_path_rate=0.0)).train()  # every kind
    # 64x64 keeps the last stage at 2x2, so that every tap of every kernel sees the image; RepNeXt-u
    # (no dilated kernels, no batch norm in its stages) is checked at 32x32 to save time on its large variants;
    # RecNeXt T/S/B (stride 64) at 128x128, so that each attention sees more than one token (one gets no q/k gradient)
    side = {"repnext_u": 32, "recnext_tsb": 128}.get(family(name), 64)
    out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()  # a plain sum is constant under a batch-normalised head
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing[:5]


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_features_only(variant):
    model = timm.create_model(variant.name, features_only=True, out_indices=(1, 3)).eval()
    info = variant.built.feature_info
    features = model(torch.randn(1, 3, 32, 64))
    assert [f.shape[1] for f in features] == model.feature_info.channels() == [info[1]["num_chs"], info[3]["num_chs"]]
    reductions = model.feature_info.reduction()
    assert reductions == [info[1]["reduction"], info[3]["reduction"]]
    assert [tuple(f.shape[-2:]) for f in features] == [(math.ceil(32 / r), math.ceil(64 / r)) for r in reductions]


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_torchscript_training_and_fused_forms(variant):
    """Every distinct block of each variant, in both forms (:func:`distinct_blocks`); one variant per family whole,
    training form here and fused form in the file round trip below."""
    x = torch.randn(1, 3, 32, 32)  # the smallest input every variant takes
    distinct = distinct_blocks(variant.built)
    forms = [distinct, repnext.reparameterize(distinct)] + [variant.built] * (variant.name in FAMILY_EXAMPLES)
    for module in forms:
        scripted = torch.jit.script(module)
        # the profiling executor's optimisation passes cost seconds per call and do not change the function
        with torch.no_grad(), torch.jit.optimized_execution(False):
            assert compare_outputs(scripted(x), module(x)).max_rel <= TOLERANCES["float32"]


@pytest.mark.parametrize("variant", by_model(MODELS), indirect=True)
def test_fx_trace(variant):
    """Every distinct block of each variant in both forms; one variant per family whole."""
    x = torch.randn(1, 3, 32, 32)  # the smallest input every variant takes
    distinct = distinct_blocks(variant.built)
    whole = [variant.built, variant.fused] if variant.name in FAMILY_EXAMPLES else []
    for form in (distinct, repnext.reparameterize(distinct), *whole):
        graph = torch.fx.symbolic_trace(form)
        with torch.no_grad():
            assert torch.allclose(graph(x), form(x), atol=1e-5)


def fx_extractor(model: nn.Module) -> nn.Module:
    """The model traced as timm's tests trace it (timm's leaf modules and functions): its final output as a dict."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    leaves, functions = timm.models.get_notrace_modules(), timm.models.get_notrace_functions()
    tracer = dict(leaf_modules=leaves, autowrap_functions=functions, param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    return create_feature_extractor(model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
                                    tracer_kwargs=tracer)  # fmt: skip


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_fx_traced_then_scripted_in_train_and_eval(variant):
    """timm's test_model_forward_fx_torchscript, both forms, in eval and (training form) train mode, and its
    test_model_backward_fx (every parameter of the traced training form gets a gradient). Postponed annotations
    (``from __future__ import annotations``) made FX write ``x : _Tensor_``, which TorchScript cannot resolve; one
    variant per family, as the variants of a family share every module class, with its distinct blocks (scripting
    a traced graph costs per node)."""
    x = torch.randn(2, 3, 64, 64)
    extractors = {}
    distinct = distinct_blocks(variant.built)
    for form, modes in ((distinct, (False, True)), (repnext.reparameterize(distinct), (False,))):
        module = copy.deepcopy(form)
        extractors[form] = fx_extractor(module)  # traced in both modes; train() picks the graph
        for training in modes:
            scripted = torch.jit.script(extractors[form].train(training))
            with torch.no_grad(), torch.jit.optimized_execution(False):
                (out,) = scripted(x).values()
                assert torch.allclose(out, module.train(training)(x), atol=1e-5), (training, form is not distinct)
    training_form = extractors[distinct].train(True)
    (out,) = training_form(x).values()
    (out * torch.randn_like(out)).sum().backward()
    assert not [name for name, p in training_form.named_parameters() if p.grad is None]


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_fx_feature_extractor(variant):
    """One variant per family: the variants of a family share every module class, and torchvision's node naming
    (quadratic in the number of modules) takes 6 s on RecNeXt-A5 alone."""
    x = torch.randn(1, 3, 64, 64)
    # the last stage by its feature_info name (timm's get_graph_node_names would trace the model twice more)
    last = variant.built.feature_info[-1]["module"]
    extractor = timm.models.create_feature_extractor(variant.built, return_nodes={last: "out"})
    seen = []
    hook = variant.built.get_submodule(last).register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        variant.built(x)
        hook.remove()
        assert torch.allclose(extractor(x)["out"], seen[0], atol=1e-5)


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_fused_torchscript_file_and_state_dict_roundtrip(variant, tmp_path):
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected = variant.fused(x)
        torch.jit.save(variant.scripted_fused, tmp_path / "fused.pt")
        assert torch.allclose(torch.jit.load(tmp_path / "fused.pt")(x), expected, atol=1e-5)
        torch.save(variant.fused.state_dict(), tmp_path / "fused.pth")
        skeleton = repnext.reparameterize(timm.create_model(variant.name).eval())
        skeleton.load_state_dict(torch.load(tmp_path / "fused.pth"), strict=True)
        assert torch.equal(skeleton(x), expected)


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_wrong_input_channels_fail_before_compute(variant):
    with pytest.raises(ValueError, match=r"expected input of shape \[B, 3, H, W\], got \[1, 1, 64, 64\]"):
        variant.built(torch.randn(1, 1, 64, 64))
    assert timm.create_model(variant.name, in_chans=1).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("variant", by_model(FAMILY_EXAMPLES), indirect=True)
def test_fused_form_exports_with_a_dynamic_batch(variant):
    """One variant per family here (an export takes 1-2 s); every variant at 224x224 in the export_check stage."""
    size = SIZES.get(family(variant.name), DEFAULT_SIZES)[0]
    program = exported_program(variant.fused, torch.randn(2, 3, *size)).module()
    for batch in (1, 3):
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            assert torch.equal(program(x), variant.fused(x)), batch  # the program runs the module's own kernels


def test_every_variant_exports_in_the_export_check_table():
    """The export_check stage exports every registered variant; dvc status (tests/test_pipeline.py) keeps its
    table current with the models and repnext/export.py."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["export_check"]
    table = pd.read_csv(ROOT / f"{section['table_stem']}.csv", keep_default_na=False)
    assert sorted(section["models"]) == sorted(MODELS) == sorted(table["model"])
    failed = table[table["passed"].astype(str).str.lower() != "true"]
    assert failed.empty, failed[["model", "error"]].to_string()
