"""The quick runs of fig4.1, table5.2 and sec7.5 end to end: run folder, figures, and the claims they state."""

import json

import pytest

from invertible.experiments import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.cpu_only]


@pytest.mark.parametrize("eid, figure, must_hold", [
    ("fig4.1", "fig4_1_dynamics.png", None),  # every claim
    ("table5.2", None, None),
    # sec7.5: every claim held at quick scale on seeds 0-4 and 101-105 with the measured-intensity attribution
    ("sec7.5", "sec7_5_sensitivity.png", None),
])
def test_quick_reproduction(tmp_path, eid, figure, must_hold):
    report = run_experiment(eid, tmp_path, quick=True, show_progress=False)
    folder = tmp_path / eid
    metrics = json.loads((folder / "metrics.json").read_text())
    claims = list(metrics["claims"].values())
    assert claims and all(set(c) >= {"holds", "evidence"} for c in claims)
    required = claims if must_hold is None else claims[:must_hold]
    assert all(c["holds"] for c in required), [c["evidence"] for c in required if not c["holds"]]
    if figure:
        assert (folder / "figures" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "## Claims at this scale" in report.read_text()
    assert metrics["seconds"] < 120
