#!/usr/bin/env bash
# One prepared device check (issue 13, "GPU readiness"); on one GPU it is meant to finish in under 8 minutes.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR]
#
# 1. the test lane on the device (pytest -m "not slow" --device DEVICE; --tiny: the estimator tests only);
# 2. benchmarks/resflow_images.py at batch 64 and 256, eager and compiled, fp32 and bf16 (bf16 and compile on CUDA
#    only; --tiny: batch 8, one step, eager fp32, ours only);
# 3. a host-sync check: two training steps under torch.cuda.set_sync_debug_mode("error") (CUDA only);
# 4. an MNIST-10k residual-flow training (TRAIN_STEPS steps, default 3000: about 5 minutes on one GPU; --tiny: 2)
#    through the CLI, with the honest (unbiased) test bits/dim of its final evaluation;
# 5. one summary: DIR/summary.json and DIR/summary.md.
#
# Environment: PYTHON (default: python), TRAIN_STEPS. Run from the repository root with the package importable.
set -uo pipefail

DEVICE=cuda
TINY=0
OUT=gpu_check_out
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
mkdir -p "$OUT"
STATUS="$OUT/status.txt"
: > "$STATUS"

step() {  # step NAME COMMAND...: run, time, record the exit status
  local name="$1"; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - t0))" >> "$STATUS"
  echo "[$name] rc=$rc ($((SECONDS - t0)) s)"
}

if [[ $TINY == 1 ]]; then
  step tests "$PY" -m pytest -q -x -p no:cacheprovider --device "$DEVICE" tests/test_logdet_recompute.py
  step bench_b8_eager_fp32 "$PY" benchmarks/resflow_images.py --device "$DEVICE" --batch 8 --steps 1 --warmup 0 \
    --threads 1 --no-memory --no-normflows --estimators neumann --json "$OUT/bench_b8_eager_fp32.json"
  TRAIN_ARGS=(--steps 2 --subset 128 --n-test 32 --eval-samples 32 --batch-size 16 --blocks 1 --hidden 8)
else
  step tests "$PY" -m pytest -q -m "not slow" -p no:cacheprovider --device "$DEVICE" tests
  for B in 64 256; do
    for V in eager_fp32 compiled_fp32 eager_bf16 compiled_bf16; do
      FLAGS=()
      [[ $V == compiled_* ]] && FLAGS+=(--compile)
      [[ $V == *_bf16 ]] && FLAGS+=(--bf16)
      [[ $V != eager_fp32 || $B != 64 ]] && FLAGS+=(--no-memory)
      step "bench_b${B}_${V}" "$PY" benchmarks/resflow_images.py --device "$DEVICE" --batch "$B" --steps 10 \
        --warmup 3 --threads 1 "${FLAGS[@]}" --json "$OUT/bench_b${B}_${V}.json"
    done
  done
  TRAIN_ARGS=(--steps "${TRAIN_STEPS:-3000}" --batch-size 64 --blocks 2 --hidden 64 --eval-samples 2000)
fi

if [[ $DEVICE == cuda* ]]; then
  step sync_check "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
from invertible.models.resflow import image_residual_flow
from invertible.nn.base import validated_input

device = torch.device(sys.argv[1])
model = image_residual_flow((1, 28, 28), n_scales=3, n_blocks=2, hidden=64).to(device)
x = torch.rand(64, 1, 28, 28, device=device)
model.initialize(x)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for i in range(3):  # the first step outside the check (lazy initialization may read the device once)
    if i == 1:
        torch.cuda.set_sync_debug_mode("error")
    with validated_input():  # as the engine runs a step on an accelerator
        loss = -model(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
torch.cuda.set_sync_debug_mode("default")
print("no host sync in two training steps")
EOF
fi

step train "$PY" -m invertible.cli train-flow --data mnist --device "$DEVICE" --out "$OUT/train" --no-progress \
  "${TRAIN_ARGS[@]}"

"$PY" - "$OUT" "$DEVICE" "$TINY" <<'EOF'
import json
import sys
from pathlib import Path

out, device, tiny = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
steps = {}
for line in (out / "status.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    steps[name] = {"rc": int(rc), "seconds": int(seconds)}
bench = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("bench_*.json"))}
train = out / "train" / "metrics.json"
train_metrics = json.loads(train.read_text()) if train.is_file() else None
summary = {"device": device, "tiny": tiny, "steps": steps, "benchmarks": bench, "training": train_metrics,
           "ok": all(s["rc"] == 0 for s in steps.values())}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
lines = [f"# gpu_check ({device}{', tiny' if tiny else ''}): {'all steps passed' if summary['ok'] else 'FAILED'}", "",
         "| step | exit | seconds |", "|---|---|---|"]
lines += [f"| {k} | {v['rc']} | {v['seconds']} |" for k, v in steps.items()]
lines += ["", "| benchmark | estimator | ours s/step | normflows s/step | ratio |", "|---|---|---|---|---|"]
for name, b in bench.items():
    for threads, t in b["timing"].items():
        for k in [k for k in t if k.startswith("ours:")]:
            peer = t.get("peer:neumann")
            ratio = t.get(f"ratio {k}")
            lines.append(f"| {name} | {k[5:]} | {t[k]:.4f} | {'-' if peer is None else f'{peer:.4f}'} | "
                         f"{'-' if ratio is None else f'{ratio:.3f}'} |")
    for k, v in b.get("memory", {}).items():
        lines.append(f"| {name} memory | {k} | {'-' if v is None else f'{v / 2**20:.1f} MiB'} | | |")
val = (train_metrics or {}).get("val") or (train_metrics or {}).get("result", {}).get("val")
if isinstance(val, dict) and "bits_per_dim" in val:
    lines += ["", f"MNIST-10k training: test bits/dim {val['bits_per_dim']:.4f} +- {val['bits_per_dim_se']:.4f} "
              f"({'exact' if val.get('exact') else 'unbiased estimate'}, {val.get('estimator')})"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if summary["ok"] else 1)
EOF
