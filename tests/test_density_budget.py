"""``reproduce --budget`` adoption of the chapter-5 density reproductions (fig5.1, fig5.2, fig5.3, table5.1,
table5.2): quick values unchanged at scale 1, grown at scale 16, full values in full mode, and the powers of the
knobs that multiply one run's time add up to at most one. Only the settings functions run, never an experiment."""

import pytest

from invertible.experiments import fig5_1, fig5_2, fig5_3, table5_1, table5_2
from invertible.experiments.registry import RunContext

MODULES = {"fig5.1": fig5_1, "fig5.2": fig5_2, "fig5.3": fig5_3, "table5.1": table5_1, "table5.2": table5_2}
# Settings of separate runs inside one experiment (their times add, so each group's powers may sum to one).
GROUPS = {"table5.1": ("digits_", "mnist_")}
# Settings whose cost adds to (not multiplies) the training's: fig5.1's evaluation sample costs seeds x n_eval.
ADDITIVE = {"fig5.1": ("n_eval",)}


def _settings(module, tmp_path, **kw):
    ctx = RunContext(out=tmp_path, **kw)
    return module.settings(ctx), ctx


@pytest.mark.parametrize("eid", list(MODULES))
def test_settings_grow_at_scale_16_and_stay_quick_at_scale_1(eid, tmp_path):
    module = MODULES[eid]
    quick, qctx = _settings(module, tmp_path, quick=True)
    grown, gctx = _settings(module, tmp_path, quick=True, scale=16.0)
    full, _ = _settings(module, tmp_path, quick=False)
    assert qctx.settings, f"{eid} declares no scalable setting"
    assert set(gctx.settings) == set(qctx.settings)
    for name, s in qctx.settings.items():
        g = gctx.settings[name]
        assert s.value == s.quick, f"{eid}: {name} is not its quick value at scale 1"
        assert s.quick <= g.value <= s.full, f"{eid}: {name} leaves [quick, full]"
        if s.power > 0 and s.full > s.quick:
            assert g.value > s.quick, f"{eid}: {name} does not grow at scale 16"
    assert grown != quick and full != quick
    groups = GROUPS.get(eid, ("",))
    for prefix in groups:
        total = sum(s.power for n, s in gctx.settings.items()
                    if n.startswith(prefix) and n not in ADDITIVE.get(eid, ()))
        assert 0 < total <= 1 + 1e-9, f"{eid}: powers of {prefix or 'all'} settings add up to {total}"


def test_table5_1_full_mode_uses_all_mnist_images(tmp_path):
    full, _ = _settings(table5_1, tmp_path, quick=False)
    grown, _ = _settings(table5_1, tmp_path, quick=True, scale=16.0)
    assert full["mnist"]["subset"] is None
    assert grown["mnist"]["subset"] == 4 * 1024 and grown["digits"]["steps"] == 4 * 120
