"""The iCE recipe on the training engine: fully invertible classifiers trained with cross-entropy or the
independence cross-entropy of Definition 6.14 (eq. 6.13).

One engine step is one round of the min-max game ``min_theta max_theta_nc L(theta, theta_nc)``:
:class:`ICEObjective` takes ``nuisance_steps`` ascent steps of the nuisance classifier ``D_nc`` on the detached
``z_n`` of the batch (gradients all-reduced under DDP) and returns the network's loss of eq. 6.13 from the same
forward pass,

    L = L_sCE + nuisance_weight * (nuisance term of ``form``) + mle_weight * L_MLEn / d,

which the engine minimizes over ``theta`` and the prior ``(beta, gamma)`` with Adam. With
``nuisance_refit_steps > 0`` every epoch starts with the best response ``theta_nc*`` (:func:`_refit_nuisance`,
the classifier Theorem 6.16 assumes). ``objective="ce"`` sets both weights to 0 (plain cross-entropy).

The data order is the classic loop's: one ``torch.Generator().manual_seed(seed)`` whose successive
``randperm(n)`` are the epochs, batches of ``batch_size`` including the ragged last one
(:class:`ICESource`). The nuisance classifier, the prior and the nuisance optimizer are checkpointed with the
network (the engine's schema: ``kind`` = the model's kind, the run's complete config), so ``resume=True``
continues a killed run exactly; it may extend ``epochs`` and refuses any other change, naming the keys.

References: Jacobsen, Behrmann, Zemel, Bethge (2019) "Excessive Invariance Causes Adversarial Vulnerability".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from invertible.invariance.ice import FactorizedGaussian, NuisanceClassifier, ice_metrics, ice_round
from invertible.io import RunFolder
from invertible.models.firevnet import FullyInvertibleClassifier
from invertible.training.distributed import average_gradients, broadcast_buffers, init_distributed
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.objective import Objective
from invertible.training.permuted import PermutedSource

__all__ = [
    "ICEObjective",
    "ICESource",
    "ICEConfig",
    "TrainResult",
    "evaluate_error",
    "ice_trainer",
    "nuisance_probe",
    "nuisance_probe_accuracy",
    "train_ice",
]

HISTORY_KEYS = ("loss", "ce", "nuisance_ce", "mle", "acc")


@dataclass
class ICEConfig:
    """Hyper-parameters; ``objective="ce"`` ignores the nuisance and MLE settings.

    The defaults are what trains reliably in a few CPU epochs: a linear nuisance classifier with two steps per
    network step and the non-saturating network term (:func:`~invertible.invariance.ice.adversarial_nuisance_loss`).
    ``form="minimax"`` is Definition 6.14 to the letter; its network term ``-CE`` is unbounded below, and with an
    MLP nuisance classifier it either saturates (classifier wins, no gradient) or diverges (the network inflates
    ``z_n`` to make the classifier confidently wrong), which the MLE term only partly prevents.
    """

    objective: str = "ice"  # "ce" or "ice"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    nuisance_lr: float = 3e-3
    nuisance_weight: float = 1.0
    mle_weight: float = 1.0
    nuisance_hidden: int = 0  # 0: linear nuisance classifier; > 0: hidden ReLU layers of this width
    nuisance_layers: int = 1  # number of hidden layers when nuisance_hidden > 0
    nuisance_standardize: bool = False  # batch-standardize z_n in front of the nuisance classifier
    nuisance_steps: int = 2  # nuisance-classifier steps per network step
    form: str = "nonsaturating"  # the network's nuisance term: "minimax" (literally Definition 6.14) or "nonsaturating"
    nuisance_refit_steps: int = 0  # full-batch steps of a freshly initialized nuisance classifier per epoch
    seed: int = 0
    ema_decay: float | None = None  # parameter EMA of the network (None: off)

    def __post_init__(self):
        if self.objective not in ("ce", "ice"):
            raise ValueError(f"objective must be 'ce' or 'ice', got {self.objective!r}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or not self.nuisance_lr > 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0: got {self}")


@dataclass
class TrainResult:
    model: FullyInvertibleClassifier
    nuisance: NuisanceClassifier
    prior: FactorizedGaussian
    history: list[dict[str, float]] = field(default_factory=list)


def evaluate_error(model: FullyInvertibleClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Test error ``mean(argmax z_s != y)`` in eval mode without gradients."""
    was_training = model.training
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            wrong += int((model.predict(x[i : i + batch_size]) != y[i : i + batch_size]).sum())
    model.train(was_training)
    return wrong / max(1, len(x))


