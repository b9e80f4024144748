"""Workload settings of the chapter 3-4 reproductions (fig3.1, fig3.4, fig4.1-fig4.4, table4.1) under
``--quick``, ``--budget`` (``ctx.scale``) and full mode, and fig3.4's small-input data - without running an
experiment."""

import pytest
import torch

from invertible.experiments import fig3_1, fig3_4, fig4_1, fig4_4, table4_1
from invertible.experiments.registry import RunContext

QUICK = {
    "fig3.1": dict(n=600, steps=400, restarts=16, grid=150),
    "fig3.4": dict(n_train=4096, epochs=2, n_eval=4),
    "fig4.1": dict(n_train=400, n_paths=200, steps=400),
    "fig4.4": dict(steps=60, n_eval=32),
}
MULTIPLY = {"fig3.1": ("n", "steps", "restarts"), "fig3.4": ("n_train", "epochs"), "fig4.1": ("n_train", "steps"),
            "fig4.4": ("steps",)}  # the knobs whose product is the training time (others add their own cost)
SETTINGS = {"fig3.1": fig3_1.settings, "fig3.4": fig3_4.settings, "fig4.1": fig4_1.settings,
            "fig4.4": fig4_4.settings}


def _ctx(tmp_path, scale=1.0, quick=True):
    return RunContext(out=tmp_path, quick=quick, scale=scale, show_progress=False)


@pytest.mark.parametrize("exp", sorted(SETTINGS))
def test_settings_are_the_quick_values_at_scale_1_and_grow_at_scale_16(tmp_path, exp):
    quick = SETTINGS[exp](_ctx(tmp_path))
    assert {k: quick[k] for k in QUICK[exp]} == QUICK[exp]
    ctx = _ctx(tmp_path, 16.0)
    big = SETTINGS[exp](ctx)
    assert ctx.budgeted and set(QUICK[exp]) <= set(ctx.settings)
    for name, st in ctx.settings.items():
        assert big[name] == st.value and quick[name] < st.value <= st.full, name
        assert st.value == min(st.full, round(st.quick * 16.0 ** st.power)), name
    # the powers of the knobs that multiply the run time add up to at most one: the run time grows like the scale
    assert sum(ctx.settings[k].power for k in MULTIPLY[exp]) <= 1 + 1e-9
    assert all(st.power <= 0.5 for k, st in ctx.settings.items() if k not in MULTIPLY[exp])
    full = SETTINGS[exp](_ctx(tmp_path, quick=False))
    assert all(full[name] == st.full for name, st in ctx.settings.items())
    unscaled = {k: v for k, v in quick.items() if k not in ctx.settings}
    assert {k: big[k] for k in unscaled} == unscaled  # what was chosen on validation data does not grow


def test_classifier_settings_grow_epochs_and_depth_with_the_budget(tmp_path):
    data, model, train, _ = table4_1.classifier_settings(_ctx(tmp_path))
    assert (data, model["blocks"], train["epochs"]) == ("digits", [1, 1, 1], 5)
    ctx = _ctx(tmp_path, 16.0)
    data, model, train, _ = table4_1.classifier_settings(ctx)
    assert (data, model["blocks"], train["epochs"]) == ("digits", [4, 4, 4], 20)  # 1 * 4 capped at 4; 5 * 4
    assert ctx.max_scale == pytest.approx(36.0)  # epochs reach 30 at (30 / 5)^2
    _, model, train, _ = table4_1.classifier_settings(_ctx(tmp_path, quick=False))
    assert (model["blocks"], train["epochs"]) == ([4, 4, 4], 30)


