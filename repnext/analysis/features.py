"""What each branch of a token mixer sees: feature maps of one block, branch by branch.

For one image, one model and one block, forward hooks record what the block and its token mixer
really receive in an ordinary forward pass, and the outputs of the mixer's branches. The branches
of every family add up (or concatenate) to the mixer's output exactly:

* RepNeXt ``ChunkConv``: four channel chunks, ``identity``, ``conv_s`` (3x3), ``conv_m`` (7x7) and
  ``conv_l`` (1x11 then 11x1), concatenated.
* RecNeXt-M ``RecConv2d``: ``level0`` ... ``levelL``, the part of the output that comes from the input
  downsampled ``l`` times (each goes up through the coarser-to-finer convs and ends in the final
  full-resolution conv); the mixer is linear, so the levels sum to its output.
* RecNeXt-A ``RecAttn2d``: ``level0`` (the final 5x5 conv of the input) and ``level1`` (the same conv of
  the upsampled half-resolution attention), summed.
* RepNeXt-u ``ParallelRepUnit`` (u2, u3): ``dwconv1`` ... summed; ``ChunkRepUnit`` (u1): channel thirds,
  each with its slice of the shared BatchNorm, concatenated.
* RecNeXt T/S/B ``PartialChannelMixer``: ``mixed`` (the attention on the first quarter of the channels)
  and ``untouched`` (the other channels as they came from the RepVGG-style mixer), concatenated.

The re-parameterized mixer (:func:`repnext.reparameterize`, single-branch form where there is one) is
run on the same input, and the largest differences are reported. Figures are written with
:func:`repnext.plotting.save_figure`, so reruns are byte-identical.
"""

from __future__ import annotations

import io
import os
import re
import textwrap
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import timm
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import one_line
from ..models.recnext import RecAttn2d, RecConv2d
from ..models.recnext_tsb import PartialChannelMixer
from ..models.repnext import ChunkConv
from ..models.repnext_u import ChunkRepUnit, ParallelRepUnit
from ..plotting import save_figure, use_style
from ..reparam import bn_scale_shift, reparameterize
from ..weights import Weights, WeightsError, is_url, load_weights

__all__ = [
    "DEFAULT_IMAGE",
    "BranchCapture",
    "FeatureMaps",
    "ImageError",
    "Prediction",
    "branch_figure",
    "capture_branches",
    "channel_grid_figure",
    "channel_mean",
    "compute_feature_maps",
    "describe_predictions",
    "find_block",
    "image_name",
    "load_image",
    "mixer_branches",
    "panel_figure",
    "preprocess",
    "to_rgb",
    "top_predictions",
    "write_feature_maps",
]

# A photograph shipped with scikit-image (a cat, as in upstream's demo), so no network is needed.
DEFAULT_IMAGE = "skimage:chelsea"
CMAP = "gray"

_SKIMAGE_PREFIX = "skimage:"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class ImageError(ValueError):
    """An image that is missing, cannot be downloaded or cannot be decoded; the message names it."""


# --- images -------------------------------------------------------------------------------------


def _skimage_path(source: str) -> str:
    """The file of ``skimage:NAME``, a photograph bundled with scikit-image (e.g. ``skimage:chelsea``)."""
    import skimage.data

    name = source.removeprefix(_SKIMAGE_PREFIX)
    bundled = {p.stem: p for p in sorted(Path(skimage.data.data_dir).iterdir()) if p.suffix in _IMAGE_SUFFIXES}
    if name not in bundled:
        raise ImageError(f"image {source!r}: scikit-image bundles no such image; available: {', '.join(bundled)}")
    return os.fspath(bundled[name])