def nuisance_probe(model: FullyInvertibleClassifier, x_train: torch.Tensor, y_train: torch.Tensor,
                   max_iter: int = 200):
    """A fresh multinomial logistic regression (scikit-learn, standardized features) fitted *after training* on
    ``z_n`` of ``x_train``; returns ``predict(x) -> np.ndarray`` of predicted labels. This is the fresh-restart
    check of the min-max game: a nuisance classifier that was fooled during training does not mean the label
    information is gone from ``z_n``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def nuisance(x: torch.Tensor):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            z_n = torch.cat([model.encode(x[i : i + 1000])[1] for i in range(0, len(x), 1000)])
        model.train(was_training)
        return z_n.double().cpu().numpy()

    z_train = nuisance(x_train)
    scaler = StandardScaler().fit(z_train)
    probe = LogisticRegression(max_iter=max_iter).fit(scaler.transform(z_train), y_train.cpu().numpy())
    return lambda x: probe.predict(scaler.transform(nuisance(x)))


def nuisance_probe_accuracy(
    model: FullyInvertibleClassifier,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    max_iter: int = 200,
) -> float:
    """How much label information is left in ``z_n``: test accuracy of :func:`nuisance_probe` fitted on the
    training inputs. iCE aims to push it towards chance (a variational lower bound on I(Y; Z_n), Theorem 6.16);
    a CE model keeps the digit in ``z_n``."""
    predict = nuisance_probe(model, x_train, y_train, max_iter)
    return float((predict(x_test) == y_test.cpu().numpy()).mean())


class ICESource(PermutedSource):
    """``(x[idx], y[idx])`` for the batches of :class:`~invertible.training.permuted.PermutedSource` with one
    generator seeded by ``seed`` and the ragged last batch kept: ``ceil(n / batch_size)`` steps per epoch on
    one rank. ``x (N, *input_shape)``, ``y (N,)`` stay where they are (the indices follow them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0):
        super().__init__(x.shape[0], batch_size, seed=seed)
        self.x, self.y = x, y

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]


def _sync(params: list[torch.Tensor]) -> None:
    average_gradients(params)


def _broadcast(module: nn.Module) -> None:
    if dist.is_available() and dist.is_initialized():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, 0)


class ICEObjective(Objective):
    """One round of the min-max game per step (module docstring); owns ``D_nc``, the prior and ``D_nc``'s Adam.

    ``history`` collects one record per epoch (the engine logs once per epoch): ``{"epoch", "loss", "ce",
    "nuisance_ce", "mle", "acc"}``, each the mean over the epoch's steps. ``x, y``: the whole training set
    (for the best-response refits). ``D_nc`` and the prior take the model's dtype, as the batches do.
    """

    def __init__(self, model: FullyInvertibleClassifier, config: ICEConfig, x: torch.Tensor, y: torch.Tensor):
        n_nuisance = model.dim - model.n_classes
        dtype = next(model.parameters()).dtype  # the engine hands the model its batches in this dtype
        self.config, self.x, self.y = config, x.to(dtype), y
        self.nuisance = NuisanceClassifier(n_nuisance, model.n_classes, hidden=config.nuisance_hidden,
                                           n_hidden_layers=config.nuisance_layers,
                                           standardize=config.nuisance_standardize).to(x.device, dtype)
        self.prior = FactorizedGaussian(n_nuisance).to(x.device, dtype)
        self.nuisance_opt = torch.optim.Adam(self.nuisance.parameters(), lr=config.nuisance_lr)
        ice = config.objective == "ice"
        self.weights = (config.nuisance_weight, config.mle_weight) if ice else (0.0, 0.0)
        self.history: list[dict[str, float]] = []
        self._epoch = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"nuisance": self.nuisance, "prior": self.prior}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"nuisance": self.nuisance_opt}

    def loss(self, model, batch, trainer):
        x, y = batch
        self._epoch = trainer.step // trainer.source.steps_per_epoch(trainer.dist.world_size)
        self.nuisance_opt.zero_grad(set_to_none=True)  # what the last network step left on theta_nc
        terms = ice_round(model, self.nuisance, self.prior, self.nuisance_opt, x, y, nuisance_weight=self.weights[0],
                          mle_weight=self.weights[1], nuisance_steps=self.config.nuisance_steps, form=self.config.form,
                          sync_gradients=_sync if trainer.dist.enabled else None)
        metrics = ice_metrics(terms, y)
        return terms.model_loss, {k: metrics[k] for k in HISTORY_KEYS[1:]}

    def on_epoch_start(self, model, epoch, trainer) -> None:
        if self.config.objective == "ice" and self.config.nuisance_refit_steps > 0:
            _refit_nuisance(model, self.nuisance, self.nuisance_opt, self.x, self.y,
                            self.config.nuisance_refit_steps, self.config.batch_size)
            _broadcast(self.nuisance)

    def progress_metrics(self, means: dict[str, float]) -> dict[str, float]:
        # the engine logs once per epoch (log_every = steps per epoch): these are the epoch's means
        self.history.append({"epoch": self._epoch + 1, **{k: means[k] for k in HISTORY_KEYS}})
        return {"ce": means["ce"], "acc": means["acc"], "nce": means["nuisance_ce"]}


def fi_model_config(model: FullyInvertibleClassifier) -> dict[str, Any]:
    """The model's JSON config with its ``kind``: the registry's (``model.kind`` / ``model.config``) when the
    model was built through it, else the kind read off the blocks (``fi_iresnet`` for i-ResNet blocks,
    ``fi_revnet`` otherwise) with the input shape and number of classes."""
    if getattr(model, "config", None) is not None and getattr(model, "kind", None):
        from invertible.training.density import model_config_dict

        return model_config_dict(model)
    from invertible.nn import ResidualBlock

    kind = "fi_iresnet" if any(isinstance(m, ResidualBlock) for m in model.modules()) else "fi_revnet"
    return {"kind": kind, "input_shape": list(model.input_shape), "n_classes": model.n_classes}


