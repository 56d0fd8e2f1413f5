"""Per-layer profiles: where ONNX Runtime and OpenVINO spend a model's batch-1 latency, by layer kind.

Each runtime's own profiler times every node it runs (ONNX Runtime's ``enable_profiling`` trace, OpenVINO's
``PERF_COUNT`` counters); each node is mapped onto the roofline's layer kinds (:data:`repnext.analysis.roofline.
KINDS`), so that a kind's measured time can be held against its bound. A runtime fuses layers: OpenVINO runs
GELU inside the convolution before it and ONNX Runtime adds reorders of its blocked layout, so a kind's time is
the time of the nodes the runtime ran under that kind, not of the PyTorch operators.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..roofline import KINDS

if TYPE_CHECKING:  # plotting imports matplotlib and pandas only when a figure is drawn, not in latency workers
    import pandas as pd
    from matplotlib.figure import Figure

ALL_KINDS = "all"  # a profile's row for the whole model
PROFILE_COLUMNS = ("model", "form", "backend", "threads", "resolution", "kind", "nodes", "profiled_ms", "share",
                   "bound_ms", "bound_fraction", "latency_ms")  # fmt: skip
PROFILE_FLOATS = dict(profiled_ms=".3f", share=".3f", bound_ms=".3f", bound_fraction=".3f", latency_ms=".2f")
CONVOLUTIONS = frozenset({"Conv", "FusedConv", "Convolution", "GroupConvolution"})
_MATMUL = {"Gemm", "MatMul", "FusedMatMul", "FusedGemm", "FullyConnected", "ScaledDotProductAttention", "Attention"}
_RESAMPLING = {"Resize", "Interpolate", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Pooling",
               "AvgPool", "ReduceMean", "ReduceMax", "Reduce"}  # fmt: skip
_NORMALISATION = {"BatchNormalization", "LayerNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
                  "InstanceNormalization", "Softmax", "LpNormalization", "MVN", "NormalizeL2", "BatchNormInference",
                  "RMS"}  # fmt: skip
_LAYOUT = {"Reshape", "Transpose", "Slice", "Split", "VariadicSplit", "Concat", "Concatenation", "Gather", "Shape",
           "ShapeOf", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Broadcast", "Pad", "Identity", "ReorderInput",
           "ReorderOutput", "Reorder", "Tile", "StridedSlice", "ShuffleChannels", "DepthToSpace", "Convert", "Cast",
           "ConstantOfShape"}  # fmt: skip
_NOT_LAYERS = {"Parameter", "Result", "Constant", "Input", "Output"}


def conv_kind(weight_shape: Sequence[int], in_channels: int) -> str:
    """The kind of a convolution with weight ``[O, I / groups, kh, kw]`` on ``in_channels`` channels."""
    if weight_shape[1] == 1 and in_channels > 1:
        return "depthwise kxk"
    return "1x1 conv" if tuple(weight_shape[2:]) == (1, 1) else "dense kxk"


def op_kind(op: str) -> str:
    """The kind of a runtime's non-convolution node type (ONNX Runtime's ``op_name``, OpenVINO's ``node_type``)."""
    for kind, ops in (("matmul", _MATMUL), ("resampling", _RESAMPLING), ("normalisation", _NORMALISATION),
                      ("layout", _LAYOUT)):  # fmt: skip
        if op in ops:
            return kind
    return "element-wise"


def openvino_conv_kinds(compiled) -> dict[str, str]:
    """``{node name: kind}`` of every convolution OpenVINO compiled (the names its profiling info uses), from the
    runtime graph's weight shapes: ``[O, I, kh, kw]``, or ``[G, O / G, I / G, kh, kw]`` when grouped."""
    kinds = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in CONVOLUTIONS or op.get_input_size() < 2:
            continue
        data, weight = op.input(0).get_partial_shape(), op.input(1).get_partial_shape()
        if weight.is_static and len(weight) >= 4 and data[1].is_static:
            dims = [d.get_length() for d in weight]
            kinds[op.get_friendly_name()] = conv_kind([dims[-4], dims[-3], dims[-2], dims[-1]], data[1].get_length())
    return kinds


