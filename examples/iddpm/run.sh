#!/usr/bin/env bash
# L_simple against L_hybrid (IDDPM's learned variance) on Fashion-MNIST under the same budget:
# the same genome (tiny), schedule (cosine, T = 1000), steps and seed; NLL in bits/dim on test
# images and FD-classifier of samples from 50 and 100 respaced DDPM steps.
#   bash examples/iddpm/run.sh                 # writes examples/iddpm/results.csv
#   STEPS=4000 NLL_N=200 FID_N=2000 bash examples/iddpm/run.sh
# Resumable: a stopped training continues, finished measurements are kept (results/*.json).
set -euo pipefail
diffnas=${DIFFNAS:-diffnas}
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-runs/iddpm-fmnist}
steps=${STEPS:-2000}
nll_n=${NLL_N:-100}
fid_n=${FID_N:-1000}
out=$here/results
mkdir -p "$out" "$runs"
for loss in simple hybrid; do
  dir=$runs/$loss
  if [ -f "$dir/train.json" ]; then
    "$diffnas" train --resume --run-dir "$dir" --steps "$steps" --samples 0
  else
    "$diffnas" train --genome tiny --loss "$loss" --steps "$steps" --beta-schedule cosine \
      --timesteps 1000 --run-dir "$dir" --device flex --samples 0
  fi
  [ -f "$out/$loss-nll.json" ] ||
    "$diffnas" eval nll "$dir" --split test --n "$nll_n" --device flex --out "$out/$loss-nll.json" > /dev/null
  for s in 50 100; do
    [ -f "$out/$loss-ddpm$s.json" ] ||
      "$diffnas" eval fid "$dir" --sampler ddpm --steps "$s" --n "$fid_n" --kid-subsets 0 \
        --device flex --out "$out/$loss-ddpm$s.json" > /dev/null
  done
done
python3 - "$out" "$here/results.csv" <<'PY'
import json, pathlib, sys
out, csv = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = ["loss,nll_bits_per_dim,nll_images,metric,ddpm_steps,score,score_n"]
for loss in ["simple", "hybrid"]:
    nll = json.loads((out / f"{loss}-nll.json").read_text())["nll"]
    for s in [50, 100]:
        f = json.loads((out / f"{loss}-ddpm{s}.json").read_text())
        rows.append(f"{loss},{nll['bits_per_dim']:.4f},{nll['images']},{f['metric']},{s},{f['value']:.3f},{f['n']}")
csv.write_text("\n".join(rows) + "\n")
print(csv.read_text())
PY
