"""The feature-maps notebook as Colab runs it: a runtime that already has torch, timm and numpy, a working
directory outside the checkout, and the notebook's own install cell putting repnext in, with its dependencies."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "feature_maps.ipynb"


def _wheel(tmp_path: Path) -> Path:
    """A wheel of the checkout, built from a copy so that the build leaves nothing in the repository."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "repnext", source / "repnext", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, source]
    subprocess.run(command, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("repnext-*.whl")
    return wheel


def _colab_runtime(tmp_path: Path) -> Path:
    """A new virtual environment that sees every package of this one but repnext (Colab's preinstalled
    packages), and imports a stub ``google.colab`` at start-up as Colab's kernels do."""
    runtime = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", runtime], check=True)
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "repnext" not in entry.name.lower() and entry.suffix != ".pth":
            (preinstalled / entry.name).symlink_to(entry)
    stub = tmp_path / "stub" / "google" / "colab"  # no google/__init__.py: google.protobuf stays importable
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stand-in for the module every Colab kernel has imported."""\n')
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([runtime / "bin" / "python", "-c", purelib], capture_output=True, text=True, check=True)
    site = Path(site.stdout.strip())
    (site / "a_preinstalled.pth").write_text(f"{preinstalled}\n{tmp_path / 'stub'}\n")
    (site / "z_colab.pth").write_text("import google.colab\n")
    return runtime


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the project's virtual environment to lend packages")
def test_the_notebook_installs_repnext_with_its_dependencies_and_runs_in_colab(tmp_path):
    wheel, runtime = _wheel(tmp_path), _colab_runtime(tmp_path)
    python = runtime / "bin" / "python"
    work = tmp_path / "content"  # Colab's working directory: no checkout, no params.yaml
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(
        REPNEXT_PIP_SOURCE=str(wheel), PIP_NO_INDEX="1", OMP_NUM_THREADS="1", PATH=f"{runtime / 'bin'}:{env['PATH']}"
    )
    before = subprocess.run([python, "-c", "import repnext"], cwd=work, env=env, capture_output=True, text=True)
    assert before.returncode != 0, "repnext must not be importable before the notebook installs it"
    parameters = ["-p", "model", "recnext_m0", "-p", "input_size", "64", "-p", "output_dir", "figures"]
    run = subprocess.run([python, "-m", "papermill", NOTEBOOK, "executed.ipynb", "-k", "python3", *parameters],
                         cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    executed = json.loads((work / "executed.ipynb").read_text())
    install = next(c for c in executed["cells"] if "REPNEXT_PIP_SOURCE" in "".join(c["source"]))
    assert install["metadata"]["papermill"]["status"] == "completed"
    # where each package would be imported from (find_spec locates a top-level package without importing it)
    find = "import importlib.util as u; print(u.find_spec('repnext').origin); print(u.find_spec('torch').origin)"
    where = subprocess.run(
        [python, "-c", find], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(where[0]).is_relative_to(runtime), "repnext comes from the installed wheel, not the checkout"
    assert not Path(where[1]).is_relative_to(runtime), "the runtime's own torch stays; pip installed no other"
    assert sorted(p.name for p in (work / "figures" / "recnext_m0").glob("*.pdf")) == ["chelsea-stage0-block1.pdf"]
