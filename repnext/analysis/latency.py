"""Measured speed: batch-1 latency and throughput of training and fused forms on several backends.

Every number here is a time measurement and differs between runs and machines; files holding
them are named ``latency_*`` so the determinism checks know to skip them.

Protocol. Each configuration (model x form x backend) is prepared once (built, fused, exported or
compiled), warmed up, then timed one call at a time, *interleaved*: round ``r`` calls every
configuration once, in an order rotated by ``r``, so drift of the machine (thermal, other
processes) hits all configurations alike. Latency is the median over rounds, with the
inter-quartile range as its spread. Throughput follows upstream's ``speed_gpu.py``: run for a
warm-up time, then time calls until a measuring time has passed and report images per second.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from ..registry import list_models
from ..reparam import reparameterize
from ..tables import Table

BACKENDS = ("eager", "channels_last", "torchscript", "onnxruntime", "openvino", "compile")
FORMS = ("unfused", "fused")
LATENCY_COLUMNS = (
    "model", "form", "backend", "device", "threads", "resolution", "median_ms", "iqr_ms", "min_ms", "rounds",
    "macs_g", "gmacs_per_s", "sgemm_fraction",
)  # fmt: skip
THROUGHPUT_COLUMNS = ("model", "form", "backend", "device", "batch_size", "resolution", "images_per_s", "calls")


CPU = torch.device("cpu")


class BenchmarkError(RuntimeError):
    """A configuration that cannot be measured here; the message is the one line to show."""


@dataclass(frozen=True)
class Config:
    """One thing to time: a model in one form on one backend."""

    model: str
    form: str
    backend: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.form}/{self.backend}"


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


def check_backend(backend: str) -> str:
    """Validate a backend name and that the package it needs is installed."""
    if backend not in BACKENDS:
        raise BenchmarkError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    from ..export import missing_package

    needs = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}.get(backend, ())
    if package := missing_package(*needs):
        raise BenchmarkError(
            f"backend {backend!r} needs the {package!r} package, which is not installed "
            f"(pip install {package}; onnx and onnxruntime come with `pip install repnext[export]`)"
        )
    return backend


def check_timm_model(name: str) -> str:
    """Any model timm can build (this package's variants are registered with timm on import)."""
    if name not in timm.list_models():
        close = [m for m in timm.list_models(f"*{name.split('_')[0]}*")][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise BenchmarkError(f"unknown model {name!r} (not a timm or repnext model){hint}")
    return name


def build_model(name: str, form: str, device: torch.device, weights: str | None = None) -> nn.Module:
    """``name`` in eval mode, fused when ``form == 'fused'``; random weights unless ``weights`` is given.

    Models from this package fuse with :func:`repnext.reparameterize`; timm's peers (RepViT,
    MobileOne, FastViT, ...) with ``timm.utils.reparameterize_model`` (a no-op for models with
    nothing to fuse). Random weights time the same as trained ones. ``weights`` (any spec of
    :func:`repnext.weights.load_weights`, a fused TorchScript file included) applies to this package's variants.
    """
    if form not in FORMS:
        raise BenchmarkError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if weights is not None and name in list_models():
        from ..weights import load_weights

        try:
            model, loaded = load_weights(name, weights)
        except ValueError as error:
            raise BenchmarkError(str(error)) from None
        if loaded.form != "train":
            if form == "unfused":
                raise BenchmarkError(f"--weights {weights}: a fused model; pass --fused")
            return model.to(device)
        model = model.to(device)
        return reparameterize(model) if form == "fused" else model
    model = timm.create_model(name, pretrained=False).eval().to(device)
    if form == "fused":
        model = reparameterize(model) if type(model).__module__.startswith("repnext.") else _timm_fuse(model)
    return model


def _timm_fuse(model: nn.Module) -> nn.Module:
    from timm.utils import reparameterize_model

    return reparameterize_model(model)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(model: nn.Module, backend: str, inputs: torch.Tensor, threads: int, workdir: Path) -> Callable[[], object]:
    """A no-argument callable running ``model`` on ``inputs`` with ``backend`` (exports go to ``workdir``)."""
    device = inputs.device
    if backend == "eager":
        return _no_grad(model, inputs)
    if backend == "channels_last":  # a copy: the same built model also serves the other backends
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return _no_grad(model, inputs.contiguous(memory_format=torch.channels_last))
    if backend == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():  # deprecated in torch 2.14, still supported
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, inputs)))
        return _no_grad(scripted, inputs)
    if backend == "compile":
        compiled = torch.compile(model, dynamic=False)
        return _no_grad(compiled, inputs)
    from ..export import export_onnx

    onnx_path = workdir / f"{backend}.onnx"
    export_onnx(model, onnx_path, inputs)
    array = inputs.cpu().numpy()
    if backend == "onnxruntime":
        session = onnx_session(onnx_path, threads, device)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: array})
    if device.type != "cpu":
        raise BenchmarkError("backend 'openvino' runs on the CPU here; use --device cpu")
    import openvino as ov

    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: array})


