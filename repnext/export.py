"""Export the fused model to ONNX, TorchScript, a ``torch.export`` program, OpenVINO IR or Core ML, and verify the
artifact against PyTorch.

:func:`export_model` writes each export to a temporary path and moves it into place only after it ran (ONNX
Runtime, ``torch.jit.load``, ``torch.export.load``) and matched the PyTorch model on random input within a tolerance,
so a failed or inaccurate export leaves nothing behind. Core ML models can only be run on macOS; on other systems
the conversion is checked by its spec (input and output names and shapes) instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .io import write_serialized
from .runtimes import as_array, missing_package, onnx_session, openvino_request

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program", "openvino", "coreml")
# Formats whose loaders go by the file name: the suffix, and what to say when it is another.
SUFFIXES = {
    "openvino": (".xml", "an OpenVINO IR is named .xml (its weights go to the .bin beside it)"),
    "exported-program": (".pt2", "an exported program is named .pt2 (the archive torch.export.load reads)"),
}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_BATCH = 1024  # the dynamic batch axis' upper bound, for the exporters that need one


def batch_dim() -> torch.export.Dim:
    """The symbolic batch size of every dynamic-batch export."""
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


class ExportError(RuntimeError):
    """An export that failed or did not match PyTorch; the message is the one line to show."""


@dataclass(frozen=True)
class ExportReport:
    """Where the verified artifact is and how far its outputs are from PyTorch's."""

    path: Path
    format: str
    max_abs_error: float | None  # None: the format cannot run here (Core ML off macOS)
    checked: str


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 18) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; ``example`` is a ``[B, 3, H, W]`` input.

    Uses the ``torch.export``-based exporter (the default since PyTorch 2.9); H and W are fixed to
    the example's size, so RecNeXt's interpolation sizes become constants of the graph.
    """
    path = Path(path)
    # The exporter narrates each step on stdout and as warnings; tables printed by the CLI stay clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch_dim()},),
            opset_version=opset,
            verbose=False,
        )
    program.save(str(path))
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Trace ``model`` on ``example`` and save it with ``torch.jit.save``."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input-shape checks become constants
        traced = torch.jit.trace(model.eval(), example)
    write_serialized(path, lambda buffer: torch.jit.save(traced, buffer))
    return path


def exported_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` with a dynamic batch axis; ``example`` is ``[B, 3, H, W]`` with B >= 2.

    torch.export specializes sizes 0 and 1, so a batch of one would fix the axis; H and W stay fixed to the
    example's (RecNeXt's resampling sizes follow from them).
    """
    if example.shape[0] < 2:
        raise ValueError(f"trace a dynamic batch on an example of 2 or more images, got {list(example.shape)}")
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch_dim()},))


def export_exported_program(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Save :func:`exported_program` of ``model`` as a ``.pt2`` archive (``torch.export.save``)."""
    path = Path(path)
    program = exported_program(model, example)
    write_serialized(path, lambda buffer: torch.export.save(program, buffer))
    return path


def export_openvino(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """OpenVINO IR: ``path`` (``.xml``) and the float32 weights beside it (``.bin``), converted from the
    ONNX export (dynamic batch axis, fixed H and W)."""
    import openvino as ov

    path = Path(path)
    onnx_path = export_onnx(model, path.with_suffix(".onnx"), example)
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)  # default would halve weights
    onnx_path.unlink()
    return path


def export_coreml(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Convert ``model`` to a Core ML ``.mlpackage`` (ML program, iOS 16+) with a fixed input shape."""
    if missing_package("coremltools"):
        raise ExportError("format 'coreml' needs coremltools (pip install coremltools)")
    import coremltools as ct

    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), example)
        converted = ct.convert(
            traced,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
        )
    converted.save(str(path))
    return path


def _max_abs(ours: np.ndarray, reference: torch.Tensor) -> float:
    return float(np.abs(np.asarray(ours, dtype=np.float64) - reference.double().numpy()).max())


