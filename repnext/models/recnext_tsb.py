"""RecNeXt T, S and B (Zhao et al., arXiv 2412.19628; suous/RecNeXt ``lsnet/model/``), with and without shared channels.

A MetaNeXt layout on LSNet's macro design: a three-conv stride-8 stem, strided grouped-conv
downsampling, and blocks ``y = rep(x); y + drop_path(mlp(partial(y)))`` where ``rep`` is a
RepVGG-style depthwise mixer (3x3 + 1x1 + identity) and ``partial`` mixes tokens on the first quarter
of the channels only: RecAttn2d in the early stages, quadratic linear attention later. In the
``_share_channel`` variants every fifth block of the last stage computes no attention of its own: it
adds the partial outputs of the four blocks before it (their concatenation covers all channels).

Stage strides are 8, 16, 32, 64 (a 224 input ends at 4x4). Re-parameterization folds every
BatchNorm and merges the RepVGG-style mixer into one 3x3 depthwise conv. Parameter names follow the
v2.0 release checkpoints.
"""

import math

import torch
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..checkpoint import checkpoint_filter_fn
from ..reparam import conv_from_kernel, dirac_kernel, fuse_conv_bn, merge_parallel
from .layers import ConvNorm, Stem, drop_path_rates, mlp
from .metanext import DistilledBackbone
from .recnext import LinearAttention, RecAttn2d, distillation_and_tag

__all__ = ["RecNeXtTSB"]


