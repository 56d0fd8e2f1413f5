"""Top-1 accuracy against latency: the papers' figures from published numbers, and the same
accuracies against latency measured on this machine.

Published numbers live in two CSVs shipped with the package, each row naming its source:
``published_accuracy_latency.csv`` (the RepNeXt paper's comparison with its peers, iPhone 12) and
``published_results.csv`` (RepNeXt and RecNeXt tables). Measured latencies come from the
``latency`` stage's table (see :mod:`repnext.analysis.latency`).
"""

from __future__ import annotations

import io
from importlib import resources

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter

from ..plotting import place_labels
from ..tables import Table
from .latency.bench import NOTHING_TO_FUSE
from .stats import published_results

SUMMARY_COLUMNS = (
    "model", "family", "unfused_ms", "fused_ms", "fused_speedup", "fastest_backend", "fastest_ms", "macs_g",
    "gmacs_per_s", "peak_fraction", "bound_ms", "bound_fraction", "fastest_iqr_ms", "threads", "peak_gmacs",
)  # fmt: skip
MEASURED_COLUMNS = ("model", "family", "distillation", "top1", "latency_ms", "backend", "source")

STYLE = {  # family -> (colour, marker); ours drawn last and on top
    "MobileViG": ("#0c5da5", "*"), "FastViT": ("#00b945", "p"), "EfficientFormerV2": ("#5580b0", "H"),
    "EfficientFormer": ("#17becf", "P"), "SwiftFormer": ("#2ca02c", "X"), "RepViT": ("#377e7f", "o"),
    "MobileOne": ("#bcbd22", "x"), "StarNet": ("#333333", "."), "RecNeXt-M": ("#9467bd", "D"),
    "RecNeXt-A": ("#ff7f0e", "v"), "RecNeXt-TSB": ("#8c564b", "^"), "RecNeXt-TSB shared": ("#e377c2", "<"),
    "RepNeXt": ("#d62728", "s"),
}  # fmt: skip


_OURS = ("RepNeXt", "RecNeXt-M", "RecNeXt-A", "RecNeXt-TSB", "RecNeXt-TSB shared")


def recnext_family(model: str) -> tuple[str, str]:
    """``(family, variant)`` of a RecNeXt model as the figures name them: ``recnext_t_share_channel`` ->
    ``("RecNeXt-TSB shared", "T")``, ``recnext_a4`` -> ``("RecNeXt-A", "A4")``."""
    size = model.removeprefix("recnext_")
    if size[0] in "tsb" and not size[1:2].isdigit():
        return ("RecNeXt-TSB shared" if size.endswith("_share_channel") else "RecNeXt-TSB"), size[0].upper()
    return f"RecNeXt-{size[0].upper()}", size.upper()


def published_accuracy_latency() -> pd.DataFrame:
    """The RepNeXt paper's accuracy-latency comparison: one row per model and distillation setting."""
    text = resources.files("repnext").joinpath("data", "published_accuracy_latency.csv").read_text(encoding="utf-8")
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values={"params_m": "", "macs_g": ""})
    frame["distillation"] = frame["distillation"].astype(str).str.lower().eq("true")
    return frame


def published_recnext() -> pd.DataFrame:
    """RecNeXt rows of ``published_results.csv`` in the same long form (one row per distillation)."""
    rows = []
    for row in published_results():
        if not row["model"].startswith("recnext_"):
            continue
        family, variant = recnext_family(row["model"])
        for distillation, column in ((False, "top1"), (True, "top1_distill")):
            rows.append(dict(model=row["model"], family=family, variant=variant,
                             distillation=distillation, top1=float(row[column]), params_m=float(row["params_m"]),
                             macs_g=float(row["macs_g"]), latency_ms=float(row["latency_ms"]),
                             device=row["latency_device"], timm_model=row["model"], source=row["source"]))  # fmt: skip
    return pd.DataFrame(rows)


def _family(model: str, peers: dict[str, str]) -> str:
    """The family name the figures use: ``RecNeXt-M``, ``RepNeXt``, a peer's published family, or the prefix."""
    if model.startswith("recnext_"):
        return recnext_family(model)[0]
    if model.startswith("repnext_m"):
        return "RepNeXt"
    return peers.get(model, model.split("_")[0])


def _known(value: object) -> object:
    """``value``, or ``None`` where pandas has NaN (no bound: the model could not be captured)."""
    return None if value is None or pd.isna(value) else value


