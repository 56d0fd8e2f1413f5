"""Byte-reproducible matplotlib figures that read at a glance.

Figures are saved with a fixed style, no dates or software tags, atomically; before saving, :func:`check_figure`
looks for what makes a figure hard to read (overlapping texts, texts under 7 pt, markers missing from every legend,
axes far wider than their data), and :func:`save_figure` refuses a figure that has any of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.text import Text

from .io import atomic_path

# Metadata keys each backend would otherwise stamp with a version or a date.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}

MIN_FONT_PT = 7.0
# A curve's data should span at least this share of its axes' view (log axes measured in decades).
MIN_DATA_SPAN = 0.4
# Set to "warn" to save a figure that fails its checks, with a warning, instead of refusing it.
CHECK_ENV = "REPNEXT_FIGURE_CHECK"

STYLE = {
    "svg.hashsalt": "repnext",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


class FigureCheckError(ValueError):
    """A figure that would not read at a glance; the message names the figure and each problem."""


def use_style() -> None:
    """Apply the project style (call once per notebook, before plotting)."""
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    mpl.rcParams.update(STYLE)
    _bundled_fonts_only()


def _bundled_fonts_only() -> None:
    """Let matplotlib choose among the fonts it ships only. It breaks ties between equal fonts by the order it found
    them in, which follows the file system: a system copy of DejaVu Sans found first embeds other font bytes in
    every PDF of another machine, while the PNGs, drawn from the same outlines, stay the same."""
    from matplotlib import font_manager

    shipped = Path(mpl.get_data_path(), "fonts")
    manager = font_manager.fontManager
    kept = [font for font in manager.ttflist if Path(font.fname).is_relative_to(shipped)]
    if len(kept) != len(manager.ttflist):
        manager.ttflist = kept
        manager._findfont_cached.cache_clear()


@contextlib.contextmanager
def _recording_texts() -> Iterator[list[Text]]:
    """Collect every text artist that a draw really renders (tick labels outside the view are not drawn)."""
    drawn: list[Text] = []
    original = Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = draw
    try:
        yield drawn
    finally:
        Text.draw = original


def _corners(text: Text, renderer) -> np.ndarray:
    """The four corners (points, shape ``[4, 2]``) of ``text``'s rotated box, in display points."""
    box = Text.get_window_extent(text, renderer)  # an annotation's own extent would include its arrow
    angle = np.deg2rad(text.get_rotation())
    cos, sin = abs(np.cos(angle)), abs(np.sin(angle))
    # The axis-aligned box of a w x h rectangle turned by angle is (w cos + h sin) x (w sin + h cos): solve for w, h.
    det = cos * cos - sin * sin
    if abs(det) < 1e-3:  # near 45 degrees the system is singular; the box is then close to square
        width = height = max(box.width, box.height) / (cos + sin)
    else:
        width = (box.width * cos - box.height * sin) / det
        height = (box.height * cos - box.width * sin) / det
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [max(width, 0.0) / 2, max(height, 0.0) / 2]
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([box.x0 + box.width / 2, box.y0 + box.height / 2])
    return half @ turn.T + centre


