"""The DVC pipeline: every stage is a clean parameterized notebook, deterministic, and fails cleanly."""

import contextlib
import filecmp
import hashlib
import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
import yaml

from repnext.cli import main
from repnext.pipeline import check_models, check_positive, clean_notebook, load_section, run_notebook

ROOT = Path(__file__).parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
REDUCED = yaml.safe_load((ROOT / "tests" / "data" / "params_reduced.yaml").read_text())
# Digests of each reduced stage's outputs from an earlier run (``pytest --record-stage-outputs``).
RECORDED = ROOT / "tests" / "data" / "stage_outputs"


def expand_stages(stages: dict, params: dict) -> dict:
    """dvc.yaml stages with each ``foreach`` stage expanded as DVC does: ``name@key``, ``${key}``, ``${item.x}``."""
    expanded = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            expanded[name] = stage
            continue
        items = params
        for part in stage["foreach"].strip("${} ").split("."):
            items = items[part]
        for key, item in items.items():
            text = yaml.safe_dump(stage["do"], sort_keys=False).replace("${key}", key)
            text = re.sub(r"\$\{item\.(\w+)\}", lambda m, item=item: str(item[m.group(1)]), text)
            expanded[f"{name}@{key}"] = yaml.safe_load(text)
    return expanded


ALL_STAGES = expand_stages(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"], PARAMS)
# The stages that run a notebook (the others materialize the dataset and train).
STAGES = {name: stage for name, stage in ALL_STAGES.items() if stage["cmd"].startswith("repnext notebook ")}


def notebook_args(stage: dict) -> tuple[str, str, str]:
    argv = shlex.split(stage["cmd"])
    assert argv[:2] == ["repnext", "notebook"], stage["cmd"]
    return argv[2], argv[3], argv[argv.index("--section") + 1]


def reduced_params(section: str) -> dict:
    """Reduced parameters name test fixtures as ``tests/...``: stages run in a folder with ``tests`` linked in."""
    return {**load_section(ROOT / "params.yaml", section), **_reduced(section)}


def _reduced(section: str) -> dict:
    """The reduced overrides at dotted ``section`` (e.g. ``feature_maps.settings.repnext_m0``); may be empty."""
    data = REDUCED
    for key in section.split("."):
        data = data.get(key, {}) if isinstance(data, dict) else {}
    return data


def is_time_measurement(path: str | Path) -> bool:
    """Files named ``latency*`` hold times, which differ between runs; every other output must not."""
    return Path(path).name.startswith("latency")


def _outputs(stage: dict) -> list[str]:
    entries = stage.get("outs", []) + stage.get("metrics", [])
    return [next(iter(out)) if isinstance(out, dict) else out for out in entries]


def test_every_notebook_is_a_clean_stage():
    sources = {notebook_args(stage)[0] for stage in STAGES.values()}
    assert sources == {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    for name, stage in STAGES.items():
        source, output, section = notebook_args(stage)
        assert section == name.replace("@", ".settings.") and stage["params"] == [section]
        assert output.startswith("artifacts/notebooks/")
        assert source in stage["deps"] and any(output in out for out in stage["outs"])
        assert all(next(iter(out.values()))["cache"] is False for out in stage["outs"] if isinstance(out, dict))
        nb = nbformat.read(ROOT / source, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{source}: needs exactly one cell tagged 'parameters'"
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
        assert name.split("@")[0] in REDUCED, f"tests/data/params_reduced.yaml has no reduced set for stage {name}"
    for family in {name.split("@")[0] for name in STAGES if "@" in name}:
        assert any(name.startswith(f"{family}@") for name in TESTED_STAGES), f"no reduced item of {family} is tested"


# Every plain stage, and the items of foreach stages that have their own reduced set.
TESTED_STAGES = sorted(name for name in STAGES if "@" not in name or _reduced(name.replace("@", ".settings.")))

# One xdist worker runs every test that starts a kernel, so one kernel server (spawned: the worker runs threads)
# serves them all (tests/test_kernels.py joins the group).
pytestmark = [pytest.mark.xdist_group("notebook_kernels"), pytest.mark.usefixtures("one_thread_kernels")]


def _run_stage(name: str, workdir: Path, params_file: Path) -> None:
    """Run the stage's own dvc.yaml command in ``workdir`` through this process's ``repnext`` CLI (so that only the
    kernel starts, not another interpreter importing torch), reading reduced parameters from ``params_file``."""
    source, _, section = notebook_args(STAGES[name])
    nested: dict = reduced_params(section)
    for key in reversed(section.split(".")):
        nested = {key: nested}
    params_file.write_text(yaml.safe_dump(nested))
    commands = [shlex.split(part) for part in STAGES[name]["cmd"].split(" && ")]  # e.g. notebook && render
    assert all(argv[0] == "repnext" for argv in commands), STAGES[name]["cmd"]
    notebook = commands[0][1:]
    notebook[notebook.index(source)] = str(ROOT / source)
    workdir.mkdir()
    (workdir / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    with contextlib.chdir(workdir):
        main([*notebook, "--params", str(params_file)])
        for argv in commands[1:]:
            main(argv[1:])
    (workdir / "tests").unlink()


def _digests(folder: Path, files: list[str]) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("name", TESTED_STAGES)
def test_stage_outputs_are_byte_identical_across_runs(name, tmp_path, request):
    """Two runs of the stage's command, each in a fresh kernel, give the same bytes. The first run is compared
    with the digests recorded by an earlier run (``pytest --record-stage-outputs``, any machine); only when they
    differ (outputs changed since) does a second run here decide."""
    _run_stage(name, tmp_path / "a", tmp_path / "a.yaml")
    produced = {str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file()}
    for out in _outputs(STAGES[name]):
        assert any(p == out or p.startswith(f"{out}/") for p in produced), out
    executed_text = (tmp_path / "a" / notebook_args(STAGES[name])[1]).read_text()
    for folder in (str(ROOT), sys.prefix):  # e.g. a warning's file name: the bytes would depend on the checkout
        assert folder not in executed_text, f"the executed notebook names {folder}"
    executed = nbformat.reads(executed_text, as_version=4)
    assert set(executed.metadata["papermill"]) == {"parameters"}
    assert all("execution" not in cell.metadata for cell in executed.cells)
    if all(is_time_measurement(out) for out in _outputs(STAGES[name])):
        return
    files = sorted(f for f in produced if not is_time_measurement(f))
    assert len(files) >= 3
    digests = _digests(tmp_path / "a", files)
    recorded = RECORDED / f"{name}.json"
    if request.config.getoption("record_stage_outputs"):
        recorded.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    elif not recorded.exists() or json.loads(recorded.read_text()) != digests:
        _run_stage(name, tmp_path / "b", tmp_path / "b.yaml")
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
        assert not mismatch and not errors, mismatch + errors
        warnings.warn(f"{recorded.relative_to(ROOT)} is out of date: run pytest --record-stage-outputs", stacklevel=1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            dict(models=["repnext_m0", "nope"]),
            "params.yaml: model_stats.models: got ['repnext_m0', 'nope']; expected "
            "a non-empty list of registered variants; item 1 ('nope') is not a registered variant: one of recnext_a0",
        ),
        (dict(resolutoin=224), "params.yaml: model_stats.resolutoin: not a parameter of"),
    ],
)
def test_bad_parameters_fail_with_one_line_and_leave_nothing(override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(dict(model_stats={**reduced_params("model_stats"), **override})))
    with pytest.raises(SystemExit) as raised:
        main(["notebook", str(ROOT / "notebooks" / "model_stats.ipynb"), "artifacts/notebooks/model_stats.ipynb",
              "--params", str(params), "--section", "model_stats"])  # fmt: skip
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["params.yaml"]


def test_parameter_checks_name_the_parameter():
    with pytest.raises(ValueError, match=r"^params.yaml: model_stats.resolution: must be a positive integer, got 0$"):
        check_positive(0, "params.yaml: model_stats.resolution")
    with pytest.raises(ValueError, match="expected a non-empty list of model names"):
        check_models("repnext_m0", "params.yaml: model_stats.models")


def test_failure_late_in_a_notebook_removes_its_earlier_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").write_text("a file where the figure folder should be\n")
    params = reduced_params("model_stats")
    with pytest.raises(Exception, match=r"model_stats\.ipynb"):
        run_notebook(ROOT / "notebooks" / "model_stats.ipynb", tmp_path / "out.ipynb", params)
    assert not (tmp_path / "artifacts" / "tables").exists() or not any((tmp_path / "artifacts" / "tables").iterdir())
    assert not (tmp_path / "out.ipynb").exists()


def test_clean_notebook_strips_volatile_metadata():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = dict(parameters={"a": 1}, start_time="t", duration=1.0, input_path="/x")
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata.update(execution={"iopub.status.busy": "t"}, papermill=dict(duration=1.0, status="completed"),
                         tags=["injected-parameters"])  # fmt: skip
    nb.cells.append(cell)
    cleaned = clean_notebook(nb)
    assert cleaned.metadata["papermill"] == {"parameters": {"a": 1}}
    assert (
        cleaned.cells[0].metadata == {"tags": ["injected-parameters"]} and cleaned.cells[0].id == "injected-parameters"
    )


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _git_ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_committed_outputs_are_in_sync_with_dvc_lock():
    if _git("status", "--porcelain", "--untracked-files=no"):
        pytest.skip("working tree has uncommitted changes; dvc status is only meaningful on a clean checkout")
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    # The dataset and checkpoints live in DVC's cache, not in git: a fresh clone lacks them, and nothing else.
    entries = [entry for stage_entries in json.loads(status.stdout).values() for entry in stage_entries]
    assert all(isinstance(entry, dict) for entry in entries), status.stdout  # e.g. "changed command" is a str
    changes = [(path, state) for entry in entries for paths in entry.values() for path, state in paths.items()]
    assert all(state in ("deleted", "not in cache") and _git_ignored(path) for path, state in changes), status.stdout


def test_training_stages_list_every_run_of_their_section():
    """dvc.yaml cannot loop over a section in ``outs``, so each training stage lists its runs by hand."""
    for stage, section in (("train", "experiments"), ("train_weights", "experiments_with_weights")):
        outs = set(_outputs(ALL_STAGES[stage]))
        logs = {f"logs/photos/{name}/log.txt" for name in PARAMS[section]}
        kept = stage == "train_weights"
        checkpoints = {f"artifacts/checkpoints/{name}/best.pth" for name in PARAMS[section]} if kept else set()
        assert outs == logs | checkpoints, (stage, sorted(outs ^ (logs | checkpoints)))
        assert ALL_STAGES[stage]["params"] == ["training", section] and f" {section} " in ALL_STAGES[stage]["cmd"]
        assert ("--weights-only" in ALL_STAGES[stage]["cmd"]) == kept  # small enough to commit
