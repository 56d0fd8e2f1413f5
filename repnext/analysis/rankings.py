"""Do the papers' mobile latency rankings hold on this machine? Published iPhone latencies against the latency
measured here, backend by backend: Spearman rank correlation per family and per phone, and the pairs of models
whose order flips.

The RepNeXt paper times itself and its peers on an iPhone 12, the RecNeXt paper its variants on an iPhone 13;
models are only ranked against others timed on the same phone. Everything here is derived from time measurements,
so the files it feeds are named ``latency_*``.
"""

from __future__ import annotations

import itertools

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..tables import Table
from .accuracy_latency import STYLE, published_accuracy_latency, published_recnext

RANK_COLUMNS = ("phone", "group", "backend", "models", "spearman", "flipped_pairs", "pairs")
FLIP_COLUMNS = ("phone", "backend", "faster_on_phone", "slower_on_phone", "phone_ms", "measured_ms")
MIN_MODELS = 3  # fewer models rank nothing worth a coefficient


def published_mobile_latency() -> pd.DataFrame:
    """One published latency per timm model: ``model, family, phone, phone_ms``.

    A model published with and without distillation (two heads or one) keeps its smaller latency; the phone is
    the device without its iOS version, as the two RecNeXt tables name it both ways.
    """
    peers = published_accuracy_latency().dropna(subset=["timm_model"])
    frame = pd.concat([peers.assign(model=peers.timm_model), published_recnext()], ignore_index=True)
    frame = frame.assign(phone=frame.device.str.split(" (", regex=False).str[0])
    frame = frame.sort_values(["model", "latency_ms"]).drop_duplicates("model")
    return frame.rename(columns={"latency_ms": "phone_ms"})[["model", "family", "phone", "phone_ms"]]


def _measured(runs: pd.DataFrame) -> pd.DataFrame:
    """Fused-form medians that passed verification, ``model, backend, measured_ms``."""
    fused = runs[(runs.form == "fused") & (runs.status == "ok")]
    return fused.rename(columns={"median_ms": "measured_ms"})[["model", "backend", "measured_ms"]]


def _flips(group: pd.DataFrame) -> list[dict]:
    """Pairs ordered one way by the phone and the other way here (ties on either side order nothing)."""
    flips = []
    for a, b in itertools.combinations(group.sort_values(["phone_ms", "model"]).itertuples(), 2):
        if a.phone_ms < b.phone_ms and a.measured_ms > b.measured_ms:
            flips.append(dict(faster_on_phone=a.model, slower_on_phone=b.model,
                              phone_ms=f"{a.phone_ms:g} < {b.phone_ms:g}",
                              measured_ms=f"{a.measured_ms:.2f} > {b.measured_ms:.2f}"))  # fmt: skip
    return flips


def latency_rankings(runs: pd.DataFrame) -> tuple[Table, Table]:
    """Rank agreement between published phone latency and the fused latency of ``runs`` (the latency stage's long
    table: ``model, form, backend, median_ms, status``) per phone and backend, over all models of the phone
    (``group`` = ``all``) and per family with at least :data:`MIN_MODELS` models.

    Returns the correlation table (``spearman`` in [-1, 1]; ``flipped_pairs`` of ``pairs`` ordered pairs) and the
    flipped pairs over all models, one row each.
    """
    joined = published_mobile_latency().merge(_measured(runs), on="model")
    ranks, flips = [], []
    for (phone, backend), frame in joined.groupby(["phone", "backend"], sort=True):
        groups = [("all", frame)] + [(f, g) for f, g in frame.groupby("family", sort=True) if len(g) >= MIN_MODELS]
        for name, group in groups:
            if len(group) < MIN_MODELS:
                continue
            pairs = sum(a != b for a, b in itertools.combinations(group.phone_ms, 2))
            flipped = _flips(group)
            ranks.append(dict(phone=phone, group=name, backend=backend, models=len(group),
                              spearman=group.phone_ms.corr(group.measured_ms, method="spearman"),
                              flipped_pairs=len(flipped), pairs=pairs))  # fmt: skip
            if name == "all":
                flips += [dict(phone=phone, backend=backend, **flip) for flip in flipped]
    rank_table = Table(RANK_COLUMNS, ranks, dict(spearman=".3f"), sort_by=("phone", "backend", "group"))
    return rank_table, Table(FLIP_COLUMNS, flips, sort_by=("phone", "backend", "faster_on_phone", "slower_on_phone"))


def plot_rankings(runs: pd.DataFrame, rankings: pd.DataFrame, machine: str) -> Figure:
    """Published phone latency (x) against the fused latency measured here (y), one panel per backend, log axes;
    each panel's title gives Spearman's coefficient over all models of each phone."""
    joined = published_mobile_latency().merge(_measured(runs), on="model")
    backends = sorted(joined.backend.unique())
    fig = Figure(figsize=(4.2 * len(backends), 4.4), layout="constrained")
    axes = fig.subplots(1, len(backends), squeeze=False)[0]
    for ax, backend in zip(axes, backends, strict=True):
        part = joined[joined.backend == backend]
        for (phone, family), group in part.groupby(["phone", "family"], sort=True):
            colour, marker = STYLE.get(family, ("#7f7f7f", "o"))
            ax.scatter(group.phone_ms, group.measured_ms, marker=marker, s=26, color=colour,
                       label=f"{family} ({phone})")  # fmt: skip
        overall = rankings[(rankings.backend == backend) & (rankings.group == "all")]
        rho = ", ".join(f"{r.phone} {r.spearman:.2f}" for r in overall.itertuples())
        ax.set(xscale="log", yscale="log", title=f"{backend}: Spearman {rho}", xlabel="published latency (ms)")
        ax.title.set_fontsize(8)
        for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 ticks as plain numbers; unlabelled minor ticks
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
    axes[0].set_ylabel(f"batch-1 fused latency here (ms), {machine}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    return fig