def _download(url: str, timeout: float = 30.0) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "repnext"})  # some hosts refuse urllib's default
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
        raise ImageError(f"image {url!r}: download failed ({error})") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit integers scale from their full range; 32-bit integers and floats stretch their own range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 65535.0
    else:
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(np.nan_to_num(scaled) * 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: transparency over white, 16-bit and float scaled to 0-255, palettes expanded."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def load_image(source: str | os.PathLike) -> Image.Image:
    """Open ``source`` (a path, an http(s)/file URL or ``skimage:NAME``) as an RGB image.

    EXIF orientation is applied, multi-frame files give their first frame, and any mode is converted
    (:func:`to_rgb`). Raises :class:`ImageError` naming ``source`` when it is missing or unreadable.
    """
    source = os.fspath(source)
    location = _skimage_path(source) if source.startswith(_SKIMAGE_PREFIX) else source
    if is_url(location):
        file: str | io.BytesIO = io.BytesIO(_download(location))
    elif os.path.isfile(location):
        file = location
    else:
        raise ImageError(f"image {source!r}: no such file")
    try:
        with Image.open(file) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"image {source!r}: not a readable image ({one_line(error)})") from None
    return to_rgb(image)


def image_name(source: str | os.PathLike) -> str:
    """A file-name-safe name for an image source: ``skimage:chelsea`` -> ``chelsea``, ``/a/cat.jpg`` -> ``cat``."""
    source = os.fspath(source)
    if source.startswith(_SKIMAGE_PREFIX):
        stem = source.removeprefix(_SKIMAGE_PREFIX)
    else:
        stem = Path(urlparse(source).path if is_url(source) else source).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image"


def preprocess(image: Image.Image, model: nn.Module, input_size: int = 224) -> Tensor:
    """The model's timm eval transform (resize, centre crop, normalize) at ``input_size``: ``[1, 3, S, S]``."""
    config = timm.data.resolve_model_data_config(model)
    config["input_size"] = (3, input_size, input_size)
    return timm.data.create_transform(**config)(image).unsqueeze(0)


