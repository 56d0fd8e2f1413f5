"""The coordinator: start one worker per backend, measure the peak, then time every configuration in isolation."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...checkpoint import CheckpointError, is_torchscript, read_checkpoint
from ...progress import bar
from ...tables import Table
from ..roofline import Layer, Rates, bound_ms, cache_sizes
from .backends import (
    DW_CHANNELS,
    DW_KERNELS,
    FORMS,
    MERGED_FORMS,
    ONNX_BACKENDS,
    PEAK_BACKENDS,
    TORCH_BACKENDS,
    BenchmarkError,
    check_backend,
    check_device,
    check_timm_model,
    has_single_branch,
    missing_requirement,
)
from .profiles import PROFILE_COLUMNS, PROFILE_FLOATS, profile_rows
from .timing import spread
from .workers import Worker, WorkerError, timed_block

LATENCY_COLUMNS = (
    "model", "form", "backend", "device", "threads", "resolution", "median_ms", "iqr_ms", "min_ms", "samples",
    "rounds", "macs_g", "gmacs_per_s", "peak_gmacs", "peak_fraction", "bound_ms", "bound_fraction", "max_abs_error",
    "status",
)  # fmt: skip
THROUGHPUT_COLUMNS = ("model", "form", "backend", "device", "threads", "batch_size", "resolution", "images_per_s",
                      "calls")  # fmt: skip
BUILDER = "builder"  # the worker that only builds (every second model), beside the eager worker
NOTHING_TO_FUSE = "not timed: fusing changes nothing (the fused form is the same module)"
_UNITS = dict(gemm="GMAC/s", copy="GB/s", copy_l2="GB/s", copy_l3="GB/s", **dict.fromkeys(
    (f"dwconv{k}" for k in DW_KERNELS), "GMAC/s"))  # fmt: skip
PEAK_COLUMNS = ("kernel", "backend", "device", "threads", "size", "median_ms", "iqr_ms", "samples", "rate", "unit")


@dataclass
class BenchResult:
    """Tables of one ``benchmark`` run and what the protocol recorded about itself."""

    latency: Table
    throughput: Table | None
    peaks: Table
    peak_gmacs: float | None  # the best float32 GEMM rate over the installed backends
    peak_backend: str | None
    copy_gb_per_s: float | None
    pids: dict[str, int] = field(default_factory=dict)  # one worker process per backend (and the builder)
    skipped: list[str] = field(default_factory=list)  # one line per backend that is not installed
    foreign_cpu_s: float | None = 0.0  # CPU time other workers used during timed blocks (0 when stopped)
    blocks: int = 0
    profiles: Table | None = None  # per-layer-kind time of the fused form on each profiled backend


class _Run:
    """Workers of one run, and the protocol that times configurations on them."""

    def __init__(self, workers: dict[str, Worker], rounds: int, min_rounds: int, spread_target: float,
                 warmup: int, block_s: float, device: str, threads: int, max_calls: int = 50,
                 weights: str | None = None, macs: Mapping[str, float] | None = None) -> None:  # fmt: skip
        self.workers, self.rounds, self.min_rounds, self.weights = workers, rounds, min_rounds, weights
        self.known_macs = dict(macs or {})
        self.device, self.threads = device, threads
        self.spread_target, self.warmup, self.block_s, self.max_calls = spread_target, warmup, block_s, max_calls
        self.foreign: float | None = 0.0
        self.blocks = 0
        self.layers: dict[str, list[Layer]] = {}  # the fused form's operators, per model (its builder's)

    def _others(self, backend: str) -> list[Worker]:
        return [w for b, w in self.workers.items() if b != backend]

    def time(self, keys: dict[str, list[str]]) -> tuple[dict[str, list[float]], dict[str, int]]:
        """Time ``keys`` (backend -> its configuration keys): per backend an isolated warm-up, then up to
        ``rounds`` rounds in which each backend, in an order rotated every round, runs one block (each key
        ``calls`` times, ``calls`` sized so a block lasts about ``block_s``); after ``min_rounds`` a key whose
        IQR / median is within ``spread_target`` stops. Returns seconds per call and rounds per key."""
        calls: dict[str, int] = {}
        for backend, names in keys.items():
            if not names:
                continue
            estimate = self.isolated(backend, "warmup", names, self.warmup)
            for key, seconds in estimate.items():
                calls[key] = max(1, min(self.max_calls, round(self.block_s / max(seconds, 1e-6))))
        samples: dict[str, list[float]] = defaultdict(list)
        done: dict[str, int] = defaultdict(int)
        pending = {b: list(names) for b, names in keys.items() if names}
        for r in range(self.rounds):
            order = list(pending)
            order = order[r % len(order) :] + order[: r % len(order)] if order else order
            for backend in order:
                names = pending[backend]
                names = names[r % len(names) :] + names[: r % len(names)]
                times, foreign = timed_block(self.workers[backend], self._others(backend),
                                             [(k, calls[k]) for k in names])  # fmt: skip
                self.blocks += 1
                self.foreign = None if foreign is None or self.foreign is None else self.foreign + foreign
                for key, values in times.items():
                    samples[key].extend(values)
                    done[key] += 1
            if r + 1 >= self.min_rounds:
                for backend in list(pending):
                    pending[backend] = [k for k in pending[backend] if not self._settled(samples[k])]
                    if not pending[backend]:
                        del pending[backend]
            if not pending:
                break
        return samples, done

    def _settled(self, times: list[float]) -> bool:
        """At least three calls, and an IQR within ``spread_target`` of the median."""
        median, iqr, _ = spread(times)
        return len(times) >= 3 and iqr <= self.spread_target * median

    def throughput(self, backend: str, key: str, batch_size: int, seconds: tuple[float, float]) -> tuple[float, int]:
        return self.isolated(backend, "throughput", key, batch_size, *seconds)

    def isolated(self, backend: str, op: str, *args: object) -> object:
        """One request to ``backend``'s worker with every other worker stopped (warm-up, throughput)."""
        for other in self._others(backend):
            other.pause()
        answer = self.workers[backend].request(op, *args)
        self.workers[backend].pause()
        return answer

    def peak(self, backends: Sequence[str], gemm_size: int, copy_mib: int, dwconv_side: int,
             cache_copy_mib: Mapping[str, float]) -> list[dict[str, object]]:  # fmt: skip
        """Rows of the reference kernels: float32 GEMM and the depthwise convs of :data:`DW_KERNELS` on each of
        ``backends``; on torch a copy of ``copy_mib`` MiB (DRAM) and one per cache level of ``cache_copy_mib``
        (``{"copy_l2": MiB, ...}``)."""
        depthwise = [f"dwconv{k}" for k in DW_KERNELS]
        kernels = {b: [f"peak/gemm/{b}", *(f"peak/{k}/{b}" for k in depthwise)] for b in backends}
        kernels.setdefault("eager", []).extend(f"peak/{k}/eager" for k in ("copy", *cache_copy_mib))
        sizes = dict(gemm=gemm_size, copy=copy_mib, **dict.fromkeys(depthwise, dwconv_side), **cache_copy_mib)
        for backend, names in kernels.items():
            for key in names:
                self.workers[backend].request("peak", key, key.split("/")[1], sizes[key.split("/")[1]])
        samples, _ = self.time(kernels)
        rows = []
        for backend, names in kernels.items():
            for key in names:
                kernel = key.split("/")[1]
                median, iqr, _ = spread(samples[key])
                if kernel == "gemm":
                    work = gemm_size**3 / 1e9  # GMAC
                elif kernel in depthwise:
                    work = int(kernel.removeprefix("dwconv")) ** 2 * DW_CHANNELS * dwconv_side**2 / 1e9
                else:
                    work = 2 * sizes[kernel] * 2**20 / 1e9  # GB read and written
                rows.append(dict(kernel=kernel, backend=backend, device=self.device, threads=self.threads,
                                 size=sizes[kernel], median_ms=median, iqr_ms=iqr, samples=len(samples[key]),
                                 rate=work / (median / 1e3), unit=_UNITS[kernel]))  # fmt: skip
        self.resume_all()
        for backend in kernels:
            self.workers[backend].request("release", ["peak"])
        return rows

    def prepare(self, configs: Sequence[tuple[str, str, str]], resolution: int, batch_size: int,
                tolerance: float) -> tuple[dict, dict, dict]:  # fmt: skip
        """Build each model of ``configs`` (``(model, form, backend)``) on a builder (the eager worker, and
        the second builder when there is one, in turn), then have each backend's worker prepare and verify
        it, the others loading while the builders build the next models. Returns ``status`` (``ok`` or why
        not) and ``max_abs_error`` per configuration, and fvcore MACs per model."""
        builders = [self.workers[b] for b in ("eager", BUILDER) if b in self.workers]
        status: dict[tuple[str, str, str], str] = {}
        errors: dict[tuple[str, str, str], float] = {}
        macs: dict[str, float] = {}
        submitted: list[tuple[str, tuple[str, str, str]]] = []
        names = list(dict.fromkeys(c[0] for c in configs))
        for start in range(0, len(names), len(builders)):
            chunk = list(zip(builders, names[start : start + len(builders)], strict=False))  # the last may be short
            for builder, name in chunk:
                mine = [c for c in configs if c[0] == name]
                onnx_forms = sorted({f for _, f, b in mine if b in ONNX_BACKENDS})
                loaded = {b for b in TORCH_BACKENDS if b != builder.backend}  # the torch backends that load a pickle
                pickle_forms = sorted({f for _, f, b in mine if b in loaded})
                builder.submit("build", name, sorted({f for _, f, _ in mine}), resolution, onnx_forms, pickle_forms,
                               self.weights, name not in self.known_macs)  # fmt: skip
            for builder, name in chunk:
                try:
                    built = builder.collect()
                except WorkerError as error:  # a model that cannot be built (its weights refused) ends the run
                    raise BenchmarkError(str(error).removeprefix(f"{BenchmarkError.__name__}: ")) from None
                macs[name] = self.known_macs.get(name, built["macs"])
                self.layers[name] = [Layer(*t) for t in built["layers"]]
                for config in (c for c in configs if c[0] == name):
                    _, form, backend = config
                    if form == "unfused" and built["nothing_to_fuse"]:
                        status[config] = NOTHING_TO_FUSE
                        continue
                    if backend in ONNX_BACKENDS and form in built["onnx_errors"]:
                        status[config] = built["onnx_errors"][form]
                        continue
                    self.workers[backend].submit("prepare", "/".join(config), name, form, resolution, batch_size,
                                                 tolerance)  # fmt: skip
                    if backend == "eager":  # answered before the eager worker builds again
                        _collect(self.workers[backend], config, status, errors)
                    else:
                        submitted.append((backend, config))
        for backend, config in submitted:
            _collect(self.workers[backend], config, status, errors)
        return status, errors, macs

    def resume_all(self) -> None:
        for worker in self.workers.values():
            worker.resume()


