"""RecNeXt M0-M5 and A0-A5 (Zhao et al., arXiv 2412.19628; github.com/suous/RecNeXt).

MetaNeXt backbones whose token mixer is recursive: RecConv2d (M) halves the resolution ``level``
times with one shared stride-2 depthwise conv, convolves each level with a 5x5 depthwise conv and
sums them back up with upsampling; RecAttn2d (A) replaces the recursion by one stride-2 level with
linear attention. Parameter names follow the released checkpoints.

Re-parameterization folds every BatchNorm. RecConv itself is linear but not one convolution
(up- and down-sampling sit between its convs), so it stays as it is in the fused form.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..checkpoint import checkpoint_filter_fn
from .layers import ConvNorm, dwconv
from .metanext import MetaNeXt

__all__ = ["RecAttn2d", "RecConv2d", "RecNeXt", "RecNeXtA"]


class RecConv2d(nn.Module):
    """Recursive depthwise conv: ``[B, C, H, W] -> [B, C, H, W]`` with a receptive field of ``k * 2**level``.

    Level ``l`` input is the shared stride-2 conv applied ``l`` times; from the coarsest level up,
    each level adds the upsampled result of the level below before its own conv.
    """

    def __init__(self, channels: int, kernel_size: int = 5, level: int = 2, mode: str = "bilinear"):
        super().__init__()
        if level < 1:
            raise ValueError(f"RecConv2d needs level >= 1, got {level}")
        self.level = level
        self.mode = mode
        self.down = dwconv(channels, kernel_size, stride=2, bias=False)
        self.convs = nn.ModuleList([dwconv(channels, kernel_size, bias=False) for _ in range(level + 1)])

    def forward(self, x: Tensor) -> Tensor:
        pyramid = [x]
        for _ in range(self.level):
            pyramid.append(self.down(pyramid[-1]))
        y = torch.zeros_like(pyramid[-1])
        for i, conv in enumerate(self.convs):
            depth = self.level - i
            y = conv(pyramid[depth] + y)
            if depth > 0:
                y = F.interpolate(y, size=pyramid[depth - 1].shape[-2:], mode=self.mode)
        return y


class LinearAttention(nn.Module):
    """Multi-head linear attention with ELU+1 features, plus a depthwise 3x3 positional term on ``v = x``.

    ``form=1`` computes ``q (k^T v)`` (cost linear in the token count); ``form=2`` normalises
    ``q^T k`` first (quadratic); upstream's LinearAttention1 and LinearAttention2. With
    ``compact_qk`` one ungrouped 1x1 conv gives q and k half the channels each (upstream's
    LinearAttention3, quadratic); otherwise q and k each see half the input channels at full width.
    ``bias`` gives the convs biases (RecNeXt T/S/B). ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int, num_heads: int, form: int = 1, compact_qk: bool = False, bias: bool = False):
        super().__init__()
        if channels % (2 * num_heads if compact_qk else num_heads):
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.qk_dim = self.head_dim // 2 if compact_qk else self.head_dim
        self.form = 2 if compact_qk else form
        qk_channels = channels if compact_qk else 2 * channels
        self.qk = ConvNorm(channels, qk_channels, groups=1 if compact_qk else 2, bias=bias)
        self.pe = ConvNorm(channels, channels, kernel_size=3, padding=1, groups=channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = h * w
        scale = n**-0.5
        qk = F.elu(self.qk(x)) + 1.0
        q, k = qk.view(b, 2, self.num_heads, self.qk_dim, n).unbind(dim=1)  # [b, heads, qk_dim, n]
        v = x.view(b, self.num_heads, self.head_dim, n).transpose(-1, -2) * scale  # [b, heads, n, head_dim]
        q_t = q.transpose(-1, -2)  # [b, heads, n, qk_dim]
        if self.form == 1:
            kv = (k * scale) @ v  # [b, heads, qk_dim, head_dim]
            out = q_t @ kv / (q_t @ k.mean(dim=-1, keepdim=True) + 1e-6)
        else:
            attn = q_t @ k  # [b, heads, n, n]
            out = (attn / (attn.mean(dim=-1, keepdim=True) + 1e-6) * scale) @ v
        return out.transpose(-1, -2).reshape(b, c, h, w) + self.pe(x)


class RecAttn2d(nn.Module):
    """One recursion level with attention: ``conv(x + up(attn(down(x))))``, nearest upsampling.

    ``forms[stage]`` picks the attention form (RecNeXt-A: linear in stages 0-2, quadratic in the last).
    """

    def __init__(self, channels: int, num_heads: int, stage: int, kernel_size: int = 5, mode: str = "nearest",
                 forms: Sequence[int] = (1, 1, 1, 2), bias: bool = False):  # fmt: skip
        super().__init__()
        self.mode = mode
        pad = kernel_size // 2
        self.down = nn.Sequential(
            ConvNorm(channels, channels, kernel_size, stride=2, padding=pad, groups=channels, bias=bias),
            LinearAttention(channels, num_heads, form=forms[stage], bias=bias),
        )
        self.conv = ConvNorm(channels, channels, kernel_size, padding=pad, groups=channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x + F.interpolate(self.down(x), size=x.shape[-2:], mode=self.mode))


class RecNeXt(MetaNeXt):
    """RecNeXt-M: RecConv2d token mixers (level ``4 - stage``) and 7x7 stride-2 depthwise downsampling.

    For the papers' ablations, ``kernel_size`` sets the RecConv kernels and ``levels`` the recursion
    level of each stage; a level of 0 makes that stage's token mixer a plain depthwise conv.
    """

    def __init__(self, mode: str = "bilinear", kernel_size: int = 5, levels: Sequence[int] = (4, 3, 2, 1), **kwargs):
        levels = tuple(levels)
        if len(levels) != len(kwargs.get("depth", levels)) or any(level < 0 for level in levels):
            raise ValueError(f"levels: expected one non-negative level per stage, got {list(levels)}")

        def token_mixer(channels: int, stage: int) -> nn.Module:
            if levels[stage] == 0:
                return dwconv(channels, kernel_size, bias=False)
            return RecConv2d(channels, kernel_size, level=levels[stage], mode=mode)

        super().__init__(token_mixer=token_mixer, downsample_mixer=_downsample_conv, **kwargs)


class RecNeXtA(MetaNeXt):
    """RecNeXt-A: RecAttn2d token mixers with ``2 ** (stage + 1)`` heads and no BatchNorm after them."""

    def __init__(self, **kwargs):
        super().__init__(token_mixer=lambda channels, stage: RecAttn2d(channels, 2 ** (stage + 1), stage),
                         downsample_mixer=_downsample_conv, block_norm=False, **kwargs)  # fmt: skip


def _downsample_conv(channels: int) -> nn.Conv2d:
    return dwconv(channels, 7, stride=2, out_channels=2 * channels)


# (embed dims, depths, mlp ratio, drop path without distillation) per variant, as upstream.
CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...], float, float]] = {
    "m0": ((40, 80, 160, 320), (2, 2, 9, 1), 2, 0.0),
    "m1": ((48, 96, 192, 384), (3, 3, 15, 2), 2, 0.0),
    "m2": ((56, 112, 224, 448), (3, 3, 15, 2), 2, 0.0),
    "m3": ((64, 128, 256, 512), (3, 3, 13, 2), 2, 0.0),
    "m4": ((64, 128, 256, 512), (5, 5, 25, 4), 2, 0.2),
    "m5": ((80, 160, 320, 640), (7, 7, 35, 2), 2, 0.3),
    "a0": ((40, 80, 160, 320), (2, 2, 9, 1), 2, 0.0),
    "a1": ((48, 96, 192, 384), (3, 3, 15, 2), 2, 0.0),
    "a2": ((56, 112, 224, 448), (3, 3, 15, 2), 2, 0.0),
    "a3": ((64, 128, 256, 512), (3, 3, 13, 2), 1.875, 0.0),
    "a4": ((64, 128, 256, 512), (5, 5, 25, 4), 1.875, 0.2),
    "a5": ((80, 160, 320, 640), (7, 7, 35, 2), 1.875, 0.3),
}

