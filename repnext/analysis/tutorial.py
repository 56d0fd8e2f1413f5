"""Helpers behind the structural re-parameterization tutorial (``notebooks/reparam_tutorial.ipynb``).

The notebook states each identity, builds the training-form modules and calls :mod:`repnext.reparam`;
this module holds what would otherwise be long notebook cells:

* :class:`Checks` compares two computations in every dtype (training vs fused form, or a claim that two
  things differ) and collects max abs / relative errors with pass or fail into one :class:`Table`;
* :func:`kernel_figure` draws kernels before and after merging, :func:`save_and_show` saves and shows it;
* :func:`latency_table` times training and fused forms of whole models and of one real block each. It is a
  time measurement, not reproducible to the byte: write it only to files named ``latency_*``.
"""

from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..models.metanext import MetaNeXtBlock
from ..models.repnext_u import Block as RepUBlock
from ..plotting import save_figure
from ..registry import create_model
from ..reparam import reparameterize
from ..tables import Table
from .equivalence import TOLERANCES, compare_outputs, randomize_batchnorm
from .latency import time_interleaved

if TYPE_CHECKING:
    from IPython.display import Image

# Smallest relative difference that counts as "differs": far above rounding in any dtype checked here.
DIFFERENCE = 1e-3
# A training-form module -> its fused form (a module or any callable on the same input).
Fuse = Callable[[nn.Module], Callable[[Tensor], Tensor]]
# A dtype -> the two outputs to compare, computed in that dtype.
Outputs = Callable[[torch.dtype], tuple[Tensor, Tensor]]

CHECK_COLUMNS = ["id", "paradigm", "claim", "dtype", "max_abs_err", "max_rel_err", "expect", "threshold", "passed"]


class Parallel(nn.Module):
    """Branches on one input: ``[B, C, H, W]`` -> their sum (``combine="sum"``) or channel concatenation (``"cat"``)."""

    def __init__(self, *branches: nn.Module, combine: str = "sum"):
        super().__init__()
        if combine not in ("sum", "cat"):
            raise ValueError(f"combine must be 'sum' or 'cat', got {combine!r}")
        self.branches = nn.ModuleList(branches)
        self.combine = combine

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches]
        return sum(outputs[1:], outputs[0]) if self.combine == "sum" else torch.cat(outputs, dim=1)


class PerPixel(nn.Module):
    """Apply ``module`` (e.g. ``nn.Linear``) to each pixel's channel vector: ``[B, C, H, W] -> [B, D, H, W]``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.movedim(1, -1)).movedim(-1, 1)


@dataclass(repr=False)
class Result:
    """The rows one check added (shown as a Markdown table) and, for a fusion, both forms in the first dtype."""

    table: Table
    module: nn.Module | None = None
    fused: Callable[[Tensor], Tensor] | None = None

    def _repr_markdown_(self) -> str:
        return self.table.render("md")

    def __repr__(self) -> str:
        return self.table.render("md")


def check_dtypes(dtypes: Sequence[str], where: str) -> list[str]:
    """Validate a list-of-dtypes parameter (``float64``, ``float32``); errors name ``where``."""
    if isinstance(dtypes, str) or not list(dtypes) or any(d not in TOLERANCES for d in dtypes):
        raise ValueError(f"{where}: expected a non-empty list from {sorted(TOLERANCES)}, got {dtypes!r}")
    return list(dtypes)


def check_channels(channels: object, where: str) -> int:
    """Validate the tutorial's channel count: a positive multiple of 4 (ChunkConv splits channels in four)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0 or channels % 4:
        raise ValueError(f"{where}: must be a positive multiple of 4 (ChunkConv splits four ways), got {channels!r}")
    return channels


