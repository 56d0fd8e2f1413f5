"""Training-log parsers, tables and curves on small hand-written logs of every format and defect."""

import json
import math
import re
import warnings
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from repnext.analysis.logs import (
    LogFormatError,
    LogWarning,
    compile_group_by,
    curves,
    downstream_metrics,
    find_logs,
    layout,
    plot_curves,
    read_log,
    read_logs,
    run_name,
    summarize,
)

ROOT = Path(__file__).parents[2]
GROUP_BY = r"(?P<model>[a-z]+_[a-z]*\d+)_(?P<schedule>\d+e)_(?P<resolution>\d+)x\d+_(?P<variant>\w+?)(?:_\d{4})?$"
DEIT_KEYS = ("train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch", "n_parameters")


def deit_line(epoch: int, top1: float, /, **changes) -> str:
    record = dict(zip(DEIT_KEYS, (1e-3, 5.0 - epoch / 10, 4.0 - epoch / 10, top1, top1 + 20, epoch, 1234), strict=True))
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if v is not None})


def write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end)
    return path


def parse(path: Path) -> tuple:
    """``read_log(path)`` and the messages of the LogWarnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = read_log(path)
    assert all(issubclass(w.category, LogWarning) for w in caught), [str(w.message) for w in caught]
    assert [str(w.message) for w in caught] == run.warnings
    return run, run.warnings


def row_of(table, run: str) -> dict:
    (row,) = [row for row in table.rows if row["run"] == run]
    return row


def test_deit_log_best_top1_is_the_maximum_over_epochs_unrounded(tmp_path):
    top1 = [10.0, 30.123456, 29.5, 30.12]
    path = write(tmp_path / "recnext_m1_120e_224x224_rec_5x5_7603.txt", [deit_line(e, t) for e, t in enumerate(top1)])
    run, messages = parse(path)
    assert (run.name, run.format, run.step, messages) == ("recnext_m1_120e_224x224_rec_5x5_7603", "deit", "epoch", [])
    assert list(run.records.columns) == ["lr", "train_loss", "eval_loss", "top1", "top5", "epoch", "n_parameters"]
    row = summarize([run]).rows[0]
    assert row["best_top1"] == 30.123456 and row["best_epoch"] == 1 and row["last_top1"] == 30.12
    assert (row["epochs"], row["best_top5"], row["n_parameters"], row["warnings"]) == (4, 30.123456 + 20, 1234, 0)
    assert summarize([run]).render("csv").splitlines() == [
        "run,format,epochs,best_top1,best_epoch,last_top1,best_top5,n_parameters,warnings,path",
        f"recnext_m1_120e_224x224_rec_5x5_7603,deit,4,30.12,1,30.12,50.12,1234,0,{path.as_posix()}",
    ]


@pytest.mark.parametrize(
    ("relative", "name"),
    [
        ("recnext_m1_120e_224x224_rec_5x5_7603.txt", "recnext_m1_120e_224x224_rec_5x5_7603"),
        ("exp_a/log.txt", "exp_a"),
        ("exp_b/summary.csv", "exp_b"),
        ("strategy/repnext_m0_ep300_summary.csv", "repnext_m0_ep300"),
        ("mask_rcnn_m3/20240101_120000.log.json", "mask_rcnn_m3"),
        ("detection/repnext_m3_coco.log.json", "repnext_m3_coco"),
        ("detection/repnext_m3_coco.json", "repnext_m3_coco"),
    ],
)
def test_run_name_is_the_stem_or_the_folder_for_generic_names(relative, name, tmp_path):
    assert run_name(tmp_path / relative) == name


def test_timm_summary_csv_with_sibling_args(tmp_path):
    rows = [
        "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr",
        "0,6.9,6.8,1.5,5.0,0.001",
        "1,6.1,5.2,12.25,30.5,0.002",
    ]
    run, messages = parse(write(tmp_path / "m0_run" / "summary.csv", rows))
    write(tmp_path / "m1_summary.csv", rows)
    write(tmp_path / "m1_args.yaml", ["model: repnext_m1", "epochs: 300"])
    prefixed, _ = parse(tmp_path / "m1_summary.csv")
    assert (run.name, run.format, run.args, messages) == ("m0_run", "timm", {}, [])
    assert (prefixed.name, prefixed.args) == ("m1", {"model": "repnext_m1", "epochs": 300})
    assert list(run.records.columns) == ["epoch", "train_loss", "eval_loss", "top1", "top5", "lr"]
    row = summarize([run]).rows[0]
    assert (row["epochs"], row["best_top1"], row["best_epoch"], row["best_top5"], row["n_parameters"]) == (
        2, 12.25, 1, 30.5, None)  # fmt: skip


def test_timm_args_yaml_that_does_not_parse_warns_with_its_line(tmp_path):
    write(tmp_path / "run" / "args.yaml", ["model: repnext_m1", "epochs: [300"])
    run, messages = parse(write(tmp_path / "run" / "summary.csv", ["epoch,train_loss,eval_top1", "0,6.9,1.0"]))
    assert run.args == {}
    assert messages[0] == f"{tmp_path.as_posix()}/run/summary.csv:1: no eval_loss column"
    assert re.fullmatch(
        rf"{re.escape(tmp_path.as_posix())}/run/args\.yaml:\d+: unreadable YAML ignored .*", messages[-1]
    )


def mm_lines(val_records: list[dict], train_iters: list[tuple[int, int]], env: dict) -> list[str]:
    """An MMCV log: the env line, then for each evaluation two train records and the val record."""
    lines = [json.dumps({"env_info": "sys.platform: linux", **env})]
    for (epoch, iteration), val in zip(train_iters, val_records, strict=True):
        for offset, loss in ((50, 2.0), (0, 1.0)):
            lines.append(json.dumps({"mode": "train", "epoch": epoch, "iter": iteration - offset, "lr": 0.01,
                                     "loss": loss + epoch, "loss_cls": 0.5}))  # fmt: skip
        lines.append(json.dumps({"mode": "val", "epoch": epoch, "iter": 625, "lr": 0.01, **val}))
    return lines


def test_mmdet_json_log_reports_final_box_and_mask_ap_in_percent(tmp_path):
    vals = [
        {"bbox_mAP": 0.3, "bbox_mAP_50": 0.5, "segm_mAP": 0.28, "bbox_mAP_copypaste": "0.300 0.500"},
        {"bbox_mAP": 0.4208, "bbox_mAP_50": 0.64, "segm_mAP": 0.388, "bbox_mAP_copypaste": "0.421 0.641"},
    ]
    path = write(tmp_path / "repnext_m3_coco.json", mm_lines(vals, [(1, 7300), (2, 7300)], {"config": "x", "seed": 0}))
    run, messages = parse(path)
    assert (run.format, run.step, run.args, messages) == ("mmdet", "epoch", {"config": "x", "seed": 0}, [])
    assert list(run.records["epoch"]) == [1, 2] and list(run.records["iter"]) == [7300, 7300]
    assert list(run.records["train_loss"]) == [2.5, 3.5]  # mean of the train records since the last evaluation
    assert "bbox_mAP_copypaste" not in run.records.columns
    assert run.records["bbox_mAP_50"].tolist() == pytest.approx([50.0, 64.0])
    table = summarize([run])
    assert table.rows[0]["box_ap"] == pytest.approx(42.08) and table.rows[0]["mask_ap"] == pytest.approx(38.8)
    assert table.columns == ["run", "format", "epochs", "best_top1", "best_epoch", "last_top1", "best_top5",
                             "n_parameters", "box_ap", "best_box_ap", "best_box_ap_at", "mask_ap", "best_mask_ap",
                             "best_mask_ap_at", "warnings", "path"]  # fmt: skip
    assert table.render("csv").splitlines()[1] == (
        f"repnext_m3_coco,mmdet,2,,,,,,42.1,42.1,2,38.8,38.8,2,0,{path.as_posix()}"
    )


def test_mmdet_best_evaluation_is_reported_with_its_epoch_beside_the_last(tmp_path):
    vals = [{"bbox_mAP": 0.41, "bbox_mAP_75": 0.45, "segm_mAP": 0.37}, {"bbox_mAP": 0.435, "bbox_mAP_75": 0.47,
            "segm_mAP": 0.39}, {"bbox_mAP": 0.432, "bbox_mAP_75": 0.48, "segm_mAP": 0.38}]  # fmt: skip
    path = write(tmp_path / "recnext_m4_coco.json", mm_lines(vals, [(1, 7300), (2, 7300), (3, 7300)], {}))
    run, _ = parse(path)
    row = summarize([run]).rows[0]
    assert (row["box_ap"], row["best_box_ap"], row["best_box_ap_at"]) == pytest.approx((43.2, 43.5, 2))
    assert (row["mask_ap"], row["best_mask_ap"], row["best_mask_ap_at"]) == pytest.approx((38.0, 39.0, 2))
    ap75 = next(r for r in downstream_metrics(run) if r["metric"] == "box_ap75")
    assert ap75 == {"metric": "box_ap75", "key": "bbox_mAP_75", "best": pytest.approx(48.0), "best_at": 3,
                    "last": pytest.approx(48.0), "unit": "epoch"}  # fmt: skip
    assert [r["metric"] for r in downstream_metrics(run)] == ["box_ap", "box_ap75", "mask_ap"]


def test_mmseg_iteration_based_log_and_miou_given_as_fraction_or_percent(tmp_path):
    env = {"mmseg_version": "0.30.0", "CLASSES": ["wall"], "config": "y"}
    fraction = [{"aAcc": 0.77, "mIoU": 0.3565, "IoU.wall": 0.69}, {"aAcc": 0.79, "mIoU": 0.4193, "IoU.wall": 0.72}]
    path = write(tmp_path / "recnext_a3_ade20k.json", mm_lines(fraction, [(1, 8000), (1, 16000)], env))
    percent = [{"mIoU": 35.65}, {"mIoU": 41.93}]
    other = write(tmp_path / "other" / "20240101_120000.log.json", mm_lines(percent, [(1, 8000), (2, 16000)], {}))
    run, _ = parse(path)
    percent_run, _ = parse(other)
    assert (run.format, run.step, list(run.records["iter"])) == ("mmseg", "iter", [8000, 16000])
    assert "IoU.wall" not in run.records.columns and run.records["aAcc"].tolist() == pytest.approx([77.0, 79.0])
    rows = {row["run"]: row for row in summarize([run, percent_run]).rows}
    assert rows["recnext_a3_ade20k"]["miou"] == pytest.approx(41.93) and rows["other"]["miou"] == 41.93
    assert (rows["recnext_a3_ade20k"]["iters"], rows["recnext_a3_ade20k"]["epochs"]) == (16000, None)
    assert (rows["other"]["epochs"], rows["other"]["iters"], percent_run.format) == (2, None, "mmseg")


@pytest.mark.parametrize(
    ("lines", "end", "expected_messages", "epochs", "best_top1"),
    [
        ([deit_line(0, 1.0), "", "  ", deit_line(1, 2.0)], "\n\n", [":2: blank line skipped (2 lines)"], [0, 1], 2.0),
        ([deit_line(0, 1.0), deit_line(1, 2.0), deit_line(2, 9.0)[:40]], "",
         [":3: truncated last line ignored (killed run?)"], [0, 1], 2.0),
        ([deit_line(0, 1.0), "{not json", deit_line(1, 2.0)], "\n",
         [":2: unparseable line skipped (Expecting property name enclosed in double quotes)"], [0, 1], 2.0),
        ([deit_line(0, 1.0, test_loss=math.nan), deit_line(1, math.nan, test_acc5=9.0),
          deit_line(2, 3.0, train_loss=math.inf)],
         "\n", [":1: test_loss is NaN; treated as missing", ":2: test_acc1 is NaN; treated as missing",
                ":3: train_loss is Infinity; treated as missing"], [0, 1, 2], 3.0),
        ([deit_line(0, 1.0), deit_line(1, 5.0), deit_line(2, 6.0), deit_line(1, 2.0), deit_line(2, 3.0),
          deit_line(3, 4.0)], "\n", [":4: epoch 1 logged again (resumed run?); keeping the last record (2 lines)"],
         [0, 1, 2, 3], 4.0),
        ([deit_line(0, 1.0, test_acc5=None, n_parameters=None), deit_line(1, 2.0, test_acc5=None, epoch=None),
          deit_line(2, 3.0, test_acc1="n/a"), deit_line(3, 0.5).replace('"test_acc1": 0.5', '"test_acc1": null')],
         "\n", [":1: missing test_acc5 (2 lines)", ":1: missing n_parameters", ":2: no integer epoch; taken as the "
                "previous epoch + 1", ":3: test_acc1 is not a number ('n/a'); treated as missing",
                ":4: missing test_acc1"], [0, 1, 2, 3], 2.0),
    ],
    ids=["blank-lines", "truncated-last-line", "unparseable-line", "nan-infinity", "resumed-duplicates",
         "missing-keys"],
)  # fmt: skip
def test_deit_defects_warn_once_per_kind_with_file_and_line(lines, end, expected_messages, epochs, best_top1, tmp_path):
    path = write(tmp_path / "exp" / "log.txt", lines, end)
    run, messages = parse(path)
    assert messages == [f"{path.as_posix()}{message}" for message in expected_messages]
    assert list(run.records["epoch"]) == epochs
    row = summarize([run]).rows[0]
    assert (row["run"], row["best_top1"], row["warnings"]) == ("exp", best_top1, len(expected_messages))


def test_resumed_run_keeps_the_last_record_of_each_epoch(tmp_path):
    lines = [deit_line(0, 1.0), deit_line(1, 50.0), deit_line(1, 2.0), deit_line(2, 3.0)]
    run, _ = parse(write(tmp_path / "exp" / "log.txt", lines))
    assert list(run.records["top1"]) == [1.0, 2.0, 3.0]  # the stale 50.0 of the first attempt is gone


def test_timm_csv_defects(tmp_path):
    rows = ["epoch,train_loss,eval_loss,eval_top1,eval_top5", "0,6.9,nan,1.0,3.0", "", "1,6.1,5.2,,9.0",
            "1,6.0,5.1,4.0,10.0", "2,5.9,inf,5.0,12.0", "3,5.5,4."]  # fmt: skip
    path = write(tmp_path / "run" / "summary.csv", rows, end="")
    run, messages = parse(path)
    assert [m.removeprefix(path.as_posix()) for m in messages] == [
        ":2: eval_loss is NaN; treated as missing (2 lines)",
        ":3: blank line skipped",
        ":4: missing eval_top1",
        ":5: epoch 1 logged again (resumed run?); keeping the last record",
        ":7: truncated last line ignored (killed run?)",
    ]
    assert list(run.records["epoch"]) == [0, 1, 2] and list(run.records["top1"]) == [1.0, 4.0, 5.0]
    assert summarize([run]).rows[0]["best_top1"] == 5.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file, not a training log"),
        (b"\n  \n", "empty file, not a training log"),
        (b"AMP: true\nAUG:\n", "not a training log in a known format"),
        (b"name,score\na,1\n", "not a training log in a known format"),
        (b'{"accuracy": 1}\n', "not a training log in a known format"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a text file"),
    ],
)
def test_unknown_format_raises_naming_the_file(content, message, tmp_path):
    path = tmp_path / "mystery.txt"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=f"^{re.escape(path.as_posix())}: {message}"):
        read_log(path)


def test_runs_without_records_are_tabulated_not_dropped(tmp_path):
    write(tmp_path / "killed" / "log.txt", [deit_line(0, 1.0)[:30]], end="")
    write(tmp_path / "fresh" / "summary.csv", ["epoch,train_loss,eval_loss,eval_top1,eval_top5"])
    write(tmp_path / "ok" / "log.txt", [deit_line(0, 1.0)])
    with pytest.warns(LogWarning) as caught:
        runs = read_logs([tmp_path])
    assert {str(w.message).split("/")[-2] for w in caught if "no records" in str(w.message)} == {"killed", "fresh"}
    rows = summarize(runs).sorted_rows()
    assert [(r["run"], r["format"], r["epochs"], r["best_top1"]) for r in rows] == [
        ("fresh", "timm", 0, None), ("killed", "deit", 0, None), ("ok", "deit", 1, 1.0)]  # fmt: skip
    assert summarize(runs).render("md").count("\n") == 2 + 3


def test_group_by_named_groups_become_sorted_columns_and_unmatched_runs_are_kept(tmp_path):
    names = ["recnext_m1_120e_384x384_bxb_7800", "recnext_m1_120e_224x224_rec_5x5_7603", "odd_name",
             "recnext_m1_120e_96x96_bxb"]  # fmt: skip
    for name in names:
        write(tmp_path / f"{name}.txt", [deit_line(0, 1.0)])
    with pytest.warns(LogWarning, match=r"odd_name\.txt: run name 'odd_name' does not match the group-by regex"):
        runs = read_logs([tmp_path], group_by=GROUP_BY)
    table = summarize(runs)
    assert table.columns[:5] == ["run", "model", "schedule", "resolution", "variant"]
    assert [(r["resolution"], r["variant"], r["run"]) for r in table.sorted_rows()] == [
        (96, "bxb", "recnext_m1_120e_96x96_bxb"),
        (224, "rec_5x5", "recnext_m1_120e_224x224_rec_5x5_7603"),
        (384, "bxb", "recnext_m1_120e_384x384_bxb_7800"),
        (None, None, "odd_name"),
    ]  # resolutions are ints, so 96 sorts before 224; the unmatched run is last, not dropped
    assert [r["warnings"] for r in table.sorted_rows()] == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(?P<model>[a-z", r"invalid regular expression '\(\?P<model>\[a-z': unterminated character set"),
        ("recnext_(m\\d)", r"'recnext_\(m\\\\d\)' has no named group"),
        ("(?P<epochs>\\d+)e", "group name 'epochs' is also a summary column; rename the group"),
        (3, "expected a regular expression string, got 3"),
    ],
)
def test_bad_group_by_names_the_parameter(regex, message):
    with pytest.raises(ValueError, match=f"^params.yaml: ablation.group_by: {message}"):
        compile_group_by(regex, "params.yaml: ablation.group_by")
    assert compile_group_by("") is None and compile_group_by(None) is None


def test_find_logs_folders_globs_files_and_missing(tmp_path):
    a = write(tmp_path / "b" / "log.txt", [deit_line(0, 1.0)])
    b = write(tmp_path / "a_summary.csv", ["epoch,eval_top1", "0,1"])
    c = write(tmp_path / "det" / "x.json", ["{}"])
    write(tmp_path / "notes.md", ["# not a log"])
    assert find_logs([tmp_path]) == [tmp_path / "a_summary.csv", a, c]
    assert find_logs([a, f"{tmp_path}/**/*.txt", tmp_path / "b"], patterns="*.txt") == [a]
    assert find_logs([b]) == [b]
    with pytest.raises(FileNotFoundError, match=r"nope\*: no such file or folder, and no file matches it as a glob"):
        find_logs([f"{tmp_path}/nope*"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no training logs in this folder match \*\*/\*\.txt, "):
        find_logs([tmp_path / "empty"])


def ablation_runs(tmp_path: Path) -> list:
    for resolution, variant, top1 in [(224, "bxb", 75.41), (224, "rec_5x5", 76.03), (384, "rec_5x5", 78.11)]:
        name = f"recnext_m1_120e_{resolution}x{resolution}_{variant}"
        write(tmp_path / name / "log.txt", [deit_line(0, top1 - 1), deit_line(1, top1)])
    return read_logs([tmp_path], group_by=GROUP_BY)


def test_layout_long_and_pivot(tmp_path):
    runs = ablation_runs(tmp_path)
    table = summarize(runs)
    long = layout(table, ["variant", "resolution"], ["best_top1"])
    assert long.render("csv") == "variant,resolution,best_top1\nbxb,224,75.41\nrec_5x5,224,76.03\nrec_5x5,384,78.11\n"
    wide = layout(table, ["variant"], ["best_top1", "epochs"], pivot="resolution")
    assert wide.render("csv").splitlines() == [
        "variant,best_top1 resolution=224,best_top1 resolution=384,epochs resolution=224,epochs resolution=384",
        "bxb,75.41,,2,",
        "rec_5x5,76.03,78.11,2,2",
    ]
    assert "\\_" in wide.render("latex") and wide.render("md").startswith("| variant | best_top1 resolution=224 |")
    assert layout(table, ["run"], ["box_ap"]).render("csv").splitlines()[1:] == [f"{r.name}," for r in runs]


@pytest.mark.parametrize(
    ("index", "values", "pivot", "message"),
    [
        (
            ["variant"],
            ["best_top1"],
            "model",
            "ablation.pivot: runs 'recnext_m1_120e_224x224_rec_5x5' and "
            r"'recnext_m1_120e_384x384_rec_5x5' both fall in row \('rec_5x5',\) at model='recnext_m1'",
        ),
        (["variant"], ["top1"], "", r"ablation.values: unknown column 'top1'; available: run, model"),
        ("variant", ["best_top1"], "", "ablation.index: expected a list of column names, got 'variant'"),
        (["variant"], [], "", "ablation.values: name at least one column"),
        (["variant"], ["best_top1"], "variant", "ablation.pivot: 'variant' cannot also be an index or value column"),
    ],
)
def test_layout_errors_name_the_parameter(index, values, pivot, message, tmp_path):
    table = summarize(ablation_runs(tmp_path))
    with pytest.raises(ValueError, match=f"^params.yaml: {message}"):
        layout(table, index, values, pivot, where="params.yaml: ablation")


def test_curves_long_form_and_figure(tmp_path):
    runs = ablation_runs(tmp_path)
    long = curves(runs)
    assert list(long.columns) == [
        "run", "path", "model", "schedule", "resolution", "variant", "unit", "step", "metric", "value"]  # fmt: skip
    assert len(long) == 3 * 2 * 4  # runs x epochs x (top1, top5, train_loss, eval_loss)
    top1 = long[(long["metric"] == "top1") & (long["variant"] == "bxb")]
    assert list(top1["step"]) == [0, 1] and list(top1["value"]) == [74.41, 75.41]
    fig = plot_curves(long, hue="resolution")
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes] == [
        "top-1 accuracy (%)", "training loss", "validation loss"]  # fmt: skip
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes)
    styles = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines()}
    assert styles == {("C0", "-"), ("C0", "--"), ("C1", "-")}  # color per resolution, style per run within it
    assert [t.get_text() for t in fig.legends[0].get_texts()] == sorted(run.name for run in runs)
    with pytest.raises(ValueError, match=r"params\.yaml: ablation\.hue: unknown column 'size'"):
        plot_curves(long, hue="size", where="params.yaml: ablation.hue")


def test_iteration_based_runs_are_not_plotted_against_epochs(tmp_path):
    vals = [{"mIoU": 0.35}, {"mIoU": 0.41}]
    write(tmp_path / "seg.json", mm_lines(vals, [(1, 8000), (1, 16000)], {"mmseg_version": "0.30.0"}))
    long = curves(read_logs([tmp_path]))
    assert set(long["unit"]) == {"iter"} and set(long["metric"]) == {"train_loss", "mIoU"}
    with pytest.warns(LogWarning, match=r"seg\.json: iteration-based run not plotted"):
        with pytest.raises(ValueError, match="no per-epoch top1, train_loss, eval_loss values to plot"):
            plot_curves(long)


def test_fixture_logs_of_the_reduced_pipeline_stage():
    """tests/data/logs (the ablation stage's reduced input) parses into the table the notebook shows."""
    with pytest.warns(LogWarning):
        runs = read_logs([ROOT / "tests" / "data" / "logs"], group_by=GROUP_BY)
    rendered = layout(summarize(runs), ["variant"], ["best_top1"], pivot="resolution").render("csv")
    assert rendered == "variant,best_top1 resolution=64,best_top1 resolution=96\nbxb,16.95,20.85\nrec_5x5,17.65,21.35\n"
    assert sorted(len(run.warnings) for run in runs) == [0, 0, 1, 2]
