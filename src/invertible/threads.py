"""Intra-op thread control for small CPU models. A leaf: imports only torch (and threadpoolctl for BLAS).

Small models gain nothing from intra-op parallelism, and on shared cores torch's multi-threaded kernels can be
an order of magnitude slower (measured: quick fig6.5 16 s with one thread, 380 s with two on a 2-core machine
loaded by other jobs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intraop_threads", "single_intraop_thread", "single_thread"]


@contextmanager
def intraop_threads(n: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` and restore the previous setting afterwards."""
    if n < 1:
        raise ValueError(f"the number of threads must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def single_intraop_thread() -> Iterator[None]:
    """Run small CPU models on one intra-op thread and restore the previous setting afterwards."""
    with intraop_threads(1):
        yield


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread and one BLAS thread (threadpoolctl, which scikit-learn brings): small
    scikit-learn fits beside small torch models (measured on the shared 2-core machine: a 2000 x 186 logistic
    regression took 4.2 s with two BLAS threads, 0.14 s with one)."""
    from threadpoolctl import threadpool_limits

    with intraop_threads(1), threadpool_limits(1):
        yield

