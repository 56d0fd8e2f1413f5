"""RepNeXt-u: "RepNeXt: A Re-parameterizable CNN with High Performance and Efficiency".

A ConvNeXt-like network: 4x4 patchify stem with BatchNorm, BatchNorm + 2x2 stride-2 conv downsampling,
and blocks ``act(x) + pw2(act(pw1(RepUnit(x))))`` with a 4x MLP. RepUnit is a multi-branch depthwise
conv that fuses into one 7x7: u3 adds 7x7, 1x5 and 3x1 convs, u2 adds 7x7, 5x5 and 3x3, u1 splits the
channels into thirds for 7x7, 5x5 and 3x3 and concatenates them. The shortcut re-parameterization
(:func:`repnext.reparam.absorb_activated_shortcut`) then removes every residual addition: the fused
network is a plain chain of convs and activations.
"""

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..checkpoint import checkpoint_filter_fn
from ..reparam import (
    absorb_activated_shortcut,
    conv_from_kernel,
    fuse_bn_conv,
    fuse_conv_bn,
    merge_chunks,
    merge_parallel,
)
from .layers import check_input, drop_path_rates, dwconv

__all__ = ["RepNeXtU"]

torch.fx.wrap("check_input")  # a leaf for torch.fx in this module too (wrap patches the caller's globals)

