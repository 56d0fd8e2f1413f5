"""One process or many (``torchrun``): where a run executes, exact sums over processes, a pinned runtime."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "runtime", "setup_distributed", "shard"]


@contextlib.contextmanager
def runtime(threads: int | None, deterministic: bool | None = None) -> Iterator[None]:
    """Set torch's thread count and deterministic mode (``None``: leave each as it is) inside the block;
    restore both afterwards."""
    old_threads, old_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if threads:
        torch.set_num_threads(threads)
    if deterministic is not None:
        torch.use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


@dataclass
class Distributed:
    """Where this process runs and its place among the torchrun processes (rank 0 of 1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    owned: bool = False  # this run created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def _reduce(self, values: Sequence[float], op: dist.ReduceOp) -> list[float]:
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (identity in one process)."""
        return self._reduce(values, dist.ReduceOp.SUM if self.enabled else None)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over all processes (identity in one process)."""
        return self._reduce(values, dist.ReduceOp.MAX if self.enabled else None)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process.

        DistributedDataParallel broadcasts them before each forward, but each process then updates them
        with its own batch, so after the last step they differ; evaluating and saving need one model.
        """
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)


def setup_distributed(device: str | None) -> Distributed:
    """Join the torchrun process group if there is one (or use the caller's); else one process."""
    from timm.utils.distributed import init_distributed_device_so

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {device} requested but CUDA is not available")
    if dist.is_available() and dist.is_initialized():
        return Distributed(torch.device(device), dist.get_rank(), dist.get_world_size())
    info = init_distributed_device_so(device)
    return Distributed(torch.device(info["device"]), info["global_rank"], info["world_size"], info["distributed"])


def shard(length: int, dist_info: Distributed) -> range:
    """This process's indices of a dataset of ``length`` items: every item exactly once over all processes.

    Unlike ``DistributedSampler``, no item is repeated to even out the shards, so sums over processes are exact.
    """
    return range(dist_info.rank, length, dist_info.world_size)
