"""One worker process per backend, and the coordinator's side of talking to it.

A worker is forked from a ``forkserver`` that has only *imported* torch, timm and the backends
(never run them, so no thread pool exists yet; ``spawn`` where there is no forkserver), and sets
its thread counts (``OMP_NUM_THREADS`` and friends, torch's intra-op threads) before any library
starts a pool. Forking from the server saves each worker the seconds of importing torch again.
It holds the prepared configurations of its backend and answers requests from one pipe: ``build``
(the builders only: models, fvcore MACs, ONNX and pickled models for the other workers, reference
outputs), ``prepare`` (verify against the reference, then keep), ``peak``, ``warmup``, ``block``
(timed calls), ``throughput``, ``release`` and ``spin`` (a diagnostic CPU burner).

Isolation: while one worker times a block, every other worker is stopped with ``SIGSTOP`` (and
confirmed stopped with ``waitpid``), so no other backend's thread pool can spin on the cores; the
coordinator also reads every stopped worker's CPU time around each block (``/proc``) and reports
what they used. Where ``SIGSTOP`` does not exist, a settle pause before each block stands in.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_SETTLE_S = 0.25  # without SIGSTOP: longer than ONNX Runtime's and OpenMP's spin-waits (Intel's KMP_BLOCKTIME 200 ms)
_CAN_STOP = hasattr(signal, "SIGSTOP") and sys.platform != "win32"


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that fix every pool a worker may start to ``threads`` threads."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return {**dict.fromkeys(names, str(threads)), "TORCHINDUCTOR_COMPILE_THREADS": "1", "TOKENIZERS_PARALLELISM": "0"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc``; ``None`` elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stopped(pid: int) -> bool | None:
    """Whether every thread of ``pid`` is stopped (state ``T``), from ``/proc``; ``None`` where that cannot be read.

    Each thread stops on its own: the main thread can show ``T`` while a pool thread still finishes its time slice.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    return all(_thread_state(task) in "Tt" for task in tasks)


def _thread_state(task: Path) -> str:
    """One thread's state letter from ``/proc/PID/task/TID/stat``; ``T`` for a thread that has exited meanwhile."""
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "T"


@functools.cache
def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["repnext.analysis.latency.session"])
        return context
    return multiprocessing.get_context("spawn")


class WorkerError(RuntimeError):
    """A worker's request failed; the message is the worker's one line."""


class Worker:
    """A worker process for ``backend`` with ``threads`` threads on ``device``; exports go to ``workdir``."""

    def __init__(self, backend: str, threads: int, device: str, workdir: Path) -> None:
        context = _context()
        self.backend = backend
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, backend, threads, device, str(workdir)),
                                        name=f"repnext-bench-{backend}", daemon=True)  # fmt: skip
        with _environment(thread_environment(threads)):
            self._process.start()
        child.close()
        self.pid: int = self._process.pid
        self.paused = False
        self._pending = 0

    def submit(self, op: str, *args: object) -> None:
        """Send a request without waiting (collect its answer with :meth:`collect`, in order)."""
        self.resume()
        self._conn.send((op, args))
        self._pending += 1

    def collect(self) -> object:
        """The answer to the oldest submitted request; a failed request raises :class:`WorkerError`."""
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise WorkerError(f"{self.backend} worker exited (code {self._process.exitcode})") from None
        finally:
            self._pending -= 1
        if status == "error":
            raise WorkerError(value)
        return value

    def request(self, op: str, *args: object) -> object:
        """Send a request and wait for its answer."""
        self.submit(op, *args)
        return self.collect()

    def pause(self) -> None:
        """Stop the process (all its threads) and wait until it is stopped; a no-op without SIGSTOP."""
        if self.paused or not _CAN_STOP or self._pending:
            return
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.perf_counter() + 2.0
        while _stopped(self.pid) is False and time.perf_counter() < deadline:
            time.sleep(1e-4)  # delivery is asynchronous: wait until every thread has stopped
        if _stopped(self.pid) is None:
            time.sleep(0.01)  # no /proc: give the signal time to land
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        """Stop the worker (it is continued first, so it can exit)."""
        with contextlib.suppress(OSError, ProcessLookupError):
            self.resume()
            if self._process.is_alive():
                self._conn.send(("stop", ()))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def timed_block(
    worker: Worker, others: Sequence[Worker], plan: Sequence[tuple[str, int]], isolate: bool = True
) -> tuple[dict[str, list[float]], float | None]:
    """Run one timed block on ``worker`` (``plan``: ``(key, calls)`` pairs) with ``others`` stopped.

    Returns the seconds per call of each key, and the CPU seconds that ``others`` used meanwhile
    (``None`` where ``/proc`` is absent): zero when they were stopped.
    """
    for other in others:
        if isolate:
            other.pause()
        else:
            other.resume()
    if isolate and not _CAN_STOP:
        time.sleep(_SETTLE_S)
    before = [cpu_seconds(other.pid) for other in others]
    times = worker.request("block", list(plan))
    after = [cpu_seconds(other.pid) for other in others]
    if isolate:
        worker.pause()
    if None in before or None in after:
        return times, None
    return times, sum(b - a for a, b in zip(before, after, strict=True))


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the coordinator dies (a stopped orphan would linger)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(conn, backend: str, threads: int, device: str, workdir: str) -> None:
    """The worker's loop: answer requests until ``stop``; a failure is one line, never a traceback."""
    _die_with_parent()
    os.environ.update(thread_environment(threads))  # a forked worker has the server's environment
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    from ...errors import one_line
    from ...runtimes import share_onnxruntime_pool
    from .session import Session

    if backend == "onnxruntime":  # one pool for all its sessions: a pool per session spins beside the next one
        share_onnxruntime_pool(threads)

    session = Session(backend, threads, torch.device(device), Path(workdir))
    while True:
        op, args = conn.recv()
        if op == "stop":
            break
        try:
            reply = ("ok", getattr(session, op)(*args))
        except Exception as error:
            reply = ("error", one_line(error))
        conn.send(reply)
    conn.close()
