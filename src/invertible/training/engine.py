"""The one training loop: step-based, exactly resumable, data-parallel, with EMA and a live progress bar.

A run is ``Trainer(model, objective, optimizer, source, loop, run=...)``: at step ``t`` the engine takes batch
``t`` of the :class:`~invertible.training.sources.DataSource` (a function of seed, step and rank), asks the
:class:`~invertible.training.objective.Objective` for ``(loss, metrics)``, averages gradients over ranks,
clips, steps the optimizer at the learning rate ``schedule(t)`` and updates the parameter EMA. Every
``log_every`` steps it appends the averaged metrics to ``metrics.jsonl``; at each validation and checkpoint it
first runs the power iterations to convergence (Remark 4.9: what is evaluated and saved satisfies
``||W_i|| <= coeff``), validates with the EMA weights, and writes the checkpoint atomically.

**Exact resume.** The checkpoint holds model, optimizer(s), EMA, the objective's own modules and optimizers,
every rank's RNG state, the partly filled metric accumulators and the step of the last validation, so a run
killed at any point and resumed from its last checkpoint gives the same weights *and the same metrics.jsonl*
as an uninterrupted run (same machine and thread count).

**Distributed.** Under ``torchrun`` every rank trains on its own shard of each step's data; gradients are
averaged over ranks after each backward pass (the all-reduce of data-parallel SGD, done on the flat gradient so
that any objective, not only ``model.forward``, is parallel), buffers are broadcast from rank 0 before
validation and saving, and only rank 0 writes.

**Host syncs.** Within a step nothing is copied to the host; losses are accumulated on the device and read at
each logging interval, where a non-finite loss stops the run (``on_nonfinite="raise"`` or ``"stop"``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from invertible.checks import sync_free_step
from invertible.io import RunFolder, config_differences
from invertible.lipschitz import converge_spectral_norms
from invertible.training import distributed as D
from invertible.training.denormal import flush_denormals
from invertible.training.ema import EMA
from invertible.training.objective import Objective
from invertible.training.optim import optimizer_state_from_tensors, optimizer_state_to_tensors
from invertible.training.sources import DataSource

__all__ = ["LoopConfig", "StopTraining", "Trainer", "TrainingDiverged"]


class StopTraining(Exception):
    """Raise from a step callback to stop training (as if the process had been killed)."""


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite."""