def verify_onnx(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on ``inputs``."""
    session = onnx_session(path, threads=torch.get_num_threads())
    (output,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
    with torch.no_grad():
        return _max_abs(output, model(inputs))


def verify_openvino(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max abs difference between the OpenVINO IR (CPU, float32) and PyTorch on ``inputs``."""
    output = as_array(openvino_request(path, threads=torch.get_num_threads()).infer({0: inputs.numpy()}))
    with torch.no_grad():
        return _max_abs(output, model(inputs))


def verify_torchscript(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max abs difference between the saved TorchScript module and PyTorch on ``inputs``."""
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return _max_abs(loaded(inputs).numpy(), model(inputs))


def verify_exported_program(path: Path, model: nn.Module, *inputs: torch.Tensor) -> float:
    """Largest max abs difference between the saved ``.pt2`` program, reloaded, and PyTorch over ``inputs``."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        return max(_max_abs(program(x).numpy(), model(x)) for x in inputs)


def check_coreml_spec(path: Path, example: torch.Tensor, num_outputs: int) -> str:
    """Check the saved Core ML model's input and output names and shapes; returns what was checked."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = {i.name: tuple(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    if inputs != {INPUT_NAME: tuple(example.shape)} or outputs != [OUTPUT_NAME]:
        raise ExportError(f"{path}: Core ML spec has inputs {inputs} and outputs {outputs}; "
                          f"expected {INPUT_NAME} {tuple(example.shape)} -> {OUTPUT_NAME}")  # fmt: skip
    return f"spec: {INPUT_NAME} {tuple(example.shape)} -> {OUTPUT_NAME} [1, {num_outputs}] (prediction needs macOS)"


def export_model(
    model: nn.Module,
    fmt: str,
    output: str | os.PathLike,
    resolution: int = 224,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` (in eval mode, already fused if wanted) as ``fmt`` to ``output`` and verify it.

    ONNX, OpenVINO and TorchScript are run on a random ``[2, 3, resolution, resolution]`` batch (ONNX exported
    at batch 1, so the dynamic batch axis is exercised), an exported program (traced at batch 2) on batches of 1
    and 3; each must agree with PyTorch within ``tolerance`` (max abs); otherwise nothing is left at ``output``
    and :class:`ExportError` is raised.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt in SUFFIXES and Path(output).suffix != SUFFIXES[fmt][0]:
        raise ExportError(f"{output}: {SUFFIXES[fmt][1]}")
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(1, 3, resolution, resolution, generator=generator)
    batch = torch.randn(2, 3, resolution, resolution, generator=generator)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / output.name
        if fmt == "coreml":
            export_coreml(model, staged, example)
            with torch.no_grad():
                num_outputs = model(example).shape[-1]
            checked, error = check_coreml_spec(staged, example, num_outputs), None
        else:
            if fmt == "onnx":
                _require("onnxruntime", "onnx")
                export_onnx(model, staged, example)
                error = verify_onnx(staged, model, batch)
            elif fmt == "openvino":
                _require("openvino", "onnx")
                export_openvino(model, staged, example)
                error = verify_openvino(staged, model, batch)
            elif fmt == "exported-program":
                export_exported_program(model, staged, batch)
                error = verify_exported_program(staged, model, example, torch.cat([example, batch]))
            else:
                export_torchscript(model, staged, example)
                error = verify_torchscript(staged, model, batch)
            sizes = "random batches of 1 and 3" if fmt == "exported-program" else "a random batch of 2"
            checked = f"max abs error {error:.3g} on {sizes} (tolerance {tolerance:g})"
            if not error <= tolerance:
                raise ExportError(f"{fmt} export differs from PyTorch by {error:.3g} (> tolerance {tolerance:g})")
        if output.is_dir():
            shutil.rmtree(output)
        if fmt == "openvino":  # weights first: an .xml in place always has its .bin
            os.replace(staged.with_suffix(".bin"), output.with_suffix(".bin"))
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(output, fmt, error, checked)


def _require(*packages: str) -> None:
    if missing := missing_package(*packages):
        raise ExportError(f"this export needs {missing!r}: pip install 'repnext[export]'")
