"""Training fully invertible classifiers with cross-entropy or independence cross-entropy (Definition 6.14).

:func:`train_classifier` runs the alternating min-max updates of :func:`~invertible.invariance.ice.ice_step`
(plain CE when ``objective="ce"``) with a tqdm progress bar showing the live loss and accuracy. Given a run
folder it writes ``config.json``, one line per epoch to ``metrics.jsonl`` and an atomic safetensors checkpoint
(network, nuisance classifier, prior, both Adam states, the shuffling generator) after every epoch, so
``resume=True`` continues a killed run exactly where the last completed epoch ended.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from invertible.invariance.ice import FactorizedGaussian, NuisanceClassifier, ice_step
from invertible.models.firevnet import FullyInvertibleClassifier
from invertible.training.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_error",
    "nuisance_probe",
    "nuisance_probe_accuracy",
    "train_classifier",
]

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainConfig:
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


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.state.{idx}.{key}"] = torch.as_tensor(value)
    meta[f"{prefix}.param_groups"] = sd["param_groups"]


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(head):
            idx, key = name[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    groups = meta[f"{prefix}.param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def train_classifier(
    model: FullyInvertibleClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    desc: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``x (N, *input_shape)`` float, ``y (N,)`` int64 with CE or iCE (eq. 6.13).

    Mini-batches are drawn by a ``torch.Generator`` seeded with ``config.seed``; parameters live on the device
    of ``x``. With ``run_dir`` the run is checkpointed after every epoch; ``resume=True`` loads the checkpoint
    (``FileNotFoundError`` if there is none) and continues with the next epoch up to ``config.epochs`` (which may
    be larger than before; every other setting must match the checkpoint's).
    """
    from tqdm.auto import tqdm

    if x.shape[0] != y.shape[0] or y.dim() != 1:
        raise ValueError(f"x and y must have the same length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"x must be (N, {', '.join(map(str, model.input_shape))}), got {tuple(x.shape)}")
    device = x.device
    model.to(device)
    n_nuisance = model.dim - model.n_classes
    nuisance = NuisanceClassifier(n_nuisance, model.n_classes, hidden=config.nuisance_hidden,
                                  n_hidden_layers=config.nuisance_layers,
                                  standardize=config.nuisance_standardize).to(device, x.dtype)
    prior = FactorizedGaussian(n_nuisance).to(device, x.dtype)
    model_opt = torch.optim.Adam([*model.parameters(), *prior.parameters()], lr=config.lr)
    nuisance_opt = torch.optim.Adam(nuisance.parameters(), lr=config.nuisance_lr)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
    if resume:
        if run is None:
            raise ValueError("resume=True needs a run_dir")
        tensors, meta = load_checkpoint(run / CHECKPOINT, device=device)
        saved = {k: v for k, v in (meta.get("config") or {}).items() if k != "epochs"}
        if saved != {k: v for k, v in asdict(config).items() if k != "epochs"}:  # more epochs may be asked for
            raise ValueError(f"{run / CHECKPOINT} was written with a different config: {meta.get('config')}")
        model.load_state_dict(_unprefixed("model", tensors))
        nuisance.load_state_dict(_unprefixed("nuisance", tensors))
        prior.load_state_dict(_unprefixed("prior", tensors))
        _restore_optimizer("opt_model", model_opt, tensors, meta)
        _restore_optimizer("opt_nuisance", nuisance_opt, tensors, meta)
        gen.set_state(tensors["generator"].cpu())
        history, start_epoch = list(meta["history"]), int(meta["epoch"])
    if run is not None:
        atomic_write_text(run / "config.json", json.dumps(asdict(config), indent=2))
        atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    weights = (config.nuisance_weight, config.mle_weight) if config.objective == "ice" else (0.0, 0.0)
    n = x.shape[0]
    steps = (n + config.batch_size - 1) // config.batch_size
    model.train()
    for epoch in range(start_epoch, config.epochs):
        if config.objective == "ice" and config.nuisance_refit_steps > 0:
            _refit_nuisance(model, nuisance, nuisance_opt, x, y, config.nuisance_refit_steps, config.batch_size)
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps), desc=f"{desc or config.objective} epoch {epoch + 1}/{config.epochs}",
                   disable=not show_progress, leave=False)
        for s in bar:
            idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
            stats = ice_step(
                model, nuisance, prior, model_opt, nuisance_opt, x[idx], y[idx], nuisance_weight=weights[0],
                mle_weight=weights[1], nuisance_steps=config.nuisance_steps, form=config.form,
            )
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(ce=f"{stats['ce']:.3f}", acc=f"{stats['acc']:.3f}", nce=f"{stats['nuisance_ce']:.3f}")
        record = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}}
        history.append(record)
        if run is not None:
            _save(run, model, nuisance, prior, model_opt, nuisance_opt, gen, config, history, epoch + 1)
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    model.eval()
    return TrainResult(model, nuisance, prior, history)


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


def _save(run: Path, model, nuisance, prior, model_opt, nuisance_opt, gen, config, history, epoch: int) -> None:
    tensors = {**_prefixed("model", model), **_prefixed("nuisance", nuisance), **_prefixed("prior", prior)}
    meta: dict[str, Any] = {"config": asdict(config), "history": history, "epoch": epoch}
    _flatten_optimizer("opt_model", model_opt, tensors, meta)
    _flatten_optimizer("opt_nuisance", nuisance_opt, tensors, meta)
    tensors["generator"] = gen.get_state()
    save_checkpoint(run / CHECKPOINT, tensors, meta)