def check_seed(seed: object, where: str) -> int:
    """Validate a random seed parameter: a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{where}: must be a non-negative integer, got {seed!r}")
    return seed


def _crop(x: Tensor, margin: int) -> Tensor:
    return x[..., margin:-margin, margin:-margin] if margin else x


@dataclass
class Checks:
    """Claims that two computations agree (``expect="equal"``) or not (``"differ"``), each checked in every dtype.

    Agreement is the largest absolute difference relative to the largest reference value; "equal" passes
    at or below the dtype's tolerance (:data:`repnext.analysis.equivalence.TOLERANCES`), "differ" above
    :data:`DIFFERENCE`. Inputs are drawn from a generator seeded by ``seed``, so reruns give the same table.
    """

    dtypes: Sequence[str] = ("float64", "float32")
    seed: int = 0
    tolerances: Mapping[str, float] = field(default_factory=lambda: dict(TOLERANCES))
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [d for d in self.dtypes if d not in self.tolerances]
        if unknown or not self.dtypes:
            raise ValueError(f"dtypes must be a non-empty list from {sorted(self.tolerances)}, got {list(self.dtypes)}")

    def inputs(self, shape: Sequence[int], dtype: torch.dtype, stream: int = 0) -> Tensor:
        """A standard normal tensor of ``shape``, the same values (rounded) in every dtype; ``stream`` picks another."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + stream)
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    @torch.no_grad()
    def compare(self, paradigm: str, claim: str, outputs: Outputs, expect: str = "equal") -> Result:
        """Record, per dtype, how far apart the two tensors ``outputs(dtype)`` are."""
        if expect not in ("equal", "differ"):
            raise ValueError(f"expect must be 'equal' or 'differ', got {expect!r}")
        check_id, added = len({row["id"] for row in self.rows}) + 1, []
        for name in self.dtypes:
            reference, other = outputs(getattr(torch, name))
            if reference.shape != other.shape:
                raise ValueError(f"{paradigm}: {claim}: shapes differ, {list(reference.shape)} vs {list(other.shape)}")
            agreement = compare_outputs(reference.double(), other.double())
            threshold = self.tolerances[name] if expect == "equal" else DIFFERENCE
            passed = agreement.max_rel <= threshold if expect == "equal" else agreement.max_rel > threshold
            added.append(dict(
                id=check_id, paradigm=paradigm, claim=claim, dtype=name, max_abs_err=agreement.max_abs,
                max_rel_err=agreement.max_rel, expect=expect, threshold=threshold, passed=passed,
            ))  # fmt: skip
        self.rows.extend(added)
        return Result(self._table(added))

    def fusion(self, paradigm: str, claim: str, module: nn.Module, fuse: Fuse, shape: Sequence[int],
               crop: int = 0, expect: str = "equal") -> Result:  # fmt: skip
        """Training form ``module`` vs ``fuse(module)`` on a random ``[B, C, H, W]`` input of ``shape``.

        ``module`` gets random BatchNorm statistics, then for each dtype a converted copy is fused (the
        fusion runs in that dtype, as it would in deployment). ``crop`` compares only pixels at least that far
        from the borders. The result holds both forms in the first dtype, e.g. to draw their kernels.
        """
        template = randomize_batchnorm(copy.deepcopy(module), seed=self.seed).eval()
        forms: dict[torch.dtype, tuple[nn.Module, Callable[[Tensor], Tensor]]] = {}

        def outputs(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            trained = copy.deepcopy(template).to(dtype)
            forms[dtype] = trained, fuse(copy.deepcopy(trained))  # a copy: some fusions work in place
            x = self.inputs(shape, dtype)
            return _crop(trained(x), crop), _crop(forms[dtype][1](x), crop)

        result = self.compare(paradigm, claim, outputs, expect)
        result.module, result.fused = forms[getattr(torch, self.dtypes[0])]
        return result

    def linearity(self, paradigm: str, claim: str, module: nn.Module, shape: Sequence[int]) -> Result:
        """``f(a x + b y)`` vs ``a f(x) + b f(y)`` for random ``x, y`` of ``shape``: equal for a linear map."""

        def outputs(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            f = copy.deepcopy(module).to(dtype).eval()
            x, y = self.inputs(shape, dtype, 1), self.inputs(shape, dtype, 2)
            return f(0.5 * x - 2.0 * y), 0.5 * f(x) - 2.0 * f(y)

        return self.compare(paradigm, claim, outputs)

    def shift_invariance(self, paradigm: str, claim: str, module: nn.Module, shape: Sequence[int],
                         expect: str = "equal") -> Result:  # fmt: skip
        """Response to an impulse one pixel right of the centre, shifted back, vs the response at the centre.

        Any convolution (zero padding included) passes: its impulse response is its kernel, placed where
        the impulse is. A linear map that is not one convolution fails. ``shape`` is ``[1, C, H, W]``.
        """

        def outputs(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            f = copy.deepcopy(module).to(dtype).eval()
            at_centre, moved = impulse_response(f, shape, dtype), impulse_response(f, shape, dtype, offset=1)
            return at_centre[..., :-1], moved[..., 1:]

        return self.compare(paradigm, claim, outputs, expect)

    def of(self, paradigm: str) -> Result:
        """The rows of one paradigm so far (shown as a Markdown table in a notebook)."""
        return Result(self._table([row for row in self.rows if row["paradigm"] == paradigm]))

    def table(self) -> Table:
        """Every row so far, in the order checked."""
        return self._table(self.rows)

    def failures(self) -> list[str]:
        """One line per failed row: ``paradigm: claim (dtype): relative error``."""
        return [
            f"{row['paradigm']}: {row['claim']} ({row['dtype']}): relative error {row['max_rel_err']:.1e}, "
            f"expected {row['expect']} (threshold {row['threshold']:.0e})"
            for row in self.rows
            if not row["passed"]
        ]

    @staticmethod
    def _table(rows: list[dict]) -> Table:
        floats = dict(max_abs_err=".1e", max_rel_err=".1e", threshold=".0e")
        return Table(CHECK_COLUMNS, list(rows), floats=floats, sort_by=("id",))  # dtypes stay in the given order


def impulse_response(f: Callable[[Tensor], Tensor], shape: Sequence[int], dtype: torch.dtype,
                     offset: int = 0) -> Tensor:  # fmt: skip
    """``f`` of a unit impulse in every channel at the centre of ``shape`` (moved right by ``offset``)."""
    impulse = torch.zeros(*shape, dtype=dtype)
    impulse[..., shape[-2] // 2, shape[-1] // 2 + offset] = 1
    return f(impulse)


def kernel_figure(before: Sequence[tuple[str, Tensor]], after: Sequence[tuple[str, Tensor]],
                  title: str | None = None, same_scale: bool = True) -> Figure:  # fmt: skip
    """Heat maps of labelled 2-D kernels (or matrices) ``[h, w]`` before merging, an arrow, then after merging.

    With ``same_scale`` every panel is drawn at the same size per tap, centred in a box as large as the
    largest kernel, so a 3x3 kernel padded to 5x5 looks like what it is; without it each kernel fills its
    panel (for kernels shown beside much larger matrices). Each panel has its own symmetric colour scale
    (blue negative, red positive, white zero). With no ``after`` panels there is no arrow.
    """
    panels = [*before, None, *after] if after else list(before)
    kernels = [kernel.detach().double().cpu() for _, kernel in [*before, *after]]
    for (label, _), kernel in zip([*before, *after], kernels, strict=True):
        if kernel.dim() != 2:
            raise ValueError(f"{label}: expected a 2-D kernel [h, w], got shape {list(kernel.shape)}")
    box = max(k.shape[0] for k in kernels), max(k.shape[1] for k in kernels)
    ratios = [0.3 if panel is None else 1.0 for panel in panels]
    fig = Figure(figsize=(1.5 * sum(ratios), 2.1), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw=dict(width_ratios=ratios))[0]
    kernels_left = iter(kernels)
    for ax, panel in zip(axes, panels, strict=True):
        if panel is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "→", ha="center", va="center", fontsize=16, transform=ax.transAxes)
        else:
            kernel = next(kernels_left)
            _draw_kernel(ax, panel[0], kernel, box if same_scale else tuple(kernel.shape))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_and_show(fig: Figure, stem: str | os.PathLike) -> Image:
    """Save ``fig`` as ``stem.png`` (byte-reproducible) and return that PNG for display in a notebook."""
    from IPython.display import Image

    (png,) = save_figure(fig, stem, formats=("png",))
    return Image(filename=png, retina=True)  # retina: shown at half its pixel size, sharp on any screen


def _draw_kernel(ax: Axes, label: str, kernel: Tensor, box: tuple[int, int]) -> None:
    (h, w), (box_h, box_w) = kernel.shape, box
    scale = kernel.abs().max().item() or 1.0
    ax.imshow(kernel.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    ax.set_xlim(-0.5 - (box_w - w) / 2, w - 0.5 + (box_w - w) / 2)
    ax.set_ylim(h - 0.5 + (box_h - h) / 2, -0.5 - (box_h - h) / 2)  # rows downwards, as imshow draws them
    ax.set_title(f"{label}\n{h}×{w}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    lines = dict(color="0.75", linewidth=0.5)
    if max(h, w) <= 16:  # tap borders help on small kernels and clutter large ones
        ax.vlines([i - 0.5 for i in range(w + 1)], -0.5, h - 0.5, **lines)
        ax.hlines([i - 0.5 for i in range(h + 1)], -0.5, w - 0.5, **lines)
    else:
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, **lines))


def timed_block(model: nn.Module) -> str:
    """Dotted name of the first residual block of stage 2 (the longest stage of every registered variant)."""
    for name, module in model.named_modules():
        if isinstance(module, (MetaNeXtBlock, RepUBlock)) and name.startswith("stages.2."):
            return name
    raise ValueError(f"{type(model).__name__} has no MetaNeXt or RepNeXt-u block in stages.2")


def _input_of(model: nn.Module, name: str, x: Tensor) -> Tensor:
    captured = []
    hook = model.get_submodule(name).register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return captured[0]


@torch.inference_mode()
def latency_table(models: Sequence[str], image_size: int, repeats: int, batch_size: int = 1,
                  seed: int = 0) -> Table:  # fmt: skip
    """Median forward time (ms) of the training and fused forms: whole model, and its :func:`timed_block`.

    Models get random weights and BatchNorm statistics (float32, eval); ``speedup`` is training time over
    fused time. A time measurement: it varies from run to run and machine to machine.

    Columns: ``target, kind, input, threads, repeats, train_ms, fused_ms, speedup``.
    """
    rows = []
    for name in models:
        torch.manual_seed(seed)
        model = randomize_batchnorm(create_model(name), seed=seed).eval()
        fused = reparameterize(model)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        block = timed_block(model)
        block_forms = model.get_submodule(block), fused.get_submodule(block)
        targets = [
            (name, "model", model, fused, x),
            (f"{name}.{block}", "block", *block_forms, _input_of(model, block, x)),
        ]
        for target, kind, train_form, fused_form, inputs in targets:
            calls = {"train": lambda f=train_form, v=inputs: f(v), "fused": lambda f=fused_form, v=inputs: f(v)}
            times = time_interleaved(calls, rounds=repeats, warmup=1)  # the bench protocol
            train_ms, fused_ms = (statistics.median(times[form]) * 1e3 for form in ("train", "fused"))
            rows.append(dict(
                target=target, kind=kind, input="x".join(map(str, inputs.shape)), threads=torch.get_num_threads(),
                repeats=repeats, train_ms=train_ms, fused_ms=fused_ms, speedup=train_ms / fused_ms,
            ))  # fmt: skip
    columns = ["target", "kind", "input", "threads", "repeats", "train_ms", "fused_ms", "speedup"]
    return Table(columns, rows, floats=dict(train_ms=".3f", fused_ms=".3f", speedup=".2f"), sort_by=("target",))


def latency_figure(table: Table) -> Figure:
    """Horizontal bars of the speed-up (training time over fused time) per target of :func:`latency_table`."""
    rows = table.sorted_rows()
    fig = Figure(figsize=(6, 0.45 * len(rows) + 1))
    ax = fig.subplots()
    ax.barh([row["target"] for row in rows], [row["speedup"] for row in rows], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of the fused form (training ms / fused ms)")
    return fig