def summarize_latency(runs: pd.DataFrame) -> Table:
    """One row per model from the long latency table: unfused and fused eager latency, the speed-up,
    and the fastest verified fused backend with its IQR and achieved MAC rate (also as a fraction of
    the measured peak GEMM rate), the model's roofline bound and the fastest backend's bound / latency.
    Rows whose ``status`` is not ``ok`` (failed verification) are left out; a
    model with nothing to fuse (its training form not timed, being the fused module) has a speed-up of 1."""
    peers = published_accuracy_latency().set_index("timm_model")["family"].to_dict()
    rows = []
    unchanged = set(runs.model[runs.status.eq(NOTHING_TO_FUSE)]) if "status" in runs else set()
    if "status" in runs:
        runs = runs[runs.status.eq("ok")]
    for model, group in runs.groupby("model", sort=True):
        eager = group[group.backend == "eager"].set_index("form")["median_ms"]
        fused = group[group.form == "fused"].sort_values(["median_ms", "backend"])
        best = fused.iloc[0] if len(fused) else None
        both = {"unfused", "fused"} <= set(eager.index)
        rows.append(dict(
            model=model, family=_family(model, peers), unfused_ms=eager.get("unfused"), fused_ms=eager.get("fused"),
            fused_speedup=eager["unfused"] / eager["fused"] if both else 1.0 if model in unchanged else None,
            fastest_backend=None if best is None else best.backend, fastest_ms=None if best is None else best.median_ms,
            macs_g=group.macs_g.iloc[0], gmacs_per_s=None if best is None else best.gmacs_per_s,
            peak_fraction=None if best is None else best.peak_fraction,
            bound_ms=_known(group.bound_ms.iloc[0]) if "bound_ms" in group else None,
            bound_fraction=None if best is None else _known(best.get("bound_fraction")),
            fastest_iqr_ms=None if best is None else best.iqr_ms, threads=group.threads.iloc[0],
            peak_gmacs=group.peak_gmacs.iloc[0],
        ))  # fmt: skip
    floats = dict(unfused_ms=".2f", fused_ms=".2f", fused_speedup=".2f", fastest_ms=".2f", macs_g=".3f",
                  gmacs_per_s=".2f", peak_fraction=".3f", bound_ms=".2f", bound_fraction=".3f",
                  fastest_iqr_ms=".2f", peak_gmacs=".1f")  # fmt: skip
    return Table(SUMMARY_COLUMNS, rows, floats, sort_by=("family", "macs_g", "model"))


FORMS_COLUMNS = ("model", "runtime", "fused_ms", "fastest_form", "fastest_layout", "fastest_ms", "speedup")
_RUNTIMES = {"eager": ("torch", "NCHW"), "channels_last": ("torch", "NHWC")}  # other backends: their own, as given


def summarize_forms(runs: pd.DataFrame) -> Table:
    """Per model and runtime, the fastest verified inference form: the fused form or RepNeXt's single- or
    two-branch form, and for torch eager the memory layout (``eager`` is NCHW, ``channels_last`` NHWC);
    ``fused_ms`` is the fused form in the runtime's default layout, ``speedup`` its time over the fastest's.
    ONNX Runtime and OpenVINO pick their layouts themselves (``fastest_layout`` empty)."""
    runs = runs[runs.form.isin(["fused", "single_branch", "two_branch"]) & runs.status.eq("ok")]
    runs = runs.assign(runtime=[_RUNTIMES.get(b, (b, ""))[0] for b in runs.backend],
                       layout=[_RUNTIMES.get(b, (b, ""))[1] for b in runs.backend])  # fmt: skip
    rows = []
    for (model, runtime), group in runs.groupby(["model", "runtime"], sort=True):
        default = group[(group.form == "fused") & group.layout.isin(["NCHW", ""])]
        best = group.sort_values(["median_ms", "form", "layout"]).iloc[0]
        fused_ms = default.median_ms.iloc[0] if len(default) else None
        rows.append(dict(model=model, runtime=runtime, fused_ms=fused_ms, fastest_form=best.form,
                         fastest_layout=best.layout, fastest_ms=best.median_ms,
                         speedup=fused_ms / best.median_ms if fused_ms else None))  # fmt: skip
    return Table(FORMS_COLUMNS, rows, dict(fused_ms=".2f", fastest_ms=".2f", speedup=".2f"), ("model", "runtime"))


def measured_accuracy_latency(summary: pd.DataFrame) -> Table:
    """Published top-1 (with and without distillation, where published) against the fastest fused
    latency measured here, for every model of ``summary`` (a :func:`summarize_latency` table)."""
    published = pd.concat([published_accuracy_latency(), published_recnext()], ignore_index=True)
    ours = {r["model"]: r for r in published_results() if r["form"] == "deploy"}
    rows = []
    for record in summary.itertuples():
        matches = published[published.timm_model == record.model]
        if record.model in ours and record.model.startswith("repnext_m"):
            row = ours[record.model]
            matches = pd.DataFrame([dict(distillation=d, top1=float(row[c]), source=row["source"])
                                    for d, c in ((False, "top1"), (True, "top1_distill"))])  # fmt: skip
        for match in matches.itertuples():
            rows.append(dict(model=record.model, family=record.family, distillation=bool(match.distillation),
                             top1=float(match.top1), latency_ms=record.fastest_ms, backend=record.fastest_backend,
                             source=match.source))  # fmt: skip
    return Table(
        MEASURED_COLUMNS, rows, dict(top1=".1f", latency_ms=".2f"), sort_by=("family", "model", "distillation")
    )


