"""Published numbers against the vendored logs: the agreement rule, every table's counts, and bad input."""

import functools
import shutil
import warnings
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from repnext.analysis import paper_results as pr
from repnext.analysis.logs import LogFormatError, LogWarning
from repnext.analysis.paper_figures import Panel, plot_panels, plot_top1_vs_epochs
from repnext.analysis.stats import published_results
from repnext.analysis.vendored import ManifestError, sha256_file

UPSTREAM = Path(__file__).parents[2] / "logs" / "upstream"


@functools.cache
def upstream():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LogWarning)
        runs = pr.load_upstream(UPSTREAM)
    return runs, pr.compare(runs, pr.published_paper_results())


def test_agreement_rounds_like_the_source_and_names_the_reason():
    assert pr.agreement("43.5", 43.46) == (True, "")
    assert pr.agreement("72.37", 72.368) == (True, "")
    assert pr.agreement("43.2", 43.46, last=43.2) == (
        False,
        "published value is the last evaluation; the best is 43.460",
    )
    assert pr.agreement("41.7", 41.91, at_headline=41.7)[1].startswith("published value is from the evaluation with")
    assert pr.agreement("63.5", 63.449999999999996)[1] == "published value rounds the best (63.450) half up"
    assert pr.agreement("78.8", 78.85000244)[1].startswith("published value truncates the best (78.850")
    assert pr.agreement("40.7", 40.9, others={"a/m3_coco_4073.json": 40.71})[1].endswith("best of m3_coco_4073.json")
    assert pr.agreement("61.1", 61.24, history=[(3, 60.2), (7, 61.12)])[1] == (
        "published value is the evaluation at step 7, not the best (61.240)"
    )
    assert pr.agreement("48.9", 48.81, history=[(12, 48.81)]) == (False, "recovered best differs by -0.090")
    assert pr.agreement("48.9", None) == (False, "metric not in the log")
    assert [pr.decimals(t) for t in ("43.5", "72.37", "80")] == [1, 2, 0]


def test_published_rows_name_their_source_and_agree_with_the_model_stats_csv():
    rows = pr.published_paper_results()
    assert len(rows) == 162 and all(row["source"].startswith("suous/") for row in rows)
    classification = {(r["model"], r["setting"]): r["value"] for r in rows if r["table"] == "classification"}
    assert len(classification) == 48
    for row in published_results():
        if row["form"] == "deploy":
            assert classification[row["model"], "distill"] == row["top1_distill"]
            assert classification[row["model"], "without_distill"] == row["top1"]


def test_every_published_number_is_compared_and_mismatches_keep_a_reason():
    _, comparison = upstream()
    counts = pr.recovered_counts(comparison)
    assert counts["total"] == {"published": 162, "recovered": 147, "explained": 13, "unexplained": 2}
    assert counts["ade20k"]["recovered"] == 9 and counts["compact"]["recovered"] == 24
    misses = {(r["table"], r["model"], r["setting"], r["metric"]) for r in comparison.rows if not r["agrees"]}
    assert ("classification", "repnext_m1", "distill", "top1") in misses
    assert sum(key[0] == "classification" for key in misses) == 1
    headline = [r for r in comparison.rows if r["table"] == "coco" and r["metric"] in ("box_ap", "mask_ap")]
    assert len(headline) == 18 and all(r["agrees"] for r in headline)  # best AP, not the last evaluation
    assert all(r["reason"] for r in comparison.rows if not r["agrees"])
    m4 = next(r for r in comparison.rows if (r["model"], r["metric"]) == ("recnext_m4", "box_ap"))
    assert (m4["published"], round(m4["recovered"], 1), m4["best_at"], round(m4["last"], 1)) == ("43.5", 43.5, 10, 43.2)


def test_tables_from_the_logs():
    runs, comparison = upstream()
    stats = [{"model": "repnext_m1", "form": "deploy", "params_paper_m": "4.8", "macs_g": "0.8"}]
    classification = {row["model"]: row for row in pr.classification_table(comparison, stats).rows}
    assert len(classification) == 24 and classification["repnext_m1"]["params_m"] == 4.8
    assert classification["recnext_m0"]["params_m"] is None
    names = pr.ablation_name_check(list(runs.values()))
    assert len(names.rows) == 25 and sum(row["agrees"] for row in names.rows) == 24
    ablation = {row["variant"]: row for row in pr.recconv_ablation_table(
        [r for k, r in runs.items() if k.startswith("RecNeXt/logs/ablation/")], PARAMS_GROUP_BY).rows}  # fmt: skip
    assert ablation["rec_5x5"]["best_top1 resolution=224"] == pytest.approx(76.034, abs=1e-3)
    assert ablation["rec_5x5"]["best_top1 resolution=384"] == pytest.approx(78.112, abs=1e-3)
    compact = pr.compact_table(runs, comparison)
    assert len(compact.rows) == 32 and sum(row["published"] is not None for row in compact.rows) == 24
    logs = {(row["model"], row["log"]): row for row in pr.downstream_logs(comparison, runs).rows}
    assert logs["repnext_m3", "repnext_m3_coco_4073.json"]["published_log"] is False
    assert (
        logs["repnext_m4", "repnext_m4_coco.json"]["matches"]
        > logs["repnext_m4", "repnext_m4_coco_4266.json"]["matches"]
    )
    assert isinstance(plot_top1_vs_epochs(compact), Figure)
    detection = [r for k, r in runs.items() if "/detection/" in k]
    assert isinstance(plot_panels([Panel("box AP", detection, "bbox_mAP")], ncols=1), Figure)
    with pytest.raises(ValueError, match="panel 'x': no run logs 'mIoU'"):
        plot_panels([Panel("x", detection, "mIoU")])


PARAMS_GROUP_BY = r"(?P<model>recnext_m\d)_(?P<schedule>\d+e)_(?P<resolution>\d+)x\d+_(?P<variant>\w+?)_\d{4}$"


def _vendor(tmp_path, name, data):
    """A one-file vendored folder holding ``data`` as ``RepNeXt/logs/<name>``, its manifest row correct."""
    (tmp_path / "RepNeXt" / "logs").mkdir(parents=True)
    path = tmp_path / "RepNeXt" / "logs" / name
    path.write_bytes(data)
    row = f"suous/RepNeXt\t{'0' * 40}\tlogs/{name}\t{sha256_file(path)}\t{len(data)}"
    (tmp_path / "MANIFEST.tsv").write_text("repository\tcommit\tpath\tsha256\tbytes\n" + row + "\n")
    return path


def test_bad_input_names_the_file(tmp_path):
    source = UPSTREAM / "RepNeXt" / "logs" / "repnext_m0_distill_300e.txt"
    path = _vendor(tmp_path / "ok", "run.txt", source.read_bytes())
    assert list(pr.load_upstream(tmp_path / "ok")) == ["RepNeXt/logs/run.txt"]
    with pytest.raises(
        ValueError, match=r"log .RepNeXt/logs/repnext_m0_distill_300e\.txt. of repnext_m0 is not vendored"
    ):
        pr.compare(pr.load_upstream(tmp_path / "ok"), pr.published_paper_results())
    path.write_bytes(path.read_bytes().replace(b'"epoch": 0', b'"epoch": 9', 1))
    with pytest.raises(ManifestError, match=r"run\.txt: sha256 differs"):
        pr.load_upstream(tmp_path / "ok")
    _vendor(tmp_path / "bad", "notes.txt", b"hello\n")
    with pytest.raises(LogFormatError, match=r"notes\.txt: not a training log in a known format"):
        pr.load_upstream(tmp_path / "bad")
    shutil.rmtree(tmp_path / "bad")
