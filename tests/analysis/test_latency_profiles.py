"""Per-layer profiles: runtime nodes mapped onto the roofline's layer kinds, and the figures drawn from them.
The profilers themselves run in tests/analysis/test_latency.py (inside the shared benchmark)."""

import pandas as pd
import pytest
import torch
from torch import nn

from repnext.analysis.latency.backends import export_for_timing, missing_requirement
from repnext.analysis.latency.profiles import (
    conv_kind,
    op_kind,
    openvino_conv_kinds,
    plot_bound_fractions,
    plot_profiles,
)
from repnext.analysis.roofline import KINDS
from repnext.plotting import check_figure, use_style


def test_a_convolution_is_classified_by_its_weight_and_input_channels():
    assert conv_kind([48, 1, 7, 7], 48) == "depthwise kxk"
    assert conv_kind([48, 1, 1, 11], 48) == "depthwise kxk"
    assert conv_kind([96, 48, 1, 1], 48) == "1x1 conv"
    assert conv_kind([32, 3, 3, 3], 3) == "dense kxk"
    assert conv_kind([8, 1, 3, 3], 1) == "dense kxk"  # one input channel: a dense conv, not a depthwise one


@pytest.mark.parametrize(
    ("op", "kind"),
    [("Gemm", "matmul"), ("FullyConnected", "matmul"), ("Resize", "resampling"), ("ReduceMean", "resampling"),
     ("LayerNormalization", "normalisation"), ("MVN", "normalisation"), ("Concat", "layout"),
     ("VariadicSplit", "layout"), ("ReorderInput", "layout"), ("Reorder", "layout"), ("Gelu", "element-wise"),
     ("Subgraph", "element-wise"), ("Add", "element-wise")],
)  # fmt: skip
def test_runtime_node_types_map_onto_the_roofline_kinds(op, kind):
    assert op_kind(op) == kind and kind in KINDS


def test_openvino_names_each_compiled_convolution_with_its_kind(tmp_path):
    """From the runtime graph's weight shapes, under the names OpenVINO's profiling info uses."""
    if reason := missing_requirement("openvino"):
        pytest.skip(reason)
    from repnext.runtimes import openvino_request

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 4, 1))
    path = export_for_timing(net.eval(), tmp_path / "net.onnx", torch.randn(1, 3, 8, 8))
    request = openvino_request(path, 1, profile=True)
    request.infer({0: torch.randn(1, 3, 8, 8).numpy()})
    kinds = openvino_conv_kinds(request.get_compiled_model())
    assert sorted(kinds.values()) == ["1x1 conv", "dense kxk", "depthwise kxk"]
    ran = {node.node_name for node in request.get_profiling_info() if node.status == node.Status.EXECUTED}
    assert set(kinds) <= ran


def _profiles() -> pd.DataFrame:
    rows = []
    for model, scale in (("repnext_m1", 1.0), ("mobileone_s3", 0.5)):
        for backend in ("onnxruntime", "openvino"):
            for index, kind in enumerate(KINDS):
                profiled, bound = scale * (index % 3) * 0.4, scale * (index % 4) * 0.3
                rows.append(
                    dict(
                        model=model,
                        backend=backend,
                        kind=kind,
                        profiled_ms=profiled,
                        bound_ms=bound,
                        share=profiled / (scale * 3.2),
                        bound_fraction=bound / profiled if profiled else None,
                    )
                )
            rows.append(dict(model=model, backend=backend, kind="all", profiled_ms=scale * 3.2, bound_ms=scale * 3.6,
                             share=1.0, bound_fraction=3.6 / 3.2))  # fmt: skip
    return pd.DataFrame(rows)


def test_the_profile_figures_read_at_a_glance():
    use_style()
    bars, fractions = plot_profiles(_profiles(), ["repnext_m1", "mobileone_s3"]), plot_bound_fractions(_profiles())
    assert check_figure(bars) == [] and check_figure(fractions) == []
    assert len(bars.axes) == 4 and [ax.get_title() for ax in bars.axes][:2] == ["repnext_m1, onnxruntime",
                                                                                "repnext_m1, openvino"]  # fmt: skip
    assert [ax.get_title() for ax in fractions.axes[:2]] == ["onnxruntime", "openvino"]
