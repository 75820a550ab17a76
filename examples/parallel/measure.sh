#!/usr/bin/env bash
# Wall time of the same search with 1 and 2 local trial slots, and what Slurm adds per trial.
#   bash examples/parallel/measure.sh                      # writes examples/parallel/results.csv
# The Slurm rows need a cluster (SLURM_CONF set, e.g. by tests/slurm/cluster.sh start DIR P1 P2
# and SLURM_CONF=DIR/slurm.conf); without one they are left out.
set -euo pipefail
diffnas=${DIFFNAS:-diffnas}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$here/results.csv
echo "what,evaluator,trials,slots,seconds,seconds_per_trial" > "$out"
run() {  # name evaluator trials slots args...
  local name=$1 ev=$2 n=$3 slots=$4; shift 4
  rm -rf "$work/s"
  local t0 t1
  t0=$(date +%s.%N)
  "$diffnas" search random --evaluator "$ev" --trials "$n" --run-dir "$work/s" --device flex "$@" \
    > /dev/null 2> "$work/log" || { cat "$work/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "import sys; s=$t1-$t0; print(f'$name,$ev,$n,$slots,{s:.1f},{s/$n:.2f}')" | tee -a "$out"
}
# Real trials (rapid-convergence training and a reduced score): the same 8 trials each time.
real=(--trial-steps 100 --score-n 250 --score-steps 10)
run local-in-process proxy 8 1 "${real[@]}"
run local-processes proxy 8 2 --parallel 2 "${real[@]}"
# The executors' own cost: stub trials (no training), 24 of them.
run local-in-process stub 24 1
run local-processes stub 24 2 --parallel 2
if [ -n "${SLURM_CONF:-}" ] && sinfo >/dev/null 2>&1; then
  run slurm stub 24 1 --executor slurm --parallel 1
  run slurm stub 24 2 --executor slurm --parallel 2
fi
