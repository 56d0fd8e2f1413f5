"""What ``repnext bench`` can time: the backends, their checks, and how each one is prepared.

Everything here runs inside one worker process per backend (see :mod:`repnext.analysis.latency.workers`):
a prepared configuration is a no-argument callable whose result converts to one ``numpy`` array
(the logits), so every backend can be verified against the PyTorch output before it is timed.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from ...registry import list_models, models_by_family
from ...reparam import reparameterize
from ...runtimes import CPU, missing_package, onnx_session, openvino_request

BACKENDS = ("eager", "channels_last", "torchscript", "onnxruntime", "openvino", "compile")
FORMS = ("unfused", "fused", "single_branch", "two_branch")
# RepNeXt's fused form merged further (repnext.reparameterize's keyword): one kxk conv per mixer, or two
MERGED_FORMS = {"single_branch": {"single_branch": True}, "two_branch": {"two_branch": True}}
TORCH_BACKENDS = frozenset({"eager", "channels_last", "torchscript", "compile"})
ONNX_BACKENDS = frozenset({"onnxruntime", "openvino"})
PEAK_BACKENDS = ("eager", "onnxruntime", "openvino")  # float32 GEMM of torch, ONNX Runtime and OpenVINO
DW_CHANNELS = 256  # channels of the reference depthwise convs (a RepNeXt-M stage 2-3 width)
DW_KERNELS = (3, 7, 11)  # their kernel sides: the depthwise kernels of these models run from 3x3 to 11x11
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}


class BenchmarkError(RuntimeError):
    """A configuration that cannot be measured here; the message is the one line to show."""


def check_device(device: str) -> torch.device:
    """``torch.device(device)``, or a clear error when CUDA is asked for and absent."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BenchmarkError(f"unsupported device {device!r}; choose cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"device {device!r} requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise BenchmarkError(f"unsupported device {device!r}; choose cpu or cuda")
    return dev


def missing_requirement(backend: str) -> str | None:
    """One line saying why ``backend`` cannot run here (a package or compiler is missing), or ``None``.

    An unknown name is an error, not a missing requirement.
    """
    if backend not in BACKENDS:
        raise BenchmarkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if package := missing_package(*_PACKAGES.get(backend, ())):
        return (f"backend {backend!r} needs the {package!r} package, which is not installed "
                f"(pip install 'repnext[export]')")  # fmt: skip
    if backend == "compile" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "backend 'compile' needs a C++ compiler on PATH (torch.compile's inductor builds C++ kernels)"
    return None


def check_backend(backend: str) -> str:
    """Validate a backend name and that what it needs is installed."""
    if reason := missing_requirement(backend):
        raise BenchmarkError(reason)
    return backend


def check_timm_model(name: str) -> str:
    """Any model timm can build (this package's variants are registered with timm on import)."""
    if name not in timm.list_models():
        close = [m for m in timm.list_models(f"*{name.split('_')[0]}*")][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise BenchmarkError(f"unknown model {name!r} (not a timm or repnext model){hint}")
    return name


def build_model(
    name: str, form: str, device: torch.device = CPU, seed: int = 0, weights: str | None = None
) -> nn.Module:
    """``name`` with random weights (seeded) in eval mode, fused when ``form == 'fused'``.

    Models from this package fuse with :func:`repnext.reparameterize`; timm's peers (RepViT,
    MobileOne, FastViT, ...) with ``timm.utils.reparameterize_model`` (a no-op for models with
    nothing to fuse). Random weights time the same as trained ones. ``weights`` (any spec of
    :func:`repnext.weights.load_weights`, a fused TorchScript file included) applies to this package's variants.
    """
    if form not in FORMS:
        raise BenchmarkError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if form in MERGED_FORMS and not has_single_branch(name):
        raise BenchmarkError(f"{name} has no {form} form (only RepNeXt's variants do)")
    if weights is not None and name in list_models():
        return _with_weights(name, form, device, weights)
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval().to(device)
    return model if form == "unfused" else fuse_model(model, **MERGED_FORMS.get(form, {}))


def has_single_branch(name: str) -> bool:
    """Whether variant ``name`` has the merged forms of :data:`MERGED_FORMS` beside its fused one (RepNeXt's: one
    kxk depthwise conv per mixer, upstream's "E" models, or two); tests check this against
    :func:`repnext.reparam.has_single_branch_form`."""
    return models_by_family().get(name) == "repnext"


def fuse_model(model: nn.Module, **merge: bool) -> nn.Module:
    """The fused copy of a built model (``model`` untouched): :func:`repnext.reparameterize` for this package's
    variants (``merge``, a value of :data:`MERGED_FORMS`, merges RepNeXt's branches too),
    ``timm.utils.reparameterize_model`` for timm's."""
    if type(model).__module__.startswith("repnext."):
        return reparameterize(model, **merge)
    return _timm_fuse(model)


def unchanged_by_fusion(model: nn.Module, fused: nn.Module) -> bool:
    """Whether fusing left ``model`` as it was (same modules, same tensors): peers with nothing to fuse."""
    if type(model) is not type(fused) or repr(model) != repr(fused):
        return False
    before, after = model.state_dict(), fused.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _with_weights(name: str, form: str, device: torch.device, weights: str) -> nn.Module:
    from ...weights import in_form, load_weights

    try:
        model, loaded = load_weights(name, weights)
        model = in_form(model.to(device), loaded, "train" if form == "unfused" else "fused", weights)
        return reparameterize(model, inplace=True, **MERGED_FORMS[form]) if form in MERGED_FORMS else model
    except ValueError as error:  # WeightsError: one line naming the file
        raise BenchmarkError(str(error)) from None


def _timm_fuse(model: nn.Module) -> nn.Module:
    from timm.utils import reparameterize_model

    return reparameterize_model(model)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def export_for_timing(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    """ONNX for ONNX Runtime and OpenVINO, with a dynamic batch axis (input ``[B, 3, H, W]``).

    Uses the TorchScript-based exporter: 5-10x faster than the ``torch.export``-based one of
    ``repnext export`` (which is too slow for a 49-model stage) and, on RepNeXt-M1, as fast to run.
    """
    from ...export import INPUT_NAME, OUTPUT_NAME

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of this exporter; tracer warnings on shape checks
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=18,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})  # fmt: skip
    return path