def onnx_session(path: str | Path, threads: int, device: torch.device = CPU):
    """An ONNX Runtime session with full graph optimization and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BenchmarkError("onnxruntime here has no CUDA provider (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def _no_grad(fn: Callable[[torch.Tensor], object], inputs: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return fn(inputs)

    return call


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in torch, restoring the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    device: torch.device = CPU,
    progress: bool | None = None,
) -> dict[str, list[float]]:
    """Seconds per call for each entry of ``calls``: ``warmup`` untimed calls each, then ``rounds``
    rounds that call every entry once, in an order rotated each round."""
    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key]()
    _synchronize(device)
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in tqdm(range(rounds), desc="timing", unit="round", disable=_quiet(progress), leave=False):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in order:
            start = time.perf_counter()
            calls[key]()
            _synchronize(device)
            times[key].append(time.perf_counter() - start)
    return times


def throughput(
    call: Callable[[], object], batch_size: int, device: torch.device, warmup_s: float = 5.0, measure_s: float = 10.0
) -> tuple[float, int]:
    """Images per second, upstream's ``speed_gpu.py`` protocol: run ``warmup_s`` seconds, then time
    calls until their total exceeds ``measure_s``; returns ``(batch_size / mean time, calls timed)``."""
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        call()
    _synchronize(device)
    timings: list[float] = []
    while sum(timings) < measure_s:
        tick = time.perf_counter()
        call()
        _synchronize(device)
        timings.append(time.perf_counter() - tick)
    return batch_size / statistics.fmean(timings), len(timings)


def sgemm_rate(threads: int, size: int = 1024, rounds: int = 10) -> float:
    """This machine's float32 matrix-multiply rate in GMAC/s (one ``size^3`` matmul = ``size^3`` MACs),
    the median over ``rounds`` on ``threads`` threads: the roofline the models are compared with."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    with num_threads(threads):
        times = time_interleaved({"sgemm": lambda: torch.mm(a, b)}, rounds, warmup=2, progress=False)["sgemm"]
    return size**3 / statistics.median(times) / 1e9


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: ``None`` shows progress bars only on a terminal."""
    return None if progress is None else not progress


def _spread(times: Sequence[float]) -> tuple[float, float, float]:
    """Median, inter-quartile range and minimum, in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    if len(ms) < 2:
        return ms[0], 0.0, ms[0]
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return statistics.median(ms), q3 - q1, ms[0]


