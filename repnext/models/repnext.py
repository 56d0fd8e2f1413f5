"""RepNeXt M0-M5 (Zhao et al., arXiv 2406.16004; github.com/suous/RepNeXt).

Parameter names and shapes follow the released checkpoints, so ``repnext_m*_distill_300e.pth``
loads with ``strict=True``. The inference form comes from :func:`repnext.reparameterize`:

* deploy form (default, the papers' parameter and MAC counts): each multi-branch
  ``RepDWConv`` becomes one depthwise conv; BatchNorms fold into adjacent convs.
* ``single_branch=True``: ChunkConv becomes one depthwise 11x11 conv and CopyConv one
  depthwise 7x7 conv producing 2C channels, the "E" models of the upstream README.

Any input size works: every stride-2 branch maps ``H`` to ``ceil(H / 2)``.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..checkpoint import checkpoint_filter_fn
from ..reparam import (
    bn_scale_shift,
    conv_from_kernel,
    dilate_kernel,
    dirac_kernel,
    fold_affine_after,
    fuse_bn_conv,
    merge_chunks,
    merge_copies,
    merge_parallel,
    merge_separable,
    reparameterize,
)
from .layers import DistilledClassifier, Stem, mlp

__all__ = ["RepNeXt"]


def _dwconv(channels: int, kernel_size: tuple[int, int], stride: tuple[int, int], bias: bool) -> nn.Conv2d:
    padding = (kernel_size[0] // 2, kernel_size[1] // 2)
    return nn.Conv2d(channels, channels, kernel_size, stride, padding, groups=channels, bias=bias)


def _kernel(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    return conv.weight, conv.bias


class RepDWConvS(nn.Module):
    """Small-kernel multi-branch depthwise conv: 3x3 + 1x3 + 3x1 + dilated 2x2, fusing to one 3x3.

    At stride 2 the 1x3 and 3x1 convs run in series (each strides its own axis) without bias.
    """

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv_3_3 = _dwconv(channels, (3, 3), (stride, stride), bias=True)
        self.conv_3_w = _dwconv(channels, (1, 3), (1, stride), bias=stride == 1)
        self.conv_3_h = _dwconv(channels, (3, 1), (stride, 1), bias=stride == 1)
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
        self.conv_7_7 = _dwconv(channels, (7, 7), (stride, stride), bias=True)
        self.conv_5_3 = _dwconv(channels, (5, 3), (stride, stride), bias=True)
        self.conv_3_5 = _dwconv(channels, (3, 5), (stride, stride), bias=True)
        self.conv_7_w = _dwconv(channels, (1, 7), (1, stride), bias=False)
        self.conv_7_h = _dwconv(channels, (7, 1), (stride, 1), bias=False)
        self.conv_5_w = _dwconv(channels, (1, 5), (1, stride), bias=False)
        self.conv_5_h = _dwconv(channels, (5, 1), (stride, 1), bias=False)

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
            _dwconv(chunk, (1, 11), (1, 1), bias=True), _dwconv(chunk, (11, 1), (1, 1), bias=True)
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


class CopyConv(nn.Module):
    """Stride-2 downsampling token mixer: RepDWConvS and RepDWConvM on the same input, concatenated to 2C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_s = RepDWConvS(channels, stride=2)
        self.conv_m = RepDWConvM(channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.conv_s(x), self.conv_m(x)), dim=1)

    @torch.no_grad()
    def merge_branches(self) -> nn.Sequential:
        """One depthwise 7x7 stride-2 conv with two outputs per channel, then a shuffle to concat order."""
        reparameterize(self, inplace=True)
        weight, bias = merge_copies([_kernel(self.conv_s), _kernel(self.conv_m)])
        channels = self.conv_s.in_channels
        conv = conv_from_kernel(weight, bias, stride=2, groups=channels)
        return nn.Sequential(conv, nn.ChannelShuffle(channels))


