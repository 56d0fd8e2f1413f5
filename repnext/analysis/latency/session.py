"""What a worker process holds and does: its backend's prepared configurations (runs inside the worker)."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch

from ...distributed import runtime
from ...errors import one_line
from ...reparam import reparameterize
from ...runtimes import as_array
from .backends import (
    MERGED_FORMS,
    TORCH_BACKENDS,
    build_model,
    export_for_timing,
    fuse_model,
    prepare_copy,
    prepare_dwconv,
    prepare_gemm,
    prepare_onnx,
    prepare_torch,
    synchronize,
    unchanged_by_fusion,
)


def artifact(workdir: Path, model: str, form: str, suffix: str) -> Path:
    """Where the builder leaves a model's ONNX (``.onnx``), pickle (``.pt``) or reference output (``.npy``)."""
    return workdir / f"{model}-{form}{suffix}"


class Session:
    """The state of one worker: ``backend`` on ``threads`` threads; shared files live in ``workdir``."""

    def __init__(self, backend: str, threads: int, device: torch.device, workdir: Path) -> None:
        self.backend, self.threads, self.device, self.workdir = backend, threads, device, workdir
        self.calls: dict[str, Callable[[], object]] = {}
        self.batched: dict[str, Callable[[], object]] = {}
        self.models: dict[tuple[str, str], torch.nn.Module] = {}

    def _input(self, resolution: int, batch_size: int = 1) -> torch.Tensor:
        """The seeded reference input ``[1, 3, R, R]`` (or a batch of it), on this worker's device."""
        path = self.workdir / f"input-{resolution}.npy"
        if not path.exists():  # a builder writes it first (atomically: two may race); the others only read it
            x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
            partial = path.with_name(f"{path.stem}.{os.getpid()}.npy")
            np.save(partial, x.numpy())
            os.replace(partial, path)
        x = torch.from_numpy(np.load(path)).to(self.device)
        return x if batch_size == 1 else x.expand(batch_size, -1, -1, -1).contiguous()

    def build(self, model: str, forms: Sequence[str], resolution: int, onnx_forms: Sequence[str],
              pickle_forms: Sequence[str], weights: str | None = None,
              count: bool = True) -> dict[str, object]:  # fmt: skip
        """Builder only: build ``model`` in each form (fused always, for its MACs; the single-branch form merged
        from it), write the reference
        outputs and, for the other workers, the ONNX exports and pickles they need.

        All of it runs on one thread: building, exporting and counting are single-threaded Python, beside
        which an idle second OpenMP thread would only spin on the core the other workers compile on, and a
        new model's first forward pass (the reference) is mostly one-time set-up. When fusing changes
        nothing (see :func:`unchanged_by_fusion`) the training form is dropped: it is the fused module, so
        it is neither exported nor timed apart.

        Returns ``{"macs": fvcore MACs of the fused form (``None`` unless ``count``), "onnx_errors": {form:
        one line}, "nothing_to_fuse": bool, "layers": the fused form's operators (:func:`repnext.analysis.roofline.
        layers`, as tuples)}``.
        """
        from ..roofline import layers
        from ..stats import count_macs

        x = self._input(resolution)
        nets: dict[str, torch.nn.Module] = {}
        with runtime(threads=1):  # one thread: see above
            for form in ("unfused", "fused") if "unfused" in forms else ("fused",):
                if form == "fused" and "unfused" in nets and weights is None:  # fused from the built model
                    nets[form] = fuse_model(nets["unfused"])
                else:
                    nets[form] = build_model(model, form, self.device, weights=weights)
            nothing_to_fuse = "unfused" in nets and unchanged_by_fusion(nets["unfused"], nets["fused"])
            if nothing_to_fuse:
                del nets["unfused"]
            for form in (f for f in MERGED_FORMS if f in forms):  # merged from the fused form, as reparameterize does
                nets[form] = reparameterize(nets["fused"], **MERGED_FORMS[form])
            errors = {}
            for form, net in nets.items():
                with torch.inference_mode():
                    np.save(artifact(self.workdir, model, form, ".npy"), as_array(net(x)))
                if form in onnx_forms:
                    try:
                        export_for_timing(net, artifact(self.workdir, model, form, ".onnx"), x)
                    except Exception as error:  # reported on every ONNX configuration of this form
                        errors[form] = f"ONNX export failed: {one_line(error)}"
                if form in pickle_forms:
                    torch.save(net, artifact(self.workdir, model, form, ".pt"))
            macs = count_macs(nets["fused"], resolution)[0] if count else None
            found = [astuple(layer) for layer in layers(nets["fused"], resolution)]
        self.models.update({(model, form): net for form, net in nets.items() if form in forms})
        return {"macs": macs, "onnx_errors": errors, "nothing_to_fuse": nothing_to_fuse, "layers": found}

    def prepare(self, key: str, model: str, form: str, resolution: int, batch_size: int,
                tolerance: float) -> dict[str, float]:  # fmt: skip
        """Prepare ``model`` in ``form`` on this backend, run it once on the reference input and keep
        it only if its output is within ``tolerance * max(1, max |reference|)`` of PyTorch's. A module this
        eager worker built itself wrote the reference: it is not run again (error 0).

        Returns ``{"max_abs_error": ...}``; a mismatch raises with the error and the bound.
        """
        x = self._input(resolution)
        reference = np.load(artifact(self.workdir, model, form, ".npy"))
        batch = self._input(resolution, batch_size) if batch_size > 1 else None
        if self.backend in TORCH_BACKENDS:
            net = self.models.get((model, form))
            if net is None:
                net = torch.load(artifact(self.workdir, model, form, ".pt"), weights_only=False).to(self.device)
            call = prepare_torch(net, self.backend, x)
            batched = None if batch is None else prepare_torch(net, self.backend, batch)
        else:
            path = artifact(self.workdir, model, form, ".onnx")
            call = prepare_onnx(path, self.backend, x.cpu().numpy(), self.threads, self.device)
            batched = None if batch is None else prepare_onnx(path, self.backend, batch.cpu().numpy(), self.threads,
                                                              self.device)  # fmt: skip
        own_reference = self.backend == "eager" and (model, form) in self.models
        error = 0.0 if own_reference else float(np.abs(as_array(call()) - reference).max())
        bound = tolerance * max(1.0, float(np.abs(reference).max()))
        if not error <= bound:
            raise ValueError(f"output differs from PyTorch by {error:.3g} (> {bound:.3g}); not timed")
        self.calls[key] = call
        if batched is not None:
            self.batched[key] = batched
        return {"max_abs_error": error}

    def profile(self, model: str, form: str, resolution: int, calls: int, warmup: int) -> dict[str, object]:
        """Per-layer-kind ms of ``model`` in ``form`` on this ONNX backend, from the runtime's own profiler
        (:mod:`repnext.analysis.latency.profiles`), on a fresh session of the file that was timed."""
        from .profiles import profile_onnxruntime, profile_openvino

        path, x = artifact(self.workdir, model, form, ".onnx"), self._input(resolution).cpu().numpy()
        if self.backend == "onnxruntime":
            return profile_onnxruntime(path, x, self.threads, calls, warmup, self.workdir)
        if self.backend == "openvino":
            return profile_openvino(path, x, self.threads, calls, warmup)
        raise ValueError(f"backend {self.backend!r} has no per-layer profiler here (onnxruntime, openvino)")

    def peak(self, key: str, kernel: str, size: float) -> None:
        """Prepare a reference kernel: ``gemm`` (``size^3`` MACs), ``dwconv3``, ``dwconv7``, ``dwconv11`` (a
        depthwise conv of that kernel side on a ``size x size`` map) or a copy (``copy``, ``copy_l2``, ``copy_l3``:
        ``size`` MiB)."""
        if kernel == "gemm":
            self.calls[key] = prepare_gemm(self.backend, int(size), self.threads, self.workdir, self.device)
        elif kernel.startswith("dwconv"):
            self.calls[key] = prepare_dwconv(self.backend, int(size), self.threads, self.workdir, self.device,
                                             int(kernel.removeprefix("dwconv")))  # fmt: skip
        else:
            self.calls[key] = prepare_copy(size, self.device)

    def _timed(self, call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        synchronize(self.device)
        return time.perf_counter() - start

    def warmup(self, keys: Sequence[str], calls: int) -> dict[str, float]:
        """``calls`` untimed calls of each key; returns each key's median seconds per call over them."""
        return {key: statistics.median(self._timed(self.calls[key]) for _ in range(calls)) for key in keys}

    def block(self, plan: Sequence[tuple[str, int]]) -> dict[str, list[float]]:
        """Seconds per call: for each ``(key, calls)`` in order, one untimed call, then ``calls`` consecutive
        calls, each timed. The untimed call refills the caches, which hold what ran before: in a mixed run,
        another worker's model (a cold first call made mixed medians 5-12% slower than alone on a Xeon)."""
        times = {}
        for key, calls in plan:
            self._timed(self.calls[key])
            times[key] = [self._timed(self.calls[key]) for _ in range(calls)]
        return times

    def throughput(self, key: str, batch_size: int, warmup_s: float, measure_s: float) -> tuple[float, int]:
        """Images per second, upstream's ``speed_gpu.py`` protocol: run ``warmup_s`` seconds, then time
        calls until their total exceeds ``measure_s``; returns ``(batch_size / mean time, calls timed)``."""
        call = self.batched[key]
        start = time.perf_counter()
        while time.perf_counter() - start < warmup_s:
            call()
        synchronize(self.device)
        timings: list[float] = []
        while sum(timings) < measure_s:
            timings.append(self._timed(call))
        return batch_size / statistics.fmean(timings), len(timings)

    def release(self, models: Sequence[str]) -> None:
        """Drop everything prepared for ``models`` (keys start with ``model/``)."""
        names = set(models)
        for table in (self.calls, self.batched):
            for key in [k for k in table if k.split("/")[0] in names]:
                del table[key]
        for pair in [p for p in self.models if p[0] in names]:
            del self.models[pair]
        gc.collect()

    def spin(self, seconds: float) -> None:
        """Burn CPU in a background thread for ``seconds`` (a stand-in for a pool that keeps spinning)."""

        def burn() -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                statistics.fmean(range(64))

        threading.Thread(target=burn, daemon=True).start()

    def pid(self) -> int:
        return os.getpid()
