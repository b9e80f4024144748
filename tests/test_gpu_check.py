"""benchmarks/gpu_check.sh with tiny settings on the CPU (the way CI keeps the device check from rotting)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.cpu_only]


def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and set(summary["steps"]) == {"tests", "bench_b8_eager_fp32", "train"}
    timing = summary["benchmarks"]["bench_b8_eager_fp32"]["timing"]["1"]
    assert timing["ours:neumann"] > 0
    assert "bits/dim" in (tmp_path / "summary.md").read_text()
