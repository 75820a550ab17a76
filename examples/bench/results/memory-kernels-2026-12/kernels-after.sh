#!/usr/bin/env bash
# Regenerates kernels-after.md / kernels-after.json: the per-kernel device profile of tiny at
# batch 8 on wgpu (lavapipe here) after the memory-bound kernels, 2 training steps and 2 denoiser
# evaluations after a priming run that fills the autotune cache (about 5 minutes on 2 cores).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../../.." && pwd)
OUT=$(mktemp -d)
cd "$ROOT"
python3 examples/bench/kernel_profile.py --genome tiny --batch-size 8 --device wgpu \
    --train-steps 2 --sample-evals 2 --out "$OUT"
cp "$OUT/kernels.md" "$HERE/kernels-after.md"
cp "$OUT/kernels.json" "$HERE/kernels-after.json"