@dataclass
class LoopConfig:
    """How long and how often (all JSON-able; part of every run's ``config.json``).

    Attributes:
        steps: total optimizer steps. log_every: metrics record every this many steps.
        eval_every: validation every this many steps (``None``: at every epoch end of the source).
        checkpoint_every: extra checkpoints every this many steps (always at epoch ends and at the end).
        grad_clip: max gradient 2-norm (``None``: off). ema_decay: parameter EMA (``None``: off).
        on_nonfinite: ``"raise"`` (:class:`TrainingDiverged`) or ``"stop"`` (end the run, ``diverged=True``).
    """

    steps: int
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None
    grad_clip: float | None = None
    ema_decay: float | None = None
    on_nonfinite: str = "raise"

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.on_nonfinite not in ("raise", "stop"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {self.on_nonfinite!r}")


def _first_param(model: nn.Module) -> torch.Tensor:
    for p in model.parameters():
        return p
    raise ValueError("the model has no parameters to train")


class Trainer:
    """Train ``model`` on ``objective`` (see the module docstring).

    Args:
        model: the module whose parameters ``optimizer`` updates (its device and dtype are those of training).
        objective: ``batch -> (loss, metrics)`` plus initialization, validation and its own state.
        optimizer: built on ``model``'s parameters (and any other parameters the objective trains with it).
        source: batches as a function of ``(step, rank, world_size)``.
        loop: :class:`LoopConfig`.
        run: the run folder (``None``: nothing is written and no resume).
        schedule: ``step -> learning rate`` (``None``: the optimizer's own lr throughout).
        kind: the checkpoint's ``kind`` (default: ``model.kind`` when the model registry set one).
        config: the run's complete JSON config (model, data, recipe, loop); written to ``config.json``,
            stored in the checkpoint, and compared on resume.
        resume_may_change: top-level keys of ``config`` a resumed run may change (default: the step budget).
        show_progress: tqdm bar with the live metrics. desc: its label.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        source: DataSource,
        loop: LoopConfig,
        run: RunFolder | None = None,
        *,
        schedule: Callable[[int], float] | None = None,
        kind: str | None = None,
        config: dict[str, Any] | None = None,
        resume_may_change: tuple[str, ...] = ("loop.steps",),
        show_progress: bool = True,
        desc: str = "train",
    ):
        self.model, self.objective, self.optimizer, self.source, self.loop = model, objective, optimizer, source, loop
        self.schedule = schedule
        self.dist = D.init_distributed(_first_param(model).device)
        self.run = run if run is None or self.dist.is_main else RunFolder(run.path, writer=False)
        self.kind = kind or getattr(model, "kind", None) or type(model).__name__
        self.config = dict(config or {})
        self.config.setdefault("loop", asdict(loop))
        self.config.setdefault("world_size", self.dist.world_size)
        self.resume_may_change = tuple(resume_may_change)
        self.show_progress, self.desc = show_progress, desc
        self.ema = EMA(model, loop.ema_decay) if loop.ema_decay is not None else None
        self.step = 0
        self.diverged = False
        self.last_val: dict[str, Any] | None = None
        self._val_step = -1
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self.seconds = 0.0

    # -- state --------------------------------------------------------------------------------------------------
    def _state_tensors(self, rng: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update(optimizer_state_to_tensors("optim", self.optimizer))
        for name, module in self.objective.modules().items():
            tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        for name, opt in self.objective.optimizers().items():
            tensors.update(optimizer_state_to_tensors(f"optim_{name}", opt))
        tensors.update({f"rng.{r}": s for r, s in enumerate(rng)})
        if torch.cuda.is_available() and _first_param(self.model).device.type == "cuda":
            tensors[f"cuda_rng.{self.dist.rank}"] = torch.cuda.get_rng_state(_first_param(self.model).device)
        tensors.update({f"acc.{k}": v.detach().double().cpu().reshape(()) for k, v in self._sums.items()})
        return tensors

    def save(self) -> None:
        """Write the checkpoint (rank 0; every rank contributes its RNG state)."""
        rng = D.all_gather_tensor(torch.get_rng_state())
        if self.run is None or not self.dist.is_main:
            D.barrier()
            return
        meta = {"step": self.step, "val_step": self._val_step, "acc_count": self._count, "seconds": self.seconds,
                "dtype": str(_first_param(self.model).dtype).replace("torch.", ""), "last_val": self.last_val,
                "diverged": self.diverged}
        self.run.save_checkpoint(self._state_tensors(rng), kind=self.kind, config=self.config, meta=meta)
        D.barrier()

    def resume(self) -> None:
        """Restore the run folder's checkpoint; refuses one written for another config, naming the keys."""
        if self.run is None:
            raise ValueError("resume needs a run folder")
        if not self.run.has_checkpoint():
            raise FileNotFoundError(f"no checkpoint in {self.run.path} to resume from; start without --resume")
        ck = self.run.load_checkpoint(device=_first_param(self.model).device)
        diff = [k for k in config_differences(ck.config, self.config)
                if not any(k == m or k.startswith(m + ".") for m in self.resume_may_change)]
        if diff:
            raise ValueError(f"cannot resume {self.run.path}: its config differs in {', '.join(diff)} "
                             f"(start a new run folder, or resume with the same settings)")
        self.model.load_state_dict(ck.group("model"))
        if self.ema is not None:
            self.ema.load_state_dict(ck.group("ema"))
        self.optimizer.load_state_dict(optimizer_state_from_tensors(ck.group("optim"), self.optimizer))
        for name, module in self.objective.modules().items():
            module.load_state_dict(ck.group(name))
        for name, opt in self.objective.optimizers().items():
            opt.load_state_dict(optimizer_state_from_tensors(ck.group(f"optim_{name}"), opt))
        torch.set_rng_state(ck.tensors[f"rng.{self.dist.rank}"].cpu())
        cuda_rng = ck.tensors.get(f"cuda_rng.{self.dist.rank}")
        if cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda_rng.cpu(), _first_param(self.model).device)
        device = _first_param(self.model).device
        self._sums = {k: v.to(device) for k, v in ck.group("acc").items()}
        meta = ck.meta
        self.step, self._val_step, self._count = int(meta["step"]), int(meta["val_step"]), int(meta["acc_count"])
        self.seconds, self.last_val = float(meta.get("seconds", 0.0)), meta.get("last_val")
        self.diverged = bool(meta.get("diverged", False))
        self.run.truncate_metrics(self.step)

    # -- the loop -----------------------------------------------------------------------------------------------
    def _sync_gradients(self) -> None:
        if not self.dist.enabled:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        D.average_gradients(params)

    def _train_step(self) -> None:
        p = _first_param(self.model)
        batch = self.source.batch(self.step, self.dist.rank, self.dist.world_size)
        batch = self.objective.to_device(batch, p.device, p.dtype)
        if self.schedule is not None:
            lr = self.schedule(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.model.train()
        # On an accelerator the per-layer isfinite test would wait for the device every step; a non-finite batch
        # shows up in the loss, which the log interval checks (LoopConfig.on_nonfinite).
        trusted = sync_free_step() if p.device.type != "cpu" else contextlib.nullcontext()
        with trusted:
            loss, metrics = self.objective.loss(self.model, batch, self)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_gradients()
        if self.loop.grad_clip is not None:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                [q for g in self.optimizer.param_groups for q in g["params"]], self.loop.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        for k, v in {self.objective.loss_name: loss, **metrics}.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._count += 1

    def _log_train(self, bar) -> None:
        means = {k: float(v) / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        spe = self.source.steps_per_epoch(self.dist.world_size)
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"split": "train", "step": self.step, "epoch": (self.step - 1) // spe, **means, "lr": lr,
                  "seconds": round(self.seconds, 3)}
        if self.run is not None:
            self.run.log(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in self.objective.progress_metrics(means).items()}, refresh=False)
        if not math.isfinite(means[self.objective.loss_name]):
            self.diverged = True
            if self.loop.on_nonfinite == "raise":
                raise TrainingDiverged(f"non-finite loss before step {self.step}; lower the learning rate or clip "
                                       "gradients (--grad-clip)")

    def validate(self) -> dict[str, Any] | None:
        """The objective's validation with EMA weights if enabled (rank 0), logged as a ``val`` record."""
        if not self.dist.is_main:
            return None
        if self.ema is not None:
            with self.ema.average_parameters():
                res = self.objective.validate(self.model)
        else:
            res = self.objective.validate(self.model)
        if res is not None:
            self.last_val = res
            if self.run is not None:
                self.run.log({"split": "val", "step": self.step, **res})
        return res

    def fit(self, resume: bool = False, callback: Callable[[Trainer], None] | None = None,
            overwrite: bool = False) -> dict[str, Any]:
        """Train to ``loop.steps`` (from the checkpoint with ``resume``); returns ``{"step", "stopped",
        "diverged", "val"}``.

        Without ``resume`` an existing checkpoint in the run folder is an error unless ``overwrite``, so no run
        is replaced by accident. ``callback(trainer)`` runs after every step (after checkpointing); raising
        :class:`StopTraining` there ends training without a final checkpoint, like a killed process. On a CPU,
        subnormal floats are flushed to zero meanwhile (:mod:`invertible.training.denormal`).
        """
        with flush_denormals(_first_param(self.model).device.type == "cpu"):
            return self._fit(resume, callback, overwrite)

    def _start(self, resume: bool, overwrite: bool) -> None:
        if resume:
            self.resume()
        else:
            if self.run is not None and self.run.has_checkpoint() and not overwrite:
                raise ValueError(f"{self.run.path} already holds a checkpoint: resume it (--resume) or choose "
                                 "another output folder")
            if self.run is not None:
                self.run.make()
                self.run.reset_metrics()
            p = _first_param(self.model)
            first = self.objective.to_device(self.source.batch(0, 0, 1), p.device, p.dtype)
            self.objective.initialize(self.model, first)  # the same batch on every rank
        if self.run is not None:
            self.run.write_config(self.config)

    def _fit(self, resume: bool, callback, overwrite: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        loop = self.loop
        self._start(resume, overwrite)
        spe = self.source.steps_per_epoch(self.dist.world_size)
        bar = tqdm(total=loop.steps, initial=self.step, desc=self.desc, dynamic_ncols=True, leave=False,
                   disable=not (self.show_progress and self.dist.is_main))
        try:
            while self.step < loop.steps and not self.diverged:
                if self.step % spe == 0:
                    self.objective.on_epoch_start(self.model, self.step // spe, self)
                start = time.perf_counter()
                self._train_step()
                self.seconds += time.perf_counter() - start
                self.step += 1
                bar.update(1)
                last = self.step == loop.steps
                if self.step % loop.log_every == 0 or last:
                    self._log_train(bar)
                    if self.diverged:
                        break
                epoch_end = self.step % spe == 0
                do_val = (loop.eval_every and self.step % loop.eval_every == 0) or (not loop.eval_every and epoch_end)
                do_save = epoch_end or last or bool(loop.checkpoint_every and self.step % loop.checkpoint_every == 0)
                if do_val or do_save or last:
                    converge_spectral_norms(self.model)
                    D.broadcast_buffers(self.model)
                if do_val or last:
                    self.validate()
                    self._val_step = self.step
                if do_save:
                    self.save()
                if callback is not None:
                    callback(self)
        except StopTraining:
            return {"step": self.step, "stopped": True}
        finally:
            bar.close()
            if self.run is not None:
                self.run.flush()
        if self.diverged:
            self.save()
        elif self._val_step != self.step:  # resumed after the final checkpoint: nothing new to validate
            self.validate()
            self._val_step = self.step
        result = {"step": self.step, "stopped": False, "diverged": self.diverged, "val": self.last_val}
        self._write_summary(result)
        return result

    def _write_summary(self, result: dict[str, Any]) -> None:
        """``metrics.json`` and a plain ``report.md`` of the run (a recipe's command may write richer ones)."""
        if self.run is None:
            return
        last_train = next((r for r in reversed(self.run.read_metrics()) if r.get("split") == "train"), {})
        self.run.write_summary({**result, "train_seconds": self.seconds, "last_train": last_train})
        val = self.last_val or {}
        self.run.report(f"Training run: {self.kind}", {
            "Run": [f"{self.step} of {self.loop.steps} steps in {self.seconds:.1f} s of training, "
                    f"{self.dist.world_size} process(es)", f"diverged: {self.diverged}"],
            "Last training record": [f"{k} = {v}" for k, v in last_train.items() if k != "split"] or "none",
            "Validation": [f"{k} = {v}" for k, v in val.items()] or "none",
            "Settings": "`config.json` holds every setting; `invertible` rebuilds the model with "
                        "`invertible.training.load_run`.",
        })
