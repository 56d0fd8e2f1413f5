"""A roofline bound of a model on this machine, layer by layer, from rates measured in the same run.

Every operator one forward pass of the fused model runs at batch 1 (ATen's, as the dispatcher sees them) gets
its multiply-adds (MACs: a multiply-add is one) and the float32 bytes it reads and writes (weights, input and
output activations). It is held against the machine's measured rates: the float32 GEMM peak for convolutions and
matrix products, the depthwise-conv rate at the layer's kernel size for depthwise convolutions (measured at 3x3,
7x7 and 11x11 on a map that fits in L2, interpolated in the number of taps), and the copy bandwidth of the memory
level its working set fits in (L2, L3 or DRAM). A layer's bound is the larger of its compute time and its traffic
time; the model's is the sum. Views (reshape, permute, slices) move no data and cost nothing; a latency can only
approach the bound."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

KINDS = ("1x1 conv", "depthwise kxk", "dense kxk", "matmul", "resampling", "normalisation", "element-wise", "layout")
# ATen operators as a forward pass dispatches them (torch.nn.functional's composites decomposed, e.g. linear into
# t and addmm). A mean over H and W is timm's global pooling (ONNX: ReduceMean or GlobalAveragePool).
_SDPA = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
         "scaled_dot_product_attention"}  # fmt: skip
_MATMUL = {"mm", "bmm", "addmm", "baddbmm", "matmul", "linear", *_SDPA}
_RESAMPLING = {"upsample_bilinear2d", "upsample_nearest2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa",
               "avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "_adaptive_avg_pool2d", "adaptive_avg_pool2d",
               "adaptive_max_pool2d", "pixel_shuffle", "pixel_unshuffle", "mean", "amax"}  # fmt: skip
_NORMALISATION = {"_native_batch_norm_legit_no_training", "native_batch_norm", "native_layer_norm",
                  "native_group_norm", "_softmax", "softmax", "linalg_vector_norm", "rms_norm"}  # fmt: skip
_VIEWS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "unsqueeze",
          "squeeze", "split", "split_with_sizes", "unbind", "alias", "detach", "as_strided", "chunk",
          "unflatten", "flatten", "view_as_real", "lift_fresh"}  # fmt: skip
_COPIES = {"cat", "stack", "clone", "index", "constant_pad_nd", "reflection_pad2d", "roll", "zeros_like",
           "new_zeros", "zeros", "empty", "copy_", "_to_copy", "contiguous", "fill_"}  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One operator: its kind (one of :data:`KINDS`), MACs, float32 bytes moved and (convolutions) kernel taps."""

    op: str
    kind: str
    macs: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    taps: int = 0

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class Rates:
    """What this machine was measured to do: GEMM GMAC/s, depthwise-conv ``(kernel taps, GMAC/s)`` ascending in
    taps, and per memory level ``(capacity bytes, GB/s)``, ascending (the last level, DRAM, holds everything)."""

    gemm_gmacs: float
    dwconv_gmacs: tuple[tuple[int, float], ...]
    levels: tuple[tuple[float, float], ...]

    def depthwise_gmacs(self, taps: int) -> float:
        """GMAC/s of a depthwise conv with ``taps`` kernel taps: linear in taps between the measured kernels,
        the nearest measured one outside them (a 1x11 conv has 11 taps: between the 3x3 and the 7x7)."""
        points = self.dwconv_gmacs
        if taps <= points[0][0]:
            return points[0][1]
        for (low, low_rate), (high, high_rate) in itertools.pairwise(points):
            if taps <= high:
                return low_rate + (high_rate - low_rate) * (taps - low) / (high - low)
        return points[-1][1]

    def bandwidth(self, working_set: int) -> float:
        """GB/s of the smallest memory level that holds ``working_set`` bytes."""
        return next((gbs for capacity, gbs in self.levels if working_set <= capacity), self.levels[-1][1])


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _kind_and_macs(op: str, args: tuple, out: object) -> tuple[str, int]:
    """The kind and multiply-adds of one ATen call on ``args`` giving ``out``."""
    if op == "convolution":
        weight, groups = args[1], args[8]
        macs = _first_tensor(out).numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        if groups > 1 and weight.shape[1] == 1:
            return "depthwise kxk", macs
        return ("1x1 conv" if tuple(weight.shape[2:]) == (1, 1) else "dense kxk"), macs
    if op in _SDPA:  # q [.., L, E] k [.., S, E] v [.., S, Ev]: q k^T then its softmax times v
        q, k, v = args[:3]
        return "matmul", q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if op in _MATMUL:
        first = args[1] if op in ("addmm", "baddbmm") else args[0]
        return "matmul", _first_tensor(out).numel() * first.shape[-1]
    if op in _RESAMPLING:
        return "resampling", 0
    if op in _NORMALISATION:
        return "normalisation", 0
    if op in _VIEWS or op in _COPIES:
        return "layout", 0
    return "element-wise", 0


def _first_tensor(value: object) -> torch.Tensor:
    return next(t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


class _Recorder(TorchDispatchMode):
    """Records every ATen call of a forward pass as a :class:`Layer`; ``weights``: the model's tensors' storages."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights, self.found = weights, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        op = name if name == "copy_" else name.removesuffix("_")  # an in-place op (relu_) as its own kind
        kind, macs = _kind_and_macs(op, args, out)
        if op in _VIEWS:  # no data moves
            self.found.append(Layer(op, kind, 0, 0, 0, 0))
            return out
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        weight = sum(_nbytes(t) for t in tensors if _storage(t) in self.weights)
        inputs = sum(_nbytes(t) for t in tensors if _storage(t) not in self.weights)
        taps = math.prod(args[1].shape[2:]) if op == "convolution" else 0
        self.found.append(Layer(op, kind, macs, weight, inputs, _nbytes(out), taps))
        return out


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def layers(model: nn.Module, resolution: int = 224) -> list[Layer]:
    """Every ATen operator one forward pass of ``model`` (eval mode; the fused form for a fused bound) runs on a
    ``[1, 3, R, R]`` input, in order. A weight is any parameter or buffer of the model (and a view of one)."""
    weights = {_storage(t) for t in (*model.parameters(), *model.buffers())}
    x = torch.zeros(1, 3, resolution, resolution)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.eval()
        with _Recorder(weights) as recorder:
            model(x)
    return recorder.found


def layer_bound_s(layer: Layer, rates: Rates) -> float:
    """Seconds: the larger of the layer's compute time and its traffic time at its memory level."""
    rate = rates.depthwise_gmacs(layer.taps) if layer.kind == "depthwise kxk" else rates.gemm_gmacs
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