_RELEASES = {"m": "https://github.com/suous/RecNeXt/releases/download/v1.0",
             "a": "https://github.com/suous/RecNeXt/releases/download/v2.0"}  # fmt: skip


def _cfg(name: str, tag: str) -> dict:
    release = _RELEASES[name[0]]
    checkpoint = "distill" if tag == "dist" else "without_distill"
    return {
        "hf_hub_id": f"suous/recnext_{name}.{tag}_300e_in1k", "url": f"{release}/recnext_{name}_{checkpoint}_300e.pth",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0.conv", "classifier": ("head.head.linear", "head.head_dist.linear"),
        "license": "apache-2.0", "paper_ids": "arXiv:2412.19628",
    }  # fmt: skip


default_cfgs = generate_default_cfgs({
    f"recnext_{name}.{tag}_300e_in1k": _cfg(name, tag) for tag in ("base", "dist") for name in CONFIGS
})  # fmt: skip


def distillation_and_tag(kwargs: dict) -> tuple[bool, str]:
    """Resolve ``distillation`` and the pretrained tag from each other (``name.dist_300e_in1k`` selects both).

    Pops ``distillation`` from ``kwargs``; a tag given by timm (``pretrained_cfg``) that contradicts
    an explicit ``distillation`` is an error.
    """
    tag = kwargs.pop("pretrained_cfg", None)
    tag_distilled = tag.startswith("dist") if isinstance(tag, str) else None
    distillation = kwargs.pop("distillation", tag_distilled)
    if tag_distilled is not None and distillation != tag_distilled:
        raise ValueError(f"pretrained tag {tag!r} contradicts distillation={distillation}")
    distillation = bool(distillation)
    if tag is None:
        tag = "dist_300e_in1k" if distillation else "base_300e_in1k"
    return distillation, tag


