"""Data-parallel training with ``torch.distributed``: the same command runs alone or under
``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on CUDA). Only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_gather_tensor", "average_gradients", "barrier", "broadcast_buffers", "cleanup",
           "init_distributed", "is_main"]


@dataclass(frozen=True)
class DistInfo:
    """``rank`` and ``world_size`` of this process (0 and 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device = "cpu", backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Without ``WORLD_SIZE > 1`` nothing happens and a single-process :class:`DistInfo` is returned. The backend is
    nccl for CUDA devices and gloo otherwise unless given.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if backend is None:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor (``[t]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace every gradient by its mean over ranks (one all-reduce of the flattened gradients)."""
    if not (dist.is_available() and dist.is_initialized()) or not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, power-iteration vectors) to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for b in module.buffers():
        if b.dtype != torch.bool:  # flags (ActNorm's "initialized") are set identically on every rank
            dist.broadcast(b, 0)