def ice_trainer(
    model: FullyInvertibleClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ICEConfig,
    run: str | Path | RunFolder | None = None,
    *,
    model_config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    desc: str | None = None,
) -> Trainer:
    """The engine set up for the iCE recipe: :class:`ICESource`, :class:`ICEObjective`, Adam(lr) over the
    network and the prior, one log record and one checkpoint per epoch, ``config.epochs`` epochs.

    The run's ``config.json`` is ``{"recipe": "ice", "model", "train", "n_train", "dtype", "loop",
    "world_size", **meta}`` (``model_config``: how to rebuild the model, default :func:`fi_model_config`;
    ``meta``: e.g. the data set under ``"data"``); a resumed run may change ``train.epochs`` only.
    """
    if x.shape[0] != y.shape[0] or y.dim() != 1:
        raise ValueError(f"x and y must have the same length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"x must be (N, {', '.join(map(str, model.input_shape))}), got {tuple(x.shape)}")
    model.to(x.device)
    objective = ICEObjective(model, config, x, y)
    source = ICESource(x, y, config.batch_size, seed=config.seed)
    optimizer = torch.optim.Adam([*model.parameters(), *objective.prior.parameters()], lr=config.lr)
    spe = source.steps_per_epoch(init_distributed(x.device).world_size)
    model_cfg = dict(model_config) if model_config is not None else fi_model_config(model)
    cfg = {"recipe": "ice", "model": model_cfg, "train": asdict(config), "n_train": int(x.shape[0]),
           "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), **dict(meta or {})}
    folder = run if isinstance(run, RunFolder) or run is None else RunFolder(run)
    loop = LoopConfig(steps=max(1, config.epochs * spe), log_every=spe, ema_decay=config.ema_decay)
    return Trainer(model, objective, optimizer, source, loop, folder, kind=model_cfg.get("kind"), config=cfg,
                   resume_may_change=("train.epochs", "loop.steps"), show_progress=show_progress,
                   desc=desc or config.objective)


def train_ice(
    model: FullyInvertibleClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: ICEConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    desc: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``x (N, *input_shape)`` float, ``y (N,)`` int64 with CE or iCE (eq. 6.13) on the engine.

    Parameters live on the device of ``x``. With ``run_dir`` the run folder gets ``config.json``, one
    ``metrics.jsonl`` record per epoch and a checkpoint after every epoch (an existing run there is replaced
    unless ``resume``); ``resume=True`` loads it (``FileNotFoundError`` if there is none) and continues up to
    ``config.epochs`` (which may be larger than before; any other changed setting is a ``ValueError`` naming
    the keys). ``history``: one record per epoch, the mean of each term over the epoch's steps.
    """
    if config.epochs == 0 and not resume:
        return _untrained(model, x, y, config)
    trainer = ice_trainer(model, x, y, config, run_dir, model_config=model_config, meta=meta,
                          show_progress=show_progress, desc=desc)
    objective: ICEObjective = trainer.objective  # type: ignore[assignment]
    model.train()
    trainer.fit(resume=resume, overwrite=True)
    objective.nuisance_opt.zero_grad(set_to_none=True)
    broadcast_buffers(objective.nuisance)  # its running statistics, from rank 0 like the network's
    history = objective.history
    if resume and trainer.run is not None:
        first = history[0]["epoch"] if history else config.epochs + 1
        done = [r for r in trainer.run.read_metrics() if r.get("split") == "train" and r["epoch"] + 1 < first]
        history = [{"epoch": r["epoch"] + 1, **{k: r[k] for k in HISTORY_KEYS}} for r in done] + history
    model.eval()
    return TrainResult(model, objective.nuisance, objective.prior, history)


def _untrained(model, x, y, config) -> TrainResult:
    model.to(x.device)
    objective = ICEObjective(model, config, x, y)
    model.eval()
    return TrainResult(model, objective.nuisance, objective.prior, [])


def _refit_nuisance(model, nuisance, nuisance_opt, x, y, steps: int, batch_size: int) -> None:
    """Best-response step of the min-max game: re-initialize the nuisance classifier and fit it for ``steps``
    full-batch Adam steps on ``z_n`` of the whole training set under the current (frozen) network.

    Without it the network can keep fooling a classifier that follows it a few SGD steps at a time, while a
    probe fitted afterwards still reads the label from ``z_n``. The classifier's Adam state is reset too."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        z_n = torch.cat([model.encode(x[i : i + 1000])[1] for i in range(0, len(x), 1000)])
    model.train(was_training)
    for module in nuisance.modules():
        if hasattr(module, "reset_parameters") and module is not nuisance:
            module.reset_parameters()
    nuisance_opt.state.clear()
    for _ in range(steps):
        nuisance_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(nuisance(z_n), y).backward()
        nuisance_opt.step()
    nuisance_opt.zero_grad(set_to_none=True)


