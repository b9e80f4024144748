"""Training data as a deterministic function of the step: resuming at step t sees the same batches.

Batch ``t`` of rank ``r`` depends only on ``(seed, t, r, world_size)``: finite data sets use a seeded
permutation per epoch (shard ``r`` of it), samplers (2-D toy densities) a generator seeded per step, and
dequantization noise its own per-step generator. Nothing here touches the global RNG.

The *stream* sources (:class:`ShuffledSource`, :class:`RandomIndexSource`, :class:`FullBatchSource`) keep the
sampling of the classic loops, where one generator is drawn from batch after batch (a permutation per epoch
and augmentation draws, or ``randint`` indices): batch ``t`` is still a function of ``t``, because a source
asked out of order (after a resume, or by another rank) replays the stream's earlier draws from its start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from invertible.data.dequantize import dequantize
from invertible.training.augment import Augmentation

__all__ = [
    "DataSource",
    "FullBatchSource",
    "RandomIndexSource",
    "SamplerSource",
    "ShuffledSource",
    "TensorSource",
    "step_generator",
]


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by a fixed mix of ``(seed, step, rank, stream)``."""
    mixed = (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729 + int(stream) * 15_485_863) % (2**63)
    return torch.Generator().manual_seed(mixed)


class DataSource(ABC):
    """The engine's data: batch ``step`` of rank ``rank`` as a pure function of ``(seed, step, rank,
    world_size)``, so that a resumed run sees the batches an uninterrupted one would."""

    batch_size: int
    discrete: bool = False

    @abstractmethod
    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Batch ``step`` of rank ``rank`` (a tensor or a tuple of tensors)."""

    @abstractmethod
    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Steps per epoch (the engine validates and checkpoints at epoch ends)."""


class SamplerSource(DataSource):
    """Fresh samples each step from ``sample(n, generator) -> (n, ...)`` (e.g. a 2-D toy density) or a tuple of
    such tensors (pairs ``(x, c)`` of a conditional density); an "epoch" is ``epoch_steps`` steps."""

    def __init__(self, sample: Callable[[int, torch.Generator], torch.Tensor], batch_size: int, seed: int = 0,
                 epoch_steps: int = 100, dtype: torch.dtype = torch.float32):
        if batch_size < 1 or epoch_steps < 1:
            raise ValueError(f"need batch_size >= 1 and epoch_steps >= 1, got {batch_size}, {epoch_steps}")
        self.sample, self.batch_size, self.seed = sample, int(batch_size), int(seed)
        self.epoch_steps, self.dtype = int(epoch_steps), dtype

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.sample(self.batch_size, step_generator(self.seed, step, rank))
        if isinstance(out, tuple | list):  # pairs (x, c) of a conditional density
            return tuple(t.to(self.dtype) for t in out)
        return out.to(self.dtype)

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


