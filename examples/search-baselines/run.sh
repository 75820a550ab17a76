#!/usr/bin/env bash
# Random search and regularized evolution over 3 seeds on the same proxy, then the report over
# seeds and the retraining of the best search's winner beside the `tiny` preset and beside
# `tiny` narrowed to the winner's MACs. Resumable: run
# it again after a stop and every search continues where it was.
#   bash examples/search-baselines/run.sh            # searches in runs/baselines/
#   TARGET=1900 bash examples/search-baselines/run.sh   # trials each seed took to reach 1900
# Then: bash examples/search-baselines/collect.sh   (copies the small results here; run it
# during a long run too, so that a fresh clone can continue from them)
set -euo pipefail
diffnas=${DIFFNAS:-diffnas}
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-runs/baselines}
seeds=${SEEDS:-0 1 2}
mkdir -p "$runs"
for s in $seeds; do
  for strategy in random evolution; do
    dir=$runs/$strategy-$s
    # A search collect.sh saved (in a fresh clone, say) continues from its log: the trials it
    # logged stay done, an unfinished one starts again.
    if [ ! -f "$dir/search.json" ] && [ -f "$here/$strategy-$s/search.json" ]; then
      mkdir -p "$dir"
      cp "$here/$strategy-$s/search.json" "$here/$strategy-$s/trials.jsonl" "$dir/"
    fi
    if [ -f "$dir/search.json" ] && python3 - "$dir" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
want = json.loads((d / "search.json").read_text())["limits"]["max_trials"]
log = d / "trials.jsonl"
done = len(log.read_text().splitlines()) if log.exists() else 0
sys.exit(0 if want is not None and done >= want else 1)
PY
    then
      # Every trial logged: nothing to run (a fresh machine that trained its own classifier
      # could not score more trials of this search anyway; report and retrain need none).
      :
    elif [ -f "$dir/search.json" ]; then
      "$diffnas" search "$strategy" --resume --run-dir "$dir" --device flex
    else
      "$diffnas" search "$strategy" --seed "$s" --run-dir "$dir" --device flex
    fi
  done
done
compare=()
for s in $seeds; do
  for strategy in random evolution; do
    [ "$strategy-$s" = "evolution-${seeds%% *}" ] || compare+=(--compare "$runs/$strategy-$s")
  done
done
target=()
[ -n "${TARGET:-}" ] && target=(--target "$TARGET")
"$diffnas" report "$runs/evolution-${seeds%% *}" "${compare[@]}" "${target[@]}" --out "$runs/report"
# The search whose best trial scored lowest, retrained with the full schedule beside `tiny`.
best=$(python3 - "$runs" <<'PY'
import json, pathlib, sys
best = None
for log in sorted(pathlib.Path(sys.argv[1]).glob("*/trials.jsonl")):
    for line in log.read_text().splitlines():
        o = json.loads(line)["outcome"]
        if o["status"] == "ok" and o["score"] is not None and (best is None or o["score"] < best[0]):
            best = (o["score"], str(log.parent))
print(best[1])
PY
)
if [ -f "$best/retrain/study.json" ]; then
  "$diffnas" search retrain "$best" --resume --device flex
else
  "$diffnas" search retrain "$best" --baseline tiny --device flex
fi
# The same winner beside a hand design at its cost: `tiny` narrowed to base 16 and channel
# multipliers 1, 1, 2 (tiny-30m.json: 30.6 M MACs against the winner's 30.3 M). A copy of the
# winning search's log gives this retraining its own folder.
eq=$runs/winner-vs-tiny-30m
if [ ! -f "$eq/search.json" ]; then
  mkdir -p "$eq"
  cp "$best/search.json" "$best/trials.jsonl" "$eq/"
fi
if [ -f "$eq/retrain/study.json" ]; then
  "$diffnas" search retrain "$eq" --resume --device flex
else
  "$diffnas" search retrain "$eq" --baseline "$here/tiny-30m.json" --device flex
fi
