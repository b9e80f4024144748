"""The model registry: typed configs, the stored-dict round trip, legacy checkpoints, refusal of unknown keys."""

import dataclasses
import json

import pytest
import torch

from invertible.models import registry
from invertible.models.registry import build_model, config_from_dict, config_to_dict, model_kinds

# small but valid configs of every registered kind
SMALL = {
    "vector_resflow": {"dim": 2, "n_blocks": 1, "hidden": [4]},
    "image_resflow": {"shape": [1, 4, 4], "n_scales": 2, "n_blocks": 1, "hidden": 4, "factor_out": True,
                      "squeeze_before_split": True},
    "coupling": {"dim": 2, "n_blocks": 2, "hidden": [4]},
    "hybrid_resflow": {"shape": [1, 4, 4], "n_scales": 2, "n_blocks": 1, "hidden": 3, "factor_out": True,
                       "block": "dense", "activation": "clipswish", "n_classes": 3},
    "conditional_resflow": {"dim": 2, "context_dim": 3, "n_blocks": 1, "hidden": [4], "embed_hidden": [4]},
    "iresnet_classifier": {"input_shape": [1, 8, 8], "blocks": [1, 1], "channels": 8, "hidden": [4, 8]},
    "preact_resnet": {"input_shape": [1, 8, 8], "blocks": [1], "widths": [4]},
    "fi_revnet": {"input_shape": [1, 8, 8], "n_squeeze": 1, "conv_blocks": 1, "hidden": 4, "dense_blocks": 1,
                  "dense_hidden": 8, "head_hidden": 8},
    "fi_iresnet": {"input_shape": [1, 8, 8], "n_squeeze": 1, "conv_blocks": 1, "hidden": 4, "dense_blocks": 1,
                   "dense_hidden": 8},
    "relu_net": {"name": "ToyMLP", "kwargs": {"hidden": 3, "n_classes": 2}, "input_shape": [2]},
    "isotopenet": {"n_bins": 60, "n_classes": 3, "dropout": 0.0},  # registered by invertible.ims.models
    "residualnet": {"n_classes": 2, "layers": [[4, 1], [4, 2]], "kernel_size": 3},
}


def test_every_kind_is_covered():
    assert set(model_kinds()) == set(SMALL)


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_round_trip_and_build(kind):
    config = config_from_dict(kind, SMALL[kind])
    assert dataclasses.is_dataclass(config)
    d = config_to_dict(config)
    assert json.loads(json.dumps(d)) == d  # JSON-able
    assert config_from_dict(kind, d) == config
    torch.manual_seed(0)
    model = build_model(kind, config)
    assert model.kind == kind and model.config == config
    # the config stored on the model rebuilds the same architecture with the same seeded weights
    torch.manual_seed(0)
    again = build_model(kind, config_to_dict(model.config))
    assert again.config == model.config
    a, b = _state(model), _state(again)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(torch.nan_to_num(a[k], nan=7.0), torch.nan_to_num(b[k], nan=7.0)), k
    # the one-argument forms: the checkpoint dict with "kind", and the typed config alone
    assert build_model({"kind": kind, **d}).config == config
    assert build_model(config).kind == kind


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_unknown_keys_are_refused_by_name(kind):
    with pytest.raises(ValueError, match="n_layerz"):
        config_from_dict(kind, {**SMALL[kind], "n_layerz": 3})


def test_missing_keys_take_defaults_and_required_ones_are_named():
    c = config_from_dict("coupling", {"dim": 3})
    assert c.n_blocks == 8 and c.hidden == (128, 128) and c.actnorm is True
    with pytest.raises(ValueError, match="dim"):
        config_from_dict("coupling", {"n_blocks": 2})
    with pytest.raises(ValueError, match="unknown model kind 'glow'"):
        build_model("glow", {})
    with pytest.raises(ValueError, match="not 'coupling'"):
        config_from_dict("coupling", {"kind": "vector_resflow", "dim": 2})


def test_old_vector_config_gets_the_old_defaults():
    """Checkpoints written before preact/beta were stored used preact=True, beta=4 (not today's defaults)."""
    old = {"kind": "vector_resflow", "dim": 2, "n_blocks": 2, "hidden": [8], "coeff": 0.9, "mode": "exact",
           "activation": "lipswish", "actnorm": True, "n_power_iterations": 1, "n_terms": 5, "n_exact": 2,
           "inverse_atol": 1e-6}
    m = build_model(old)
    assert m.config.preact is True and m.config.beta == 4.0
    assert config_from_dict("vector_resflow", {"dim": 2}).preact is True  # legacy beats the default on load
    from invertible.models.resflow import vector_residual_flow

    torch.manual_seed(0)
    a = build_model(old)
    torch.manual_seed(0)
    b = vector_residual_flow(2, 2, [8], preact=True, beta=4.0)
    assert [type(x).__name__ for x in a.modules()] == [type(x).__name__ for x in b.modules()]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(torch.nan_to_num(va), torch.nan_to_num(vb))
    # the stored dict of the rebuilt model is the old dict plus the two fields (and later ones at their defaults)
    assert m.config_dict == {**old, "preact": True, "beta": 4.0, "block": "residual"}


def test_direct_builders_store_the_same_typed_config():
    from invertible.models.resflow import vector_residual_flow

    m = vector_residual_flow(2, n_blocks=1, hidden=[4])
    assert m.kind == "vector_resflow"
    assert m.config == config_from_dict("vector_resflow", {"dim": 2, "n_blocks": 1, "hidden": [4], "preact": False,
                                                           "beta": 16.0})
    assert m.config_dict["kind"] == "vector_resflow" and m.config_dict["hidden"] == [4]


def test_register_model_refuses_non_dataclasses_and_duplicates():
    with pytest.raises(TypeError):
        registry.register_model("x", dict)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("coupling", registry.config_type("coupling"))(lambda c: None)
