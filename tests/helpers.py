"""Small factories shared by the core tests."""

import torch
from torch import nn

import invertible as inv


def mlp_g(dim: int = 3, hidden: int = 16, coeff: float = 0.9, n_power_iterations: int = 1, **sn) -> nn.Sequential:
    """A contractive MLP residual function: SN-Linear, LipSwish, SN-Linear."""
    return nn.Sequential(
        inv.spectral_norm(nn.Linear(dim, hidden), coeff, n_power_iterations, **sn),
        inv.LipSwish(),
        inv.spectral_norm(nn.Linear(hidden, dim), coeff, n_power_iterations, **sn),
    )


def conv_g(channels: int = 2, hidden: int = 4, coeff: float = 0.9, **sn) -> nn.Sequential:
    """A contractive conv residual function (3x3 - 1x1 - 3x3, eq. 4.5) with ELU."""
    return nn.Sequential(
        inv.spectral_norm(nn.Conv2d(channels, hidden, 3, padding=1), coeff, **sn),
        nn.ELU(),
        inv.spectral_norm(nn.Conv2d(hidden, hidden, 1), coeff, **sn),
        nn.ELU(),
        inv.spectral_norm(nn.Conv2d(hidden, channels, 3, padding=1), coeff, **sn),
    )


def warm_up(module: nn.Module, x: torch.Tensor, steps: int = 30) -> None:
    """Run training-mode forwards so spectral-norm vectors converge, then switch to eval."""
    module.train()
    for _ in range(steps):
        module(x)  # power iteration runs in training mode with grad enabled
    module.eval()


def autograd_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobian of f at x (batch, d_out, d_in) by plain autograd, one sample at a time."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda t: f(t).reshape(-1), xi)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, worker, world: int, port: int, folder: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        worker(rank, world, folder)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_gloo_ranks(worker, folder, world: int = 2) -> None:
    """Run ``worker(rank, world, folder)`` in ``world`` processes that form a gloo group as torchrun's would
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT`` set; one intra-op thread each); the engine joins the group."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_entry, args=(worker, world, _free_port(), str(folder)), nprocs=world, join=True)