def _denormalize(tensor: Tensor, model: nn.Module) -> np.ndarray:
    """``[1, 3, H, W]`` normalized input -> ``[H, W, 3]`` array in [0, 1], the crop the model saw."""
    config = timm.data.resolve_model_data_config(model)
    mean = torch.tensor(config["mean"]).reshape(3, 1, 1)
    std = torch.tensor(config["std"]).reshape(3, 1, 1)
    return (tensor[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


# --- predictions ----------------------------------------------------------------------------------


class Prediction(NamedTuple):
    index: int
    name: str
    probability: float


def top_predictions(logits: Tensor, class_names: Sequence[str] | None = None, k: int = 5) -> list[Prediction]:
    """The ``k`` most probable classes of ``logits`` ``[1, num_classes]``, named when names are known."""
    probabilities = logits.double().softmax(dim=-1)[0]
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [
        Prediction(i, class_names[i] if class_names else f"class {i}", p)
        for i, p in zip(indices.tolist(), values.tolist(), strict=True)
    ]


# --- capture ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """How one kind of token mixer splits into branches."""

    combine: str  # "sum" or "concat": how the branches form the mixer's output
    labels: Callable[[nn.Module], dict[str, str]]  # mixer -> {branch name: short description}
    watch: Callable[[nn.Module], dict[str, nn.Module]]  # mixer -> submodules whose outputs are recorded
    # (mixer, mixer input, recorded outputs per watched name) -> {branch name: [1, C_i, H, W]}
    split: Callable[[nn.Module, Tensor, dict[str, list[Tensor]]], dict[str, Tensor]]


def _affine_part(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x) - module(0)``: the linear part of an affine module (a conv with BatchNorm keeps its bias out)."""
    return module(x) - module(torch.zeros_like(x))


def _chunk_conv_split(mixer: ChunkConv, x: Tensor, outputs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    return {"identity": x.chunk(4, dim=1)[0], **{name: outputs[name][0] for name in ("conv_s", "conv_m", "conv_l")}}


def _rec_conv_labels(mixer: RecConv2d) -> dict[str, str]:
    k = mixer.convs[0].kernel_size[0]
    return {f"level{level}": f"{k}x{k}, 1/{2**level} res" if level else f"{k}x{k}, full res"
            for level in range(mixer.level + 1)}  # fmt: skip


def _rec_conv_split(mixer: RecConv2d, x: Tensor, outputs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """Level ``l``'s share of the output: the input downsampled ``l`` times, up through the finer levels' convs."""
    pyramid = [x, *outputs["down"]]
    levels = {}
    for level in range(mixer.level + 1):
        y = pyramid[level]
        for depth in range(level, -1, -1):
            y = mixer.convs[mixer.level - depth](y)
            if depth > 0:
                y = F.interpolate(y, size=pyramid[depth - 1].shape[-2:], mode=mixer.mode)
        levels[f"level{level}"] = y
    return levels


def _rec_attn_split(mixer: RecAttn2d, x: Tensor, outputs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    attention = F.interpolate(outputs["down"][0], size=x.shape[-2:], mode=mixer.mode)
    return {"level0": mixer.conv(x), "level1": _affine_part(mixer.conv, attention)}


def _kernel_label(conv: nn.Conv2d) -> str:
    return "x".join(map(str, conv.kernel_size))


def _parallel_unit_labels(unit: ParallelRepUnit) -> dict[str, str]:
    return {f"dwconv{i}": _kernel_label(conv) for i, (conv, _) in enumerate(unit.branches(), start=1)}


def _chunk_unit_labels(unit: ChunkRepUnit) -> dict[str, str]:
    return {f"dwconv{i}": f"{_kernel_label(conv)} (1/{unit.n_branches} ch)" for i, conv in enumerate(unit.convs(), 1)}


def _chunk_unit_split(unit: ChunkRepUnit, x: Tensor, outputs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """Each chunk's conv output with its channels' slice of the BatchNorm that follows the concatenation."""
    scales, shifts = (t.reshape(1, -1, 1, 1).chunk(unit.n_branches, dim=1) for t in bn_scale_shift(unit.norm))
    return {
        name: outputs[name][0] * scale + shift
        for name, scale, shift in zip(_chunk_unit_labels(unit), scales, shifts, strict=True)
    }


def _partial_labels(mixer: PartialChannelMixer) -> dict[str, str]:
    return {"mixed": f"{type(mixer.attn).__name__}, first {mixer.part} ch", "untouched": "identity, other ch"}


FAMILIES: dict[type[nn.Module], _Family] = {
    ChunkConv: _Family(
        "concat",
        lambda m: {"identity": "no conv", "conv_s": "3x3", "conv_m": "7x7", "conv_l": "1x11 then 11x1"},
        lambda m: {"conv_s": m.conv_s, "conv_m": m.conv_m, "conv_l": m.conv_l},
        _chunk_conv_split,
    ),
    RecConv2d: _Family("sum", _rec_conv_labels, lambda m: {"down": m.down}, _rec_conv_split),
    RecAttn2d: _Family(
        "sum",
        lambda m: {"level0": "5x5, full res", "level1": "attention, 1/2 res"},
        lambda m: {"down": m.down},
        _rec_attn_split,
    ),
    ParallelRepUnit: _Family(
        "sum",
        _parallel_unit_labels,
        lambda m: {f"dwconv{i}": norm for i, (_, norm) in enumerate(m.branches(), start=1)},
        lambda m, x, outputs: {name: outputs[name][0] for name in _parallel_unit_labels(m)},
    ),
    ChunkRepUnit: _Family(
        "concat",
        _chunk_unit_labels,
        lambda m: {f"dwconv{i}": conv for i, conv in enumerate(m.convs(), start=1)},
        _chunk_unit_split,
    ),
    PartialChannelMixer: _Family(
        "concat",
        _partial_labels,
        lambda m: {"mixed": m.attn},
        lambda m, x, outputs: {"mixed": outputs["mixed"][0], "untouched": x[:, m.part :]},
    ),
}


def _family(mixer: nn.Module) -> _Family:
    family = FAMILIES.get(type(mixer))
    if family is None:
        raise ValueError(f"no branch decomposition for token mixer {type(mixer).__name__}")
    return family


def find_block(model: nn.Module, stage: int, block: int) -> tuple[nn.Module, nn.Module]:
    """``(block, token mixer)`` at ``model.stages[stage]``, block ``block``; errors name the bad index."""
    name = type(model).__name__
    stages = getattr(model, "stages", None)
    if stages is None:
        raise ValueError(f"{name} has no stages")
    _check_index(stage, "stage", len(stages), f"{name} has {len(stages)} stages")
    blocks = getattr(stages[stage], "blocks", stages[stage])
    _check_index(block, "block", len(blocks), f"stage {stage} of {name} has {len(blocks)} blocks")
    module = blocks[block]
    for attr in ("token_mixer", "feature"):  # MetaNeXt blocks, RepNeXt-u blocks
        if hasattr(module, attr):
            return module, getattr(module, attr)
    raise ValueError(f"block {block} of stage {stage} ({type(module).__name__}) has no token mixer")


def _check_index(value: object, name: str, size: int | None = None, context: str = "") -> int:
    """``value`` as a non-negative integer below ``size``; errors start with the parameter ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (size is not None and value >= size):
        bound = f" ({context}: 0 to {size - 1})" if size is not None else ""
        raise ValueError(f"{name}: expected a non-negative integer{bound}, got {value!r}")
    return value


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class BranchCapture:
    """One block's token mixer, branch by branch, from one forward pass (tensors ``[1, C, H, W]``)."""

    stage: int
    block: int
    mixer: str  # class name of the token mixer
    combine: str  # "sum" or "concat"
    block_input: Tensor  # what the block received
    mixer_input: Tensor  # what its token mixer received
    mixer_output: Tensor
    branches: dict[str, Tensor]  # name -> [1, C_i, H, W], in the mixer's order
    labels: dict[str, str]  # name -> short description, e.g. "7x7"
    fused_output: Tensor  # the re-parameterized mixer on mixer_input
    fused_form: str  # what the re-parameterized mixer is, e.g. "one 11x11 depthwise conv"
    logits: Tensor  # [1, num_classes]

    def combined(self) -> Tensor:
        """The branches summed or concatenated: equal to ``mixer_output`` up to rounding."""
        parts = list(self.branches.values())
        return torch.cat(parts, dim=1) if self.combine == "concat" else torch.stack(parts).sum(0)

    @property
    def branch_error(self) -> float:
        """Largest ``|combined() - mixer_output|``."""
        return (self.combined() - self.mixer_output).abs().max().item()

    @property
    def fused_error(self) -> float:
        """Largest ``|fused_output - mixer_output|``."""
        return (self.fused_output - self.mixer_output).abs().max().item()


@contextmanager
def _recording(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, list[tuple[Tensor, Tensor]]]]:
    """Record ``(input, output)`` of every call of each named module while the block runs."""
    records: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: records[name].append((args[0], out)))
        for name, module in modules.items()
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _describe_fused(mixer: nn.Module, fused: nn.Module) -> str:
    if isinstance(fused, nn.Conv2d):
        kind = "depthwise " if fused.groups == fused.in_channels else ""
        return f"one {_kernel_label(fused)} {kind}conv"
    if any(isinstance(m, _BatchNorm) for m in mixer.modules()):
        return f"{type(fused).__name__}, BatchNorm folded"
    return f"{type(fused).__name__} as is (no BatchNorm)"


