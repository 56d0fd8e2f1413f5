"""Layers shared by the RepNeXt and RecNeXt families (same parameter names as upstream)."""

import itertools
from collections.abc import Sequence

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from ..reparam import conv_from_kernel, fuse_bn_linear, fuse_conv_bn


def check_input(x: Tensor, in_chans: int) -> Tensor:
    """Fail before any compute when ``x`` is not ``[B, in_chans, H, W]`` (a leaf for torch.fx tracing)."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input of shape [B, {in_chans}, H, W], got {list(x.shape)}")
    return x


torch.fx.wrap("check_input")


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over all blocks, one list per stage: upstream's
    float32 ``torch.linspace``, made on the CPU so that models also build under ``torch.device("meta")``."""
    rates = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths, strict=True)]


def dwconv(channels: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
           bias: bool = True, out_channels: int | None = None) -> nn.Conv2d:  # fmt: skip
    """Depthwise conv with centred ("same") padding per axis; ``out_channels`` a multiple of ``channels``."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return nn.Conv2d(channels, out_channels or channels, (kh, kw), stride, (kh // 2, kw // 2), groups=channels,
                     bias=bias)  # fmt: skip


class ChannelShuffle(nn.Module):
    """``nn.ChannelShuffle(groups)`` as a view, a transpose and a reshape: the same permutation of channels
    ``[B, C, H, W]``, which ONNX exports as Reshape/Transpose (``aten::channel_shuffle`` has no ONNX symbolic)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        grouped = x.view(batch, self.groups, channels // self.groups, height, width)
        return grouped.transpose(1, 2).reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ConvNorm(nn.Sequential):
    """Conv2d (no bias unless ``bias``) followed by BatchNorm2d; ``fuse()`` folds them into one Conv2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
        bias: bool = False,
    ):
        super().__init__()
        self.add_module(
            "conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        )
        self.add_module("norm", nn.BatchNorm2d(out_channels))
        nn.init.constant_(self.norm.weight, bn_weight_init)
        nn.init.zeros_(self.norm.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = fuse_conv_bn(self.conv.weight, self.conv.bias, self.norm)
        return conv_from_kernel(
            weight, bias, stride=self.conv.stride, groups=self.conv.groups, padding=self.conv.padding
        )


class NormLinear(nn.Sequential):
    """BatchNorm1d followed by Linear; ``fuse()`` folds them into one Linear."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        self.add_module("norm", nn.BatchNorm1d(in_features))
        self.add_module("linear", nn.Linear(in_features, out_features))
        trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        weight, bias = fuse_bn_linear(self.norm, self.linear.weight, self.linear.bias)
        linear = torch.nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype
        )
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
        return linear


class DistilledClassifier(nn.Module):
    """Two NormLinear heads (class and distillation token); their mean at inference.

    In training with ``distillation=True`` both logits are returned for the distillation loss.
    ``fuse()`` averages the two fused heads into a single Linear.
    """

    def __init__(self, in_features: int, num_classes: int, distillation: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.distillation = distillation
        self.head = NormLinear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = NormLinear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor):  # -> Tensor, or (Tensor, Tensor) in distillation training: no Union for TorchScript
        x_cls, x_dist = self.head(x), self.head_dist(x)
        if self.training and self.distillation and not torch.jit.is_scripting():
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if self.num_classes == 0:
            return nn.Identity()
        head, head_dist = self.head.fuse(), self.head_dist.fuse()
        head.weight.copy_((head.weight + head_dist.weight) / 2)
        head.bias.copy_((head.bias + head_dist.bias) / 2)
        return head


def mlp(channels: int, hidden_channels: int, act_layer: type[nn.Module] = nn.GELU, bias: bool = False) -> nn.Sequential:
    """Pointwise channel mixer: 1x1 ConvNorm, activation, 1x1 ConvNorm (indices 0, 1, 2)."""
    return nn.Sequential(
        ConvNorm(channels, hidden_channels, bias=bias),
        act_layer(),
        ConvNorm(hidden_channels, channels, bias=bias),
    )


class Stem(nn.Module):
    """``depth`` stride-2 3x3 ConvNorms with activations between: ``[B, in_chans, H, W] -> [B, C, H/2^d, W/2^d]``.

    Widths double up to ``out_channels`` (C/2, C for two convs; C/4, C/2, C for three); ``final_act``
    adds an activation after the last. Checks the input's channel count before any compute, so a
    wrong input fails with a clear message.
    """

    def __init__(self, in_chans: int, out_channels: int, act_layer: type[nn.Module] = nn.GELU, depth: int = 2,
                 bias: bool = False, final_act: bool = False):  # fmt: skip
        super().__init__()
        self.in_chans = in_chans
        widths = [in_chans] + [out_channels // 2**i for i in reversed(range(depth))]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            layers += [] if i == 0 else [act_layer()]
            layers.append(ConvNorm(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=bias))
        self.stem = nn.Sequential(*layers, *([act_layer()] if final_act else []))

    def forward(self, x: Tensor) -> Tensor:
        return self.stem(check_input(x, self.in_chans))
