"""Training data as a deterministic function of the step: resuming at step t sees the same batches.

Batch ``t`` of rank ``r`` depends only on ``(seed, t, r, world_size)``: finite data sets use a seeded
permutation per epoch (shard ``r`` of it), samplers (2-D toy densities) a generator seeded per step, and
dequantization noise its own per-step generator. Nothing here touches the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from invertible.data.dequantize import dequantize

__all__ = ["DataSource", "SamplerSource", "TensorSource", "step_generator"]


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by a fixed mix of ``(seed, step, rank, stream)``."""
    mixed = (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729 + int(stream) * 15_485_863) % (2**63)
    return torch.Generator().manual_seed(mixed)


class DataSource:
    """Interface: ``batch(step, rank, world_size) -> Tensor`` and ``steps_per_epoch(world_size)``."""

    batch_size: int
    discrete: bool = False

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        raise NotImplementedError

    def steps_per_epoch(self, world_size: int = 1) -> int:
        raise NotImplementedError


class SamplerSource(DataSource):
    """Fresh samples each step from ``sample(n, generator) -> (n, ...)`` (e.g. a 2-D toy density); an "epoch" is
    ``epoch_steps`` steps."""

    def __init__(self, sample: Callable[[int, torch.Generator], torch.Tensor], batch_size: int, seed: int = 0,
                 epoch_steps: int = 100, dtype: torch.dtype = torch.float32):
        if batch_size < 1 or epoch_steps < 1:
            raise ValueError(f"need batch_size >= 1 and epoch_steps >= 1, got {batch_size}, {epoch_steps}")
        self.sample, self.batch_size, self.seed = sample, int(batch_size), int(seed)
        self.epoch_steps, self.dtype = int(epoch_steps), dtype

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        return self.sample(self.batch_size, step_generator(self.seed, step, rank)).to(self.dtype)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return self.epoch_steps


class TensorSource(DataSource):
    """Mini-batches of a fixed tensor ``data`` (N, ...): epoch ``e`` is a seeded permutation; rank ``r`` takes
    every ``world_size``-th batch. ``discrete=True`` (uint8 images) dequantizes each batch to ``[0, 1)``."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0, discrete: bool | None = None,
                 dtype: torch.dtype = torch.float32):
        if data.shape[0] < batch_size:
            raise ValueError(f"data set has {data.shape[0]} samples, fewer than the batch size {batch_size}")
        self.data, self.batch_size, self.seed, self.dtype = data, int(batch_size), int(seed), dtype
        self.discrete = (data.dtype == torch.uint8) if discrete is None else bool(discrete)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        n = self.data.shape[0] // (self.batch_size * world_size)
        if n < 1:
            raise ValueError(f"{self.data.shape[0]} samples cannot fill one batch of {self.batch_size} per rank "
                             f"on {world_size} ranks")
        return n

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        spe = self.steps_per_epoch(world_size)
        epoch, i = divmod(int(step), spe)
        perm = torch.randperm(self.data.shape[0], generator=step_generator(self.seed, epoch, stream=1))
        start = (i * world_size + rank) * self.batch_size
        x = self.data[perm[start : start + self.batch_size]]
        if self.discrete:
            return dequantize(x, step_generator(self.seed, step, rank, stream=2), dtype=self.dtype)
        return x.to(self.dtype)
