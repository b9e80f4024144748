"""Every public entry point names a bad input (issue 12's second fuzz campaign over the library API).

Each row was found by fuzzing: before the fix it raised a raw torch error (``mat1 and mat2 must have the same
dtype``, ``cannot reshape tensor of 0 elements``, ``IndexError``, ``AttributeError``) or silently returned NaN or
a wrong shape. Now each is a ``ValueError`` whose message names the problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import invertible as inv
from invertible.models import registry


def _g() -> nn.Module:
    """A float32 contractive g (the test session's default dtype is float64)."""
    torch.manual_seed(0)
    return nn.Sequential(inv.spectral_norm(nn.Linear(3, 3), coeff=0.9), nn.Tanh()).float()


ESTIMATORS = {
    "exact_jacobian": lambda g, x: inv.exact_jacobian(g, x),
    "ExactLogDet": lambda g, x: inv.ExactLogDet()(g, x),
    "ForwardJacobianLogDet": lambda g, x: inv.ForwardJacobianLogDet()(g, x),
    "PowerSeriesLogDet": lambda g, x: inv.PowerSeriesLogDet()(g, x),
    "RussianRouletteLogDet": lambda g, x: inv.RussianRouletteLogDet()(g, x),
    "FixedPoint": lambda g, x: inv.FixedPoint()(g, x),
    "Anderson": lambda g, x: inv.Anderson()(g, x),
    "local_lipschitz": lambda g, x: inv.local_lipschitz(g, x),
}

BAD_BATCHES = {
    "float64 into a float32 g": (lambda: torch.randn(4, 3, dtype=torch.float64), "dtype"),
    "float16 into a float32 g": (lambda: torch.randn(4, 3).half(), "dtype"),
    "integer tensor": (lambda: torch.randint(0, 3, (4, 3)), "floating"),
    "no batch dimension": (lambda: torch.randn(3), "batch"),
    "a 0-d tensor": (lambda: torch.tensor(1.0), "batch"),
    "a list": (lambda: [[0.0, 0.0, 0.0]], "torch.Tensor"),
    "a numpy array": (lambda: np.zeros((4, 3), dtype=np.float32), "torch.Tensor"),
    "NaN": (lambda: torch.full((4, 3), float("nan"), dtype=torch.float32), "NaN"),
}


@pytest.mark.parametrize("bad", list(BAD_BATCHES), ids=list(BAD_BATCHES))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_and_solvers_name_a_bad_batch(name, bad):
    make, words = BAD_BATCHES[bad]
    with pytest.raises(ValueError, match=words):
        ESTIMATORS[name](_g(), make())


@pytest.mark.parametrize("name", ["exact_jacobian", "ExactLogDet", "PowerSeriesLogDet", "RussianRouletteLogDet"])
def test_estimators_take_an_empty_batch(name):
    out = ESTIMATORS[name](_g(), torch.randn(0, 3, dtype=torch.float32))
    shapes = [tuple(o.shape) for o in (out if isinstance(out, tuple) else (out,))]
    assert shapes in ([(0, 3, 3)], [(0, 3), (0,)])


def _model(kind: str, **config) -> nn.Module:
    """A float32 model (the test session's default dtype is float64)."""
    return registry.build_model(kind, registry.config_type(kind)(**config)).float().eval()


def test_flow_model_names_dtype_and_non_tensors():
    m = _model("vector_resflow", dim=3)
    with pytest.raises(ValueError, match="dtype torch.float64 does not match the model's torch.float32"):
        m.log_prob(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected data of shape \(B, 3\), got list"):
        m.log_prob([[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("n", [-1, 2.5, True, "3", None])
def test_sample_count_must_be_a_non_negative_integer(n):
    m = _model("vector_resflow", dim=2)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        m.sample(n)


@pytest.mark.parametrize("n", [0, 2.5, True, "3"])
@pytest.mark.parametrize("sampler, name", [("toy", "8gaussians"), ("conditional", "rotated-8gaussians")])
def test_data_sample_count_must_be_a_positive_integer(sampler, name, n):
    """Before: ``int(n)`` turned 2.5 into 2 samples and True into 1, silently."""
    from invertible.data.conditional2d import sample_conditional
    from invertible.data.toy2d import sample_toy

    sample = sample_toy if sampler == "toy" else sample_conditional
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        sample(name, n)


def test_sample_count_accepts_integer_likes():
    m = _model("vector_resflow", dim=2)
    assert m.sample(np.int64(3)).shape == (3, 2)
    assert m.sample(torch.tensor(2)).shape == (2, 2)
    assert m.sample(0).shape == (0, 2)


def test_image_flow_refuses_data_outside_unit_interval():
    """Before: randn into an image flow became NaN in the logit and was reported as 'input contains NaN'."""
    m = _model("image_resflow", shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"expects values in \[0, 1\]"):
        m.log_prob(torch.randn(2, 1, 8, 8, dtype=torch.float32))
    assert torch.isfinite(m.log_prob(torch.rand(2, 1, 8, 8, dtype=torch.float32))).all()


@pytest.mark.parametrize("kind,config", [
    ("preact_resnet", {"input_shape": (1, 8, 8), "blocks": (1, 1, 1)}),
    ("iresnet_classifier", {"input_shape": (1, 8, 8), "blocks": (1, 1, 1), "channels": 4}),
    ("fi_iresnet", {"input_shape": (1, 8, 8), "conv_blocks": 1, "hidden": 4, "dense_blocks": 1, "dense_hidden": 8}),
])
@pytest.mark.parametrize("bad,words", [
    (lambda: torch.full((2, 1, 8, 8), float("nan"), dtype=torch.float32), "NaN"),
    (lambda: torch.randn(2, 1, 8, 8, dtype=torch.float64), "dtype"),
    (lambda: torch.randint(0, 3, (2, 1, 8, 8)), "floating"),
    (lambda: np.zeros((2, 1, 8, 8), dtype=np.float32), "got ndarray"),
])
def test_classifiers_name_bad_images(kind, config, bad, words):
    """Before: NaN images gave NaN logits silently; float64 and arrays raised deep torch errors."""
    with pytest.raises(ValueError, match=words):
        _model(kind, **config)(bad())


def test_fi_codes_name_non_tensors():
    m = _model("fi_revnet", input_shape=(1, 8, 8), conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8,
               head_hidden=8)
    with pytest.raises(ValueError, match="expected codes of shape"):
        m.inverse(np.zeros((2, 64), dtype=np.float32))


@pytest.mark.parametrize("make", [
    lambda: inv.AffineCoupling(torch.tensor([1.0, 0.0]), hidden=(8,)),
], ids=["affine"])
def test_couplings_name_a_dtype_mismatch(make):
    with pytest.raises(ValueError, match="dtype"):
        make().float()(torch.randn(4, 2, dtype=torch.float64))


def test_additive_coupling_names_a_dtype_mismatch():
    c = inv.AdditiveCoupling(nn.Conv2d(1, 1, 3, padding=1), 2).float()
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(ValueError, match="dtype"):
            c.inverse(torch.randn(2, 2, 4, 4).to(dtype))


@pytest.mark.parametrize("x,words", [
    (torch.randint(0, 2, (2, 1, 2, 2)), "floating"),
    (torch.full((2, 1, 2, 2), float("nan")), "NaN"),
    (np.zeros((2, 1, 2, 2), dtype=np.float32), "torch.Tensor"),
])
def test_flatten_checks_its_input(x, words):
    with pytest.raises(ValueError, match=words):
        inv.Flatten((1, 2, 2))(x)


@pytest.mark.parametrize("y", [torch.randint(0, 2, (2, 1, 4, 4)), torch.full((2, 1, 4, 4), float("inf"))])
def test_logit_inverse_checks_its_input(y):
    with pytest.raises(ValueError):
        inv.LogitTransform().inverse(y)


def test_standard_normal_log_prob_validates():
    d = inv.StandardNormal((3,))
    for bad in ([[0.0, 0.0, 0.0]], torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 2)):
        with pytest.raises(ValueError, match="StandardNormal.log_prob"):
            d.log_prob(bad)
    with pytest.raises(ValueError, match="NaN"):
        d.log_prob(torch.full((2, 3), float("nan")))
    lp = d.log_prob(torch.zeros(2, 3))
    assert torch.allclose(lp, torch.full((2,), -1.5 * np.log(2 * np.pi)))
    quiet = inv.StandardNormal((3,), validate_args=False)
    assert torch.isnan(quiet.log_prob(torch.full((1, 3), float("nan")))).all()


@pytest.mark.parametrize("build", [
    lambda v: inv.ActNorm(3, eps=v),
    lambda v: inv.ActNorm(v),
    lambda v: inv.InjectivePad(v),
    lambda v: inv.InjectivePad(1, atol=v),
    lambda v: inv.AdditiveCoupling(nn.Conv2d(1, 1, 3, padding=1), 2, split=v),
    lambda v: inv.AffineCoupling(torch.tensor([1.0, 0.0]), scale=v),
    lambda v: inv.RussianRouletteLogDet(lam=v),
    lambda v: inv.make_estimator("resflow", n_exact=v),
    lambda v: inv.evaluation_estimator(v),
    lambda v: inv.evaluation_estimator(10, event_ndim=v),
    lambda v: inv.power_series_truncation_bound(0.5, v, 3),
    lambda v: inv.logdet_bounds(0.5, v),
    lambda v: inv.operator_norm(nn.Linear(3, 3), rtol=v),
], ids=["actnorm-eps", "actnorm-channels", "pad-channels", "pad-atol", "additive-split", "affine-scale",
        "roulette-lam", "make_estimator-n_exact", "evaluation-dim", "evaluation-event_ndim", "thm5.8-dim",
        "lemma5.5-dim", "operator_norm-rtol"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, "x"], ids=["nan", "inf", "neg", "str"])
def test_constructors_name_bad_numbers(build, value):
    """Before: NaN/inf/negative/str were accepted (or raised OverflowError in int(inf))."""
    with pytest.raises(ValueError, match="must be"):
        build(value)


def test_standard_normal_names_a_bad_device():
    with pytest.raises(ValueError, match="cannot place N"):
        inv.StandardNormal((3,), device="bogus")


def test_stored_power_iteration_vectors_must_fit_the_stored_input_shape():
    """Crafted checkpoint (a header reshaping u from (1, 2) to (2,), same bytes and SHA-256): before, it loaded
    silently into a layer whose power iteration then runs on a vector of the wrong shape."""
    m = _model("vector_resflow", dim=2, n_blocks=1, hidden=(4,))
    state = m.state_dict()
    key = next(k for k in state if k.endswith("weight.0.u"))
    state[key] = state[key].reshape(-1)
    with pytest.raises(ValueError, match="do not fit the stored input shape"):
        m.load_state_dict(state)


@pytest.mark.parametrize("key,value", [("actnorm", [1, 2]), ("coeff", "0.9"), ("n_blocks", 2.5),
                                       ("hidden", [4, "x"]), ("coeff", float("nan")), ("dim", True)])
def test_stored_model_configs_are_type_checked(key, value):
    """Before: a list for a bool field was truthy and built another model than the one stored."""
    with pytest.raises(ValueError, match=f"config key '{key}' must be"):
        registry.config_from_dict("vector_resflow", {"dim": 2, key: value})


@pytest.mark.parametrize("key", ["n_blocks", "n_power_iterations"])
def test_stored_configs_refuse_sizes_that_would_hang_the_build(key):
    """Found by the checkpoint campaign: n_power_iterations = 2**64 ran the initial power iteration forever."""
    with pytest.raises(ValueError, match="implausible size"):
        registry.config_from_dict("vector_resflow", {"dim": 2, key: 2**64})


def test_the_range_test_is_skipped_only_in_a_sync_free_step():
    """The logit's [0, 1] test is a device-to-host sync: compositions (validated_input) keep it, the engine's
    sync-free step on an accelerator drops it (a bad batch then shows in the loss at the log interval)."""
    from invertible.checks import check_input, sync_free_step, validated_input

    x = torch.full((2, 3), 2.0)
    with validated_input(), pytest.raises(ValueError, match=r"expects values in \[0, 1\]"):
        check_input(x, "logit", bounds=(0.0, 1.0))
    with sync_free_step():
        check_input(x, "logit", bounds=(0.0, 1.0))
        check_input(torch.full((2, 3), float("nan")), "logit")  # and no finiteness test either