def _watched(mixer: nn.Module, family: _Family) -> dict[str, nn.Module]:
    return {f"branch.{name}": module for name, module in family.watch(mixer).items()}


def _branch_outputs(records: dict[str, list[tuple[Tensor, Tensor]]]) -> dict[str, list[Tensor]]:
    return {name.removeprefix("branch."): [out for _, out in calls] for name, calls in records.items()}


@torch.no_grad()
def mixer_branches(mixer: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Run a token mixer alone on ``x`` ``[1, C, H, W]``; its branch outputs ``{name: [1, C_i, H, W]}``."""
    family = _family(mixer)
    with _recording(_watched(mixer, family)) as records:
        mixer(x)
    return family.split(mixer, x, _branch_outputs(records))


@torch.no_grad()
def capture_branches(model: nn.Module, image: Tensor, stage: int, block: int) -> BranchCapture:
    """Run ``model`` (put in eval mode) on ``image`` ``[1, 3, H, W]`` and capture one block's token mixer.

    Forward hooks record the block's and the mixer's real inputs and the mixer's branch outputs; the
    re-parameterized mixer (single-branch form where one exists) then runs on the same mixer input.
    """
    block_module, mixer = find_block(model, stage, block)
    family = _family(mixer)
    watched = _watched(mixer, family)
    with _recording({"block": block_module, "mixer": mixer, **watched}) as records:
        logits = model.eval()(image)
    mixer_input, mixer_output = records["mixer"][0]
    outputs = _branch_outputs({name: records[name] for name in watched})
    fused = reparameterize(nn.Sequential(mixer), single_branch=True)[0]
    return BranchCapture(
        stage=stage, block=block, mixer=type(mixer).__name__, combine=family.combine,
        block_input=records["block"][0][0], mixer_input=mixer_input, mixer_output=mixer_output,
        branches=family.split(mixer, mixer_input, outputs), labels=family.labels(mixer),
        fused_output=fused(mixer_input), fused_form=_describe_fused(mixer, fused), logits=logits,
    )  # fmt: skip


def channel_mean(tensor: Tensor) -> Tensor:
    """``[1, C, H, W]`` -> ``[H, W]``: the mean over channels (what one branch responds to, overall)."""
    return tensor[0].mean(dim=0)


# --- one setting, end to end ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureMaps:
    """Everything drawn for one model, weights, image, stage and block."""

    model: str
    weights: Weights
    image: str  # file-name-safe image name, e.g. "chelsea"
    pixels: np.ndarray  # [S, S, 3] in [0, 1]: the crop the model saw
    capture: BranchCapture
    predictions: list[Prediction]


def compute_feature_maps(
    model: str,
    weights: str | os.PathLike | None = None,
    image: str | os.PathLike = DEFAULT_IMAGE,
    stage: int = 0,
    block: int = 1,
    input_size: int = 224,
) -> FeatureMaps:
    """Load ``model`` with ``weights`` (see :func:`load_weights`), read ``image``, capture stage/block.

    ``image``: a path, an http(s)/file URL or ``skimage:NAME``; ``input_size``: side of the centre crop.
    """
    _check_positive(input_size, "input_size")
    network, described = load_weights(model, weights)
    if described.form != "train":
        raise WeightsError(
            f"weights {os.fspath(weights)!r}: a fused model; feature maps need the training form's branches"
        )
    find_block(network, stage, block)  # a bad stage or block fails before the image is read
    tensor = preprocess(load_image(image), network, input_size)
    capture = capture_branches(network, tensor, stage, block)
    predictions = top_predictions(capture.logits, described.class_names) if described.trained else []
    return FeatureMaps(model, described, image_name(image), _denormalize(tensor, network), capture, predictions)


def describe_predictions(maps: FeatureMaps) -> str:
    """The top-5 classes as text lines, or why there are none (untrained weights)."""
    if not maps.weights.trained:
        return f"{maps.model}: {maps.weights.description}, so no class predictions"
    lines = [f"{maps.model} ({maps.weights.description}), top-{len(maps.predictions)} for {maps.image}:"]
    lines += [f"  {p.probability:6.1%}  {p.name} ({p.index})" for p in maps.predictions]
    return "\n".join(lines)


def select_branches(capture: BranchCapture, branches: Sequence[str] | None = None) -> list[str]:
    """The named branches in the mixer's order (all when ``branches`` is None); unknown names fail."""
    if branches is None:
        return list(capture.branches)
    if isinstance(branches, str) or not branches:
        raise ValueError(f"branches: expected None or a non-empty list of branch names, got {branches!r}")
    unknown = [name for name in branches if name not in capture.branches]
    if unknown:
        raise ValueError(
            f"branches: {capture.mixer} has no branch {unknown[0]!r}; available: {', '.join(capture.branches)}"
        )
    return [name for name in capture.branches if name in branches]


_TITLE_CHARS = 24


def _map_axes(ax, values: np.ndarray, title: str | None = None) -> None:
    ax.imshow(values, cmap=CMAP, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)


def branch_figure(values: Tensor) -> Figure:
    """One ``[H, W]`` map, grey levels stretched to its own range, no axes (as upstream's per-branch images)."""
    height, width = values.shape
    fig = Figure(figsize=(2.0 * width / max(height, width), 2.0 * height / max(height, width)))
    ax = fig.add_axes((0, 0, 1, 1))
    _map_axes(ax, values.numpy())
    return fig


def _wrap(title: str, width: int = _TITLE_CHARS) -> str:
    """``title`` broken at spaces into lines of at most ``width`` characters (a panel is about that wide)."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=False)) or title


def panel_figure(maps: FeatureMaps, branches: Sequence[str] | None = None) -> Figure:
    """The input crop, the channel mean of each branch and of the fused mixer's output, in one row."""
    capture = maps.capture
    names = select_branches(capture, branches)
    shapes = {name: "x".join(map(str, capture.branches[name].shape[1:])) for name in names}
    titles = [f"input {maps.pixels.shape[0]}x{maps.pixels.shape[1]}"]
    titles += [_wrap(f"{name} ({capture.labels[name]})") + f"\n{shapes[name]}" for name in names]
    titles += ["fused\n" + _wrap(capture.fused_form)]
    longest = max(len(line) for title in titles for line in title.splitlines())
    fig = Figure(figsize=(max(1.6, 0.06 * longest + 0.2) * len(titles), 2.5), layout="constrained")
    axes = fig.subplots(1, len(titles))
    outputs = [capture.branches[name] for name in names] + [capture.fused_output]
    images = [maps.pixels] + [channel_mean(output).numpy() for output in outputs]
    for ax, image, title in zip(axes, images, titles, strict=True):
        _map_axes(ax, image, title)
    fig.suptitle(
        f"{maps.model} stage {capture.stage} block {capture.block} ({capture.mixer}), {maps.weights.description}\n"
        f"max |{capture.combine} of branches - mixer output| = {capture.branch_error:.1e}, "
        f"max |fused - mixer output| = {capture.fused_error:.1e}",
        fontsize=7,
    )
    return fig


def channel_grid_figure(tensor: Tensor, channels: int, title: str = "") -> Figure:
    """The first ``channels`` channels of ``[1, C, H, W]``, each stretched to its own range, in a grid."""
    count = min(channels, tensor.shape[1])
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.3), layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        if i < count:
            _map_axes(ax, tensor[0, i].numpy(), f"ch {i}")
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=7)
    return fig


