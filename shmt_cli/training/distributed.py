"""Data-parallel training with plain `torchrun` + DistributedDataParallel.

`torchrun --nproc_per_node N -m shmt_cli train ...` starts N processes and sets RANK, LOCAL_RANK and
WORLD_SIZE; each process trains on its share of every global batch and DDP averages the gradients
(all-reduce) before the optimizer step, so all processes keep identical weights. Backend: NCCL on CUDA,
gloo on CPU. A plain `shmt train` (no torchrun variables) is a world of one and uses no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place: rank in 0..size-1, local_rank on its machine, and its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, metrics, grids and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device: str = "auto") -> World:
    """Join the torchrun process group if there is one; pick the device ("auto": this process's GPU
    when CUDA is available, else the CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        chosen = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device(f"cuda:{local_rank}")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank, device=chosen)


def leave(world: World) -> None:
    """Tear the process group down (after the last collective)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """DDP around `model` in a multi-process world, the model itself otherwise."""
    if not world.distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_flag(world: World, value: bool) -> bool:
    """Rank 0's boolean, on every rank (e.g. "stop now")."""
    if not world.distributed:
        return value
    flag = torch.tensor([1 if value else 0], dtype=torch.int32)
    dist.broadcast(flag, src=0)
    return bool(flag.item())