def prepare_torch(model: nn.Module, backend: str, inputs: torch.Tensor) -> Callable[[], object]:
    """A no-argument callable running ``model`` (owned by the caller's worker) on ``inputs`` with ``backend``."""
    if backend == "channels_last":
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return _no_grad(model, inputs.contiguous(memory_format=torch.channels_last))
    if backend == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():  # deprecated in torch 2.14, still supported
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, inputs)))
        return _no_grad(scripted, inputs)
    if backend == "compile":
        return _no_grad(torch.compile(model, dynamic=False), inputs)
    return _no_grad(model, inputs)


def prepare_onnx(path: Path, backend: str, array: np.ndarray, threads: int, device: torch.device = CPU):
    """A no-argument callable running the ONNX file ``path`` on ``array`` with ONNX Runtime or OpenVINO."""
    if backend == "onnxruntime":
        session = onnx_session(path, threads, device)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: array})
    if device.type != "cpu":
        raise BenchmarkError("backend 'openvino' runs on the CPU here; use --device cpu")
    request = openvino_request(path, threads)
    return lambda: request.infer({0: array}, share_inputs=True)


def _no_grad(fn: Callable[[torch.Tensor], object], inputs: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return fn(inputs)

    return call


def prepare_gemm(backend: str, size: int, threads: int, workdir: Path, device: torch.device = CPU):
    """A callable doing one float32 ``[size, size] @ [size, size]`` product (``size^3`` MACs) with ``backend``."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    if backend == "eager":
        a, b = a.to(device), b.to(device)
        out = torch.empty_like(a)
        return lambda: torch.mm(a, b, out=out)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = workdir / f"gemm{size}.onnx"
    if not path.exists():
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
            [helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])],
            initializer=[numpy_helper.from_array(b.numpy(), "B")],
        )  # fmt: skip
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return prepare_onnx(path, backend, a.numpy(), threads, device)


def prepare_dwconv(backend: str, side: int, threads: int, workdir: Path, device: torch.device = CPU,
                   kernel: int = 3):  # fmt: skip
    """A callable doing one float32 ``kernel x kernel`` depthwise conv of ``[1, DW_CHANNELS, side, side]`` (same
    padding; ``kernel^2 x DW_CHANNELS x side^2`` MACs) with ``backend``: a reference rate of depthwise layers."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, DW_CHANNELS, side, side, generator=generator)
    weight = torch.randn(DW_CHANNELS, 1, kernel, kernel, generator=generator)
    pad = kernel // 2
    if backend == "eager":
        x, weight = x.to(device), weight.to(device)
        return lambda: torch.nn.functional.conv2d(x, weight, padding=pad, groups=DW_CHANNELS)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = workdir / f"dwconv{kernel}x{kernel}-{side}.onnx"
    if not path.exists():
        shape = [1, DW_CHANNELS, side, side]
        conv = helper.make_node("Conv", ["X", "W"], ["Y"], group=DW_CHANNELS, pads=[pad] * 4,
                                kernel_shape=[kernel, kernel])  # fmt: skip
        graph = helper.make_graph(
            [conv], "dwconv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
            initializer=[numpy_helper.from_array(weight.numpy(), "W")],
        )  # fmt: skip
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return prepare_onnx(path, backend, x.numpy(), threads, device)


def prepare_copy(mib: float, device: torch.device = CPU) -> Callable[[], object]:
    """A callable copying ``mib`` MiB of float32 to another buffer (reads and writes ``2 * mib`` MiB)."""
    source = torch.ones(int(mib * 2**18), device=device)
    target = torch.empty_like(source)
    return lambda: target.copy_(source)