def _create_recnext(name: str, pretrained: bool = False, **kwargs) -> MetaNeXt:
    """``distillation=True`` (or the ``dist`` tag) selects the distilled weights and disables drop path."""
    embed_dim, depth, mlp_ratio, drop_path = CONFIGS[name]
    distillation, pretrained_cfg = distillation_and_tag(kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(len(depth))))
    args = dict(
        embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio, drop_path_rate=0.0 if distillation else drop_path
    )
    return build_model_with_cfg(
        RecNeXt if name[0] == "m" else RecNeXtA, f"recnext_{name}", pretrained, pretrained_cfg=pretrained_cfg,
        pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        distillation=distillation, **dict(args, **kwargs),
    )  # fmt: skip


@register_model
def recnext_m0(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m0", pretrained, **kwargs)


@register_model
def recnext_m1(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m1", pretrained, **kwargs)


@register_model
def recnext_m2(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m2", pretrained, **kwargs)


@register_model
def recnext_m3(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m3", pretrained, **kwargs)


@register_model
def recnext_m4(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m4", pretrained, **kwargs)


@register_model
def recnext_m5(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("m5", pretrained, **kwargs)


@register_model
def recnext_a0(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a0", pretrained, **kwargs)


@register_model
def recnext_a1(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a1", pretrained, **kwargs)


@register_model
def recnext_a2(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a2", pretrained, **kwargs)


@register_model
def recnext_a3(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a3", pretrained, **kwargs)


@register_model
def recnext_a4(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a4", pretrained, **kwargs)


@register_model
def recnext_a5(pretrained: bool = False, **kwargs) -> MetaNeXt:
    return _create_recnext("a5", pretrained, **kwargs)
