"""Data-parallel training: 2 gloo processes on CPU end with identical weights; only rank 0 writes."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from invertible.data.toy2d import sample_toy
from invertible.models.resflow import vector_residual_flow
from invertible.training.loop import TrainConfig, Trainer
from invertible.training.sources import SamplerSource


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=2, hidden=(8, 8), mode="resflow").double()
    src = SamplerSource(lambda n, g: sample_toy("8gaussians", n, g), 16, seed=0, epoch_steps=2, dtype=torch.float64)
    trainer = Trainer(model, src, TrainConfig(steps=4, batch_size=16, lr=1e-2, log_every=1), folder,
                      show_progress=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    # the ranks see different data
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    trainer.fit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"init": init, "final": state}, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    changed = False
    for k, v in r0["final"].items():
        torch.testing.assert_close(v, r1["final"][k], rtol=0, atol=0, equal_nan=True, msg=k)
        if v.is_floating_point() and not torch.equal(v, r0["init"][k]) and not v.isnan().any():
            changed = True
    assert changed  # training did move the weights
    assert (tmp_path / "checkpoint.safetensors").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []
