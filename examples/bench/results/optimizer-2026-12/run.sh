#!/usr/bin/env bash
# The training step's clip / optimizer / EMA phases before and after the one-kernel GPU AdamW,
# on wgpu, from two diffnas binaries built at the two commits:
#   BEFORE=/path/to/diffnas-3ac06f5 AFTER=/path/to/diffnas bash run.sh [rounds]
# Each round runs before then after (`bench --profile`, fmnist-evolution-best at batch 8, six
# profiled steps after two warm-up steps) and appends one row per binary to phases.csv:
# milliseconds per step in each phase and the unprofiled training rate.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
rounds=${1:-1}
out="$here/phases.csv"
[ -f "$out" ] || echo "binary,round,inputs_ms,forward_ms,backward_ms,clip_ms,optimizer_ms,ema_ms,train_images_per_s" >"$out"
tmp=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$([ "$which" = before ] && echo "${BEFORE:?}" || echo "${AFTER:?}")
    "$bin" bench --genome "$root/examples/bench/genomes/fmnist-evolution-best.json" --batch-size 8 \
      --device wgpu --train-steps 6 --sample-evals 0 --warmup 2 --profile --json "$tmp/$which.json" >/dev/null
    python3 - "$tmp/$which.json" "$which" "$r" >>"$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = {x["phase"]: x["seconds"] / d["profile"]["train_steps"] * 1000 for x in d["profile"]["train"]}
cols = ["inputs", "forward", "backward", "clip", "optimizer", "ema"]
print(",".join([sys.argv[2], sys.argv[3]] + [f"{p[c]:.1f}" for c in cols] + [f"{d['train']['images_per_s']:.3f}"]))
PY
  done
done
cat "$out"