class RepDWConv(nn.Module):
    """``lk(x) + sk(x) + x`` with depthwise 3x3 and 1x1 ConvNorms; fuses into one 3x3 depthwise conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.lk = ConvNorm(channels, channels, kernel_size=3, padding=1, groups=channels, bias=True)
        self.sk = ConvNorm(channels, channels, kernel_size=1, groups=channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lk(x) + self.sk(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        lk, sk = (fuse_conv_bn(m.conv.weight, m.conv.bias, m.norm) for m in (self.lk, self.sk))
        identity = dirac_kernel(lk[0].shape[0], 1, groups=lk[0].shape[0], like=lk[0])
        weight, bias = merge_parallel([lk, sk, (identity, None)])
        return conv_from_kernel(weight, bias, groups=weight.shape[0])


class PartialChannelMixer(nn.Module):
    """``cat(attn(x[:, :part]), x[:, part:])``; appends the mixed part to ``partials`` when given."""

    def __init__(self, attn: nn.Module, part: int):
        super().__init__()
        self.attn = attn
        self.part = part

    def forward(self, x: Tensor, partials: list[Tensor] | None = None) -> Tensor:
        mixed = self.attn(x[:, : self.part])
        if partials is not None:
            partials.append(mixed)
        return torch.cat([mixed, x[:, self.part :]], dim=1)


class SharedChannelMixer(nn.Module):
    """``x + cat(partials)``: reuses the partial outputs of the preceding blocks (no parameters)."""

    def forward(self, x: Tensor, partials: list[Tensor] | None = None) -> Tensor:
        if partials is None:
            raise RuntimeError("a shared-channel block needs the partial outputs of the blocks before it")
        return x + torch.cat(partials, dim=1)


class PartialBlock(nn.Module):
    """``y = rep_mixer(x); y + drop_path(channel_mixer(token_mixer(y)))`` on ``[B, C, H, W]``."""

    def __init__(self, channels: int, token_mixer: nn.Module, mlp_ratio: float, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU):  # fmt: skip
        super().__init__()
        self.shares = isinstance(token_mixer, SharedChannelMixer)
        self.rep_mixer = RepDWConv(channels)
        self.token_mixer = token_mixer
        self.channel_mixer = mlp(channels, int(channels * mlp_ratio), act_layer, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, partials: list[Tensor] | None = None) -> Tensor:
        x = self.rep_mixer(x)
        return x + self.drop_path(self.channel_mixer(self.token_mixer(x, partials)))

    def fuse(self) -> "PartialBlock":
        self.drop_path = nn.Identity()  # the walk then fuses the children
        return self


class ConvDownsample(nn.Module):
    """Strided 5x5 grouped ConvNorm (C -> C', groups gcd(C, C')), then ``x + drop_path(mlp(x))``."""

    def __init__(self, in_channels: int, out_channels: int, mlp_ratio: float, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU):  # fmt: skip
        super().__init__()
        groups = math.gcd(in_channels, out_channels)
        self.token_mixer = ConvNorm(in_channels, out_channels, 5, stride=2, padding=2, groups=groups, bias=True)
        self.channel_mixer = mlp(out_channels, int(out_channels * mlp_ratio), act_layer, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.channel_mixer(x))

    def fuse(self) -> "ConvDownsample":
        self.drop_path = nn.Identity()
        return self


class PartialStage(nn.Module):
    """Downsampling, then blocks; in a shared-channel stage the blocks pass their partial outputs on."""

    def __init__(self, downsample: nn.Module, blocks: list[PartialBlock]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.shared = any(block.shares for block in blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        partials: list[Tensor] = []
        for block in self.blocks:
            given = partials if self.shared else None
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, given, use_reentrant=False)
            else:
                x = block(x, given)
            if block.shares:
                partials = []
        return x


class RecNeXtTSB(DistilledBackbone):
    """RecNeXt T/S/B: ``[B, in_chans, H, W] -> [B, num_classes]``, stages at strides 8, 16, 32, 64.

    ``attn_stages`` is how many leading stages use RecAttn2d (``forms`` gives each one's attention
    form); later stages use quadratic linear attention directly. ``share_stage`` (``None``: no sharing)
    makes every ``split_rate + 1``-th block of that stage and later ones a shared-channel block.
    Drop path grows linearly from 0 to ``drop_path_rate`` over the blocks, as upstream.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, embed_dim: tuple[int, ...] = (64, 128, 256, 512),
                 depth: tuple[int, ...] = (0, 2, 8, 10), mlp_ratios: tuple[float, ...] = (2, 2, 2, 1.5),
                 num_heads: tuple[int, ...] = (1, 1, 1, 2), split_rate: int = 4, attn_stages: int = 3,
                 forms: tuple[int, ...] = (1, 2, 2), share_stage: int | None = None, global_pool: str = "avg",
                 distillation: bool = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU):  # fmt: skip
        super().__init__()
        if any(channels % split_rate for channels in embed_dim):
            raise ValueError(f"embed_dim {list(embed_dim)}: every width must be divisible by split_rate={split_rate}")
        self.stem = Stem(in_chans, embed_dim[0], act_layer, depth=3, bias=True, final_act=depth[0] == 0)
        rates = drop_path_rates(drop_path_rate, depth)
        stages, self.feature_info = [], []
        for i, (channels, n_blocks) in enumerate(zip(embed_dim, depth, strict=True)):
            stage_rates = rates[i]
            first_rate = stage_rates[0] if n_blocks else 0.0  # upstream's downsampling takes its stage's first rate
            downsample = (
                ConvDownsample(embed_dim[i - 1], channels, mlp_ratios[i], first_rate, act_layer) if i else nn.Identity()
            )
            part = channels // split_rate

            def token_mixer(j: int, i: int = i, part: int = part) -> nn.Module:
                if share_stage is not None and i >= share_stage and (j + 1) % (split_rate + 1) == 0:
                    return SharedChannelMixer()
                if i < attn_stages:
                    return PartialChannelMixer(RecAttn2d(part, num_heads[i], i, forms=forms, bias=True), part)
                heads = max(num_heads[i] // 2, 1)  # the compact form halves the heads, as upstream
                return PartialChannelMixer(LinearAttention(part, heads, compact_qk=True, bias=True), part)

            blocks = [PartialBlock(channels, token_mixer(j), mlp_ratios[i], stage_rates[j], act_layer)
                      for j in range(n_blocks)]  # fmt: skip
            stages.append(PartialStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=channels, reduction=8 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.init_head(embed_dim[-1], num_classes, global_pool, distillation, drop_rate)


_ARCH = dict(mlp_ratios=(2, 2, 2, 1.5), num_heads=(1, 1, 1, 2), split_rate=4)
# (embed dims, depths, drop path without distillation) per size, as upstream.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...], float]] = {
    "t": ((64, 128, 256, 512), (0, 2, 8, 10), 0.0),
    "s": ((128, 256, 384, 512), (0, 2, 8, 10), 0.1),
    "b": ((128, 256, 384, 512), (2, 8, 8, 12), 0.2),
}
# Without shared channels RecAttn2d mixes stages 0-2; with them stages 0-1, and the last stage shares.
LAYOUTS = {
    "": dict(attn_stages=3, forms=(1, 2, 2), share_stage=None),
    "_share_channel": dict(attn_stages=2, forms=(1, 2), share_stage=3),
}
_RELEASE = "https://github.com/suous/RecNeXt/releases/download/v2.0"


def _cfg(name: str, tag: str) -> dict:
    checkpoint = "distill" if tag == "dist" else "without_distill"
    return {
        "hf_hub_id": f"suous/{name}.{tag}_300e_in1k", "url": f"{_RELEASE}/{name}_{checkpoint}_300e.pth",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0.conv", "classifier": ("head.head.linear", "head.head_dist.linear"),
        "license": "apache-2.0", "paper_ids": "arXiv:2412.19628",
    }  # fmt: skip


default_cfgs = generate_default_cfgs({
    f"recnext_{size}{layout}.{tag}_300e_in1k": _cfg(f"recnext_{size}{layout}", tag)
    for size in SIZES for layout in LAYOUTS for tag in ("base", "dist")
})  # fmt: skip


def _create_recnext_tsb(size: str, layout: str, pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    """``distillation=True`` (or the ``dist`` tag) selects the distilled weights and disables drop path."""
    embed_dim, depth, drop_path = SIZES[size]
    distillation, pretrained_cfg = distillation_and_tag(kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(len(depth))))
    args = dict(_ARCH, **LAYOUTS[layout], embed_dim=embed_dim, depth=depth,
                drop_path_rate=0.0 if distillation else drop_path)  # fmt: skip
    return build_model_with_cfg(
        RecNeXtTSB, f"recnext_{size}{layout}", pretrained, pretrained_cfg=pretrained_cfg,
        pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        distillation=distillation, **dict(args, **kwargs),
    )  # fmt: skip


@register_model
def recnext_t(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("t", "", pretrained, **kwargs)


@register_model
def recnext_s(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("s", "", pretrained, **kwargs)


@register_model
def recnext_b(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("b", "", pretrained, **kwargs)


@register_model
def recnext_t_share_channel(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("t", "_share_channel", pretrained, **kwargs)


@register_model
def recnext_s_share_channel(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("s", "_share_channel", pretrained, **kwargs)


@register_model
def recnext_b_share_channel(pretrained: bool = False, **kwargs) -> RecNeXtTSB:
    return _create_recnext_tsb("b", "_share_channel", pretrained, **kwargs)
