"""Mini-batches of a finite data set from successive permutations of ONE generator, as a function of the step.

Epoch ``e`` is the ``(e + 1)``-th draw ``torch.randperm(n, generator=g)`` of a single generator (the classic
"shuffle every epoch" loop); batch ``i`` of it is ``perm[i * B : (i + 1) * B]``, the last one ragged. Batches
with fewer than ``min_batch`` samples per rank are skipped. Under ``world_size = W`` ranks every batch is
dealt to the ranks, ``batch[r::W]`` for rank ``r`` (so the global batch, and the average of the ranks'
gradients, stays the one of a single process up to the weighting of unequal shares).

:class:`PermutedSource` is a :class:`~invertible.training.sources.DataSource`: batch ``t`` is computable for
any ``t``. Permutations are drawn lazily in order; a request for an earlier epoch (a resumed run) resets the
generator to its state at construction and replays the draws, so the generator ends where the uninterrupted
loop would leave it. The global default generator cannot be replayed (that would rewind every other random
draw too): with it, epochs must be requested in order, as the engine does in an uninterrupted run.
"""

from __future__ import annotations

import torch

from invertible.training.sources import DataSource

__all__ = ["PermutedSource"]


class PermutedSource(DataSource):
    """Index batches of ``range(n)`` (see the module docstring); subclasses turn indices into data with
    :meth:`gather`.

    Args:
        n: data set size. batch_size: ``B``, before dealing to ranks. generator: the one generator whose
            successive permutations are the epochs (``None``: a fresh one seeded with ``seed``).
        min_batch: a batch whose smallest rank share is below this is skipped (1: keep the ragged last batch).
    """

    def __init__(self, n: int, batch_size: int, *, generator: torch.Generator | None = None, seed: int = 0,
                 min_batch: int = 1):
        if n < 1 or batch_size < 1 or min_batch < 1:
            raise ValueError(f"need n >= 1, batch_size >= 1, min_batch >= 1; got {n}, {batch_size}, {min_batch}")
        self.n, self.batch_size, self.min_batch = int(n), int(batch_size), int(min_batch)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        self._replayable = self.generator is not torch.default_generator
        self._initial = self.generator.get_state() if self._replayable else None
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self._cache: dict[int, list[int]] = {}

    def _starts(self, world_size: int) -> list[int]:
        if world_size not in self._cache:
            need = self.min_batch * world_size  # the smallest share of batch[r::W] is floor(len / W)
            self._cache[world_size] = [s for s in range(0, self.n, self.batch_size)
                                       if min(self.batch_size, self.n - s) >= need]
        return self._cache[world_size]

    def steps_per_epoch(self, world_size: int = 1) -> int:
        k = len(self._starts(world_size))
        if k < 1:
            raise ValueError(f"{self.n} samples in batches of {self.batch_size} give no batch with at least "
                             f"{self.min_batch} sample(s) per rank on {world_size} rank(s)")
        return k

    def permutation(self, epoch: int) -> torch.Tensor:
        """``perm_e``: the ``(epoch + 1)``-th ``torch.randperm(n, generator)`` (drawn or replayed)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self._epoch:
            if not self._replayable:
                raise ValueError("epochs drawn from the global generator must be requested in order; pass a "
                                 "torch.Generator to train out of order (e.g. to resume)")
            self.generator.set_state(self._initial)
            self._epoch = -1
        while self._epoch < epoch:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._epoch += 1
        return self._perm

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Row indices of batch ``step`` for ``rank``: ``perm_e[s : s + B][rank::world_size]``."""
        spe = self.steps_per_epoch(world_size)
        epoch, i = divmod(int(step), spe)
        s = self._starts(world_size)[i]
        return self.permutation(epoch)[s : s + self.batch_size][rank::world_size]

    def gather(self, idx: torch.Tensor):
        raise NotImplementedError

    def batch(self, step: int, rank: int = 0, world_size: int = 1):
        return self.gather(self.indices(step, rank, world_size))
