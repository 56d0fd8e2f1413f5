"""RepNeXt M0-M5 (Zhao et al., arXiv 2406.16004; github.com/suous/RepNeXt).

Parameter names and shapes follow the released checkpoints, so ``repnext_m*_distill_300e.pth``
loads with ``strict=True``. The inference form comes from :func:`repnext.reparameterize`:

* deploy form (default, the papers' parameter and MAC counts): each multi-branch
  ``RepDWConv`` becomes one depthwise conv; BatchNorms fold into adjacent convs.
* ``single_branch=True``: ChunkConv becomes one depthwise 11x11 conv and CopyConv one
  depthwise 7x7 conv producing 2C channels, the "E" models of the upstream README.
* ``two_branch=True``: ChunkConv's identity, 3x3 and 7x7 chunks become one depthwise 7x7 conv
  beside the separable 1x11 then 11x1 chunk (one split and one concat instead of three of each).

Any input size works: every stride-2 branch maps ``H`` to ``ceil(H / 2)``.
"""

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..checkpoint import checkpoint_filter_fn
from ..reparam import (
    conv_from_kernel,
    dilate_kernel,
    dirac_kernel,
    fold_output_affine,
    merge_chunks,
    merge_copies,
    merge_parallel,
    merge_separable,
    reparameterize,
)
from .layers import ChannelShuffle, dwconv
from .metanext import MetaNeXt

__all__ = ["RepNeXt"]


