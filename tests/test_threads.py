"""Thread limits for small CPU models: torch's intra-op pool and the BLAS pools, restored afterwards."""

import pytest
import torch
from threadpoolctl import threadpool_info

from invertible.threads import intraop_threads, single_thread


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]


def test_single_thread_limits_torch_and_blas_and_restores_them():
    import numpy  # noqa: F401  (loads the BLAS whose pool is limited)

    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    assert before_blas, "no BLAS pool loaded: the test would prove nothing"
    with intraop_threads(2), single_thread():
        assert torch.get_num_threads() == 1
        assert all(n == 1 for n in _blas_threads())
    assert torch.get_num_threads() == before_torch and _blas_threads() == before_blas


def test_intraop_threads_refuses_zero():
    with pytest.raises(ValueError, match=">= 1"):
        with intraop_threads(0):
            pass