def _as_tensors(tensors: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    out = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    if not out or any(t.shape[0] != out[0].shape[0] for t in out):
        raise ValueError(f"need tensors with one common first dimension, got {[tuple(t.shape) for t in out]}")
    return out


def _clone(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


class ShuffledSource(DataSource):
    """Mini-batches of ``tensors`` (each ``(N, ...)``) in a shuffled order per epoch, drawn from one stream.

    Epoch ``e``'s stream: ``perm = randperm(N)``, then for each batch ``j`` in turn the augmentation draws of
    ``x[perm[j B : (j + 1) B]]`` (``augment`` acts on the first tensor). ``generator`` is either ``epoch ->
    Generator`` (a fresh stream per epoch; the A.1 recipe uses ``Generator().manual_seed(seed * 1_000_003 + e)``)
    or one ``torch.Generator`` whose stream runs on over the epochs (its state now is the start; it is copied,
    not advanced). Rank ``r`` takes global batch ``j = i * world_size + r`` at step ``i`` of the epoch, so one
    rank gives the single-process order. ``drop_last`` drops the ragged last batch (BatchNorm needs more than
    one sample); without it the last batch is short and only one rank is supported.

    The current epoch's generator is cached; a batch asked out of order is produced by replaying the stream
    (skipped batches only make their random draws). One tensor gives a tensor, several a tuple.
    """

    def __init__(self, tensors: torch.Tensor | Sequence[torch.Tensor], batch_size: int,
                 generator: torch.Generator | Callable[[int], torch.Generator], *,
                 augment: Augmentation | None = None, drop_last: bool = True):
        self.tensors = _as_tensors(tensors)
        self.n = int(self.tensors[0].shape[0])
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must lie in [1, {self.n}] (the data set size), got {batch_size}")
        self.batch_size, self.augment, self.drop_last = int(batch_size), augment, bool(drop_last)
        self._fresh = None if isinstance(generator, torch.Generator) else generator
        self._start = _clone(generator) if isinstance(generator, torch.Generator) else None
        self._key: tuple[int, int] | None = None  # (world_size, epoch) of the cached stream
        self._gen: torch.Generator | None = None
        self._perm = torch.empty(0, dtype=torch.long)
        self._next = 0  # next global batch of the cached epoch
        self._memo: tuple[tuple[int, int, int], object] | None = None

    def steps_per_epoch(self, world_size: int = 1) -> int:
        if not self.drop_last:
            if world_size != 1:
                raise ValueError("a ShuffledSource with drop_last=False runs on a single process only")
            return -(-self.n // self.batch_size)
        n = self.n // (self.batch_size * world_size)
        if n < 1:
            raise ValueError(f"{self.n} samples cannot fill one batch of {self.batch_size} per rank on "
                             f"{world_size} ranks")
        return n

    def _rows(self, j: int) -> torch.Tensor:
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]

    def _finish_epoch(self, world_size: int) -> None:
        for j in range(self._next, self.steps_per_epoch(world_size) * world_size):
            if self.augment is not None:
                self.augment.skip(len(self._rows(j)), self._gen)
        self._next = self.steps_per_epoch(world_size) * world_size

    def _seek(self, world_size: int, epoch: int) -> None:
        """Make the cached stream stand at the start of ``epoch``'s batches (just after its permutation)."""
        if self._fresh is not None:
            self._gen = self._fresh(epoch)
        else:  # one stream over the epochs: run it on, or restart it from the beginning
            if self._key is None or self._key[0] != world_size or self._key[1] >= epoch:
                self._gen, self._key, self._next = _clone(self._start), (world_size, -1), 0
            while self._key[1] < epoch - 1:
                if self._key[1] >= 0:
                    self._finish_epoch(world_size)
                self._perm = torch.randperm(self.n, generator=self._gen)
                self._key, self._next = (world_size, self._key[1] + 1), 0
            if self._key[1] >= 0:
                self._finish_epoch(world_size)
        self._perm = torch.randperm(self.n, generator=self._gen)
        self._key, self._next = (world_size, epoch), 0

    def batch(self, step: int, rank: int = 0, world_size: int = 1):
        if self._memo is not None and self._memo[0] == (step, rank, world_size):
            return self._memo[1]
        epoch, i = divmod(int(step), self.steps_per_epoch(world_size))
        j = i * world_size + int(rank)
        if self._key != (world_size, epoch) or j < self._next:
            self._seek(world_size, epoch)
        for k in range(self._next, j):
            if self.augment is not None:
                self.augment.skip(len(self._rows(k)), self._gen)
        rows = self._rows(j)
        out = [t[rows] for t in self.tensors]
        if self.augment is not None:
            out[0] = self.augment(out[0], self._gen)
        self._next = j + 1
        result = out[0] if len(out) == 1 else tuple(out)
        self._memo = ((step, rank, world_size), result)
        return result


class RandomIndexSource(DataSource):
    """Batches of ``batch_size`` rows drawn with replacement, ``randint(0, N, (B,), generator)`` per rank and
    step from one stream (rank 0's draw first), an "epoch" being ``epoch_steps`` steps.

    With ``replay=True`` the generator's state now is copied and an earlier step is produced by replaying the
    stream. With ``replay=False`` the given generator is drawn from live, because others draw from it too
    between steps (e.g. the probes of a log-det estimator): steps must then be asked in order (a repeat of the
    last one is answered from a cache), as a run without resume does.
    """

    def __init__(self, tensors: torch.Tensor | Sequence[torch.Tensor], batch_size: int,
                 generator: torch.Generator, *, epoch_steps: int, replay: bool = True):
        self.tensors = _as_tensors(tensors)
        if batch_size < 1 or epoch_steps < 1:
            raise ValueError(f"need batch_size >= 1 and epoch_steps >= 1, got {batch_size}, {epoch_steps}")
        self.batch_size, self.epoch_steps, self.replay = int(batch_size), int(epoch_steps), bool(replay)
        self._start = _clone(generator) if replay else None
        self._gen = _clone(generator) if replay else generator
        self._next = 0
        self._memo: tuple[tuple[int, int, int], object] | None = None

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return self.epoch_steps

    def _draw(self, world_size: int) -> list[torch.Tensor]:
        n = self.tensors[0].shape[0]
        return [torch.randint(0, n, (self.batch_size,), generator=self._gen) for _ in range(world_size)]

    def batch(self, step: int, rank: int = 0, world_size: int = 1):
        key = (int(step), int(rank), int(world_size))
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        if step < self._next:
            if not self.replay:
                raise ValueError(f"this RandomIndexSource draws from a shared generator live and cannot go back "
                                 f"from step {self._next} to {step}")
            self._gen, self._next = _clone(self._start), 0
        for _ in range(self._next, step):
            self._draw(world_size)
        idx = self._draw(world_size)[rank]
        self._next = step + 1
        out = [t[idx] for t in self.tensors]
        result = out[0] if len(out) == 1 else tuple(out)
        self._memo = (key, result)
        return result


class FullBatchSource(DataSource):
    """The whole data set every step (full-batch training); an "epoch" is ``epoch_steps`` steps."""

    def __init__(self, tensors: torch.Tensor | Sequence[torch.Tensor], *, epoch_steps: int):
        self.tensors = _as_tensors(tensors)
        if epoch_steps < 1:
            raise ValueError(f"epoch_steps must be >= 1, got {epoch_steps}")
        self.batch_size, self.epoch_steps = int(self.tensors[0].shape[0]), int(epoch_steps)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return self.epoch_steps

    def batch(self, step: int, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("a FullBatchSource runs on a single process only")
        return self.tensors[0] if len(self.tensors) == 1 else self.tensors
