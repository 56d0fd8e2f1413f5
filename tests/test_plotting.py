"""Figures that read at a glance: the checks find each fault they name, and label placement avoids them."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from repnext.plotting import FigureCheckError, check_figure, merge_labels, place_labels, save_figure, use_style


@pytest.fixture(autouse=True)
def _style():
    use_style()


def _axes(figsize=(4, 3)):
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def test_a_plain_figure_passes():
    fig, ax = _axes()
    ax.plot(np.arange(10), np.arange(10) ** 2, marker="o", label="squares")
    ax.set(title="squares", xlabel="n", ylabel="n^2")
    ax.legend()
    assert check_figure(fig) == []


def test_overlapping_texts_are_found():
    fig, ax = _axes()
    ax.plot([0, 1], [0, 1])
    ax.text(0.5, 0.5, "first label")
    ax.text(0.52, 0.5, "second label")
    assert check_figure(fig) == ["texts 'first label' and 'second label' overlap"]


def test_rotated_texts_that_only_share_a_bounding_box_do_not_overlap():
    fig, ax = _axes((3, 3))
    ax.plot([0, 1], [0, 1])
    ax.text(0.1, 0.1, "a long rotated label", rotation=45)
    ax.text(0.6, 0.1, "b long rotated label", rotation=45)
    assert check_figure(fig) == []
    ax.text(0.15, 0.1, "c long rotated label", rotation=45)
    assert any("overlap" in problem for problem in check_figure(fig))


def test_small_text_is_found():
    fig, ax = _axes()
    ax.plot([0, 1], [0, 1])
    ax.set_title("tiny", fontsize=5)
    assert check_figure(fig) == ["text 'tiny' is 5.0 pt (at least 7 pt)"]


def test_a_marker_style_missing_from_every_legend_is_found():
    fig, ax = _axes()
    ax.scatter([1, 2], [1, 2], marker="o", label="filled")
    ax.scatter([1.5], [1.2], marker="o", facecolors="none", edgecolors="black")
    ax.legend()
    assert check_figure(fig) == ["scatter marker (open) in axes '' is in no legend"]
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="black", label="open")
    ax.legend()
    assert check_figure(fig) == []


def test_curves_squashed_into_a_corner_of_their_axes_are_found():
    fig, ax = _axes()
    ax.plot(np.arange(50), 70 + np.linspace(0, 5, 50), label="top-1")
    ax.set_ylim(0, 100)
    assert check_figure(fig) == ["axes '': the curves span only 5% of the y-axis"]
    ax.set_ylim(69, 76)
    assert check_figure(fig) == []


def test_save_figure_refuses_a_failing_figure_and_writes_nothing(tmp_path, monkeypatch):
    fig, ax = _axes()
    ax.plot([0, 1], [0, 1])
    ax.set_title("tiny", fontsize=5)
    with pytest.raises(FigureCheckError, match=r"fig\.png: text 'tiny' is 5\.0 pt"):
        save_figure(fig, tmp_path / "fig")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("REPNEXT_FIGURE_CHECK", "warn")
    with pytest.warns(UserWarning, match="tiny"):
        written = save_figure(fig, tmp_path / "fig")
    assert [p.name for p in written] == ["fig.png", "fig.pdf"]


@pytest.mark.parametrize(
    ("labels", "merged"),
    [
        (["u1_tiny", "u2_tiny", "u3_tiny"], "u1-u3_tiny"),
        (["u2_base", "u3_base"], "u2/u3_base"),
        (["m0", "a0"], "m0/a0"),
        (["m1", "m1"], "m1"),
        (["u1_small", "u3_small", "u4_small"], "u1/u3/u4_small"),
    ],
)
def test_coinciding_points_get_one_label(labels, merged):
    assert merge_labels(labels) == merged


def test_placed_labels_overlap_nothing_even_in_a_crowd():
    fig, ax = _axes((5, 4))
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    xs[1], ys[1] = xs[0], ys[0]  # one point twice: one label
    ax.scatter(xs, ys, label="points")
    ax.legend(loc="upper left")
    labels = [f"p{i}" for i in range(30)]
    annotations = place_labels(ax, xs, ys, labels)
    assert len(annotations) == 29
    assert "p0/p1" in [a.get_text() for a in annotations]
    assert check_figure(fig) == []


def test_a_pdf_embeds_matplotlibs_own_font_whatever_the_system_lists_first(tmp_path):
    """A system copy of DejaVu Sans that the font list holds first (its order follows the file system) would be
    embedded instead of matplotlib's: other PDF bytes on another machine, the same PNG."""
    import matplotlib as mpl
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    def pdf(name: str) -> bytes:
        fig = Figure(figsize=(3, 2))
        fig.add_subplot().plot([0, 1, 2], [1, 3, 2], label="curve")
        fig.axes[0].legend()
        return save_figure(fig, tmp_path / name, ("pdf",))[0].read_bytes()

    shipped = Path(mpl.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    expected = pdf("shipped")
    system = tmp_path / "fonts" / "DejaVuSans.ttf"
    system.parent.mkdir()
    font = TTFont(shipped)
    font["head"].fontRevision += 1  # another revision of the same outlines, as a system's copy may be
    font.save(system)
    manager = font_manager.fontManager
    saved = list(manager.ttflist)
    try:
        manager.addfont(str(system))
        manager.ttflist.insert(0, manager.ttflist.pop())  # found first, as a file system may list it
        manager._findfont_cached.cache_clear()
        assert pdf("system") == expected
        assert font_manager.findfont("DejaVu Sans") == str(shipped)
    finally:
        manager.ttflist = saved
        manager._findfont_cached.cache_clear()
