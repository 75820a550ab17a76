#!/usr/bin/env bash
# Copy a proxy-fidelity study's data (no weights) here, after ranking what it has measured:
#   diffnas search proxy-check --run-dir runs/proxy-study          # the study (add --resume)
#   bash examples/proxy-study/collect.sh runs/proxy-study
set -euo pipefail
src=${1:-runs/proxy-study}
here=$(cd "$(dirname "$0")" && pwd)
diffnas=${DIFFNAS:-diffnas}
"$diffnas" search proxy-check --summary --run-dir "$src"
for f in study.json results.jsonl summary.json summary.csv architectures.csv; do
  cp "$src/$f" "$here/$f"
done