def _per_call(calls: list[dict[str, float]], counts: dict[str, int]) -> dict[str, object]:
    """The profiled call of median total time (the lower median): its ms per kind, which sum to its total, and
    the nodes per kind of one call."""
    median = sorted(calls, key=lambda call: sum(call.values()))[(len(calls) - 1) // 2]
    kinds = {k: median.get(k, 0.0) for k in KINDS}
    return {"ms": kinds, "total_ms": math.fsum(kinds.values()), "nodes": counts}


def profile_openvino(path: str | Path, array: np.ndarray, threads: int, calls: int, warmup: int) -> dict[str, object]:
    """Per-kind ms of ``calls`` profiled OpenVINO inferences (after ``warmup``): each call's ``PERF_COUNT``
    counters, nodes that ran (``EXECUTED``) only. Returns :func:`_per_call`'s ``{"ms": {kind: ms}, "total_ms",
    "nodes": {kind: count}}``."""
    from ...runtimes import openvino_request

    request = openvino_request(path, threads, profile=True)
    kinds = openvino_conv_kinds(request.get_compiled_model())
    for _ in range(warmup):
        request.infer({0: array}, share_inputs=True)
    measured, counts = [], defaultdict(int)
    for index in range(calls):
        request.infer({0: array}, share_inputs=True)
        call: dict[str, float] = defaultdict(float)
        for node in request.get_profiling_info():
            if node.status != node.Status.EXECUTED or node.node_type in _NOT_LAYERS:
                continue
            kind = kinds.get(node.node_name, "dense kxk") if node.node_type in CONVOLUTIONS else op_kind(node.node_type)
            call[kind] += node.real_time.total_seconds() * 1e3
            counts[kind] += index == 0
        measured.append(call)
    return _per_call(measured, dict(counts))


def profile_onnxruntime(path: str | Path, array: np.ndarray, threads: int, calls: int, warmup: int,
                        workdir: str | Path) -> dict[str, object]:  # fmt: skip
    """Per-kind ms of ``calls`` profiled ONNX Runtime runs (after ``warmup``), from the session's trace (written
    under ``workdir``): each node's kernel time, assigned to the run it lies in. See :func:`_per_call`."""
    from ...runtimes import onnx_session

    session = onnx_session(path, threads, profile_prefix=str(Path(workdir) / f"{Path(path).stem}-ort-profile"))
    feed = {session.get_inputs()[0].name: array}
    for _ in range(warmup + calls):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    measured: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        index = next((i for i, (start, end) in enumerate(runs) if start <= event["ts"] <= end), None)
        if index is None:  # a warm-up run's node
            continue
        args = event["args"]
        if args["op_name"] in CONVOLUTIONS:
            shapes = [next(iter(s.values())) for s in args["input_type_shape"]]
            kind = conv_kind(shapes[1], shapes[0][1])
        else:
            kind = op_kind(args["op_name"])
        measured[index][kind] += event["dur"] / 1e3
        counts[kind] += index == 0
    return _per_call(measured, dict(counts))


def profile_rows(profile: Mapping[str, object], bounds: tuple[float, dict[str, float]] | None,
                  timed: Mapping[str, object]) -> list[dict]:  # fmt: skip
    """A profile of the timed configuration ``timed`` (its latency row), one row per layer kind of :data:`KINDS`
    and one for the whole model (``all``, with the timed median)."""
    total = float(profile["total_ms"])
    by_kind = {**profile["ms"], ALL_KINDS: total}
    bound = {} if bounds is None else {**bounds[1], ALL_KINDS: bounds[0]}
    nodes = {**profile["nodes"], ALL_KINDS: sum(profile["nodes"].values())}
    key = {c: timed[c] for c in ("model", "form", "backend", "threads", "resolution")}
    rows = []
    for kind in (*KINDS, ALL_KINDS):
        measured, limit = by_kind[kind], bound.get(kind)
        rows.append(dict(**key, kind=kind, nodes=nodes.get(kind, 0), profiled_ms=measured,
                         share=measured / total if total else None, bound_ms=limit,
                         bound_fraction=limit / measured if limit is not None and measured > 0 else None,
                         latency_ms=timed.get("median_ms") if kind == ALL_KINDS else None))  # fmt: skip
    return rows


def plot_profiles(profiles: pd.DataFrame, models: Sequence[str]) -> Figure:
    """For each of ``models`` (rows) and profiled backend (columns): per layer kind, the time the runtime's
    profiler measured beside the kind's roofline bound (ms). Kinds with neither are left out."""
    from matplotlib.figure import Figure

    frame = profiles[profiles.model.isin(models) & profiles.kind.ne(ALL_KINDS)]
    backends = sorted(frame.backend.unique())
    shown = [m for m in models if m in set(frame.model)]
    fig = Figure(figsize=(4.2 * len(backends), 1.9 * len(shown) + 0.9), layout="constrained")
    axes = fig.subplots(len(shown), len(backends), squeeze=False)
    for row, model in enumerate(shown):
        for col, backend in enumerate(backends):
            ax = axes[row][col]
            part = frame[(frame.model == model) & (frame.backend == backend)].set_index("kind")
            kinds = [k for k in KINDS if k in part.index and (part.profiled_ms[k] > 0 or part.bound_ms[k] > 0)]
            y = np.arange(len(kinds))
            ax.barh(y - 0.2, part.profiled_ms[kinds], height=0.4, color="#1f77b4", label="profiled")
            ax.barh(y + 0.2, part.bound_ms[kinds], height=0.4, color="#bbbbbb", label="roofline bound")
            ax.set_yticks(y, kinds, fontsize=7)
            ax.invert_yaxis()
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{model}, {backend}", fontsize=8)
            if row == len(shown) - 1:
                ax.set_xlabel("ms per batch-1 call", fontsize=7)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Time by layer kind: the runtime's profiler against the bound (time measurement)", fontsize=9)
    return fig


def plot_bound_fractions(profiles: pd.DataFrame) -> Figure:
    """Per profiled backend, a map of models (rows) by layer kind (columns): the kind's roofline bound over its
    profiled time (1: at the bound; above 1, faster than the bound says, so the reference kernel is not that
    kind's limit); a kind under 2% of a model's profiled time is left grey."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    frame = profiles[profiles.kind.ne(ALL_KINDS)]
    backends = sorted(frame.backend.unique())
    models = sorted(frame.model.unique())
    fig = Figure(figsize=(3.4 * len(backends) + 2.4, 0.17 * len(models) + 2.4), layout="constrained")
    axes = fig.subplots(1, len(backends), squeeze=False, sharey=True)[0]
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    for ax, backend in zip(axes, backends, strict=True):
        part = frame[frame.backend == backend]
        fraction = part.pivot(index="model", columns="kind", values="bound_fraction").reindex(models)[list(KINDS)]
        share = part.pivot(index="model", columns="kind", values="share").reindex(models)[list(KINDS)]
        values = fraction.where(share >= 0.02).astype(float).clip(upper=2.0)
        image = ax.imshow(values.to_numpy(), aspect="auto", cmap="RdBu", norm=norm, interpolation="nearest")
        ax.grid(False)
        ax.set_facecolor("#cccccc")  # blank: the kind takes under 2% of the model's time
        ax.set_xticks(range(len(KINDS)), KINDS, rotation=90, fontsize=7)
        ax.set_yticks(range(len(models)), models, fontsize=7)
        ax.set_title(backend, fontsize=8)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.02)
    bar.set_label("bound / profiled time (red: slower than the bound; grey: < 2% of the time)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("How close each layer kind runs to its roofline bound (time measurement)", fontsize=9)
    return fig
