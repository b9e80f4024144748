"""The ch. 6 reproductions declare their workload with ``ctx.scaled``: quick values as validated, grown in a
budgeted run, capped at full; nothing is trained here."""

import pytest

from invertible.experiments import fig6_3, fig6_5, shiftmnist
from invertible.experiments.registry import RunContext

QUICK = {
    fig6_3: {"n_train": 2000, "n_test": 1000},
    fig6_5: {"ice_epochs": 20, "ce_epochs": 11},
    shiftmnist: {"n_train": 2000},
}


@pytest.mark.parametrize("module", list(QUICK), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_settings_are_the_validated_quick_values_and_grow_at_scale_16(tmp_path, module):
    quick = RunContext(out=tmp_path, quick=True)
    big = RunContext(out=tmp_path, quick=True, scale=16.0)
    full = RunContext(out=tmp_path, quick=False)
    q, b, f = module.settings(quick), module.settings(big), module.settings(full)
    for name, value in QUICK[module].items():
        assert q[name] == value, name
        assert value < b[name] <= f[name], (name, b[name], f[name])
        assert big.settings[name].quick == value and big.settings[name].full == f[name]
    # the settings that multiply one training's run time share a power of at most one
    multiplied = {fig6_3: [], fig6_5: [], shiftmnist: ["n_train", "epochs"]}[module]
    assert sum(big.settings[n].power for n in multiplied) <= 1.0
    assert all(0 <= s.power <= 1 for s in big.settings.values())


def test_budgeted_shiftmnist_grows_the_data_not_the_epochs(tmp_path):
    """Longer iCE training raised the shifted error on validation data, so a budget buys images, not epochs."""
    big = shiftmnist.settings(RunContext(out=tmp_path, quick=True, scale=3.0))
    assert big["n_train"] == 6000 and big["epochs"] == 12
    assert shiftmnist.settings(RunContext(out=tmp_path, quick=False))["epochs"] == 30


def test_budgeted_fig6_5_stays_on_the_digits_and_full_mode_uses_mnist(tmp_path):
    big = fig6_5.settings(RunContext(out=tmp_path, quick=True, scale=16.0))
    full = fig6_5.settings(RunContext(out=tmp_path, quick=False))
    assert big["dataset"] == "digits" and big["n_train"] == 1437 and big["seeds"] >= 3
    assert full["dataset"] == "mnist" and full["ice_epochs"] == full["ce_epochs"] == 30
    assert big["ce_epochs"] <= big["ice_epochs"]  # CE keeps its matched, shorter training
    assert big["ice_epochs"] == 30 and big["ce_epochs"] == 16  # the validated 11 / 20 ratio, not 30 / 30
    from invertible.experiments import fig6_5 as module

    ctx = RunContext(out=tmp_path, quick=True, scale=1.2)
    mid = module.settings(ctx)
    assert (mid["ice_epochs"], mid["ce_epochs"]) == (24, 13) and ctx.settings["ce_epochs"].value == 13


def test_held_out_probe_bound_finds_no_information_in_random_labels_and_reads_a_planted_one():
    """shiftmnist's I(Y; z_n) estimate is H(Y) - held-out probe cross-entropy: a probe that memorizes random
    labels on the training z_n must not show information on new inputs, and a label planted in the pixels
    (which an invertible network keeps in z) must show up as most of H(Y)."""
    import torch

    from invertible.experiments.shiftmnist import fit_label_probe, label_information, make_model

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = make_model((1, 8, 8)).eval()
    x = torch.rand(800, 1, 8, 8, generator=g)
    noise = torch.randint(0, 10, (800,), generator=g)
    info = label_information(fit_label_probe(model, x[:400], noise[:400]), noise[:400], x[400:], noise[400:])
    assert info["nats"] < 0.05 and info["accuracy"] < 0.2, info
    planted = x.clone()
    label = torch.arange(800) % 10
    planted.view(800, -1)[torch.arange(800), label] = 3.0  # a bright pixel at the label's position
    info = label_information(fit_label_probe(model, planted[:400], label[:400]), label[:400], planted[400:],
                             label[400:])
    assert info["nats"] > 0.5 * info["entropy"], info