def test_fig3_4_quick_data_are_8x8_full_inputs_named_in_the_description(tmp_path):
    ctx = _ctx(tmp_path)
    cfg = {**fig3_4.settings(ctx), "n_train": 64, "n_test": 16}
    assert cfg["image_size"] == 8 and cfg["window"] is None
    x_tr, y_tr, x_te, y_te, desc = fig3_4.load_data(ctx, cfg)
    assert x_tr.shape == (64, 3, 8, 8) and x_te.shape == (16, 3, 8, 8) and len(y_tr) == 64 and len(y_te) == 16
    assert "8x8" in desc and ("MNIST" in desc or "digits" in desc)
    assert torch.equal(x_tr[:, 0], x_tr[:, 2])  # grey images copied to three channels
    _, _, x_va, _, _ = fig3_4.load_data(ctx, cfg, split="validation")
    flat = {tuple(v.flatten().tolist()) for v in torch.cat([x_tr, x_te])}
    assert not any(tuple(v.flatten().tolist()) in flat for v in x_va[:64])  # validation never trained/tested on
    with pytest.raises(ValueError, match="split"):
        fig3_4.load_data(ctx, cfg, split="train")


def _fake_run(*, nz5: float, cond: dict[str, float], step_per_input: float, seed: int) -> dict:
    """One seed's rows and spectra: sigma_max grows and sigma_min falls over relu1-6, relu5 keeps ``nz5``."""
    from invertible.analysis import LayerSpectrum

    rows = []
    for layer in range(1, 7):
        for kind, name in (("linear", f"conv{layer}"), ("relu", f"relu{layer}")):
            rows.append({"stage": name, "kind": kind, "layer": layer, "median_sigma_max": 2.0 * layer,
                         "median_sigma_min_nonzero": 10.0 ** -layer, "median_n_nonzero": 192.0,
                         "full_input_rank_bound": 192.0, "median_condition": cond.get(name, 10.0 ** layer)})
    next(r for r in rows if r["stage"] == "relu5")["median_n_nonzero"] = nz5
    c5 = torch.full((4,), cond["conv5"], dtype=torch.float64) * (1 + 0.01 * seed)
    spectra = [LayerSpectrum("conv5", "linear", 5, 256, torch.ones(4, 192), torch.full((4,), 192), c5),
               LayerSpectrum("relu5", "relu", 5, 256, torch.ones(4, 192), torch.full((4,), int(nz5)),
                             c5 * 10.0 ** step_per_input)]
    return {"rows": rows, "spectra": spectra}


@pytest.mark.parametrize("thin_step", [-1.0, +0.5])
def test_fig3_4_claims_follow_the_paired_differences(tmp_path, thin_step):
    from invertible.experiments.fig3_4_claims import state_claims

    ctx = _ctx(tmp_path)
    cfg = {**fig3_4.settings(ctx)}
    runs = {"WideCIFAR": [_fake_run(nz5=192, cond={"conv5": 1e4, "relu5": 3e4, "relu6": 1e5}, step_per_input=0.4,
                                    seed=s) for s in range(5)],
            "ThinCIFAR": [_fake_run(nz5=150 + s, cond={"conv5": 1e5, "relu5": 1e5 * 10 ** thin_step, "relu6": 1e4},
                                    step_per_input=thin_step + 0.01 * s, seed=s) for s in range(5)]}
    state_claims(ctx, runs, cfg, "MNIST-10k (test)", 192, {"spectra_per_input": 0.1, "train_per_image": 1e-4},
                 n_seeds=5)
    assert [c["holds"] for c in ctx.claims.values()][:3] == [True, True, True]  # growth, decay, fewer non-zero
    cut = next(c for n, c in ctx.claims.items() if "lowers its condition number" in n)
    lower = next(c for n, c in ctx.claims.items() if "than WideCIFAR" in n)
    # ThinCIFAR after relu5: 1e4 (below WideCIFAR's 3e4) or 10^5.5 (above)
    assert cut["holds"] is (thin_step < 0) and lower["holds"] is (thin_step < 0)
    if thin_step > 0:
        assert cut["limited_by"] == "compute" and "5 of 5 seeds go the other way" in cut["evidence"]
        assert lower["limited_by"] == "data" and "measured" in lower["full_cost"]
    else:
        assert "limited_by" not in cut and "full_cost" not in lower
