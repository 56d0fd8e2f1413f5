"""Run a parameterized notebook with papermill as a pipeline stage, reproducibly.

The source notebook is never executed in place: the executed copy goes to another path, with
timing metadata stripped and cell ids made stable, so reruns are byte-identical. Parameters come
from one section of ``params.yaml``. If the notebook fails, the stage fails with one line (the
notebook's exception), and every file the run created or changed under the output folders is
removed, so no partial figure or table is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import nbformat
import yaml

from .errors import one_line
from .io import atomic_path

KERNEL = "python3"  # papermill from this environment resolves it to the same interpreter
SOURCE_DATE_EPOCH = "946684800"  # 2000-01-01: no real date enters any artifact
OUTPUT_ROOTS = ("artifacts", "figures")
_VOLATILE_PAPERMILL_KEYS = ("start_time", "end_time", "duration", "exception", "status")


class StageError(RuntimeError):
    """A stage that failed; the message is the one line to show."""


def load_section(params_file: str | os.PathLike, section: str) -> dict:
    """The mapping at dotted ``section`` of a YAML params file (e.g. ``model_stats``)."""
    path = Path(params_file)
    if not path.is_file():
        where = "" if path.is_absolute() else f" in {Path.cwd()}"
        raise StageError(
            f"--params: {params_file}: no such file{where} (run from the repository root or pass --params PATH)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise StageError(f"{params_file}{line}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    for key in section.split("."):
        if not isinstance(data, Mapping) or key not in data:
            raise StageError(f"{params_file}: no section {section!r}")
        data = data[key]
    if not isinstance(data, Mapping):
        raise StageError(f"{params_file}: section {section!r} is not a mapping")
    return dict(data)


def check_models(models: Iterable[str], where: str) -> list[str]:
    """Validate a list-of-variants parameter; errors name ``where`` (e.g. ``params.yaml: model_stats.models``)."""
    from .registry import check_model_name

    if isinstance(models, str) or not list(models):
        raise ValueError(f"{where}: expected a non-empty list of model names, got {models!r}")
    return [check_model_name(name, where) for name in models]


def check_positive(value: object, where: str) -> int:
    """Validate a positive-integer parameter such as a resolution."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: must be a positive integer, got {value!r}")
    return value


def clean_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip run-specific metadata (times, durations, paths) and give every cell a stable id."""
    papermill = nb.metadata.get("papermill", {})
    nb.metadata["papermill"] = {"parameters": papermill.get("parameters", {})}
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        for key in _VOLATILE_PAPERMILL_KEYS:
            cell.metadata.get("papermill", {}).pop(key, None)
        if not cell.metadata.get("papermill"):
            cell.metadata.pop("papermill", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = "injected-parameters"
        elif not cell.get("id") or len(cell.id) > 64:
            cell.id = f"cell-{index}"
    return nb


def _snapshot(roots: Iterable[str]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for root in roots for p in Path(root).rglob("*") if p.is_file()}


def run_notebook(source: str | os.PathLike, output: str | os.PathLike, parameters: Mapping[str, object]) -> None:
    """Execute ``source`` with ``parameters`` into ``output`` (cleaned); raise :class:`StageError` on failure."""
    import papermill

    from .kernels import ServedKernelManager, kernel_server

    declared = papermill.inspect_notebook(os.fspath(source))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise StageError(f"parameter {unknown[0]!r} is not declared in the parameters cell of {source}")
    os.environ["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    kernel_server()  # before papermill starts its event loop and ZeroMQ threads, which a fork must not copy
    before = _snapshot(OUTPUT_ROOTS)
    scratch = Path(tempfile.mkdtemp(prefix="repnext-notebook-")) / Path(output).name
    try:
        papermill.execute_notebook(
            os.fspath(source), os.fspath(scratch), parameters=dict(parameters), kernel_name=KERNEL,
            cwd=os.getcwd(), progress_bar=False, log_output=False, report_mode=False,
            kernel_manager_class=ServedKernelManager,
        )  # fmt: skip
    except papermill.PapermillExecutionError as error:  # the executed copy stays, for the traceback in its cells
        _remove_new_files(before)
        raise StageError(f"{source}: {error.ename}: {error.evalue} (executed copy: {scratch})") from None
    except Exception as error:  # the kernel died or never started (nbclient's DeadKernelError, RuntimeError, ...)
        _remove_new_files(before)
        shutil.rmtree(scratch.parent, ignore_errors=True)
        raise StageError(f"{source}: the notebook's kernel failed: {one_line(error)}") from None
    except BaseException:
        _remove_new_files(before)
        shutil.rmtree(scratch.parent, ignore_errors=True)
        raise
    nb = clean_notebook(nbformat.read(scratch, as_version=4))
    with atomic_path(output) as tmp:
        nbformat.write(nb, tmp)
    scratch.unlink()
    scratch.parent.rmdir()


def _remove_new_files(before: Mapping[Path, int]) -> None:
    for path, mtime in _snapshot(OUTPUT_ROOTS).items():
        if before.get(path) != mtime:
            path.unlink()
