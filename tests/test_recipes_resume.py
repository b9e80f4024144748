"""Every recipe on the engine, with a parameter EMA, killed mid-run and resumed from its last checkpoint, ends
with the weights, EMA, objective state and ``metrics.jsonl`` of the uninterrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from invertible.io import RunFolder
from invertible.training.engine import StopTraining


def _classification(folder):
    from invertible.training.classification import ClassifierConfig, classifier_trainer
    from invertible.training.classifier import build_classifier, load_classification_data

    data = load_classification_data("digits", train_subset=96, test_subset=32)
    cfg = ClassifierConfig(data="digits", model={"blocks": [1, 1], "channels": 4, "hidden": [8, 8]}, epochs=3,
                           batch_size=32, train_subset=96, test_subset=32, ema_decay=0.9).resolve(data)
    torch.manual_seed(0)
    model = build_classifier(cfg.arch, cfg.model)
    return classifier_trainer(model, cfg, data, RunFolder(folder), show_progress=False)


def _ice(folder):
    from invertible.invariance.training import ICEConfig, ice_trainer
    from invertible.models.firevnet import fi_revnet

    torch.manual_seed(5)
    model = fi_revnet((1, 4, 4), 3, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)
    g = torch.Generator().manual_seed(11)
    x, y = torch.rand(37, 1, 4, 4, generator=g), torch.arange(37) % 3
    cfg = ICEConfig(objective="ice", epochs=3, batch_size=16, nuisance_refit_steps=2, seed=3, ema_decay=0.9)
    return ice_trainer(model, x, y, cfg, RunFolder(folder), show_progress=False)


def _ims(folder):
    from invertible.ims.models import IsotopeNet
    from invertible.ims.training import IMSConfig, ims_trainer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(33, 120)).astype(np.float32)
    y = (np.arange(33) % 2).astype(np.int64)
    torch.manual_seed(0)
    net = IsotopeNet(120, dropout=0.3)
    cfg = IMSConfig(lr=5e-3, weight_decay=1e-3, batch_size=16, epochs=3, ema_decay=0.9)
    return ims_trainer(net, X, y, cfg, generator=torch.Generator().manual_seed(1), out=RunFolder(folder))


def _hybrid(folder):
    from invertible.models.hybrid import hybrid_residual_flow
    from invertible.training.hybrid import HybridConfig, hybrid_trainer

    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (40, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 3
    torch.manual_seed(0)
    model = hybrid_residual_flow((1, 4, 4), 3, n_scales=2, n_blocks=1, hidden=3, block="dense",
                                 activation="clipswish", mode="resflow")
    cfg = HybridConfig(lam=0.5, steps=5, batch_size=16, log_every=2, eval_samples=8, seed=3, ema_decay=0.9)
    return hybrid_trainer(model, x, y, cfg, RunFolder(folder), x_val=x[:8], y_val=y[:8], show_progress=False)


def _kill_at(step):
    def cb(trainer):
        if trainer.step == step:
            raise StopTraining
    return cb


def _records(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _state(trainer):
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    for name, module in trainer.objective.modules().items():
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


@pytest.mark.parametrize("make", [_classification, _ice, _ims, _hybrid], ids=["classification", "ice", "ims", "hybrid"])
def test_killed_and_resumed_recipe_equals_the_uninterrupted_run(tmp_path, make):
    full = make(tmp_path / "full")
    full.fit()
    steps, spe = full.loop.steps, full.source.steps_per_epoch()
    kill = spe + 1  # one step into the second epoch: the last checkpoint is the first epoch's end
    assert kill < steps
    assert make(tmp_path / "killed").fit(callback=_kill_at(kill))["stopped"]
    torch.manual_seed(1234)  # a fresh process starts from another global RNG state
    resumed = make(tmp_path / "killed")
    assert resumed.fit(resume=True)["step"] == steps
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert _records(tmp_path / "killed") == _records(tmp_path / "full")
