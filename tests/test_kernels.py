"""Notebook kernels forked from a kernel server: fresh kernels with torch, timm and repnext already imported."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading

import nbformat
import pytest
import yaml

from repnext.kernels import _fork_is_safe
from repnext.pipeline import StageError, run_notebook

pytestmark = pytest.mark.usefixtures("one_thread_kernels")

# Each cell records a fact about the kernel it runs in; the last one plots, so the inline backend is checked too.
CELLS = [
    "import os, sys\nfacts = {'preloaded': 'repnext' in sys.modules and 'torch' in sys.modules}",
    "facts.update(pid=os.getpid(), group=os.getpgrp(), cwd=os.getcwd(), value=os.environ.get('REPNEXT_TEST_VALUE'))",
    "with open(f'/proc/{os.getppid()}/cmdline', 'rb') as f:\n    facts['server'] = f.read().decode().split('\\0')",
    "import multiprocessing, subprocess\n"
    "child = multiprocessing.get_context('fork').Process(target=os.getpid)\nchild.start(); child.join()\n"
    "facts['child_exitcode'] = child.exitcode\n"
    "facts['subprocess'] = subprocess.run([sys.executable, '-c', 'pass']).returncode",
    "import json, matplotlib.pyplot as plt\nplt.plot([0, 1])\n"
    "os.makedirs('artifacts', exist_ok=True)\n"
    "json.dump(facts, open('artifacts/facts.json', 'w'))",
]


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("value = 0")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, *map(nbformat.v4.new_code_cell, CELLS)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _facts(folder):
    return json.loads((folder / "artifacts" / "facts.json").read_text())


def _check(folder, facts, executed):
    assert facts["preloaded"], "the kernel imported repnext itself"
    assert facts["group"] == facts["pid"], "a kernel leads its own process group, as Jupyter starts kernels"
    assert facts["cwd"] == str(folder) and facts["value"] == "7"
    assert facts["child_exitcode"] == 0 and facts["subprocess"] == 0  # may start processes and wait for them
    outputs = [output for cell in nbformat.read(executed, as_version=4).cells for output in cell.get("outputs", [])]
    assert any("image/png" in output.get("data", {}) for output in outputs), "matplotlib's inline backend is not on"


@contextlib.contextmanager
def _another_thread():
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        yield
    finally:
        release.set()
        thread.join()


@pytest.mark.xdist_group("notebook_kernels")  # the kernel server of tests/test_pipeline.py
def test_kernels_of_a_process_running_threads_come_from_a_spawned_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPNEXT_TEST_VALUE", "7")
    source = _notebook(tmp_path / "facts.ipynb")
    with _another_thread():  # as pytest-xdist's worker threads, or a torch thread pool
        assert not _fork_is_safe()
        run_notebook(source, tmp_path / "executed.ipynb", {"value": 1})
    facts = _facts(tmp_path)
    _check(tmp_path, facts, tmp_path / "executed.ipynb")
    assert "multiprocessing.spawn" in " ".join(facts["server"])


def test_the_repnext_command_forks_its_kernel_server_from_itself(tmp_path):
    source = _notebook(tmp_path / "facts.ipynb")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"section": {"value": 1}}))
    command = [sys.executable, "-m", "repnext", "notebook", str(source), "out.ipynb", "--section", "section"]
    env = {**os.environ, "REPNEXT_TEST_VALUE": "7"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    facts = _facts(tmp_path)
    _check(tmp_path, facts, tmp_path / "out.ipynb")
    assert facts["server"][1:4] == ["-m", "repnext", "notebook"], facts["server"]  # a fork of the command itself


def test_a_kernel_that_dies_mid_run_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("value = 0"),
        nbformat.v4.new_code_cell(
            "import os\nos.makedirs('artifacts', exist_ok=True)\n"
            "open('artifacts/partial.txt', 'w').close()\nos._exit(3)"
        ),
    ]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "dies.ipynb")
    scratch = tmp_path / "scratch"  # where run_notebook's temporary folder goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(StageError, match=r"^dies\.ipynb: the notebook's kernel failed: DeadKernelError: "):
        run_notebook("dies.ipynb", "out.ipynb", {})
    assert not (tmp_path / "out.ipynb").exists() and not (tmp_path / "artifacts" / "partial.txt").exists()
    assert list(scratch.iterdir()) == []  # nor its half-executed copy