class MetaNeXtBlock(nn.Module):
    """``x + mlp(bn(ChunkConv(x)))``; fusing folds the BatchNorm into the MLP's first 1x1 conv."""

    def __init__(self, channels: int, mlp_ratio: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.token_mixer = ChunkConv(channels)
        self.norm = nn.BatchNorm2d(channels)
        self.channel_mixer = mlp(channels, channels * mlp_ratio, act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.channel_mixer(self.norm(self.token_mixer(x)))

    @torch.no_grad()
    def fuse(self) -> MetaNeXtBlock:
        reparameterize(self, inplace=True)
        if isinstance(self.norm, nn.BatchNorm2d):
            pw = self.channel_mixer[0]
            weight, bias = fuse_bn_conv(self.norm, pw.weight, pw.bias)
            self.channel_mixer[0] = conv_from_kernel(weight, bias, groups=pw.groups, padding=pw.padding)
            self.norm = nn.Identity()
        return self


class Downsample(nn.Module):
    """``y = bn(CopyConv(x)); y + mlp(y)``: halves the resolution and doubles the channels."""

    def __init__(self, channels: int, mlp_ratio: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.token_mixer = CopyConv(channels)
        self.norm = nn.BatchNorm2d(2 * channels)
        self.channel_mixer = mlp(2 * channels, 2 * channels * mlp_ratio, act_layer)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.token_mixer(x))
        return x + self.channel_mixer(x)

    @torch.no_grad()
    def fuse(self) -> Downsample:
        reparameterize(self, inplace=True)
        if isinstance(self.norm, nn.BatchNorm2d):
            scale, shift = bn_scale_shift(self.norm)
            halves = zip(("conv_s", "conv_m"), scale.chunk(2), shift.chunk(2), strict=True)
            for name, scale_half, shift_half in halves:
                conv = getattr(self.token_mixer, name)
                weight, bias = fold_affine_after(conv.weight, conv.bias, scale_half, shift_half)
                setattr(self.token_mixer, name, conv_from_kernel(weight, bias, conv.stride, conv.groups))
            self.norm = nn.Identity()
        return self


class RepNeXtStage(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        mlp_ratio: int,
        act_layer: type[nn.Module] = nn.GELU,
        downsample: bool = True,
    ):
        super().__init__()
        self.downsample = Downsample(in_channels, mlp_ratio, act_layer) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[MetaNeXtBlock(out_channels, mlp_ratio, act_layer) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint_sequential(self.blocks, len(self.blocks), x, use_reentrant=False)
        return self.blocks(x)


class RepNeXt(nn.Module):
    """RepNeXt: stem (stride 4), four stages (stride 4, 8, 16, 32), global average pool, distilled classifier.

    Input ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: tuple[int, ...] = (48, 96, 192, 384),
        depth: tuple[int, ...] = (3, 3, 15, 2),
        mlp_ratio: int = 2,
        global_pool: str = "avg",
        distillation: bool = False,
        drop_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.distillation = distillation
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.stem = Stem(in_chans, embed_dim[0], act_layer)
        stages, self.feature_info = [], []
        in_channels, stride = embed_dim[0], 4
        for i, (channels, blocks) in enumerate(zip(embed_dim, depth, strict=True)):
            stride *= 2 if i else 1
            stages.append(RepNeXtStage(in_channels, channels, blocks, mlp_ratio, act_layer, downsample=i > 0))
            self.feature_info.append(dict(num_chs=channels, reduction=stride, module=f"stages.{i}"))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = DistilledClassifier(self.num_features, num_classes, distillation)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = DistilledClassifier(self.num_features, num_classes, self.distillation)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W] -> [B, embed_dim[-1], ceil(H / 32), ceil(W / 32)]``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


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


default_cfgs = generate_default_cfgs(
    {f"{name}.dist_300e_in1k": _cfg(url=f"{_RELEASE}/{name}_distill_300e.pth") for name in CONFIGS}
)


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
