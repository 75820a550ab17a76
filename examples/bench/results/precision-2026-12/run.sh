#!/usr/bin/env bash
# Does an f16 / bf16 training run track f32's? The `tiny` UNet on real Fashion-MNIST, 300 steps
# of batch 16 (LR 5e-4, warm-up 30, seed 0), the same batches, timesteps and noise in each
# precision, on flex (the 16-bit arithmetic is Burn's CPU kernels in those types, the same
# rounding a GPU's f16 units make up to summation order). Writes loss.csv beside this script:
# the loss (a single batch's epsilon MSE, read every 25 steps) of each run, and for f16 the
# loss scale and the skipped steps. Resumable: a finished run is kept, a stopped one resumed.
#   DIFFNAS=target/release/diffnas bash examples/bench/results/precision-2026-12/run.sh [RUNS_DIR]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
D=${DIFFNAS:-${CARGO_TARGET_DIR:-$HOME/.cache/diffnas/target}/release/diffnas}
RUNS=${1:-runs/precision-curves}
for p in f32 f16 bf16; do
    dir="$RUNS/$p"
    if [ -f "$dir/ema.bpk" ]; then
        echo "$p: finished before"
        continue
    fi
    resume=()
    [ -f "$dir/train.json" ] && resume=(--resume)
    /usr/bin/time -f "$p: %e s wall, %M KiB peak RSS" "$D" train "${resume[@]}" --run-dir "$dir" \
        --genome tiny --device flex --precision $p --steps 300 --batch-size 16 --lr 5e-4 \
        --warmup 30 --log-every 25 --checkpoint-every 100 --samples 0 --seed 0
done
python3 - "$RUNS" "$HERE/loss.csv" <<'PY'
import json, sys
runs, out = sys.argv[1], sys.argv[2]
logs = {}
for p in ("f32", "f16", "bf16"):
    with open(f"{runs}/{p}/log.jsonl") as f:
        logs[p] = {r["step"]: r for r in map(json.loads, f)}
with open(out, "w") as f:
    f.write("step,loss_f32,loss_f16,loss_bf16,f16_loss_scale,f16_skipped_steps\n")
    for s in sorted(logs["f32"]):
        r16 = logs["f16"].get(s, {})
        f.write(f"{s},{logs['f32'][s]['loss']:.6f},{r16.get('loss', float('nan')):.6f},"
                f"{logs['bf16'].get(s, {}).get('loss', float('nan')):.6f},"
                f"{r16.get('loss_scale', '')},{r16.get('skipped_steps', '')}\n")
print(open(out).read())
PY
