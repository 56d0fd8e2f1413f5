"""A bad params.yaml value stops at its stage's check, with one line, before DVC deletes anything."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repnext.cli import main
from repnext.param_checks import COMMAND_CHECKS, KINDS, check_section, declared_kinds

ROOT = Path(__file__).parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
REDUCED = yaml.safe_load((ROOT / "tests" / "data" / "params_reduced.yaml").read_text())
NOTEBOOK_STAGES = {name: body for name, body in DVC.items() if "repnext notebook" in body.get("do", body)["cmd"]}


def _section(params: dict, dotted: str) -> dict:
    for key in dotted.split("."):
        params = params[key]
    return params


def _notebook_and_section(name: str, key: str | None = None) -> tuple[str, str]:
    argv = shlex.split(NOTEBOOK_STAGES[name].get("do", NOTEBOOK_STAGES[name])["cmd"].replace("${key}", key or ""))
    return argv[2], argv[argv.index("--section") + 1]


@pytest.mark.parametrize("notebook", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_every_parameter_declares_a_known_kind(notebook):
    kinds = declared_kinds(ROOT / notebook)
    assert kinds and set(kinds.values()) <= set(KINDS)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_STAGES))
def test_every_notebook_stage_is_guarded_by_a_check_stage(name):
    body, check = NOTEBOOK_STAGES[name], DVC[f"check_{name}"]
    stage, guard = body.get("do", body), check.get("do", check)
    (stamp,) = [next(iter(out)) for out in guard["outs"]]
    assert stamp in stage["deps"], "the stage waits for its check"
    assert guard["outs"][0][stamp] == {"cache": False, "persist": True}, "a failed check keeps the last stamp"
    assert guard["params"] == stage["params"] and body.get("foreach") == check.get("foreach")


def _committed_sections():
    for name, body in NOTEBOOK_STAGES.items():
        keys = _section(PARAMS, body["foreach"][2:-1]) if "foreach" in body else [None]
        for key in keys:
            yield _notebook_and_section(name, key)


@pytest.mark.parametrize(("notebook", "section"), sorted(set(_committed_sections())))
def test_the_committed_and_reduced_parameters_pass(notebook, section, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_section(notebook, _section(PARAMS, section), f"params.yaml: {section}")
    reduced = REDUCED.get(section) or REDUCED.get(section.replace(".settings.", "@"), {})
    check_section(notebook, {**_section(PARAMS, section), **reduced}, f"params.yaml: {section}")


# One bad value for each stage's section: (section, key, value, what the one line says).
BAD = [
    ("model_stats", "resolution", 0, "expected a positive integer"),
    ("reparam_check", "resolutions", [[64]], "item 0 ([64]) is not an [H, W] pair of positive integers"),
    ("export_check", "resolution", [224], "expected an [H, W] pair of positive integers"),
    ("latency", "backends", ["eager", "tensorrt"], "expected a non-empty list of backends (eager, "),
    ("latency", "profile_backends", ["eager"], "timed backends that have a profiler (onnxruntime, openvino)"),
    ("latency", "profile_figure_models", ["resnet50"], "expected a non-empty list of the section's models and peers"),
    ("accuracy_latency", "latency_table", "artifacts/tables/missing.csv", "expected an existing file"),
    ("feature_maps.settings.recnext_m0", "block", 7, "expected a block index of stage 0 of recnext_m0 (0 to 1)"),
    ("feature_maps_trained.settings.repnext_m0", "weights", "nowhere.pth", "an existing checkpoint file"),
    ("ablation", "group_by", "(unclosed", "expected a regular expression"),
    ("reparam_tutorial", "dtypes", ["float8"], "item 0 ('float8') is not a dtype: one of float16"),
    ("erf", "stage", 4, "expected a stage index of repnext_m0, recnext_m0, recnext_a0 (0 to 3)"),
    ("paper_results", "upstream_dir", "logs/nowhere", "expected an existing folder"),
    ("claims", "claims_file", "repnext/data/nowhere.csv", "expected an existing file"),
]


def test_every_stage_section_has_a_bad_value_below():
    sections = {section for _, section in _committed_sections()}
    assert {re.sub(r"\.settings\..*", "", s) for s, *_ in BAD} == {re.sub(r"\.settings\..*", "", s) for s in sections}


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD, ids=[f"{s}.{k}" for s, k, *_ in BAD])
def test_a_bad_value_is_one_line_naming_it_and_writes_no_stamp(section, key, value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    name = re.sub(r"\.settings\.", "@", section)
    notebook, _ = _notebook_and_section(name.split("@")[0], name.split("@")[1] if "@" in name else None)
    nested = {**_section(PARAMS, section), key: value}
    for part in reversed(section.split(".")):
        nested = {part: nested}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(nested))
    stamp = tmp_path / "stamp.json"
    with pytest.raises(SystemExit) as raised:
        main(["check-params", notebook, "--params", str(params), "--section", section, "-o", str(stamp)])
    line = str(raised.value)
    assert line.startswith(f"repnext check-params: {params}: {section}.{key}: got {value!r}; ") and "\n" not in line
    assert message in line
    assert not stamp.exists()


def _guards(name: str) -> list[str]:
    """The check stages whose stamps stage ``name`` depends on."""
    stamps = {
        next(iter(body.get("do", body)["outs"][0])): check for check, body in DVC.items() if check[:6] == "check_"
    }
    return [stamps[dep] for dep in DVC[name].get("deps", []) if dep in stamps]


@pytest.mark.parametrize("name", sorted(n for n, b in DVC.items() if "params" in b and n not in NOTEBOOK_STAGES))
def test_every_command_stage_is_guarded_by_a_check_of_its_sections(name):
    """dataset, train, train_weights, evaluate, publish: their sections are checked before DVC deletes outputs."""
    if name.startswith("check_") or name == "report":  # a check itself; the report reads every section, writes one page
        return
    (guard,) = _guards(name)
    argv = shlex.split(DVC[guard]["cmd"])
    assert argv[:3] == ["repnext", "check-params", argv[2]] and argv[2] in COMMAND_CHECKS
    checked = {str(p).split(".")[0] for p in DVC[guard]["params"]}
    assert {str(p).split(".")[0] for p in DVC[name]["params"]} <= checked, "every section the stage reads"
    assert DVC[guard]["outs"][0][next(iter(DVC[guard]["outs"][0]))] == {"cache": False, "persist": True}


# One bad value for each command's sections: (command, section checked, section edited, key, value, the line says).
COMMAND_BAD = [
    ("dataset", "dataset", "dataset", "size", 0, "dataset.size: got 0; expected a positive integer"),
    ("dataset", "dataset", "dataset", "name", "builtin:cats", "expected a built-in dataset: one of builtin:photos"),
    ("train-experiments", "experiments", "training", "epochs", 0, "training.epochs: must be a positive integer, got 0"),
    ("train-experiments", "experiments", "training", "lr", "fast", "training.lr: got 'fast'; expected a number"),
    ("train-experiments", "experiments", "training", "epochz", 3, "training.epochz: not an option of repnext train"),
    ("train-experiments", "experiments", "experiments", "recnext_m0_8e_64x64_rec_3x3",
     {"model": "recnext_m0", "model_kwargs": "kernel_size=4"}, "recnext_m0 does not build and run at 64x64 with it"),
    ("train-experiments", "experiments_with_weights", "experiments_with_weights", "recnext_m0_8e_64x64_rec_5x5",
     {"model": "recnext_m9"}, "experiments_with_weights.recnext_m0_8e_64x64_rec_5x5.model: got 'recnext_m9'"),
    ("publish", "publish", "publish", "experiment", "nope", "expected a run of experiments_with_weights"),
    ("publish", "publish", "publish", "model", "recnext_m0", "expected 'repnext_m0', the variant run"),
    ("publish", "publish", "publish", "min_agreement", 101, "expected a percentage from 0 to 100"),
]  # fmt: skip


def test_every_command_check_has_a_bad_value_above():
    assert {command for command, *_ in COMMAND_BAD} == set(COMMAND_CHECKS)


@pytest.mark.parametrize(
    ("command", "section", "edited", "key", "value", "message"),
    COMMAND_BAD,
    ids=[f"{e}.{k}" for _, _, e, k, *_ in COMMAND_BAD],
)
def test_a_bad_command_value_is_one_line_naming_it_and_writes_no_stamp(command, section, edited, key, value, message,
                                                                        tmp_path, monkeypatch):  # fmt: skip
    monkeypatch.chdir(ROOT)
    params = {**PARAMS, edited: {**PARAMS[edited], key: value}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stamp = tmp_path / "stamp.json"
    with pytest.raises(SystemExit) as raised:
        main(
            ["check-params", command, "--params", str(tmp_path / "params.yaml"), "--section", section, "-o", str(stamp)]
        )
    line = str(raised.value)
    assert line.startswith(f"repnext check-params: {tmp_path / 'params.yaml'}: ") and "\n" not in line
    assert message in line and not stamp.exists()


@pytest.mark.parametrize(("command", "section"), sorted({(c, s) for c, s, *_ in COMMAND_BAD}))
def test_the_committed_command_sections_pass_and_write_their_stamp(command, section, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["check-params", command, "--section", section, "-o", str(tmp_path / "stamp.json")])
    assert json.loads((tmp_path / "stamp.json").read_text()) == PARAMS[section]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout of the repository")
def test_dvc_repro_with_a_bad_value_keeps_every_committed_output(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    params = clone / "params.yaml"
    text = params.read_text()
    line = next(line for line in text.splitlines() if line.startswith("    recnext_m0: {model: recnext_m0"))
    params.write_text(text.replace(line, line.replace("block: 1,", "block: 7,")))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro", "feature_maps@recnext_m0"], cwd=clone, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert repro.returncode != 0
    errors = [line for line in (repro.stdout + repro.stderr).splitlines() if line.startswith("repnext check-params:")]
    assert errors == ["repnext check-params: params.yaml: feature_maps.settings.recnext_m0.block: got 7; expected a "
                      "block index of stage 0 of recnext_m0 (0 to 1)"]  # fmt: skip
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert changed.stdout.splitlines() == [" M params.yaml"]