KernelSizes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class ParallelRepUnit(nn.Module):
    """Three parallel depthwise convs, each followed by BatchNorm, summed (RepUnit of u3 and u2)."""

    def __init__(self, channels: int, kernel_sizes: KernelSizes):
        super().__init__()
        (k1, k2, k3) = kernel_sizes  # named attributes, as upstream, so TorchScript sees each branch
        self.dwconv1, self.norm1 = dwconv(channels, k1, bias=False), nn.BatchNorm2d(channels, eps=1e-6)
        self.dwconv2, self.norm2 = dwconv(channels, k2, bias=False), nn.BatchNorm2d(channels, eps=1e-6)
        self.dwconv3, self.norm3 = dwconv(channels, k3, bias=False), nn.BatchNorm2d(channels, eps=1e-6)
        self.n_branches = 3

    def branches(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(self.dwconv1, self.norm1), (self.dwconv2, self.norm2), (self.dwconv3, self.norm3)]

    def forward(self, x: Tensor) -> Tensor:
        return self.norm1(self.dwconv1(x)) + self.norm2(self.dwconv2(x)) + self.norm3(self.dwconv3(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = merge_parallel([fuse_conv_bn(conv.weight, conv.bias, norm) for conv, norm in self.branches()])
        return conv_from_kernel(weight, bias, groups=weight.shape[0])


class ChunkRepUnit(nn.Module):
    """Depthwise convs on channel thirds, concatenated, then one BatchNorm (RepUnit of u1)."""

    def __init__(self, channels: int, kernel_sizes: KernelSizes):
        super().__init__()
        if channels % 3:
            raise ValueError(f"{channels} channels do not split into 3 chunks")
        (k1, k2, k3) = kernel_sizes
        self.dwconv1, self.dwconv2, self.dwconv3 = (dwconv(channels // 3, k, bias=False) for k in (k1, k2, k3))
        self.norm = nn.BatchNorm2d(channels, eps=1e-6)
        self.n_branches = 3

    def convs(self) -> list[nn.Conv2d]:
        return [self.dwconv1, self.dwconv2, self.dwconv3]

    def forward(self, x: Tensor) -> Tensor:
        x1, x2, x3 = x.chunk(3, dim=1)
        return self.norm(torch.cat([self.dwconv1(x1), self.dwconv2(x2), self.dwconv3(x3)], dim=1))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        weight, bias = merge_chunks([(conv.weight, conv.bias) for conv in self.convs()])
        weight, bias = fuse_conv_bn(weight, bias, self.norm)
        return conv_from_kernel(weight, bias, groups=weight.shape[0])


REPUNITS = {
    "u1": (ChunkRepUnit, [(7, 7), (5, 5), (3, 3)]),
    "u2": (ParallelRepUnit, [(7, 7), (5, 5), (3, 3)]),
    "u3": (ParallelRepUnit, [(7, 7), (1, 5), (3, 1)]),
}


class Block(nn.Module):
    """``act(x) + drop_path(pw2(act(pw1(RepUnit(x)))))``; fuses to ``pw2'(act(pw1'(dw'(x))))``."""

    def __init__(self, channels: int, unit: str = "u3", drop_path: float = 0.0):
        super().__init__()
        unit_cls, kernel_sizes = REPUNITS[unit]
        self.feature = unit_cls(channels, kernel_sizes)
        self.pwconv1 = nn.Conv2d(channels, 4 * channels, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(4 * channels, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x) + self.drop_path(self.pwconv2(self.act(self.pwconv1(self.feature(x)))))

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        unit = self.feature.fuse()
        dw, expand, project = absorb_activated_shortcut(
            (unit.weight, unit.bias), (self.pwconv1.weight, self.pwconv1.bias), (self.pwconv2.weight, self.pwconv2.bias)
        )
        return nn.Sequential(
            conv_from_kernel(*dw, groups=unit.in_channels),
            conv_from_kernel(*expand),
            self.act,
            conv_from_kernel(*project),
        )


class ConvBN(nn.Sequential):
    """Conv then BatchNorm (indices 0, 1 as upstream's stem); fuses into the conv."""

    def __init__(self, conv: nn.Conv2d, channels: int):
        super().__init__(conv, nn.BatchNorm2d(channels))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv, norm = self[0], self[1]
        weight, bias = fuse_conv_bn(conv.weight, conv.bias, norm)
        return conv_from_kernel(weight, bias, conv.stride, conv.groups, conv.padding)


class BNConv(nn.Sequential):
    """BatchNorm then an unpadded conv (upstream's downsampling layers); fuses into the conv."""

    def __init__(self, channels: int, conv: nn.Conv2d):
        if any(conv.padding):
            raise ValueError("BatchNorm folds into a following conv only when it has no padding")
        super().__init__(nn.BatchNorm2d(channels), conv)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        norm, conv = self[0], self[1]
        weight, bias = fuse_bn_conv(norm, conv.weight, conv.bias)
        return conv_from_kernel(weight, bias, conv.stride, conv.groups, conv.padding)


class RepNeXtU(nn.Module):
    """RepNeXt-u: ``[B, in_chans, H, W] -> [B, num_classes]``.

    The 4x4 stride-4 stem and 2x2 stride-2 downsampling convs have no padding, as in ConvNeXt, so
    sides that are not multiples of 32 are floored (the last feature map is ``H // 32 x W // 32``).
    """

    # upstream registers its inference conv (feature.conv_repara) in the training form too, unused
    ignored_checkpoint_keys = r"\.feature\.conv_repara\."

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), unit: str = "u3", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "avg"):  # fmt: skip
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.downsample_layers = nn.ModuleList([ConvBN(nn.Conv2d(in_chans, dims[0], 4, 4, bias=False), dims[0])])
        for i in range(1, len(dims)):
            self.downsample_layers.append(BNConv(dims[i - 1], nn.Conv2d(dims[i - 1], dims[i], 2, 2)))
        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList([
            nn.Sequential(*[Block(dim, unit, rate) for rate in stage_rates])
            for dim, stage_rates in zip(dims, rates, strict=True)
        ])  # fmt: skip
        self.feature_info = [dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]
        self.head_drop = nn.Dropout(drop_rate)
        # pool, flatten, classifier at head.0-2 as upstream, whose checkpoints name the classifier head.2
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), self._classifier(num_classes))
        self.apply(self._init_weights)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head[2]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = self.global_pool if global_pool is None else global_pool
        self.head[2] = self._classifier(num_classes)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs at ``indices`` (timm's feature API; backs ``features_only=True``)."""
        x = check_input(x, self.in_chans)
        take, last = feature_take_indices(len(self.stages), indices)
        intermediates = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            if stop_early and i > last:
                break
            x = stage(down(x))
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W] -> [B, dims[-1], H / 32, W / 32]``."""
        x = check_input(x, self.in_chans)
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``[B, C, h, w] -> [B, num_classes]``; ``[B, C]`` with ``pre_logits``; unpooled with ``global_pool=''``."""
        if self.global_pool == "avg":
            x = self.head[1](self.head[0](x))
        x = self.head_drop(x)
        return x if pre_logits else self.head[2](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# (depths, dims) per size, as in the RepNeXt-u repository. u1 splits channels into thirds, so it has no base.
SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


def _cfg() -> dict:
    # no weights were released (upstream's loader points at a local path)
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "downsample_layers.0.0", "classifier": "head.2", "license": "mit",
    }  # fmt: skip


default_cfgs = generate_default_cfgs(
    {f"repnext_{unit}_{size}": _cfg() for unit in REPUNITS for size in SIZES if (unit, size) != ("u1", "base")}
)


def _create_repnext_u(unit: str, size: str, pretrained: bool = False, **kwargs) -> RepNeXtU:
    depths, dims = SIZES[size]
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    kwargs = dict(dict(depths=depths, dims=dims, unit=unit), **kwargs)
    return build_model_with_cfg(
        RepNeXtU, f"repnext_{unit}_{size}", pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs,
    )  # fmt: skip


@register_model
def repnext_u3_tiny(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u3", "tiny", pretrained, **kwargs)


@register_model
def repnext_u3_small(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u3", "small", pretrained, **kwargs)


@register_model
def repnext_u3_base(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u3", "base", pretrained, **kwargs)


@register_model
def repnext_u2_tiny(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u2", "tiny", pretrained, **kwargs)


@register_model
def repnext_u2_small(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u2", "small", pretrained, **kwargs)


@register_model
def repnext_u2_base(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u2", "base", pretrained, **kwargs)


@register_model
def repnext_u1_tiny(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u1", "tiny", pretrained, **kwargs)


@register_model
def repnext_u1_small(pretrained: bool = False, **kwargs) -> RepNeXtU:
    return _create_repnext_u("u1", "small", pretrained, **kwargs)
