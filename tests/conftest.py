import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_seed_one_thread():
    """Tests run in float64 and seeded, so tolerances can be tight and results repeatable, on one intra-op
    thread: the tensors are tiny, and several threads on a shared 2-core machine stall each other."""
    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old_dtype)
    torch.set_num_threads(old_threads)
