#!/usr/bin/env bash
# Before/after table of a series of builds: one side-by-side run (diffnas flex beside PyTorch
# eager, interleaved rounds, medians) per genome and batch over every binary given, then one
# table of all of them. Each binary is the build after one optimisation step.
#
#   bash examples/bench/stages.sh "0 before=/path/to/diffnas-a" "1 kernels=/path/to/diffnas-b" ...
#
# The current build (`cargo build --release`) is the last row. env: OUT (default
# bench-results/stages), ROWS (default "tiny:8 examples/bench/genomes/fmnist-evolution-best.json:32
# ddpm-cifar10:2"), REPEATS (3). Output: OUT/<genome>-b<batch>/ (side_by_side.py's files) and
# OUT/stages.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-bench-results/stages}"
ROWS="${ROWS:-tiny:8 examples/bench/genomes/fmnist-evolution-best.json:32 ddpm-cifar10:2}"
variants=()
for s in "$@"; do
  label="${s%%=*}" bin="${s#*=}"
  [ -x "$bin" ] || { echo "stage '$label': $bin is not an executable" >&2; exit 1; }
  variants+=(--variant "$label|$bin|")
done
dirs=()
for row in $ROWS; do
  g="${row%:*}" b="${row##*:}"
  dir="$OUT/$(basename "$g" .json)-b$b"
  python3 examples/bench/side_by_side.py --preset cpu --genomes "$g" --batch-sizes "$b" \
    --diffnas-devices flex --torch-configs eager:f32 "${variants[@]}" \
    --repeats "${REPEATS:-3}" --out "$dir"
  dirs+=("$dir")
done
python3 - "$OUT/stages.md" "${dirs[@]}" <<'PY'
import json, os, sys
out, dirs = sys.argv[1], sys.argv[2:]
cols, stages, table = [], [], {}
for d in dirs:
    res = json.load(open(os.path.join(d, "results.json")))
    col = f"{res[0]['genome']} b{res[0]['batch']}"
    cols.append(col)
    for r in res:
        label = "PyTorch eager" if "torch" in r["impl"] else (
            r["impl"][len("diffnas flex ("):-1] if "(" in r["impl"] else "current build")
        if label not in stages:
            stages.append(label)
        rep = r["report"]
        table[(label, col)] = (rep["train"]["images_per_s"], rep["sample"]["image_steps_per_s"])
stages = [s for s in stages if s not in ("current build", "PyTorch eager")] + ["current build", "PyTorch eager"]
lines = ["| stage | " + " | ".join(f"{c} train img/s | {c} sampling img-steps/s" for c in cols) + " |",
         "|---|" + "---|---|" * len(cols)]
for s in stages:
    cells = []
    for c in cols:
        t, a = table[(s, c)]
        et, ea = table[("PyTorch eager", c)]
        cells.append(f"{t:.1f}" if s == "PyTorch eager" else f"{t:.1f} ({t / et:.2f}x)")
        cells.append(f"{a:.1f}" if s == "PyTorch eager" else f"{a:.1f} ({a / ea:.2f}x)")
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
text = "\n".join(lines) + "\n\nRates are medians of interleaved rounds; in brackets the ratio to PyTorch eager of the same run.\n"
open(out, "w").write(text)
print(text)
PY
