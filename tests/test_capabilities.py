"""Table 5.2 from the code: declarations, their combination per model, and their tests on instances."""

import gc

import torch
from torch import nn

import invertible as inv
from invertible.models.table5_2 import table5_2_models
from invertible.models.toy_resnet import vector_residual_features
from invertible.nn.base import Bijection
from invertible.nn.capabilities import (
    bijection_classes,
    capability_table,
    estimator_classes,
    layer_table,
    model_capabilities,
    undeclared_bijection_classes,
    verify_capabilities,
)
from invertible.nn.traits import Capabilities


def _scaling_layer(declare_volume_preserving: bool):
    class DoublingLayer(Bijection):
        """y = 2x: analytic both ways, log-det d log 2 (so *not* volume preserving)."""

        CAPABILITIES = Capabilities(free_form=False, analytic_forward=True, analytic_inverse=True,
                                    volume_preserving=declare_volume_preserving, exact_logdet=True,
                                    bi_lipschitz=False)

        def forward_and_logdet(self, x):
            return 2 * x, torch.full((x.shape[0],), x[0].numel() * 0.6931471805599453, dtype=x.dtype)

        def inverse(self, y):
            return y / 2

    return DoublingLayer


def test_every_library_bijection_declares_its_capabilities_and_every_estimator_its_cost():
    import invertible.ims.models  # noqa: F401  (all layer classes defined)
    import invertible.models  # noqa: F401

    assert [c for c in undeclared_bijection_classes() if c.__module__.startswith("invertible.")] == []
    names = {c.__name__ for c in bijection_classes()}
    assert {"ResidualBlock", "AdditiveCoupling", "AffineCoupling", "ActNorm", "Squeeze"} <= names
    for est in estimator_classes():
        assert est.kind in ("exact", "unbiased", "biased") and isinstance(est.stochastic, bool), est
        assert isinstance(est.scalable, bool)


def test_a_new_bijection_changes_the_tables():
    before = layer_table()
    Doubling = _scaling_layer(declare_volume_preserving=False)
    assert "`DoublingLayer`" in layer_table() and "`DoublingLayer`" not in before
    nice = inv.InvertibleSequential(inv.AdditiveCoupling(nn.Linear(1, 1), 2))
    assert model_capabilities(nice)["volume_preserving"] is False  # NICE: volume preserving
    with_doubling = inv.InvertibleSequential(inv.AdditiveCoupling(nn.Linear(1, 1), 2), Doubling())
    assert model_capabilities(with_doubling)["volume_preserving"] is True
    del Doubling, with_doubling
    gc.collect()
    assert layer_table() == before


def test_verify_catches_a_false_declaration():
    Liar = _scaling_layer(declare_volume_preserving=True)
    checks = verify_capabilities(inv.InvertibleSequential(Liar()), torch.randn(4, 3))
    vp = [c for c in checks if c.capability == "volume preserving"]
    assert len(vp) == 1 and not vp[0].ok and abs(vp[0].value - 3 * 0.6931471805599453) < 1e-12
    assert all(c.ok for c in checks if c.capability == "analytic inverse")
    del Liar, checks
    gc.collect()


def test_residual_block_rows_follow_its_estimator_and_its_constraint():
    g = nn.Sequential(inv.spectral_norm(nn.Linear(2, 8), 0.9), inv.LipSwish(), inv.spectral_norm(nn.Linear(8, 2), 0.9))
    rows = {}
    for est in (inv.PowerSeriesLogDet(), inv.RussianRouletteLogDet(), inv.ExactLogDet()):
        c = inv.ResidualBlock(g, logdet=est).capabilities()
        rows[type(est).__name__] = (c.exact_logdet, c.unbiased_logdet, c.bi_lipschitz, c.analytic_inverse)
    assert rows == {"PowerSeriesLogDet": (False, False, True, False),
                    "RussianRouletteLogDet": (False, True, True, False),
                    "ExactLogDet": (False, None, True, False)}
    col = model_capabilities(vector_residual_features(2, 2, 4, coeff=None))  # a standard ResNet
    assert col == {"free_form": True, "analytic_forward": True, **dict.fromkeys(
        ("analytic_inverse", "volume_preserving", "exact_logdet", "unbiased_logdet", "bi_lipschitz"))}
    block = inv.ResidualBlock(g)
    assert abs(block.a_priori_lipschitz() - 0.81) < 1e-12


def test_lemma_4_6_bounds_hold_on_random_pairs():
    torch.manual_seed(1)
    block = inv.ResidualBlock(nn.Sequential(inv.spectral_norm(nn.Linear(3, 16), 0.8), inv.LipSwish(),
                                            inv.spectral_norm(nn.Linear(16, 3), 0.8)))
    block.train()
    with torch.no_grad():
        for _ in range(20):
            block(torch.randn(8, 3))
    block.eval()
    lip = block.certify()
    up, up_inv = block.bi_lipschitz_bounds()
    assert abs(up - (1 + lip)) < 1e-12 and abs(up_inv - 1 / (1 - lip)) < 1e-12
    a, b = torch.randn(500, 3), torch.randn(500, 3)
    with torch.no_grad():
        r = (block(a) - block(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert r.max() <= up and r.min() >= 1 / up_inv


def test_the_library_columns_and_their_checks():
    torch.manual_seed(0)
    cols, n_checks = {}, 0
    for name, m in table5_2_models().items():
        m = m.double()
        shape = getattr(m, "event_shape", None) or getattr(m, "input_shape", None) or (2,)
        checks = verify_capabilities(m, torch.randn(8, *shape), n_draws=100)
        assert all(c.ok for c in checks), [c for c in checks if not c.ok]
        n_checks += len(checks)
        cols[name] = model_capabilities(m)
    assert n_checks > 20
    assert cols["i-ResNet"]["unbiased_logdet"] is False and cols["Residual Flow"]["unbiased_logdet"] is True
    assert cols["Real-NVP (affine coupling)"]["volume_preserving"] is True  # NVP row
    assert "| Free-form | ✓ | ✗ | ✗ | ✓ | ✓ |" in capability_table(cols)


def test_table5_2_is_registered():
    from invertible.experiments.registry import experiments

    assert "table5.2" in experiments()
