"""A roofline bound of a model on this machine, layer by layer, from rates measured in the same run.

Every operator of the fused model at batch 1, as ``torch.export`` captures it, gets its multiply-adds (MACs: a
multiply-add is one) and the float32 bytes it reads and writes (weights, input and output activations). It is
held against the machine's measured rates: the float32 GEMM peak for convolutions and matrix products, a
depthwise-conv rate for depthwise convolutions, and the copy bandwidth of the memory level its working set fits
in (L2, L3 or DRAM). A layer's bound is the larger of its compute time and its traffic time; the model's is the
sum. Views (reshape, permute, slices) move no data and cost nothing; a latency can only approach the bound.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

KINDS = ("1x1 conv", "depthwise kxk", "dense kxk", "matmul", "resampling", "normalisation", "element-wise", "layout")
_MATMUL = {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "scaled_dot_product_attention"}
_RESAMPLING = {"upsample_bilinear2d", "upsample_nearest2d", "upsample_bicubic2d", "avg_pool2d", "max_pool2d",
               "adaptive_avg_pool2d", "adaptive_max_pool2d", "pixel_shuffle", "pixel_unshuffle"}  # fmt: skip
_NORMALISATION = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "softmax",
                  "linalg_vector_norm"}  # fmt: skip
_VIEWS = {"view", "reshape", "permute", "transpose", "flatten", "unflatten", "expand", "expand_as", "slice",
          "select", "unsqueeze", "squeeze", "chunk", "split", "split_with_sizes", "unbind", "getitem", "t",
          "alias", "detach", "dropout", "contiguous"}  # fmt: skip
_COPIES = {"cat", "stack", "clone", "index", "pad", "constant_pad_nd", "roll", "zeros_like"}


@dataclass(frozen=True)
class Layer:
    """One operator: its kind (one of :data:`KINDS`), MACs and float32 bytes moved."""

    op: str
    kind: str
    macs: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class Rates:
    """What this machine was measured to do: GMAC/s and, per memory level, ``(capacity bytes, GB/s)``, ascending
    (the last level, DRAM, holds everything)."""

    gemm_gmacs: float
    dwconv_gmacs: float
    levels: tuple[tuple[float, float], ...]

    def bandwidth(self, working_set: int) -> float:
        """GB/s of the smallest memory level that holds ``working_set`` bytes."""
        return next((gbs for capacity, gbs in self.levels if working_set <= capacity), self.levels[-1][1])


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _nodes(args: Iterable[object]) -> list[torch.fx.Node]:
    found = []
    for arg in args:
        if isinstance(arg, torch.fx.Node):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found.extend(_nodes(arg))
    return found


def _kind_and_macs(op: str, node: torch.fx.Node) -> tuple[str, int]:
    out = node.meta.get("val")
    if op in ("conv2d", "convolution"):
        weight = node.args[1].meta["val"]
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        macs = out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        if groups > 1 and weight.shape[1] == 1:
            return "depthwise kxk", macs
        return ("1x1 conv" if weight.shape[2:] == (1, 1) else "dense kxk"), macs
    if op in _MATMUL:
        first = node.args[1] if op in ("addmm", "baddbmm") else node.args[0]
        inner = first.meta["val"].shape[-1] if isinstance(first, torch.fx.Node) else 0
        return "matmul", out.numel() * inner * (2 if op == "scaled_dot_product_attention" else 1)
    if op in _RESAMPLING:
        return "resampling", 0
    if op in _NORMALISATION:
        return "normalisation", 0
    if op in _VIEWS or op in _COPIES:
        return "layout", 0
    return "element-wise", 0


def layers(model: nn.Module, resolution: int = 224) -> list[Layer]:
    """Every operator of ``model`` (eval mode; the fused form for a fused bound) on a ``[1, 3, R, R]`` input."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm peers assign attention caches while exported
        program = torch.export.export(model.eval(), (torch.zeros(1, 3, resolution, resolution),))
    signature = program.graph_signature
    weights = {*signature.inputs_to_parameters, *signature.inputs_to_buffers,
               *signature.inputs_to_lifted_tensor_constants}  # fmt: skip
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        kind, macs = _kind_and_macs(op, node)
        inputs = _nodes(node.args)
        if op in _VIEWS:  # no data moves
            found.append(Layer(op, kind, 0, 0, 0, 0))
            continue
        weight_bytes = sum(_nbytes(n.meta.get("val")) for n in inputs if n.name in weights)
        input_bytes = sum(_nbytes(n.meta.get("val")) for n in inputs if n.name not in weights)
        found.append(Layer(op, kind, macs, weight_bytes, input_bytes, _nbytes(node.meta.get("val"))))
    return found


def layer_bound_s(layer: Layer, rates: Rates) -> float:
    """Seconds: the larger of the layer's compute time and its traffic time at its memory level."""
    rate = rates.dwconv_gmacs if layer.kind == "depthwise kxk" else rates.gemm_gmacs
    compute = layer.macs / (rate * 1e9) if layer.macs else 0.0
    traffic = layer.bytes / (rates.bandwidth(layer.bytes) * 1e9) if layer.bytes else 0.0
    return max(compute, traffic)


def bound_ms(found: Sequence[Layer], rates: Rates) -> tuple[float, dict[str, float]]:
    """The model's bound in ms and its share per layer kind (ms, every kind of :data:`KINDS`)."""
    by_kind = dict.fromkeys(KINDS, 0.0)
    for layer in found:
        by_kind[layer.kind] += layer_bound_s(layer, rates) * 1e3
    return math.fsum(by_kind.values()), by_kind


def cache_sizes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[int, int]:
    """``{level: bytes}`` of this CPU's data or unified caches (L1-L3 as the kernel reports them); empty where the
    kernel does not say."""
    sizes = {}
    for index in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            kind, level, size = ((index / name).read_text().strip() for name in ("type", "level", "size"))
        except OSError:
            continue
        if kind in ("Data", "Unified") and size[-1] in "KMG":
            sizes[int(level)] = int(size[:-1]) * 1024 ** " KMG".index(size[-1])
    return sizes