def benchmark(
    models: Sequence[str],
    forms: Sequence[str] = FORMS,
    backends: Sequence[str] = ("eager",),
    resolution: int = 224,
    threads: int = 1,
    device: str = "cpu",
    rounds: int = 30,
    warmup: int = 5,
    batch_size: int = 1,
    sgemm_gmacs: float | None = None,
    throughput_seconds: tuple[float, float] = (5.0, 10.0),
    unfused_backends: Sequence[str] | None = None,
    progress: bool | None = None,
    weights: str | None = None,
) -> tuple[Table, Table | None]:
    """Batch-1 latency of every ``model x form x backend``, interleaved, and (``batch_size > 1``)
    throughput at ``batch_size`` (``throughput_seconds`` = warm-up and measuring time per configuration).
    ``unfused_backends`` restricts the training form to those backends (default: all of ``backends``).
    ``weights`` loads this package's variants through :func:`repnext.weights.load_weights` (default: random).

    Returns ``(latency, throughput)`` tables; latency rows carry the fused model's fvcore MACs and,
    given this machine's ``sgemm_gmacs`` rate, the achieved MAC rate as a fraction of it.
    """
    from .stats import count_macs

    dev = check_device(device)
    backends = [check_backend(b) for b in backends]
    models = [check_timm_model(m) for m in models]
    unfused = backends if unfused_backends is None else [check_backend(b) for b in unfused_backends]
    configs = [Config(m, f, b) for m in models for f in forms for b in (unfused if f == "unfused" else backends)]
    latency_rows, throughput_rows = [], []
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(dev)
    built: dict[tuple[str, str], nn.Module] = {}  # each model and form built once, shared by its backends

    def model_in(name: str, form: str) -> nn.Module:
        if (name, form) not in built:
            built[name, form] = build_model(name, form, dev, weights)
        return built[name, form]

    with num_threads(threads), tempfile.TemporaryDirectory(prefix="repnext-bench-") as tmp:
        calls, batched, macs = {}, {}, {}
        for config in tqdm(configs, desc="preparing", unit="config", disable=_quiet(progress)):
            model = model_in(config.model, config.form)
            if config.model not in macs:
                macs[config.model] = count_macs(model_in(config.model, "fused"), resolution)[0]
            workdir = Path(tmp) / config.key.replace("/", "-")
            (workdir / "batched").mkdir(parents=True)
            calls[config.key] = prepare(model, config.backend, x, threads, workdir)
            if batch_size > 1:
                batched[config.key] = prepare(model, config.backend, x.expand(batch_size, -1, -1, -1).contiguous(),
                                              threads, workdir / "batched")  # fmt: skip
        times = time_interleaved(calls, rounds, warmup, dev, progress)
        for config in configs:
            median, iqr, best = _spread(times[config.key])
            gmacs_per_s = macs[config.model] / 1e9 / (median / 1e3)
            setting = dict(model=config.model, form=config.form, backend=config.backend, device=dev.type)
            latency_rows.append(
                {**setting, "threads": threads, "resolution": resolution, "median_ms": median, "iqr_ms": iqr,
                 "min_ms": best, "rounds": rounds, "macs_g": macs[config.model] / 1e9, "gmacs_per_s": gmacs_per_s,
                 "sgemm_fraction": gmacs_per_s / sgemm_gmacs if sgemm_gmacs else None}
            )  # fmt: skip
            if batch_size > 1:
                rate, count = throughput(batched[config.key], batch_size, dev, *throughput_seconds)
                throughput_rows.append(
                    {**setting, "batch_size": batch_size, "resolution": resolution, "images_per_s": rate,
                     "calls": count}
                )  # fmt: skip
    floats = dict(median_ms=".2f", iqr_ms=".2f", min_ms=".2f", macs_g=".3f", gmacs_per_s=".2f", sgemm_fraction=".3f")
    latency = Table(LATENCY_COLUMNS, latency_rows, floats, sort_by=("model", "form", "backend"))
    rates = Table(THROUGHPUT_COLUMNS, throughput_rows, dict(images_per_s=".1f"), sort_by=("model", "form", "backend"))
    return latency, rates if batch_size > 1 else None


def machine() -> dict[str, object]:
    """What the measurements ran on: CPU model, logical cores, torch version and build, CUDA device."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(cpu=cpu, logical_cores=os.cpu_count(), torch=torch.__version__, cuda_device=gpu)
