"""The inference runtimes besides PyTorch: ONNX Runtime sessions and OpenVINO requests, one way to open each.

``repnext export`` verifies its ONNX and OpenVINO files with these sessions and ``repnext bench`` times with the
same ones, so a verified file is run as it is timed. The runtimes are optional (the ``export`` extra): they are
imported when a session is opened.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

CPU = torch.device("cpu")
_SHARED_ORT_POOL: dict[str, int] = {}  # {"threads": n} once this process's ONNX Runtime sessions share one pool


class RuntimeSetupError(RuntimeError):
    """A runtime that cannot be opened as asked; the message is the one line to show."""


def missing_package(*packages: str) -> str | None:
    """The first of ``packages`` (optional dependencies, e.g. the ``export`` extra) that cannot be imported."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            return package
    return None


def share_onnxruntime_pool(threads: int) -> None:
    """Make every later ONNX Runtime session of this process use one intra-op pool of ``threads`` threads.

    A latency worker calls it first: with a pool per session, a session's threads keep spinning after its
    call and took the cores from the next session's, which then ran 2x slower (RepNeXt-M1 19.5 -> 41 ms
    right after three other sessions; 20.2 ms with one shared pool). Once set, it holds for the process.
    """
    from onnxruntime.capi._pybind_state import set_global_thread_pool_sizes

    if _SHARED_ORT_POOL.get("threads", threads) != threads:
        raise RuntimeSetupError(f"ONNX Runtime's shared pool has {_SHARED_ORT_POOL['threads']} threads, not {threads}")
    if not _SHARED_ORT_POOL:
        set_global_thread_pool_sizes(threads, 1)
        _SHARED_ORT_POOL["threads"] = threads


def onnx_session(path: str | Path, threads: int, device: torch.device = CPU, profile_prefix: str | None = None):
    """An ONNX Runtime session with full graph optimization and ``threads`` intra-op threads (the process's
    shared pool after :func:`share_onnxruntime_pool`); with ``profile_prefix``, its runs are traced to a JSON
    file of that prefix (``session.end_profiling()`` names it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if _SHARED_ORT_POOL:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeSetupError("onnxruntime here has no CUDA provider (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def openvino_request(path: str | Path, threads: int, profile: bool = False):
    """An OpenVINO CPU infer request for a model file (ONNX or IR): latency hint, float32, ``threads`` threads;
    with ``profile``, per-node counters (``PERF_COUNT``, read with ``request.get_profiling_info()``)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    if profile:
        config["PERF_COUNT"] = True
    return ov.Core().compile_model(str(path), "CPU", config).create_infer_request()


def as_array(result: object) -> np.ndarray:
    """The first output of any backend's call as a float64 array: a tensor, a list (ONNX Runtime) or a dict."""
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().double().numpy()
    if isinstance(result, dict) or hasattr(result, "values"):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        result = result[0]
    return np.asarray(getattr(result, "data", result), dtype=np.float64)