def _kernel(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    return conv.weight, conv.bias


class RepDWConvS(nn.Module):
    """Small-kernel multi-branch depthwise conv: 3x3 + 1x3 + 3x1 + dilated 2x2, fusing to one 3x3.

    At stride 2 the 1x3 and 3x1 convs run in series (each strides its own axis) without bias.
    """

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv_3_3 = dwconv(channels, (3, 3), (stride, stride), bias=True)
        self.conv_3_w = dwconv(channels, (1, 3), (1, stride), bias=stride == 1)
        self.conv_3_h = dwconv(channels, (3, 1), (stride, 1), bias=stride == 1)
        self.conv_2_2 = nn.Conv2d(channels, channels, 2, stride, padding=1, dilation=2, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return self.conv_3_3(x) + self.conv_3_w(x) + self.conv_3_h(x) + self.conv_2_2(x)
        return self.conv_3_3(x) + self.conv_3_h(self.conv_3_w(x)) + self.conv_2_2(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        dilated = (dilate_kernel(self.conv_2_2.weight, self.conv_2_2.dilation), self.conv_2_2.bias)
        if self.stride == 1:
            cross = [_kernel(self.conv_3_w), _kernel(self.conv_3_h)]
        else:
            weight, bias, _ = merge_separable(_kernel(self.conv_3_w), _kernel(self.conv_3_h))
            cross = [(weight, bias)]
        weight, bias = merge_parallel([_kernel(self.conv_3_3), *cross, dilated])
        return conv_from_kernel(weight, bias, stride=self.stride, groups=self.conv_3_3.groups)


class RepDWConvM(nn.Module):
    """Medium-kernel multi-branch depthwise conv: 7x7 + 5x3 + 3x5 + (1x7 then 7x1) + (1x5 then 5x1) -> one 7x7."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv_7_7 = dwconv(channels, (7, 7), (stride, stride), bias=True)
        self.conv_5_3 = dwconv(channels, (5, 3), (stride, stride), bias=True)
        self.conv_3_5 = dwconv(channels, (3, 5), (stride, stride), bias=True)
        self.conv_7_w = dwconv(channels, (1, 7), (1, stride), bias=False)
        self.conv_7_h = dwconv(channels, (7, 1), (stride, 1), bias=False)
        self.conv_5_w = dwconv(channels, (1, 5), (1, stride), bias=False)
        self.conv_5_h = dwconv(channels, (5, 1), (stride, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (
            self.conv_7_7(x)
            + self.conv_5_3(x)
            + self.conv_3_5(x)
            + self.conv_7_h(self.conv_7_w(x))
            + self.conv_5_h(self.conv_5_w(x))
        )

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        sep_7 = merge_separable(_kernel(self.conv_7_w), _kernel(self.conv_7_h))[:2]
        sep_5 = merge_separable(_kernel(self.conv_5_w), _kernel(self.conv_5_h))[:2]
        weight, bias = merge_parallel(
            [_kernel(self.conv_7_7), _kernel(self.conv_5_3), _kernel(self.conv_3_5), sep_7, sep_5]
        )
        return conv_from_kernel(weight, bias, stride=self.conv_7_7.stride, groups=self.conv_7_7.groups)


class SquareSeparableMixer(nn.Module):
    """ChunkConv's two-branch form: ``square`` (a depthwise kxk conv) on the first channels, ``separable`` (1xk then
    kx1) on the rest, concatenated; [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, square: nn.Conv2d, separable: nn.Sequential):
        super().__init__()
        self.square = square
        self.separable = separable
        self.split_sizes = [square.in_channels, separable[0].in_channels]

    def forward(self, x: Tensor) -> Tensor:
        x_square, x_separable = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((self.square(x_square), self.separable(x_separable)), dim=1)


class ChunkConv(nn.Module):
    """Token mixer over four channel chunks: identity, RepDWConvS, RepDWConvM, separable 1x11 then 11x1."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 4:
            raise ValueError(f"ChunkConv needs channels divisible by 4, got {channels}")
        chunk = channels // 4
        self.conv_s = RepDWConvS(chunk)
        self.conv_m = RepDWConvM(chunk)
        self.conv_l = nn.Sequential(
            dwconv(chunk, (1, 11), (1, 1), bias=True), dwconv(chunk, (11, 1), (1, 1), bias=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        x_i, x_s, x_m, x_l = torch.chunk(x, 4, dim=1)
        return torch.cat((x_i, self.conv_s(x_s), self.conv_m(x_m), self.conv_l(x_l)), dim=1)

    @torch.no_grad()
    def merge_branches(self) -> nn.Conv2d:
        """One depthwise 11x11 conv (identity as a dirac kernel); exact, borders included."""
        reparameterize(self, inplace=True)
        chunk = self.conv_s.in_channels
        identity = (dirac_kernel(chunk, 1, groups=chunk, like=self.conv_s.weight), None)
        weight_l, bias_l, border_l = merge_separable(_kernel(self.conv_l[0]), _kernel(self.conv_l[1]))
        weight, bias = merge_chunks([identity, _kernel(self.conv_s), _kernel(self.conv_m), (weight_l, bias_l)])
        border = None
        if border_l is not None:
            border = torch.cat([border_l.new_zeros(3 * chunk, *border_l.shape[1:]), border_l])
        return conv_from_kernel(weight, bias, groups=4 * chunk, border_kernel=border)

    @torch.no_grad()
    def merge_square_branches(self) -> SquareSeparableMixer:
        """The identity (a dirac kernel), 3x3 and 7x7 chunks as one depthwise 7x7 conv; the separable chunk kept
        (merging it too costs an 11x11 kernel, 121 taps against 7x7's 49 plus 22)."""
        reparameterize(self, inplace=True)
        chunk = self.conv_s.in_channels
        identity = (dirac_kernel(chunk, 1, groups=chunk, like=self.conv_s.weight), None)
        weight, bias = merge_chunks([identity, _kernel(self.conv_s), _kernel(self.conv_m)])
        return SquareSeparableMixer(conv_from_kernel(weight, bias, groups=3 * chunk), self.conv_l)


class CopyConv(nn.Module):
    """Stride-2 downsampling token mixer: RepDWConvS and RepDWConvM on the same input, concatenated to 2C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_s = RepDWConvS(channels, stride=2)
        self.conv_m = RepDWConvM(channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.conv_s(x), self.conv_m(x)), dim=1)

    @torch.no_grad()
    def fold_output_affine(self, scale: Tensor, shift: Tensor) -> "CopyConv":
        """Fold a per-channel affine of the 2C outputs (a following BatchNorm) into the two fused convs."""
        for name, scale_half, shift_half in zip(("conv_s", "conv_m"), scale.chunk(2), shift.chunk(2), strict=True):
            setattr(self, name, fold_output_affine(getattr(self, name), scale_half, shift_half))
        return self

    @torch.no_grad()
    def merge_branches(self) -> nn.Sequential:
        """One depthwise 7x7 stride-2 conv with two outputs per channel, then a shuffle to concat order."""
        reparameterize(self, inplace=True)
        weight, bias = merge_copies([_kernel(self.conv_s), _kernel(self.conv_m)])
        channels = self.conv_s.in_channels
        conv = conv_from_kernel(weight, bias, stride=2, groups=channels)
        return nn.Sequential(conv, ChannelShuffle(channels))


def _single_branch_mixer(channels: int, stage: int) -> nn.Conv2d:
    return dwconv(channels, 11)


def _single_branch_downsample(channels: int) -> nn.Conv2d:
    return dwconv(channels, 7, stride=2, out_channels=2 * channels)


class RepNeXt(MetaNeXt):
    """RepNeXt: MetaNeXt with ChunkConv token mixers and CopyConv downsampling.

    ``single_branch=True`` builds the single-branch equivalent for training from scratch (upstream's
    "E" models): one depthwise 11x11 conv per token mixer and one depthwise 7x7 stride-2 conv with two
    outputs per channel for downsampling. Its parameter names differ from the released checkpoints.
    """

    def __init__(self, single_branch: bool = False, **kwargs):
        if single_branch:
            super().__init__(token_mixer=_single_branch_mixer, downsample_mixer=_single_branch_downsample, **kwargs)
        else:
            super().__init__(token_mixer=lambda channels, stage: ChunkConv(channels), downsample_mixer=CopyConv,
                             **kwargs)  # fmt: skip


# (embed dims, depths) per variant, as in the paper and upstream's model/repnext.py.
CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "repnext_m0": ((40, 80, 160, 320), (2, 2, 9, 1)),
    "repnext_m1": ((48, 96, 192, 384), (3, 3, 15, 2)),
    "repnext_m2": ((56, 112, 224, 448), (3, 3, 15, 2)),
    "repnext_m3": ((64, 128, 256, 512), (3, 3, 13, 2)),
    "repnext_m4": ((64, 128, 256, 512), (5, 5, 25, 4)),
    "repnext_m5": ((80, 160, 320, 640), (7, 7, 35, 2)),
}

_RELEASE = "https://github.com/suous/RepNeXt/releases/download/v1.0"


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0.conv",
        "classifier": ("head.head.linear", "head.head_dist.linear"),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2406.16004",
        **kwargs,
    }


# StarNet's training recipe (timm train.py checkpoints, whose `args` need the custom loader), M0-M2 only;
# evaluated at crop_pct 0.9 (the upstream README's evaluation command and the runs' args.yaml).
_STARNET = {"starnet_300e_in1k": "sz224_4xbs512_ep300", "starnet_dist_300e_in1k": "sz224_4xbs256_ep300_distill"}

default_cfgs = generate_default_cfgs({
    **{f"{name}.dist_300e_in1k": _cfg(url=f"{_RELEASE}/{name}_distill_300e.pth") for name in CONFIGS},
    **{f"{name}.{tag}": _cfg(url=f"{_RELEASE}/{name}_{run}.pth.tar", crop_pct=0.9, custom_load=True)
       for name in ("repnext_m0", "repnext_m1", "repnext_m2") for tag, run in _STARNET.items()},
})  # fmt: skip


def _create_repnext(variant: str, pretrained: bool = False, **kwargs) -> RepNeXt:
    embed_dim, depth = CONFIGS[variant]
    out_indices = kwargs.pop("out_indices", tuple(range(len(depth))))
    kwargs = dict(dict(embed_dim=embed_dim, depth=depth), **kwargs)
    return build_model_with_cfg(
        RepNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


@register_model
def repnext_m0(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m0", pretrained, **kwargs)


@register_model
def repnext_m1(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m1", pretrained, **kwargs)


@register_model
def repnext_m2(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m2", pretrained, **kwargs)


@register_model
def repnext_m3(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m3", pretrained, **kwargs)


@register_model
def repnext_m4(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m4", pretrained, **kwargs)


@register_model
def repnext_m5(pretrained: bool = False, **kwargs) -> RepNeXt:
    return _create_repnext("repnext_m5", pretrained, **kwargs)
