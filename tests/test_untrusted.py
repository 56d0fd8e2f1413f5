"""Untrusted files never execute: a checkpoint whose pickle would run code, given to every command that takes
weights, and a params.yaml whose tag would construct an object, are refused with one line, and their code never
runs (the marker file it would write never appears)."""

import pytest
import torch

from repnext.cli import main


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if a loader runs the pickle's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def poisoned(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "poisoned.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 0, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


COMMANDS = {
    "eval": ["eval", "repnext_m0", "--data", "builtin:photos", "--weights", "{ckpt}"],
    "features": ["features", "repnext_m0", "--weights", "{ckpt}", "-o", "{tmp}/fm"],
    "bench": ["bench", "repnext_m0", "--weights", "{ckpt}", "--backend", "eager", "--resolution", "32"],
    "export": ["export", "repnext_m0", "--checkpoint", "{ckpt}", "--format", "torchscript", "-o", "{tmp}/m.pt"],
    "train": ["train", "repnext_m0", "--data", "builtin:photos", "--out", "{tmp}/run", "--resume", "{ckpt}"],
    "publish": ["publish", "{ckpt}", "--model", "repnext_m0", "-o", "{tmp}/published"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(command, poisoned, tmp_path):
    path, marker = poisoned
    argv = [arg.format(ckpt=path, tmp=tmp_path) for arg in COMMANDS[command]]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    line = str(raised.value)
    assert line.startswith(f"repnext {command}: ") and "\n" not in line, line
    assert "refused by weights_only=True" in line and "poisoned.pth" in line, line
    assert not marker.exists(), "the pickle's code ran"
    assert not any(p.name in ("fm", "m.pt", "run", "published") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "command",
    [
        ["notebook", "notebooks/model_stats.ipynb", "{tmp}/out.ipynb", "--section", "model_stats"],
        ["check-params", "notebooks/model_stats.ipynb", "--section", "model_stats"],
        ["train-experiments", "experiments", "--data", "builtin:photos", "--out", "{tmp}/logs"],
    ],
    ids=["notebook", "check-params", "train-experiments"],
)
def test_a_params_yaml_tag_that_would_construct_an_object_is_refused(command, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    params = tmp_path / "params.yaml"
    section = command[command.index("--section") + 1] if "--section" in command else command[1]
    params.write_text(f"{section}: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parents[1])
    with pytest.raises(SystemExit) as raised:
        main([arg.format(tmp=tmp_path) for arg in command] + ["--params", str(params)])
    line = str(raised.value)
    assert "\n" not in line and f"{params}:1: not valid YAML" in line, line
    assert not marker.exists()
