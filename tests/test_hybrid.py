"""The hybrid model p(x, y) = p(x) p(y | x) with a linear head on the flow's latent, and its recipe."""

import math

import pytest
import torch
import torch.nn.functional as F

from invertible.io import RunFolder
from invertible.models.hybrid import HybridFlowModel, hybrid_residual_flow
from invertible.training.evaluate import evaluate_nll
from invertible.training.hybrid import HybridConfig, HybridObjective, LabeledImageSource, hybrid_trainer
from invertible.training.runs import load_run


def _model(**kw):
    torch.manual_seed(0)
    return hybrid_residual_flow((1, 4, 4), 3, n_scales=2, n_blocks=1, hidden=4, mode="iresnet", **kw).double()


def _images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n) % 3


def test_joint_is_one_pass_of_the_flow_and_the_head_reads_the_latent():
    model = _model()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    model.initialize(x)
    model.eval()
    torch.manual_seed(5)  # the same Hutchinson probes for both
    logp, logits = model.joint(x)
    torch.manual_seed(5)
    torch.testing.assert_close(logp, model.log_prob(x))
    z = model.bijection(x)
    torch.testing.assert_close(logits, z @ model.head.weight.T + model.head.bias)
    torch.testing.assert_close(model.logits(x), logits)
    with pytest.raises(ValueError, match="n_classes >= 2"):
        hybrid_residual_flow((1, 4, 4), 1, n_scales=2)
    with pytest.raises(ValueError, match="shape"):
        model.logits(torch.rand(2, 1, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("lam", [0.0, 2.5])
def test_loss_is_nll_per_dimension_plus_lambda_cross_entropy(lam):
    model = _model(block="dense", activation="clipswish")
    x8, y = _images()
    source = LabeledImageSource(x8, y, 8, seed=1, dtype=torch.float64)
    x, yb = source.batch(0)
    assert x.dtype == torch.float64 and (x >= 0).all() and (x < 1).all() and torch.equal(source.batch(0)[0], x)
    model.initialize(x)
    model.eval()  # frozen power iterations: a second forward gives the same numbers
    torch.manual_seed(6)
    loss, metrics = HybridObjective(lam).loss(model, (x, yb), trainer=None)
    torch.manual_seed(6)  # the same probes: the same number again
    logp, logits = model.joint(x)
    expected = -logp.mean() / 16 + lam * F.cross_entropy(logits, yb)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["bits_per_dim"], (-logp.mean() / 16 + math.log(256)) / math.log(2))
    model.zero_grad()
    loss.backward()
    assert (model.head.weight.grad is None) == (lam == 0)  # lambda = 0: the head learns nothing


def test_hybrid_run_learns_labels_and_reloads(tmp_path):
    x8, y = _images(48, seed=2)
    x8 //= 4  # three classes separable by brightness: dark, mid, bright
    x8[y == 1] += 96
    x8[y == 2] += 192
    model = hybrid_residual_flow((1, 4, 4), 3, n_scales=2, n_blocks=1, hidden=4)
    cfg = HybridConfig(lam=5.0, steps=30, batch_size=16, lr=3e-3, log_every=10, eval_samples=48)
    trainer = hybrid_trainer(model, x8, y, cfg, RunFolder(tmp_path), x_val=x8, y_val=y, show_progress=False)
    val = trainer.fit()["val"]
    assert val["test_acc"] >= 0.9  # chance is 1/3
    assert math.isfinite(val["bits_per_dim"]) and val["bits_per_dim_se"] > 0
    loaded, ck = load_run(tmp_path)
    assert isinstance(loaded, HybridFlowModel) and ck.kind == "hybrid_resflow"
    assert ck.config["recipe"] == "hybrid" and ck.config["train"]["lam"] == 5.0
    xc = (x8.to(next(model.parameters()).dtype) + 0.5) / 256
    torch.testing.assert_close(loaded.logits(xc), model.eval().logits(xc))
    again = evaluate_nll(loaded, x8, seed=cfg.seed + 12345)
    assert again["bits_per_dim"] == pytest.approx(val["bits_per_dim"], rel=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="lam"):
        HybridConfig(lam=-1.0)
    x8, y = _images()
    with pytest.raises(ValueError, match="labels must lie"):
        hybrid_trainer(_model().float(), x8, y + 3, HybridConfig(steps=1, batch_size=8), show_progress=False)
    with pytest.raises(ValueError, match="uint8"):
        LabeledImageSource(x8.float(), y, 8)