def benchmark(
    models: Sequence[str],
    forms: Sequence[str] = FORMS,
    backends: Sequence[str] = ("eager",),
    resolution: int = 224,
    threads: int = 1,
    device: str = "cpu",
    rounds: int = 10,
    warmup: int = 3,
    batch_size: int = 1,
    unfused_backends: Sequence[str] | None = None,
    min_rounds: int | None = None,
    spread_target: float = 0.05,
    block_ms: float = 20.0,
    gemm_size: int = 2048,
    copy_mib: int = 128,
    dwconv_side: int = 28,
    group_size: int = 4,
    tolerance: float = 1e-4,
    throughput_seconds: tuple[float, float] = (5.0, 10.0),
    skip_missing: bool = False,
    peak_backends: Sequence[str] | None = None,
    weights: str | None = None,
    macs: Mapping[str, float] | None = None,
    progress: bool = False,
    profile_backends: Sequence[str] = (),
    profile_calls: int = 5,
) -> BenchResult:
    """Batch-1 latency of every ``model x form x backend``, each backend in its own worker process and
    timed with every other worker stopped, against the machine's measured peak (see the package docstring).

    ``unfused_backends`` restricts the training form to those backends (default: all of ``backends``).
    ``rounds`` is the most rounds; with ``min_rounds`` below it, a configuration stops once its IQR is
    within ``spread_target`` of its median. Models are prepared ``group_size`` at a time (memory).
    Each non-eager configuration is verified against PyTorch (``tolerance`` x max(1, max |logit|)) first;
    one that fails is a row with its reason in ``status`` and no times. A backend that is not installed
    is an error, or with ``skip_missing`` one line in ``skipped``. With ``batch_size > 1`` throughput at
    that batch is measured too (``throughput_seconds`` = warm-up and measuring time per configuration).
    ``peak_backends`` limits the GEMM reference to those backends (default: every installed one of
    torch, ONNX Runtime and OpenVINO). ``weights`` loads this package's variants through
    :func:`repnext.weights.load_weights` (default: seeded random weights). ``macs`` gives fvcore MACs
    already counted at ``resolution`` (e.g. :func:`repnext.analysis.stats.known_macs`); the others are counted.
    ``progress`` shows a bar on stderr: models done, and what the run is doing now.
    ``profile_backends`` (of ``onnxruntime``, ``openvino``, where timed) profile every model's verified fused form
    after it was timed, isolated as timing is: ``profile_calls`` calls by the runtime's own per-node profiler,
    each node's time under its layer kind, beside that kind's roofline bound (``profiles``).
    """
    dev = check_device(device)
    skipped = []
    if skip_missing:
        skipped = [line for b in backends if (line := missing_requirement(b))]
        backends = [b for b in backends if not missing_requirement(b)]
    backends = [check_backend(b) for b in dict.fromkeys(backends)]
    models = [check_timm_model(m) for m in models]
    if weights and os.path.isfile(weights) and not is_torchscript(weights):
        try:
            read_checkpoint(weights)  # a bad or untrusted file is refused before any worker starts
        except CheckpointError as error:
            raise BenchmarkError(str(error)) from None
    unfused = backends if unfused_backends is None else [b for b in unfused_backends if b in backends]
    configs = [(m, f, b) for m in models for f in forms for b in (unfused if f == "unfused" else backends)
               if f not in MERGED_FORMS or has_single_branch(m)]  # fmt: skip
    peak_backends = [b for b in (PEAK_BACKENDS if peak_backends is None else peak_backends)
                     if b in backends or (dev.type == "cpu" and not missing_requirement(b))]  # fmt: skip
    started = list(dict.fromkeys(["eager", *backends, *peak_backends]))
    if len(models) > 1 and dev.type == "cpu" and (os.cpu_count() or 1) > 1:
        started.append(BUILDER)  # building and exporting are single-threaded: a second builder uses the other core
    profiled = [b for b in dict.fromkeys(profile_backends) if not (skip_missing and missing_requirement(b))]
    if unknown := sorted(set(profiled) - ONNX_BACKENDS):
        raise BenchmarkError(
            f"no per-layer profiler for {', '.join(unknown)}; choose from {', '.join(sorted(ONNX_BACKENDS))}"
        )
    if untimed := [b for b in profiled if b not in backends or "fused" not in forms]:
        raise BenchmarkError(f"profiling {untimed[0]} needs it timed: add it to the backends and the fused form")
    latency_rows, throughput_rows, profiled_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="repnext-bench-") as tmp, contextlib.ExitStack() as stack:
        status_bar = stack.enter_context(bar(desc="bench", enabled=progress, total=len(models)))
        status_bar.set_postfix_str("starting workers")
        workers = {}
        for backend in started:
            workers[backend] = Worker(backend, threads, device, Path(tmp))
            stack.callback(workers[backend].close)
        run = _Run(workers, rounds, min_rounds or rounds, spread_target, warmup, block_ms / 1e3, dev.type, threads,
                   weights=weights, macs=macs)  # fmt: skip
        pids = {b: w.request("pid") for b, w in workers.items()}

        status_bar.set_postfix_str("peak GEMM, depthwise conv and copies")
        levels = cache_levels(threads, copy_mib)
        peak_rows = run.peak(peak_backends, gemm_size, copy_mib, dwconv_side, {k: v[0] for k, v in levels.items()})
        gemms = [r for r in peak_rows if r["kernel"] == "gemm"]
        best = max(gemms, key=lambda r: r["rate"]) if gemms else None
        peak = best["rate"] if best else None
        copy_rate = next((r["rate"] for r in peak_rows if r["kernel"] == "copy"), None)
        rates = machine_rates(peak_rows, {k: v[1] for k, v in levels.items()})

        for start in range(0, len(models), group_size):
            group = models[start : start + group_size]
            status_bar.set_postfix_str(f"building and verifying {', '.join(group)}")
            status, errors, counts = run.prepare([c for c in configs if c[0] in group], resolution, batch_size,
                                               tolerance)  # fmt: skip
            ok = [c for c in configs if c[0] in group and status[c] == "ok"]
            keys = {b: ["/".join(c) for c in ok if c[2] == b] for b in backends}
            status_bar.set_postfix_str(f"timing {', '.join(group)}")
            samples, done = run.time(keys)
            bounds = {name: None if rates is None else bound_ms(run.layers[name], rates) for name in group}
            for config in (c for c in configs if c[0] in group):
                name, form, backend = config
                row = dict(model=name, form=form, backend=backend, device=dev.type, threads=threads,
                           resolution=resolution, macs_g=counts[name] / 1e9, peak_gmacs=peak,
                           max_abs_error=errors.get(config), status=status[config])  # fmt: skip
                bound = None if bounds[name] is None else bounds[name][0]
                row["bound_ms"] = bound
                times = samples.get("/".join(config))
                if times:
                    median, iqr, low = spread(times)
                    rate = counts[name] / 1e9 / (median / 1e3)
                    row.update(median_ms=median, iqr_ms=iqr, min_ms=low, samples=len(times),
                               rounds=done["/".join(config)], gmacs_per_s=rate,
                               peak_fraction=rate / peak if peak else None,
                               bound_fraction=bound / median if bound else None)  # fmt: skip
                    if batch_size > 1:
                        images, count = run.throughput(backend, "/".join(config), batch_size, throughput_seconds)
                        throughput_rows.append(dict(model=name, form=form, backend=backend, device=dev.type,
                                                    threads=threads, batch_size=batch_size, resolution=resolution,
                                                    images_per_s=images, calls=count))  # fmt: skip
                latency_rows.append(row)
            timed = {(r["model"], r["form"], r["backend"]): r for r in latency_rows}
            for backend in profiled:
                for name in (c[0] for c in ok if c[1:] == ("fused", backend)):
                    status_bar.set_postfix_str(f"profiling {name} on {backend}")
                    profile = run.isolated(backend, "profile", name, "fused", resolution, profile_calls, warmup)
                    profiled_rows += profile_rows(profile, bounds[name], timed[name, "fused", backend])
            run.resume_all()
            for worker in workers.values():
                worker.request("release", group)
            status_bar.update(len(group))
    floats = dict(median_ms=".2f", iqr_ms=".2f", min_ms=".2f", macs_g=".3f", gmacs_per_s=".2f", peak_gmacs=".1f",
                  peak_fraction=".3f", bound_ms=".2f", bound_fraction=".3f", max_abs_error=".1e")  # fmt: skip
    sort = ("model", "form", "backend")
    return BenchResult(
        latency=Table(LATENCY_COLUMNS, latency_rows, floats, sort_by=sort),
        throughput=Table(THROUGHPUT_COLUMNS, throughput_rows, dict(images_per_s=".1f"), sort)
        if batch_size > 1 else None,
        peaks=Table(PEAK_COLUMNS, peak_rows, dict(median_ms=".3f", iqr_ms=".3f", rate=".1f"), ("kernel", "backend")),
        peak_gmacs=peak, peak_backend=best["backend"] if best else None, copy_gb_per_s=copy_rate, pids=pids,
        skipped=skipped, foreign_cpu_s=run.foreign, blocks=run.blocks,
        profiles=Table(PROFILE_COLUMNS, profiled_rows, PROFILE_FLOATS, ("model", "backend")) if profiled else None,
    )  # fmt: skip


