"""RepNeXt-u: shortcut re-parameterization leaves a plain chain; upstream's unused conv is ignored."""

import operator

import pytest
import timm
import torch

import repnext
from repnext.analysis.equivalence import randomize_batchnorm


@pytest.mark.parametrize("name", ["repnext_u1_tiny", "repnext_u2_tiny", "repnext_u3_tiny"])
def test_fused_graph_has_no_residual_add(name):
    model = randomize_batchnorm(timm.create_model(name)).eval()
    adds = (operator.add, torch.add, "add", "add_")

    def n_adds(module):
        graph = torch.fx.symbolic_trace(module).graph
        return sum(node.target in adds for node in graph.nodes if node.op in ("call_function", "call_method"))

    assert n_adds(model) >= sum(len(stage) for stage in model.stages)  # one residual add per block at least
    fused = repnext.reparameterize(model)
    assert n_adds(fused) == 0
    block = fused.stages[0][0]
    assert [tuple(m.weight.shape) for m in block if hasattr(m, "weight")] == [
        (192, 1, 7, 7), (480, 192, 1, 1), (96, 480, 1, 1)]  # fmt: skip


def test_upstream_checkpoint_with_unused_inference_conv(tmp_path):
    """Upstream's layout: classifier ``head.2`` (pool, flatten, linear), plus an unused ``feature.conv_repara``."""
    source = randomize_batchnorm(timm.create_model("repnext_u3_tiny")).eval()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    state["head.2.weight"], state["head.2.bias"] = torch.randn(1000, 768), torch.randn(1000)
    source.head[2].load_state_dict({"weight": state["head.2.weight"], "bias": state["head.2.bias"]})
    assert source.pretrained_cfg["classifier"] == "head.2"
    for key in [k for k in state if k.endswith("feature.norm1.weight")]:
        prefix = key.removesuffix("norm1.weight")
        state[prefix + "conv_repara.weight"] = torch.randn(96, 1, 7, 7)
        state[prefix + "conv_repara.bias"] = torch.randn(96)
    torch.save({"model": state}, tmp_path / "repnext_u3_tiny.pth")
    model = repnext.load_checkpoint(timm.create_model("repnext_u3_tiny").eval(), tmp_path / "repnext_u3_tiny.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_u1_needs_channels_divisible_by_three():
    with pytest.raises(ValueError, match="do not split into 3 chunks"):
        timm.create_model("repnext_u1_tiny", dims=(64, 128, 256, 512))
    assert "repnext_u1_base" not in repnext.list_models()
