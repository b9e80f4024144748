"""``kill -9`` at random moments (during a checkpoint write too), then ``--resume``: the same weights and the same
metrics files as an uninterrupted run, and no temporary file left behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from invertible.io import load_checkpoint

ARGS = ["train-flow", "--data", "8gaussians", "--blocks", "2", "--hidden", "8,8", "--steps", "150",
        "--checkpoint-every", "3", "--batch-size", "64", "--n-test", "200", "--eval-samples", "200",
        "--no-progress", "--threads", "1", "--mode", "resflow"]
MAX_KILLS = 4


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "invertible.cli", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.slow
@pytest.mark.cpu_only
def test_kill_minus_nine_then_resume_equals_the_uninterrupted_run(tmp_path):
    started = time.monotonic()
    ref = _cli(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    duration = time.monotonic() - started  # this machine's speed: kill moments scale with it, not fixed seconds
    rng = random.Random(int(os.environ.get("INVERTIBLE_KILL9_SEED", "7")))  # another seed: a new campaign
    out, kills, resumes = tmp_path / "killed", 0, 0
    for attempt in range(MAX_KILLS + 1):  # kills at random moments, then one run left to finish
        resume = (out / "checkpoint.safetensors").is_file()
        resumes += resume
        proc = _cli(out, *(["--resume"] if resume else []))
        if attempt == MAX_KILLS:
            assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
            break
        time.sleep(rng.uniform(0.4, 0.9) * duration)  # past start-up (~30 % of a run), before a fresh run ends
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        break
    assert kills >= 1 and resumes >= 1, f"{kills} kills, {resumes} resumes: nothing was tested"
    a, b = load_checkpoint(tmp_path / "ref"), load_checkpoint(out)
    for k in a.tensors:
        if k.startswith(("model.", "optim.", "ema.")):
            torch.testing.assert_close(b.tensors[k], a.tensors[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert _records(out) == _records(tmp_path / "ref")
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
