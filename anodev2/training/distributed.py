"""Process-group setup for ``torchrun`` launches (gloo on CPU, NCCL on CUDA) and small collectives."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init", "shutdown", "all_reduce_sum", "all_equal"]


@dataclass(frozen=True)
class DistInfo:
    """rank/world_size/local_rank of this process; ``enabled`` when a process group is initialised."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    device: str = "cpu"  # where collectives run: "cpu" (gloo) or "cuda:LOCAL_RANK" (NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> DistInfo:
    """Initialise a process group when launched by torchrun (WORLD_SIZE > 1), else a single-process DistInfo.

    device_type: "cpu" -> gloo, "cuda" -> NCCL (and selects cuda:LOCAL_RANK).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, enabled=True,
                    device=f"cuda:{local}" if device_type == "cuda" else "cpu")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks (in place and returned); identity when not distributed.

    A CPU tensor is reduced on the process group's device (NCCL needs CUDA tensors) and copied back.
    """
    if info.enabled:
        x = t.to(info.device)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        if x is not t:
            t.copy_(x)
    return t


def all_equal(value: torch.Tensor, info: DistInfo) -> bool:
    """Whether the 1-element float64 tensor ``value`` is bit-identical on all ranks."""
    if not info.enabled:
        return True
    lo, hi = value.to(info.device).clone(), value.to(info.device).clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))
