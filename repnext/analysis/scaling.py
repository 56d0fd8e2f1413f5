"""Exact parameter and MAC counts of RecConv2d and RecAttn2d against the papers' scaling formulas.

RecNeXt's abstract claims that RecConv with base kernel ``k`` and ``l`` levels reaches ``k * 2**l``
with ``l + 2`` times the parameters of one ``k x k`` depthwise conv and at most ``5/3`` times its FLOPs,
where a depthwise conv of the same reach costs ``4**l`` times as much. This module counts both, in
closed form and with fvcore on the module (:func:`repnext.analysis.stats.count_macs`), so each claim can
be checked on real sizes.

Counting convention (fvcore's): one multiply-add is one MAC; element-wise additions are not counted;
bilinear upsampling counts 4 MACs per output element and nearest 1 (fvcore's handles for
``upsample_bilinear2d`` / ``upsample_nearest2d``). For a side ``n`` the stride-2 ``k x k`` conv (padding
``k // 2``, ``k`` odd) gives ``ceil(n / 2)``, so the level sides are ``n, ceil(n/2), ...``.

RecConv2d (this package's and upstream's): one shared stride-2 conv, ``l + 1`` stride-1 convs, so
``(l + 2) C k^2`` parameters for ``l >= 1`` (``l = 0`` is RecNeXt's plain ``k x k`` conv: ``C k^2``), and
conv MACs ``C k^2 (n_0^2 + 2 (n_1^2 + ... + n_l^2))``: the down conv and the level conv at every
coarser side. With exact halving this is ``1 + 2/3 (1 - 4**-l)`` times ``C k^2 n^2``, below 5/3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from ..models.layers import dwconv
from ..models.recnext import LinearAttention, RecAttn2d, RecConv2d
from ..plotting import use_style
from ..registry import create_model
from ..reparam import reparameterize
from ..tables import Table
from .erf import same_depthwise
from .stats import count_macs, count_parameters

__all__ = [
    "INTERPOLATION_MACS",
    "Counts",
    "depthwise_counts",
    "level_sides",
    "paper_flops_ratio",
    "paper_params_ratio",
    "recattn_counts",
    "recconv_counts",
    "scaling_figure",
    "scaling_table",
]

# MACs per output element that fvcore charges for each interpolation mode.
INTERPOLATION_MACS = {"bilinear": 4, "nearest": 1}


@dataclass(frozen=True)
class Counts:
    """Parameters and MACs of one module on one input size; ``macs`` is what fvcore counts (convs + resampling)."""

    params: int
    conv_macs: int  # convolutions only (what the papers' FLOP formula counts)
    other_macs: int  # interpolation and attention matmuls

    @property
    def macs(self) -> int:
        return self.conv_macs + self.other_macs


def level_sides(side: int, level: int, kernel_size: int = 5) -> list[int]:
    """Sides ``[n_0, ..., n_l]`` of the RecConv pyramid: each stride-2 ``k x k`` conv with padding ``k // 2``."""
    sides = [side]
    for _ in range(level):
        sides.append((sides[-1] + 2 * (kernel_size // 2) - kernel_size) // 2 + 1)
    return sides


def paper_params_ratio(level: int) -> Fraction:
    """The abstract's parameter expansion of RecConv over one ``k x k`` depthwise conv: ``l + 2``."""
    return Fraction(level + 2)


def paper_flops_ratio(level: int) -> Fraction:
    """The FLOP expansion with exact halving, ``1 + 2 (4^-1 + ... + 4^-l) = 1 + 2/3 (1 - 4^-l)``, below 5/3."""
    return 1 + Fraction(2, 3) * (1 - Fraction(1, 4**level))


def depthwise_counts(channels: int, kernel_size: int, side: int) -> Counts:
    """A ``K x K`` depthwise conv without bias keeping an ``n x n`` input's size: ``C K^2`` and ``C K^2 n^2``."""
    return Counts(channels * kernel_size**2, channels * kernel_size**2 * side**2, 0)


def recconv_counts(channels: int, kernel_size: int, level: int, side: int, mode: str = "bilinear") -> Counts:
    """RecConv2d in closed form (``level = 0``: the plain ``k x k`` depthwise conv RecNeXt uses there)."""
    if level == 0:
        return depthwise_counts(channels, kernel_size, side)
    sides = level_sides(side, level, kernel_size)
    per_position = channels * kernel_size**2
    conv = per_position * (sides[0] ** 2 + 2 * sum(s * s for s in sides[1:]))
    interpolation = INTERPOLATION_MACS[mode] * channels * sum(s * s for s in sides[:-1])
    return Counts((level + 2) * per_position, conv, interpolation)


def recattn_counts(channels: int, heads: int, form: int, kernel_size: int, side: int, mode: str = "nearest") -> Counts:
    """The re-parameterized RecAttn2d (BatchNorms folded into biases) in closed form.

    ``down``: stride-2 ``k x k`` depthwise conv, then linear attention at ``N = ceil(n/2)^2`` tokens:
    a 1x1 conv to q and k in two groups (``C^2``), a 3x3 depthwise positional conv, and the matmuls:
    form 1 ``k^T v`` and ``q (k^T v)`` (``C d N`` each, ``d = C / heads``) plus the normaliser ``q mean(k)``
    (``C N``); form 2 ``q^T k`` and ``attn v`` (``C N^2`` each). Then nearest upsampling and the
    full-resolution ``k x k`` conv.
    """
    tokens = level_sides(side, 1, kernel_size)[1] ** 2
    head_dim = channels // heads
    params = 2 * (channels * kernel_size**2 + channels) + channels * channels + 2 * channels + 10 * channels
    conv = channels * kernel_size**2 * (side**2 + tokens) + channels * channels * tokens + 9 * channels * tokens
    if form == 1:
        attention = 2 * channels * head_dim * tokens + channels * tokens
    else:
        attention = 2 * channels * tokens * tokens
    return Counts(params, conv, attention + INTERPOLATION_MACS[mode] * channels * side**2)


def _fvcore(module: nn.Module, channels: int, side: int) -> tuple[int, int]:
    module = reparameterize(module.eval())
    return count_parameters(module), count_macs(module, side, in_chans=channels)[0]


def _mixer_inputs(model_name: str, resolution: int) -> list[tuple[int, nn.Module, int]]:
    """``(stage, first token mixer, its input side)`` for each stage, read off one forward pass."""
    model = create_model(model_name).eval()
    found: list[tuple[int, nn.Module, int]] = []
    hooks = []
    for s, stage in enumerate(model.stages):
        record = lambda module, args, s=s: found.append((s, module, args[0].shape[-1]))  # noqa: E731
        hooks.append(stage.blocks[0].token_mixer.register_forward_pre_hook(record))
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return found


def _row(context: str, resolution: int | None, stage: int | None, mixer: str, channels: int, kernel: int,
         level: int, side: int, counts: Counts, fvcore: tuple[int, int] | None,
         reach_fvcore_max_macs: float) -> dict:  # fmt: skip
    base = depthwise_counts(channels, kernel, side)
    reach = kernel * 2**level
    dense = depthwise_counts(channels, reach, side)
    dense_fvcore = None
    if dense.macs <= reach_fvcore_max_macs:
        dense_fvcore = count_macs(same_depthwise(channels, reach), side, in_chans=channels)[0]
    recconv = mixer == "RecConv2d"
    params_formula = paper_params_ratio(level) if recconv and level else None
    flops_formula = paper_flops_ratio(level) if recconv else None
    conv_ratio = Fraction(counts.conv_macs, base.conv_macs)
    return dict(
        context=context, resolution=resolution, stage=stage, mixer=mixer, channels=channels, kernel=kernel,
        level=level, reach=reach, sides="-".join(map(str, level_sides(side, level, kernel))), side=side,
        params=counts.params, params_fvcore=None if fvcore is None else fvcore[0],
        params_ratio=counts.params / base.params,
        paper_params_ratio=None if params_formula is None else float(params_formula),
        params_formula_exact=None if params_formula is None else Fraction(counts.params, base.params) == params_formula,
        conv_macs=counts.conv_macs, other_macs=counts.other_macs, macs=counts.macs,
        macs_fvcore=None if fvcore is None else fvcore[1],
        fvcore_agrees=None if fvcore is None else fvcore == (counts.params, counts.macs),
        conv_flops_ratio=float(conv_ratio), paper_flops_ratio=None if flops_formula is None else float(flops_formula),
        flops_formula_exact=None if flops_formula is None else conv_ratio == flops_formula,
        conv_within_5_3=conv_ratio <= Fraction(5, 3) if recconv else None,
        total_flops_ratio=counts.macs / base.conv_macs,
        reach_dw_params=dense.params, reach_dw_macs=dense.macs, reach_dw_macs_fvcore=dense_fvcore,
        reach_dw_params_ratio=dense.params / counts.params, reach_dw_macs_ratio=dense.macs / counts.macs,
    )  # fmt: skip


COLUMNS = (
    "context", "resolution", "stage", "mixer", "channels", "kernel", "level", "reach", "side", "sides",
    "params", "params_fvcore", "params_ratio", "paper_params_ratio", "params_formula_exact",
    "conv_macs", "other_macs", "macs", "macs_fvcore", "fvcore_agrees",
    "conv_flops_ratio", "paper_flops_ratio", "flops_formula_exact", "conv_within_5_3", "total_flops_ratio",
    "reach_dw_params", "reach_dw_macs", "reach_dw_macs_fvcore", "reach_dw_params_ratio", "reach_dw_macs_ratio",
)  # fmt: skip


def scaling_table(channels: int = 8, kernel_size: int = 5, levels: Sequence[int] = (0, 1, 2, 3, 4),
                  sides: Sequence[int] = (224, 384), models: Sequence[str] = ("recnext_m0", "recnext_a0"),
                  resolutions: Sequence[int] = (224, 384), mode: str = "bilinear",
                  reach_fvcore_max_macs: float = 2e8) -> Table:  # fmt: skip
    """Analytic and fvcore counts of RecConv2d for each level on ``n x n`` maps, then the mixers of ``models``.

    First block: ``RecConv2d(channels, kernel_size, level)`` on each side in ``sides``. Then, for each
    model and input resolution, the first token mixer of every stage at its real input size (RecNeXt-M:
    RecConv2d of level ``4 - stage``; RecNeXt-A: RecAttn2d). Ratios are against one ``k x k`` depthwise
    conv on the same map; ``reach_dw_*`` is a depthwise conv of side ``k * 2**l``, analytic, and
    through fvcore where it costs at most ``reach_fvcore_max_macs`` (running it is the expensive part).
    """
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for side in sides:
            for level in levels:
                module = RecConv2d(channels, kernel_size, level, mode) if level else dwconv(channels, kernel_size,
                                                                                             bias=False)  # fmt: skip
                counts = recconv_counts(channels, kernel_size, level, side, mode)
                rows.append(_row("module", None, None, "RecConv2d", channels, kernel_size, level, side, counts,
                                 _fvcore(module, channels, side), reach_fvcore_max_macs))  # fmt: skip
        for name in models:
            for resolution in resolutions:
                for stage, mixer, side in _mixer_inputs(name, resolution):
                    rows.append(_model_row(name, resolution, stage, mixer, side, reach_fvcore_max_macs))
    floats = {c: ".4f" for c in COLUMNS if c.endswith("ratio")}
    return Table(list(COLUMNS), rows, floats=floats)


def _model_row(name: str, resolution: int, stage: int, mixer: nn.Module, side: int, max_macs: float) -> dict:
    if isinstance(mixer, RecConv2d):
        channels, kernel = mixer.down.in_channels, mixer.down.kernel_size[0]
        counts = recconv_counts(channels, kernel, mixer.level, side, mixer.mode)
        return _row(name, resolution, stage, "RecConv2d", channels, kernel, mixer.level, side, counts,
                    _fvcore(mixer, channels, side), max_macs)  # fmt: skip
    if isinstance(mixer, RecAttn2d):
        attention: LinearAttention = mixer.down[1]
        channels, kernel = mixer.conv.conv.in_channels, mixer.conv.conv.kernel_size[0]
        counts = recattn_counts(channels, attention.num_heads, attention.form, kernel, side, mixer.mode)
        return _row(name, resolution, stage, f"RecAttn2d (form {attention.form})", channels, kernel, 1, side,
                    counts, _fvcore(mixer, channels, side), max_macs)  # fmt: skip
    raise ValueError(f"{name}: stage {stage} has a {type(mixer).__name__}, neither RecConv2d nor RecAttn2d")


def scaling_figure(table: Table, side: int = 224):
    """Parameters and MACs per channel against reach (log scale): RecConv2d levels vs a depthwise conv of that reach."""
    from matplotlib.figure import Figure

    use_style()
    rows = [r for r in table.sorted_rows() if r["context"] == "module" and r["side"] == side]
    if not rows:
        raise ValueError(f"no module rows at side {side} in the table")
    reach = [r["reach"] for r in rows]
    fig = Figure(figsize=(8, 3.2))
    for i, (key, dense_key, label) in enumerate(
        [("params", "reach_dw_params", "parameters per channel"), ("macs", "reach_dw_macs", "MACs per channel")]
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        channels = rows[0]["channels"]
        ax.plot(reach, [r[key] / channels for r in rows], "o-", label="RecConv2d, level l")
        ax.plot(reach, [r[dense_key] / channels for r in rows], "s--", label="depthwise conv, side k*2^l")
        if key == "macs":
            ax.plot(reach, [r["conv_macs"] / channels for r in rows], ".:", label="RecConv2d, convs only")
        for r in rows:
            ax.annotate(f"l={r['level']}", (r["reach"], r[key] / channels), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("reach k*2^l (pixels)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, {side}x{side} map" if key == "macs" else label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