def _rectangles_overlap(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Separating-axis test of two convex quadrilaterals; they must interpenetrate by more than ``tolerance``."""
    for quad in (a, b):
        for i in range(4):
            edge = quad[(i + 1) % 4] - quad[i]
            axis = np.array([-edge[1], edge[0]])
            norm = np.hypot(*axis)
            if norm == 0:
                continue
            pa, pb = a @ axis / norm, b @ axis / norm
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance:
                return False
    return True


def _marker_key(marker, filled: bool) -> tuple:
    """A colour-free identity of a marker style: its outline, scaled to unit size, and whether it is filled."""
    style = marker if isinstance(marker, MarkerStyle) else MarkerStyle(marker)
    vertices = style.get_path().transformed(style.get_transform()).vertices
    return _path_key(vertices, filled)


def _path_key(vertices: np.ndarray, filled: bool) -> tuple:
    scale = np.abs(vertices).max() or 1.0
    return tuple(np.round(vertices / scale, 2).ravel().tolist()), filled


def _is_filled(facecolors: np.ndarray) -> bool:
    colours = np.atleast_2d(facecolors)
    return colours.size > 0 and bool((colours[:, 3] > 0).any())


def _marker_styles(artists: Sequence) -> dict[tuple, str]:
    """Marker styles of line and scatter artists, each with a description for messages."""
    styles = {}
    for artist in artists:
        if isinstance(artist, Line2D) and artist.get_marker() not in (None, "", " ", "None", "none"):
            face = artist.get_markerfacecolor()
            filled = artist.get_fillstyle() != "none" and not (isinstance(face, str) and face.lower() == "none")
            key, description = _marker_key(artist.get_marker(), filled), f"marker {artist.get_marker()!r}"
        elif isinstance(artist, PathCollection) and artist.get_paths():
            filled = _is_filled(artist.get_facecolors())
            key, description = _path_key(artist.get_paths()[0].vertices, filled), "scatter marker"
        else:
            continue
        styles[key] = f"{description} ({'filled' if filled else 'open'})"
    return styles


def _data_span(values: np.ndarray, low: float, high: float, log: bool) -> float:
    """Share of the view ``[low, high]`` covered by the finite ``values`` inside it (in decades on a log axis)."""
    values = values[np.isfinite(values)]
    if log:
        values, low, high = np.log10(values[values > 0]), np.log10(max(low, 1e-300)), np.log10(max(high, 1e-300))
    values = values[(values >= min(low, high)) & (values <= max(low, high))]
    if values.size < 2 or high == low:
        return 1.0
    return float((values.max() - values.min()) / abs(high - low))


def _axes_problems(ax: Axes, legend_styles: set[tuple]) -> list[str]:
    problems = []
    data = [a for a in ax.lines + ax.collections if a.get_visible() and a.get_label() != "_nolegend_"]
    for key, description in _marker_styles(data).items():
        if key not in legend_styles:
            problems.append(f"{description} in axes {ax.get_title()!r} is in no legend")
    curves = [line for line in ax.lines if line.get_visible() and line.get_transform() == ax.transData]
    curves = [line.get_xydata() for line in curves if len(line.get_xydata()) > 2]  # numbers, categories converted
    if curves:
        x_low, x_high = sorted(ax.get_xlim())
        ys = [xy[(xy[:, 0] >= x_low) & (xy[:, 0] <= x_high), 1] for xy in curves]
        span = _data_span(np.concatenate(ys), *ax.get_ylim(), ax.get_yscale() == "log")
        if span < MIN_DATA_SPAN:
            problems.append(f"axes {ax.get_title()!r}: the curves span only {span:.0%} of the y-axis")
    return problems


def check_figure(fig: Figure) -> list[str]:
    """What would make ``fig`` hard to read, one line each (empty when it reads at a glance).

    Checked at the size the figure is saved: texts that overlap (rotated boxes, more than 0.5 pt), texts under
    :data:`MIN_FONT_PT`, a marker style (shape, filled or open) that no legend of the figure shows, and an axes
    whose curves span under :data:`MIN_DATA_SPAN` of its y-range.
    """
    renderer = RendererAgg(*fig.bbox.size, fig.dpi)
    with _recording_texts() as texts:
        fig.draw(renderer)
    to_points = 72.0 / fig.dpi
    problems = [
        f"text {t.get_text()!r} is {t.get_fontsize():.1f} pt (at least {MIN_FONT_PT:g} pt)"
        for t in texts
        if t.get_fontsize() < MIN_FONT_PT
    ]
    boxes = [_corners(t, renderer) * to_points for t in texts]
    lows, highs = np.array([b.min(axis=0) for b in boxes]), np.array([b.max(axis=0) for b in boxes])
    for i in range(len(texts)):
        near = np.nonzero(np.all(lows[i + 1 :] < highs[i], axis=1) & np.all(highs[i + 1 :] > lows[i], axis=1))[0]
        for j in near + i + 1:
            if _rectangles_overlap(boxes[i], boxes[j], tolerance=0.5):
                problems.append(f"texts {texts[i].get_text()!r} and {texts[j].get_text()!r} overlap")
    legend_styles = {key for legend in fig.findobj(Legend) for key in _marker_styles(legend.legend_handles)}
    for ax in fig.axes:
        if ax.get_visible():
            problems += _axes_problems(ax, legend_styles)
    return problems


def merge_labels(labels: Sequence[str]) -> str:
    """One label for points that coincide: ``u1_tiny, u2_tiny, u3_tiny`` -> ``u1-u3_tiny``; ``m0, a0`` -> ``m0/a0``."""
    labels = list(dict.fromkeys(labels))
    if len(labels) == 1:
        return labels[0]
    tokens = [label.split("_") for label in labels]
    common = 0
    while common < min(map(len, tokens)) - 1 and len({t[-1 - common] for t in tokens}) == 1:
        common += 1
    heads = ["_".join(t[: len(t) - common]) for t in tokens]
    tail = "_".join(tokens[0][len(tokens[0]) - common :])
    numbered = [re.fullmatch(r"(\D*)(\d+)", head) for head in heads]
    if len(heads) > 2 and all(numbered) and len({m.group(1) for m in numbered}) == 1:
        numbers = sorted(int(m.group(2)) for m in numbered)
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            heads = [f"{numbered[0].group(1)}{numbers[0]}-{numbered[0].group(1)}{numbers[-1]}"]
    return "/".join(heads) + (f"_{tail}" if tail else "")


# Label positions tried in turn: offset (points), horizontal and vertical alignment; the far ones get a leader line.
_NEAR = [
    (5, 0, "left", "center"), (-5, 0, "right", "center"), (0, 5, "center", "bottom"), (0, -5, "center", "top"),
    (4, 4, "left", "bottom"), (-4, 4, "right", "bottom"), (4, -4, "left", "top"), (-4, -4, "right", "top"),
]  # fmt: skip
_FAR = [(dx * 3, dy * 3, ha, va) for dx, dy, ha, va in _NEAR]


def _data_points(ax: Axes) -> np.ndarray:
    """Display positions (pixels, shape ``[N, 2]``) of every marker and line vertex drawn in ``ax``."""
    points = [collection.get_offsets() for collection in ax.collections if isinstance(collection, PathCollection)]
    points += [line.get_xydata() for line in ax.lines]
    points = [np.asarray(p, dtype=float).reshape(-1, 2) for p in points if len(p)]
    return ax.transData.transform(np.concatenate(points)) if points else np.zeros((0, 2))


def place_labels(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], colors: Sequence | None = None, **text
) -> list:
    """Annotate each point ``(xs[i], ys[i])`` with ``labels[i]`` where it overlaps no other label and no marker.

    Coinciding points get one label (:func:`merge_labels`). Each label takes the first free position of eight
    around its point, then of eight farther ones with a leader line; the axes' limits are frozen first, so place
    labels after plotting every point. ``text`` goes to ``ax.annotate`` (default 7 pt).
    """
    fig = ax.get_figure()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = RendererAgg(*fig.bbox.size, fig.dpi)
    fig.draw(renderer)  # runs the layout engine, so the transforms below are the saved ones
    text = {"fontsize": MIN_FONT_PT, **text}
    groups: dict[tuple[float, float], list[int]] = {}
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        groups.setdefault((float(np.float32(x)), float(np.float32(y))), []).append(i)
    markers = _data_points(ax)
    radius = 4.0 * fig.dpi / 72  # a default marker's half-width, with a margin
    frame = ax.get_window_extent(renderer)
    legends = [legend.get_window_extent(renderer) for legend in fig.findobj(Legend)]
    placed = [np.array([b.x0, b.y0, b.x1, b.y1]) for b in legends]  # labels keep clear of every legend
    annotations = []
    for (x, y), members in sorted(groups.items(), key=lambda item: (-item[0][1], item[0][0])):
        label = merge_labels([labels[i] for i in members])
        probe = ax.annotate(label, (x, y), **text)
        width, height = probe.get_window_extent(renderer).size
        probe.remove()
        anchor = ax.transData.transform((x, y))
        best = None
        for dx, dy, ha, va in _NEAR + _FAR:
            left = anchor[0] + dx * fig.dpi / 72 - {"left": 0, "center": width / 2, "right": width}[ha]
            bottom = anchor[1] + dy * fig.dpi / 72 - {"bottom": 0, "center": height / 2, "top": height}[va]
            box = np.array([left, bottom, left + width, bottom + height])
            hits = sum(_boxes_touch(box, other) for other in placed)
            hits += int(np.sum(np.all((markers > box[:2] - radius) & (markers < box[2:] + radius), axis=1)))
            hits -= int(np.all((anchor > box[:2] - radius) & (anchor < box[2:] + radius)))  # its own marker
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
            score = hits + (0 if inside else 100)
            if best is None or score < best[0]:
                best = (score, box, (dx, dy, ha, va))
            if score == 0:
                break
        _, box, (dx, dy, ha, va) = best
        placed.append(box)
        far = (dx, dy, ha, va) in _FAR
        colour = {"color": colors[members[0]]} if colors is not None else {}
        arrow = {"arrowprops": {"arrowstyle": "-", "linewidth": 0.5, "color": "#555555"}} if far else {}
        offset = {"xytext": (dx, dy), "textcoords": "offset points", "ha": ha, "va": va}
        annotations.append(ax.annotate(label, (x, y), **offset, **colour, **arrow, **text))
    return annotations


def _boxes_touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def save_figure(fig: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``; returns the written paths.

    :class:`FigureCheckError` (nothing written) if :func:`check_figure` finds a problem, unless the environment
    sets ``REPNEXT_FIGURE_CHECK=warn``.
    """
    use_style()
    for fmt in formats:
        if fmt not in _METADATA:
            raise ValueError(f"unsupported figure format {fmt!r}; choose from {', '.join(_METADATA)}")
    problems = check_figure(fig)
    if problems:
        message = f"{Path(path).with_suffix(f'.{formats[0]}')}: {problems[0]}" + (
            f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        )
        if os.environ.get(CHECK_ENV) != "warn":
            raise FigureCheckError(message)
        warnings.warn(message, stacklevel=2)
    written = []
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight")
        written.append(target)
    return written
