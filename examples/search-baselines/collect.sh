#!/usr/bin/env bash
# Copy the baselines' small results here (configurations, trial logs, the report over seeds,
# the retraining's table); no weights.
#   bash examples/search-baselines/collect.sh [runs/baselines]
set -euo pipefail
runs=${1:-runs/baselines}
here=$(cd "$(dirname "$0")" && pwd)
for d in "$runs"/*/; do
  name=$(basename "$d")
  [ -f "$d/trials.jsonl" ] || continue
  mkdir -p "$here/$name"
  cp "$d/search.json" "$d/trials.jsonl" "$here/$name/"
  if [ -f "$d/retrain/retrain.md" ]; then
    mkdir -p "$here/$name/retrain"
    cp "$d/retrain/retrain.md" "$d/retrain/results.jsonl" "$d/retrain/study.json" "$here/$name/retrain/"
  fi
done
if [ -d "$runs/report" ]; then
  mkdir -p "$here/report"
  cp "$runs/report"/*.md "$runs/report"/*.png "$here/report/" 2>/dev/null || true
fi
