"""Maximum-likelihood training of flows: ``min_theta E_x[-log p_theta(x)]`` (eq. 5.1, 5.4), resumable and parallel.

The :class:`Trainer` runs Adam/Adamax with linear warm-up, gradient clipping and an optional parameter EMA on a
:class:`~invertible.training.sources.DataSource`; spectral-norm vectors advance one power iteration per step
and are saved with the weights. It writes into its run folder (rank 0 only):

* ``config.json``: model, data and training settings;
* ``metrics.jsonl``: one JSON line per logged step (train NLL, lr, grad norm) and per validation (honest NLL
  with standard error, see :mod:`invertible.training.evaluate`);
* ``checkpoint.safetensors``: atomically, every ``checkpoint_every`` steps, at each epoch end and at the end.

Before each validation and checkpoint the power iterations are run to convergence
(:func:`~invertible.lipschitz.converge_spectral_norms`), so what is evaluated and saved has ``||W_i|| <= coeff``
exactly, not up to the one-step lag of training (Remark 4.9).

**Resume is exact.** Batches are a function of the step (:mod:`~invertible.training.sources`); the checkpoint
holds model, optimizer, EMA and every rank's global RNG state (the estimators' probes), so a run killed at any
point and resumed from its last checkpoint reproduces the uninterrupted run bit for bit (on the same machine and
thread count). Metrics logged after the checkpoint are dropped on resume.

**Distributed.** Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` after a data-dependent
initialization on the same batch on every rank; rank ``r`` trains on its own shard of each step's data.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invertible.lipschitz import converge_spectral_norms
from invertible.models.resflow import DensityModel
from invertible.training import distributed as D
from invertible.training.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from invertible.training.denormal import flush_denormals
from invertible.training.ema import EMA
from invertible.training.evaluate import evaluate_nll
from invertible.training.logging import MetricsLogger
from invertible.training.sources import DataSource

__all__ = ["TrainConfig", "Trainer", "StopTraining", "CHECKPOINT_NAME", "load_model"]

CHECKPOINT_NAME = "checkpoint.safetensors"


class StopTraining(Exception):
    """Raise from a step callback to stop training (as if the process had been killed)."""


@dataclass
class TrainConfig:
    """Training settings (all JSON-able; stored in ``config.json`` and in checkpoints).

    Attributes:
        steps: total optimizer steps. batch_size: per rank. lr: peak learning rate.
        optimizer: ``"adam"`` or ``"adamax"`` (A.2 uses Adamax, lr 0.003). warmup_steps: linear warm-up.
        grad_clip: max gradient 2-norm (``None``: off). weight_decay: L2 penalty as in ``torch.optim.Adam``.
        ema_decay: parameter EMA (``None``: off).
        log_every, checkpoint_every: in steps (checkpoints also at every epoch end and at the end).
        eval_every: validation every this many steps (``None``: at epoch ends). eval_samples: cap on the
            validation set used during training. seed: data order, probes, dequantization.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    warmup_steps: int = 0
    grad_clip: float | None = None
    weight_decay: float = 0.0
    ema_decay: float | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    eval_every: int | None = None
    eval_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}"
            )
        if self.optimizer not in ("adam", "adamax"):
            raise ValueError(f"optimizer must be 'adam' or 'adamax', got {self.optimizer!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.Adamax
    params = list(params)
    try:  # the fused kernel: one op per parameter instead of ~10 (same maths)
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps`` steps, then constant."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


# -- checkpoint (de)serialization -------------------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in meta["scalars"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def load_model(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[DensityModel, dict]:
    """Rebuild a trained model from a checkpoint file or a run folder: ``(model in eval mode, meta)``.

    With ``use_ema`` and an EMA in the checkpoint, the averaged parameters are loaded.
    """
    from invertible.models.resflow import build_model

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, meta = load_checkpoint(path, device=device)
    if "model" not in meta:
        raise ValueError(f"{path} holds no model config (not written by invertible train-flow)")
    model = build_model(meta["model"])
    dtype = getattr(torch, meta.get("dtype", "float32"))
    model.to(device=device, dtype=dtype)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if use_ema and any(k.startswith("ema.") for k in tensors):
        state.update({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    model.load_state_dict(state)
    model.eval()
    return model, meta


class Trainer:
    """Train a :class:`~invertible.models.resflow.DensityModel` by maximum likelihood.

    Args:
        model: the flow (its dtype and device are those of training).
        source: training batches. cfg: :class:`TrainConfig`.
        out: run folder (``None``: nothing is written, no resume).
        val_data: held-out data for the honest validation NLL (optional).
        meta: extra JSON-able info stored in ``config.json`` and checkpoints (e.g. the data spec).
        show_progress: tqdm bar with the live NLL. tensorboard: also log to ``out/tb`` when installed.
    """

    def __init__(
        self,
        model: DensityModel,
        source: DataSource,
        cfg: TrainConfig,
        out: str | Path | None = None,
        val_data: torch.Tensor | None = None,
        meta: dict[str, Any] | None = None,
        show_progress: bool = True,
        tensorboard: bool = False,
    ):
        self.model, self.source, self.cfg = model, source, cfg
        self.out = Path(out) if out is not None else None
        self.val_data, self.meta = val_data, dict(meta or {})
        self.show_progress = show_progress
        self.dist = D.init_distributed(next(model.parameters()).device)
        self.step = 0
        self.optimizer = _make_optimizer(cfg, model.parameters())
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        writer_dir = self.out if (self.out is not None and self.dist.is_main) else None
        self.logger = MetricsLogger(writer_dir, tensorboard=tensorboard)
        self.last_val: dict[str, Any] | None = None
        self._ddp: nn.Module | None = None
        self._val_step = -1

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out is None else self.out / CHECKPOINT_NAME

    def _dtype_name(self) -> str:
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def save(self) -> None:
        """Write the checkpoint (rank 0; every rank contributes its RNG state)."""
        rng = D.all_gather_tensor(torch.get_rng_state())
        if self.checkpoint_path is None or not self.dist.is_main:
            D.barrier()
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer)
        tensors.update(opt_tensors)
        tensors.update({f"rng.{r}": s for r, s in enumerate(rng)})
        meta = {
            "step": self.step, "model": self.model.config_dict, "train": asdict(self.cfg), "optimizer": opt_meta,
            "dtype": self._dtype_name(), "world_size": self.dist.world_size, **self.meta,
        }
        save_checkpoint(self.checkpoint_path, tensors, meta)
        D.barrier()

    def resume(self) -> bool:
        """Load the run folder's checkpoint if there is one; returns whether training state was restored."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        tensors, meta = load_checkpoint(path, device=next(self.model.parameters()).device)
        if meta.get("model") != self.model.config_dict:
            raise ValueError(f"{path} was written for a different model: {meta.get('model')} != "
                             f"{self.model.config_dict}")
        if meta.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"{path} was written with {meta.get('world_size')} processes, now {self.dist.world_size}")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors[f"rng.{self.dist.rank}"].cpu())
        self.step = int(meta["step"])
        self.logger.truncate(self.step)
        return True

    # -- training -------------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        if self.out is None or not self.dist.is_main:
            return
        cfg = {"model": self.model.config_dict, "train": asdict(self.cfg), "dtype": self._dtype_name(),
               "world_size": self.dist.world_size, **self.meta}
        atomic_write_text(self.out / "config.json", json.dumps(cfg, indent=2))

    def _initialize(self) -> None:
        first = self.source.batch(0, 0, 1).to(next(self.model.parameters()).device)
        self.model.initialize(first)  # the same batch on every rank: identical ActNorm / power-iteration start

    def validate(self) -> dict[str, Any] | None:
        """Honest NLL on (up to ``eval_samples`` of) the validation data, with EMA weights if enabled (rank 0)."""
        if self.val_data is None or not self.dist.is_main:
            return None
        data = self.val_data[: self.cfg.eval_samples]
        if self.ema is not None:
            with self.ema.average_parameters():
                res = evaluate_nll(self.model, data, seed=self.cfg.seed + 12345)
        else:
            res = evaluate_nll(self.model, data, seed=self.cfg.seed + 12345)
        self.last_val = res
        self.logger.log({"split": "val", "step": self.step, **res})
        return res

    def _train_step(self, net: nn.Module) -> tuple[float, float]:
        cfg = self.cfg
        p = next(self.model.parameters())
        x = self.source.batch(self.step, self.dist.rank, self.dist.world_size).to(device=p.device, dtype=p.dtype)
        lr = _lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = -net(x).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}; lower the learning rate or clip gradients")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        else:
            gnorm = math.nan
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return float(loss.detach()), gnorm

    def fit(self, resume: bool = False, callback: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (continuing from the checkpoint with ``resume``); returns final metrics.

        ``callback(trainer)`` runs after every step (after checkpointing); raising :class:`StopTraining` there
        ends training early without a final checkpoint, like a killed process. On a CPU, subnormal floats are
        flushed to zero meanwhile (:mod:`invertible.training.denormal`).
        """
        with flush_denormals(next(self.model.parameters()).device.type == "cpu"):
            return self._fit(resume, callback)

    def _fit(self, resume: bool, callback: Callable[[Trainer], None] | None) -> dict[str, Any]:
        cfg = self.cfg
        restored = self.resume() if resume else False
        if not restored:
            if self.out is not None and self.dist.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self.logger.reset()
            self._initialize()
        self._write_config()
        net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = self._ddp = DDP(self.model)
        spe = self.source.steps_per_epoch(self.dist.world_size)
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (self.show_progress and
                   self.dist.is_main), dynamic_ncols=True, leave=False)
        start, running, n_run = time.perf_counter(), 0.0, 0
        try:
            while self.step < cfg.steps:
                self.model.train()
                loss, gnorm = self._train_step(net)
                self.step += 1
                running, n_run = running + loss, n_run + 1
                bar.update(1)
                bar.set_postfix(nll=f"{loss:.4f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self.logger.log({"split": "train", "step": self.step, "epoch": (self.step - 1) // spe,
                                     "nll": running / n_run, "lr": _lr_at(cfg, self.step - 1), "grad_norm": gnorm,
                                     "seconds": round(time.perf_counter() - start, 3)})
                    running, n_run = 0.0, 0
                epoch_end = self.step % spe == 0
                do_val = (cfg.eval_every and self.step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end)
                do_save = epoch_end or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) \
                    or self.step == cfg.steps
                if do_val or do_save:
                    # power iteration lags one step behind the weights (Remark 4.9): evaluate and save a model whose
                    # blocks are contractive, Lip(g) < 1, not one whose exact norms may exceed coeff (same on all ranks)
                    converge_spectral_norms(self.model)
                if do_val:
                    res = self.validate()
                    self._val_step = self.step
                    if res is not None:
                        bar.set_postfix(nll=f"{loss:.4f}", val=f"{res['nll']:.4f}", refresh=False)
                if do_save:
                    self.save()
                if callback is not None:
                    callback(self)
        except StopTraining:
            return {"step": self.step, "stopped": True}
        finally:
            bar.close()
            self.logger.flush()
        if self.val_data is not None and self._val_step != self.step:
            self.validate()
        return {"step": self.step, "stopped": False, "val": self.last_val}
