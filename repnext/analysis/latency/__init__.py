"""Measured speed: batch-1 latency and throughput of training and fused forms on several backends.

Every number here is a time measurement and differs between runs and machines; files holding
them are named ``latency_*`` so the determinism checks know to skip them.

Protocol (:func:`benchmark`).

1. **One process per backend.** Each backend (``eager``, ``channels_last``, ``torchscript``,
   ``onnxruntime``, ``openvino``, ``compile``) runs in its own worker process (forked from a server
   that has only imported the libraries), whose thread counts (``OMP_NUM_THREADS``, torch's intra-op
   threads, ONNX Runtime's and OpenVINO's thread settings) are fixed before any library starts a pool.
   All ONNX Runtime sessions of its worker share one intra-op pool (a pool per session spins after a
   call and slowed the next session's call 2x), as torch's OpenMP pool and OpenVINO's TBB arena are shared.
   The ``eager`` worker, and a second builder process beside it when several models run on a CPU with
   more than one core, build the models in turn (seeded random weights), fuse them, count their fvcore
   MACs (unless given), export each form once to ONNX for ONNX Runtime and OpenVINO, pickle it for the
   other torch backends, and write the reference output. Building, exporting and counting run on one
   thread, so no idle OpenMP thread spins on the core the other workers compile on. A model that
   fusing leaves unchanged (EfficientFormer, SwiftFormer, StarNet) has its training form reported as
   not timed: it is the fused module, and timing it twice would only measure noise as a speed-up.
2. **Verified before timed.** Every configuration runs once on the reference input and is kept only
   if it matches PyTorch within ``tolerance x max(1, max |logit|)``; otherwise its row says why.
3. **Timed in isolation.** While one worker times, every other worker is stopped (``SIGSTOP``), so no
   other backend's idle thread pool (ONNX Runtime's and OpenMP's spin after a call) takes the cores;
   the CPU time the stopped workers used meanwhile is read from ``/proc`` and reported (zero).
4. **Blocks in rotating order.** After an isolated warm-up, each round lets every backend run one
   block (each configuration once untimed, to refill the caches another worker's model held, then
   ``calls`` times in a row, ``calls`` sized so that a block lasts about ``block_ms``), backends and
   configurations in an order rotated every round, so drift of the machine hits all alike. Latency is
   the median over all timed calls, the spread their inter-quartile range; after ``min_rounds`` a
   configuration whose IQR is within ``spread_target`` of its median stops.
5. **The reference is the measured peak**: the best float32 GEMM rate (``gemm_size^3``, one call at
   a time, same threads) of torch, ONNX Runtime and OpenVINO where installed, timed the same way;
   every row gives its achieved fvcore MAC rate as a fraction of it. A large copy gives the memory
   bandwidth (bytes read + written per second).

Throughput (``batch_size > 1``) follows upstream's ``speed_gpu.py``: run for a warm-up time, then
time calls until a measuring time has passed, and report images per second.
"""

from .backends import (
    BACKENDS,
    FORMS,
    BenchmarkError,
    build_model,
    check_backend,
    check_device,
    check_timm_model,
    missing_requirement,
)
from .bench import LATENCY_COLUMNS, PEAK_COLUMNS, THROUGHPUT_COLUMNS, BenchResult, benchmark, describe_peak, machine
from .timing import spread, time_interleaved

__all__ = [
    "BACKENDS", "FORMS", "LATENCY_COLUMNS", "PEAK_COLUMNS", "THROUGHPUT_COLUMNS", "BenchResult", "BenchmarkError",
    "benchmark", "build_model", "check_backend", "check_device", "check_timm_model", "describe_peak", "machine",
    "missing_requirement", "spread", "time_interleaved",
]  # fmt: skip