def _draw(ax, frame: pd.DataFrame, x: str, label_points: bool) -> tuple[list, list, list, list]:
    """One line per family and distillation setting: solid with distillation, dashed without.

    Returns the points to label (x, y, label, colour), for :func:`place_labels` once the axes are final.
    """
    points: tuple[list, list, list, list] = ([], [], [], [])
    families = sorted(frame.family.unique(), key=lambda f: (f in _OURS, f))
    for family in families:
        colour, marker = STYLE.get(family, ("#7f7f7f", "o"))
        label = family  # one legend entry per family, on its first line
        for distillation, dashes in ((True, "-"), (False, "--")):
            part = frame[(frame.family == family) & (frame.distillation == distillation)].sort_values(x)
            if part.empty:
                continue
            ax.plot(part[x], part.top1, dashes, marker=marker, color=colour, markersize=5, linewidth=1.2,
                    label=label, alpha=1.0 if distillation else 0.75)  # fmt: skip
            label = None
            if label_points and distillation and family in _OURS:  # peers stay unlabelled: legible in print
                for point in part.itertuples():
                    spec = (getattr(point, x), point.top1, point.variant, colour)
                    for values, value in zip(points, spec, strict=True):
                        values.append(value)
    ax.set_ylabel("ImageNet-1K top-1 (%)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    styles = [Line2D([0], [0], color="#212121", linestyle=s) for s in ("-", "--")]
    first = ax.legend(list(unique.values()), list(unique), loc="lower right", fontsize=7, ncols=2)
    ax.add_artist(first)
    ax.legend(styles, ["with distillation", "without distillation"], loc="upper left", fontsize=7)
    return points


def plot_published(peers: pd.DataFrame, recnext: pd.DataFrame) -> Figure:
    """The papers' top-1 vs latency figures from published numbers: RepNeXt and peers on iPhone 12
    (left), RecNeXt M and A on iPhone 13 (right)."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    _draw(left, peers, "latency_ms", label_points=False)
    left.set_xlabel(f"latency (ms), {peers.device.iloc[0]}")
    left.set_title("RepNeXt and peers (published)")
    labels = _draw(right, recnext, "latency_ms", label_points=True)
    right.set_xlabel(f"latency (ms), {recnext.device.iloc[0]}")
    right.set_title("RecNeXt (published)")
    place_labels(right, *labels[:3], colors=labels[3])
    return fig


def plot_measured(measured: pd.DataFrame, device: str) -> Figure:
    """Published top-1 against the fastest fused latency measured here (``device`` names the machine)."""
    frame = measured.rename(columns={"latency_ms": "latency"}).assign(
        variant=lambda f: f.model.str.replace(r"^[a-z0-9]+_", "", regex=True)
    )
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    labels = _draw(ax, frame, "latency", label_points=True)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"batch-1 latency (ms, log scale), fastest fused backend, {device}")
    ax.set_title("Published top-1 against latency measured here")
    place_labels(ax, *labels[:3], colors=labels[3])
    return fig


def plot_latency_summary(summary: pd.DataFrame, peak_gmacs: float, machine: str) -> Figure:
    """Per model: eager latency of both forms and the fastest fused backend (left), and how close the fastest
    backend runs to the model's roofline bound on this machine, bound / latency (right; 1 is at the limit)."""
    frame = summary.sort_values(["family", "macs_g", "model"], ascending=False).reset_index(drop=True)
    fig = Figure(figsize=(10, 0.22 * len(frame) + 1.6))
    left, right = fig.subplots(1, 2, sharey=True)
    y = range(len(frame))
    for offset, column, colour, label in ((-0.27, "unfused_ms", "#bbbbbb", "training form, eager"),
                                          (0.0, "fused_ms", "#d62728", "fused, eager"),
                                          (0.27, "fastest_ms", "#1f77b4", "fused, fastest backend")):  # fmt: skip
        left.barh([i + offset for i in y], frame[column], height=0.27, color=colour, label=label)
    left.set_yticks(list(y), frame.model, fontsize=7)
    left.set_xscale("log")
    left.set_xlabel("batch-1 latency (ms, log scale)")
    left.legend(fontsize=7, loc="lower right")
    right.barh(list(y), frame.bound_fraction, color="#1f77b4")
    right.axvline(0.8, color="#333333", linestyle="--", linewidth=1, label="target 0.8")
    right.axvline(1.0, color="#999999", linestyle=":", linewidth=1, label="at the bound")
    right.set_xlabel(f"roofline bound / latency, fastest backend (GEMM peak {peak_gmacs:.1f} GMAC/s)")
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Measured on {machine} (time measurement: differs between runs)", fontsize=9)
    fig.tight_layout()
    return fig