def _collect(worker: Worker, config: tuple[str, str, str], status: dict, errors: dict) -> None:
    """The answer to a ``prepare`` request: ``ok`` with its error against PyTorch, or the reason it failed."""
    try:
        errors[config] = worker.collect()["max_abs_error"]
        status[config] = "ok"
    except WorkerError as error:
        status[config] = str(error)


def describe_peak(result: BenchResult, threads: int) -> str:
    """One line: each backend's GEMM rate, the peak, and the copy bandwidth."""
    gemm = ", ".join(f"{r['backend']} {r['rate']:.1f}" for r in result.peaks.rows if r["kernel"] == "gemm")
    size = next((r["size"] for r in result.peaks.rows if r["kernel"] == "gemm"), None)
    text = f"peak: float32 GEMM {size}^3 on {threads} thread(s), GMAC/s: {gemm}"
    if result.peak_gmacs:
        text += f" (peak {result.peak_gmacs:.1f}, {result.peak_backend})"
    if result.copy_gb_per_s:
        text += f"; copy {result.copy_gb_per_s:.1f} GB/s"
    return text


def machine() -> dict[str, object]:
    """What the measurements ran on: CPU model, logical cores, torch version and build, CUDA device."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(cpu=cpu, logical_cores=os.cpu_count(), torch=torch.__version__, cuda_device=gpu)


def cache_levels(threads: int, dram_mib: float) -> dict[str, tuple[float, float]]:
    """``{kernel: (MiB per copy buffer, level capacity in bytes)}`` for the cache-level copies: L2 (one per core,
    ``threads`` of them) and L3 as the kernel reports them; each copy's source and target fill half the level
    (L3's copy at most 8 MiB a buffer: virtual machines report the host's whole L3), below the DRAM copy."""
    sizes = cache_sizes()
    found = {}
    if 2 in sizes:
        found["copy_l2"] = (sizes[2] * threads / 4 / 2**20, float(sizes[2] * threads))
    if 3 in sizes:
        found["copy_l3"] = (min(sizes[3] / 4 / 2**20, 8.0), float(sizes[3]))
    return {kernel: level for kernel, level in found.items() if level[0] < dram_mib}


def machine_rates(peak_rows: Sequence[Mapping[str, object]], capacities: Mapping[str, float]) -> Rates | None:
    """The roofline's rates from a run's reference kernels: the best GEMM and, per kernel size, the best depthwise
    conv over the backends, and the copy bandwidth per memory level (``capacities``: bytes per cache-level copy
    kernel; the DRAM copy, ``copy``, holds everything)."""
    kinds = ("gemm", *(f"dwconv{k}" for k in DW_KERNELS))
    best = {k: max((r["rate"] for r in peak_rows if r["kernel"] == k), default=None) for k in kinds}
    copies = {r["kernel"]: r["rate"] for r in peak_rows if str(r["kernel"]).startswith("copy")}
    depthwise = tuple((k * k, best[f"dwconv{k}"]) for k in DW_KERNELS if best[f"dwconv{k}"] is not None)
    if best["gemm"] is None or not depthwise or "copy" not in copies:
        return None
    levels = sorted((capacities[k], rate) for k, rate in copies.items() if k in capacities)
    return Rates(best["gemm"], depthwise, (*levels, (math.inf, copies["copy"])))
