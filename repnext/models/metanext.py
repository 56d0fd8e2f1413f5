"""The MetaNeXt backbone shared by RepNeXt and RecNeXt; the families differ only in their token mixers.

Layout (parameter names as upstream): ``stem`` (stride 4), ``stages.i.downsample`` (stride 2, C -> 2C;
absent in stage 0), ``stages.i.blocks.j``, ``head`` (two NormLinear heads averaged at inference).
"""

from collections.abc import Callable

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from ..checkpoint import load_pretrained_file
from ..reparam import bn_scale_shift, conv_from_kernel, fold_output_affine, fuse_bn_conv, reparameterize
from .layers import DistilledClassifier, Stem, mlp

# (channels, stage index) -> token mixer keeping [B, C, H, W]
TokenMixer = Callable[[int, int], nn.Module]
# channels -> token mixer mapping [B, C, H, W] to [B, 2C, ceil(H/2), ceil(W/2)]
DownsampleMixer = Callable[[int], nn.Module]


class MetaNeXtBlock(nn.Module):
    """``x + drop_path(mlp(norm(token_mixer(x))))``; fusing folds ``norm`` into the MLP's first 1x1 conv."""

    def __init__(self, token_mixer: nn.Module, channels: int, mlp_ratio: float, norm: bool = True,
                 drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU):  # fmt: skip
        super().__init__()
        self.token_mixer = token_mixer
        self.norm = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.channel_mixer = mlp(channels, int(channels * mlp_ratio), act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.channel_mixer(self.norm(self.token_mixer(x))))

    @torch.no_grad()
    def fuse(self) -> "MetaNeXtBlock":
        reparameterize(self, inplace=True)
        if isinstance(self.norm, nn.BatchNorm2d):
            pw = self.channel_mixer[0]
            weight, bias = fuse_bn_conv(self.norm, pw.weight, pw.bias)
            self.channel_mixer[0] = conv_from_kernel(weight, bias, groups=pw.groups, padding=pw.padding)
        self.norm, self.drop_path = nn.Identity(), nn.Identity()
        return self


class Downsample(nn.Module):
    """``y = bn(token_mixer(x)); y + mlp(y)``: halves the resolution and doubles the channels."""

    def __init__(self, token_mixer: nn.Module, channels: int, mlp_ratio: float, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.token_mixer = token_mixer
        self.norm = nn.BatchNorm2d(2 * channels)
        self.channel_mixer = mlp(2 * channels, int(2 * channels * mlp_ratio), act_layer)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.token_mixer(x))
        return x + self.channel_mixer(x)

    @torch.no_grad()
    def fuse(self) -> "Downsample":
        reparameterize(self, inplace=True)
        if isinstance(self.norm, nn.BatchNorm2d):
            self.token_mixer = fold_output_affine(self.token_mixer, *bn_scale_shift(self.norm))
            self.norm = nn.Identity()
        return self


class MetaNeXtStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint_sequential(self.blocks, len(self.blocks), x, use_reentrant=False)
        return self.blocks(x)


class DistilledBackbone(nn.Module):
    """The timm model API shared by every MetaNeXt layout: ``stem``, ``stages``, average pool, ``head``.

    Subclasses build ``stem`` and ``stages`` (each stage with ``downsample``, ``blocks`` and
    ``grad_checkpointing``) and call :meth:`init_head`.
    """

    def init_head(self, num_features: int, num_classes: int, global_pool: str, distillation: bool,
                  drop_rate: float) -> None:  # fmt: skip
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.distillation = distillation
        self.num_features = self.head_hidden_size = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = DistilledClassifier(num_features, num_classes, distillation)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)])  # fmt: skip

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Called by timm for pretrained cfgs with ``custom_load`` (timm training checkpoints)."""
        load_pretrained_file(self, checkpoint_path)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = DistilledClassifier(self.num_features, num_classes, self.distillation).train(self.training)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W] -> [B, num_features, h, w]`` (``h = ceil(H / 32)`` for RepNeXt and RecNeXt M/A)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``[B, C, h, w] -> [B, num_classes]``; ``[B, C]`` with ``pre_logits``; unpooled with ``global_pool=''``."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class MetaNeXt(DistilledBackbone):
    """Stem, four stages of MetaNeXt blocks, global average pool, distilled classifier.

    ``token_mixer(channels, stage)`` and ``downsample_mixer(channels)`` build the family-specific
    parts. ``drop_path_rate`` is the same for every block, as upstream.
    Input ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``; any ``H, W`` works.
    """

    def __init__(self, token_mixer: TokenMixer, downsample_mixer: DownsampleMixer, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: tuple[int, ...] = (48, 96, 192, 384),
                 depth: tuple[int, ...] = (3, 3, 15, 2), mlp_ratio: float = 2, block_norm: bool = True,
                 global_pool: str = "avg", distillation: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, act_layer: type[nn.Module] = nn.GELU):  # fmt: skip
        super().__init__()
        self.stem = Stem(in_chans, embed_dim[0], act_layer)
        stages, self.feature_info = [], []
        in_channels, stride = embed_dim[0], 4
        for i, (channels, n_blocks) in enumerate(zip(embed_dim, depth, strict=True)):
            downsample = Downsample(downsample_mixer(in_channels), in_channels, mlp_ratio, act_layer) if i else None
            blocks = [
                MetaNeXtBlock(token_mixer(channels, i), channels, mlp_ratio, block_norm, drop_path_rate, act_layer)
                for _ in range(n_blocks)
            ]
            stages.append(MetaNeXtStage(downsample or nn.Identity(), blocks))
            stride *= 2 if i else 1
            self.feature_info.append(dict(num_chs=channels, reduction=stride, module=f"stages.{i}"))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.init_head(embed_dim[-1], num_classes, global_pool, distillation, drop_rate)