def _check_channel_grid(channel_grid: object) -> int:
    if channel_grid is None or channel_grid is False:
        return 0
    if channel_grid is True or not isinstance(channel_grid, int) or channel_grid < 0:
        raise ValueError(f"channel_grid: expected False or a number of channels, got {channel_grid!r}")
    return channel_grid


def write_feature_maps(
    maps: FeatureMaps,
    output_dir: str | os.PathLike = "figures/feature_maps",
    branches: Sequence[str] | None = None,
    channel_grid: int | bool = False,
) -> list[Path]:
    """Write the figures of one setting under ``output_dir/MODEL/`` and return their paths.

    ``IMAGE-stageS-blockB-BRANCH.png`` per branch and ``...-fused.png`` (channel means),
    ``IMAGE-stageS-blockB.{png,pdf}`` (the panel), and with ``channel_grid=N`` a grid of each branch's
    first ``N`` channels, ``...-BRANCH-channels.png``.
    """
    names = select_branches(maps.capture, branches)
    grid = _check_channel_grid(channel_grid)
    use_style()
    folder = Path(output_dir) / maps.model
    stem = f"{maps.image}-stage{maps.capture.stage}-block{maps.capture.block}"
    maps_to_draw = {name: maps.capture.branches[name] for name in names} | {"fused": maps.capture.fused_output}
    written = []
    for name, tensor in maps_to_draw.items():
        written += save_figure(branch_figure(channel_mean(tensor)), folder / f"{stem}-{name}", formats=("png",))
    written += save_figure(panel_figure(maps, names), folder / stem, formats=("png", "pdf"))
    for name in names if grid else []:
        title = f"{maps.model} stage {maps.capture.stage} block {maps.capture.block}, branch {name}: channels"
        fig = channel_grid_figure(maps.capture.branches[name], grid, title)
        written += save_figure(fig, folder / f"{stem}-{name}-channels", formats=("png",))
    return written
