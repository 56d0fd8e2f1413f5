"""Parameter and MAC counts of the training and fused forms, beside the published numbers.

``params_m`` counts the fully fused model; ``params_paper_m`` counts as the papers' scripts did
(see :func:`standalone_batchnorm_parameters`), and that is the column to compare with the papers.

MACs are counted with fvcore's ``FlopCountAnalysis``, the counter the papers used: fvcore
counts one multiply-add as one "flop", so its total is a MAC count (``FlopCounterMode``
counts two flops per multiply-add). fvcore deliberately skips element-wise ops (activations,
additions, pooling means, channel shuffles); the ops it skipped are reported by name.
"""

from __future__ import annotations

import csv
import os
import warnings
from importlib import resources

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.metanext import Downsample, MetaNeXtBlock
from ..plotting import place_labels
from ..progress import bar
from ..registry import check_model_name, create_model, models_by_family
from ..reparam import has_single_branch_form, reparameterize
from ..tables import Table

FORMS = ("train", "deploy", "single_branch", "two_branch")
_MERGED = ("single_branch", "two_branch")  # RepNeXt only: reparameterize's keyword of the same name
COLUMNS = (
    "model", "family", "form", "resolution", "params_train_m", "params_m", "params_paper_m", "macs_g",
    "published_params_m", "published_macs_g", "uncounted_ops",
)  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def standalone_batchnorm_parameters(model: nn.Module) -> int:
    """Affine parameters of the BatchNorms that upstream's ``replace_batchnorm`` leaves unfused.

    The papers count parameters after upstream's fuse pass, which folds ConvNorm and NormLinear
    but keeps the MetaNeXt ``norm`` layers (after a token mixer, in downsampling). Our fused form
    folds those too, so the papers' count is ours plus these parameters.
    """
    return sum(
        p.numel()
        for module in model.modules() if isinstance(module, (MetaNeXtBlock, Downsample))
        and isinstance(module.norm, _BatchNorm)
        for p in module.norm.parameters()
    )  # fmt: skip


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int | tuple[int, int], in_chans: int = 3) -> tuple[int, list[str]]:
    """fvcore MACs of ``model`` on one ``[1, in_chans, H, W]`` input, and the sorted names of uncounted ops."""
    with warnings.catch_warnings():  # fvcore scripts a loss function at import, which torch now deprecates
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    param = next(model.parameters())
    inputs = torch.zeros(1, in_chans, height, width, dtype=param.dtype, device=param.device)
    analysis = FlopCountAnalysis(model.eval(), inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    total = analysis.total()
    return total, sorted(analysis.unsupported_ops())


def known_macs(table: str | os.PathLike, resolution: int) -> dict[str, float]:
    """fvcore MACs (multiply-adds, not G) of each ``deploy`` row counted at ``resolution`` in a
    :func:`model_stats` CSV, to precision 1e6 (its ``macs_g`` column has three decimals)."""
    with open(table, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return {r["model"]: float(r["macs_g"]) * 1e9 for r in rows if r["form"] == "deploy"
            and int(r["resolution"]) == resolution}  # fmt: skip


_PROBE_SIDE = 64
_PEAK_FACTOR = 3  # a layer's input, its output and one branch temporary are alive at once


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of ``/proc/meminfo``), if known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@torch.no_grad()
def largest_activation_bytes(model: nn.Module, resolution: int | tuple[int, int], in_chans: int = 3) -> int:
    """Bytes of the largest tensor a module of ``model`` outputs on one ``[1, in_chans, H, W]`` input.

    Measured with forward hooks on a ``64 x 64`` probe and scaled by the pixel ratio (activations grow
    with ``H x W``), so nothing of the real size is allocated.
    """
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    param = next(model.parameters())
    sizes = [in_chans * _PROBE_SIDE * _PROBE_SIDE]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    handles = [module.register_forward_hook(record) for module in model.modules()]
    try:
        model.eval()(torch.zeros(1, in_chans, _PROBE_SIDE, _PROBE_SIDE, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    scale = height * width / (_PROBE_SIDE * _PROBE_SIDE)
    return int(max(sizes) * scale * param.element_size())


def check_activation_memory(model: nn.Module, resolution: int | tuple[int, int], where: str = "--resolution") -> None:
    """Raise ``ValueError`` naming ``where`` when one forward pass at ``resolution`` cannot fit in memory.

    The estimate is :data:`_PEAK_FACTOR` times :func:`largest_activation_bytes`, checked before anything
    of that size is allocated.
    """
    available = available_memory()
    if available is None:
        return
    needed = _PEAK_FACTOR * largest_activation_bytes(model, resolution)
    if needed > available:
        size = resolution if isinstance(resolution, int) else "x".join(map(str, resolution))
        raise ValueError(
            f"{where} {size}: one forward pass needs about {needed / 2**30:.1f} GiB of activations "
            f"({_PEAK_FACTOR} x the largest, {needed / _PEAK_FACTOR / 2**30:.1f} GiB), "
            f"more than the {available / 2**30:.1f} GiB of memory available"
        )


def published_results() -> list[dict[str, str]]:
    """Rows of the published-results CSV shipped with the package (each row names its source)."""
    text = resources.files("repnext").joinpath("data", "published_results.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _published(rows: list[dict[str, str]], model: str, form: str, column: str) -> float | None:
    for row in rows:
        if row["model"] == model and row["form"] == form and row[column]:
            return float(row[column])
    return None


def model_stats(
    names: list[str],
    resolution: int = 224,
    forms: tuple[str, ...] = ("deploy", "single_branch"),
    progress: bool = False,
) -> Table:
    """One row per variant and form: parameters (M) of the training form and of ``form``, MACs (G) of ``form``.

    ``single_branch`` and ``two_branch`` rows appear only for families that have such forms (RepNeXt).

    ``form`` is ``train`` (no fusion), ``deploy`` (the papers' inference form), ``single_branch`` or ``two_branch``;
    published values are joined from :func:`published_results` where the source reports that form.
    ``progress`` shows a bar on stderr.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive integer, got {resolution}")
    unknown = [form for form in forms if form not in FORMS]
    if unknown:
        raise ValueError(f"unknown form {unknown[0]!r}; choose from {', '.join(FORMS)}")
    families, published = models_by_family(), published_results()
    rows = []
    for name in bar(names, "stats", progress):
        model = create_model(check_model_name(name)).eval()
        check_activation_memory(model, resolution)
        params_train, standalone = count_parameters(model), standalone_batchnorm_parameters(model)
        for form in (f for f in forms if f not in _MERGED or has_single_branch_form(model)):
            merge = {form: True} if form in _MERGED else {}
            fused = model if form == "train" else reparameterize(model, **merge)
            macs, uncounted = count_macs(fused, resolution)
            params = count_parameters(fused)
            rows.append(dict(
                model=name, family=families[name], form=form, resolution=resolution,
                params_train_m=params_train / 1e6, params_m=params / 1e6, macs_g=macs / 1e9,
                params_paper_m=(params + (standalone if form != "train" else 0)) / 1e6,
                published_params_m=_published(published, name, form, "params_m"),
                published_macs_g=_published(published, name, form, "macs_g"),
                uncounted_ops=" ".join(op.removeprefix("aten::") for op in uncounted),
            ))  # fmt: skip
    floats = dict(
        params_train_m=".3f",
        params_m=".3f",
        params_paper_m=".3f",
        macs_g=".3f",
        published_params_m=".1f",
        published_macs_g=".1f",
    )
    return Table(list(COLUMNS), rows, floats=floats, sort_by=("family", "model", "form"))


# Colour and label prefix per family as readers know them; RecNeXt's M and A series share one registry family.
_FAMILY_STYLE = {
    "repnext": ("RepNeXt", "C2"),
    "recnext_m": ("RecNeXt-M", "C0"),
    "recnext_a": ("RecNeXt-A", "C1"),
    "recnext_tsb": ("RecNeXt T/S/B", "C4"),
    "repnext_u": ("RepNeXt-u", "C3"),
}
_FORM_MARKERS = {"deploy": "o", "single_branch": "s", "two_branch": "D", "train": "^"}


def _display_family(row: dict) -> str:
    return row["model"][:9] if row["family"] == "recnext" else row["family"]


def _point_label(row: dict) -> str:
    label = row["model"].split("_", 1)[1].replace("_share_channel", "-shared")
    return label + ("E" if row["form"] == "single_branch" else "")  # upstream names single-branch RepNeXt "M0E"


def plot_params_vs_macs(table: Table) -> Figure:
    """Parameters against fvcore MACs (log-log) of each fused variant in ``table`` (a :func:`model_stats` table).

    Colour is the family, marker shape the form; an open black marker is the published count of the same form.
    Every point is labelled, coinciding points once.
    """
    rows = table.sorted_rows()
    if not rows:
        raise ValueError("no rows to plot")
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    xs, ys, labels, colours = [], [], [], []
    for row in rows:
        colour = _FAMILY_STYLE.get(_display_family(row), (row["family"], "C7"))[1]
        marker = _FORM_MARKERS[row["form"]]
        ax.scatter(row["macs_g"], row["params_m"], marker=marker, color=colour, s=30, zorder=2)
        if row["published_macs_g"] is not None:
            ax.scatter(row["published_macs_g"], row["published_params_m"], marker=marker, facecolors="none",
                       edgecolors="black", linewidths=0.8, s=30, zorder=3)  # fmt: skip
        xs.append(row["macs_g"])
        ys.append(row["params_m"])
        labels.append(_point_label(row))
        colours.append(colour)
    ax.set(xlabel=f"MACs (G, fvcore) at {rows[0]['resolution']}x{rows[0]['resolution']}", ylabel="parameters (M)")
    ax.set(xscale="log", yscale="log")
    ax.margins(0.08)
    shown = {_display_family(r) for r in rows}
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=n) for f, (n, c) in _FAMILY_STYLE.items()
               if f in shown]  # fmt: skip
    forms = dict.fromkeys(r["form"] for r in rows)
    handles += [Line2D([], [], marker=_FORM_MARKERS[f], linestyle="", color="#555555", label=f"fused: {f}")
                for f in forms]  # fmt: skip
    handles += [Line2D([], [], marker=_FORM_MARKERS[f], linestyle="", markerfacecolor="none", markeredgecolor="black",
                       label=f"published ({f})") for f in forms if any(r["published_macs_g"] for r in rows
                                                                       if r["form"] == f)]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: labels need the room
    place_labels(ax, xs, ys, labels, colors=colours)
    return fig
