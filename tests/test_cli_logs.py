"""``repnext logs``: one row per training run, printed or written, with one-line errors."""

import json
import re

import pytest

from repnext.cli import main

GROUP_BY = r"(?P<model>recnext_m\d)_(?P<schedule>\d+e)_(?P<resolution>\d+)x\d+_(?P<variant>\w+?)(?:_\d{4})?$"


def deit_log(path, top1s, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{**dict(train_lr=1e-3, train_loss=5.0, test_loss=4.0, test_acc1=top1, test_acc5=top1 + 20, epoch=epoch,
                       n_parameters=5561384), **extra} for epoch, top1 in enumerate(top1s)]  # fmt: skip
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_logs_prints_one_row_per_run_with_group_columns(tmp_path, capsys):
    deit_log(tmp_path / "recnext_m1_120e_224x224_rec_5x5_7603.txt", [70.0, 76.034, 75.96])
    deit_log(tmp_path / "recnext_m1_120e_384x384_bxb" / "log.txt", [77.0, 78.0])
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "summary.csv").write_text("epoch,train_loss,eval_loss,eval_top1,eval_top5\n0,6,5,1,3\n")
    main(["logs", str(tmp_path), "--group-by", GROUP_BY, "--format", "csv"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == ("run,model,schedule,resolution,variant,format,epochs,best_top1,best_epoch,last_top1,best_top5,"
                        "n_parameters,warnings,path")  # fmt: skip
    assert [line.split(",")[:11] for line in lines[1:]] == [
        ["recnext_m1_120e_224x224_rec_5x5_7603", "recnext_m1", "120e", "224", "rec_5x5", "deit", "3", "76.03", "1",
         "75.96", "96.03"],
        ["recnext_m1_120e_384x384_bxb", "recnext_m1", "120e", "384", "bxb", "deit", "2", "78.00", "1", "78.00",
         "98.00"],
        ["baseline", "", "", "", "", "timm", "1", "1.00", "0", "1.00", "3.00"],
    ]  # fmt: skip
    assert err == (f"repnext logs: warning: {tmp_path.as_posix()}/baseline/summary.csv: run name 'baseline' does not "
                   "match the group-by regex; no groups\n")  # fmt: skip


def test_logs_reads_globs_and_writes_the_format_of_the_output_suffix(tmp_path, capsys):
    deit_log(tmp_path / "a" / "log.txt", [1.0, 2.0])
    deit_log(tmp_path / "b" / "log.txt", [3.0], test_loss=float("nan"))
    (tmp_path / "b" / "notes.txt").write_text("not a log, and not matched by the glob below\n")
    out = tmp_path / "tables" / "runs.tex"
    main(["logs", f"{tmp_path}/**/log.txt", "-o", str(out)])
    text = out.read_text()
    assert text.startswith("\\begin{tabular}") and "\na & deit & 2 & 2.00 & 1 & 2.00 & 22.00 & 5561384 & 0 & " in text
    assert capsys.readouterr().err == (f"repnext logs: warning: {tmp_path.as_posix()}/b/log.txt:1: test_loss is "
                                       "NaN; treated as missing\n")  # fmt: skip
    main(["logs", str(tmp_path / "a"), "--pattern", "*.txt", "--format", "json"])
    assert json.loads(capsys.readouterr().out)[0]["best_top1"] == 2.0


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: (d / "x.txt").write_text("AMP: true\n"), ["{d}"], "{d}/x.txt: not a training log in a known format"),
        (lambda d: None, ["{d}/nope*"], "{d}/nope*: no such file or folder, and no file matches it as a glob"),
        (lambda d: None, ["{d}"], "{d}: no training logs in this folder match"),
        (lambda d: deit_log(d / "log.txt", [1.0]), ["{d}", "--group-by", "(?P<m>["],
         "--group-by: invalid regular expression"),
    ],
)  # fmt: skip
def test_logs_errors_exit_with_one_line_naming_the_file(make, args, message, tmp_path):
    make(tmp_path)
    with pytest.raises(SystemExit) as raised:
        main(["logs", *(arg.format(d=tmp_path) for arg in args)])
    assert re.match(re.escape(f"repnext logs: {message.format(d=tmp_path)}"), str(raised.value))
    assert "\n" not in str(raised.value)


def test_every_vendored_upstream_log_parses(capsys):
    """``repnext logs logs/upstream``: all 139 runs in five formats; the only warnings are NaN losses in the files."""
    from pathlib import Path

    main(["logs", str(Path(__file__).parents[1] / "logs" / "upstream"), "--format", "csv"])
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    formats = [row.split(",")[header.split(",").index("format")] for row in rows]
    assert len(rows) == 139 and {f: formats.count(f) for f in set(formats)} == {
        "deit": 107, "timm": 12, "mmdet": 11, "mmseg": 9,
    }  # fmt: skip
    warnings = err.splitlines()
    assert len(warnings) == 5 and all("starnet_s1" in w and "test_loss is NaN" in w for w in warnings)
