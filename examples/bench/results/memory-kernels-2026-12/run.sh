#!/usr/bin/env bash
# Before/after of the memory-bound GPU kernels (README, "GPU speed", item 4) on whatever wgpu
# adapter `--device wgpu` picks (lavapipe on a machine without a GPU). BEFORE is a diffnas
# binary built from commit 26e819c, AFTER one built from the commit that added this file;
# they alternate, three runs each, and bench.csv gets one row per run. bench-first.csv holds
# an earlier set of the same runs, in the order before, before, after, after, before, after.
set -euo pipefail
BEFORE=${BEFORE:?path to the diffnas binary before}
AFTER=${AFTER:?path to the diffnas binary after}
here=$(cd "$(dirname "$0")" && pwd)
args=(bench --genome tiny --batch-size 8 --device wgpu --train-steps 4 --sample-evals 4 --warmup 1 --conv im2col)
echo "binary,run,train_images_per_s,sample_image_steps_per_s,device_bytes_reserved" > "$here/bench.csv"
for run in 1 2 3; do
  for tag in before after; do
    bin=$BEFORE; [ "$tag" = after ] && bin=$AFTER
    "$bin" "${args[@]}" > "$here/.last.log" 2>&1
    python3 - "$here/.last.log" "$tag" "$run" >> "$here/bench.csv" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
d = json.JSONDecoder().raw_decode(text[text.index("\n{") + 1:])[0]
print(f"{sys.argv[2]},{sys.argv[3]},{d['train']['images_per_s']:.4f},"
      f"{d['sample']['image_steps_per_s']:.4f},{d['device_bytes_reserved']}")
PY
  done
done
rm -f "$here/.last.log"
