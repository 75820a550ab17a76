#!/usr/bin/env bash
# Images per second of the browser demo (WebGPU and the CPU fallback, in headless Chromium)
# against native `diffnas bench` (flex and wgpu) on the same machine, for each run directory
# given (default: the committed Fashion-MNIST test model). Needs `bash web/build.sh` and
# `cargo build --release` first.
#
#   bash web/bench.sh [RUN_DIR ...]      (env: N=16 images, STEPS=10 DDIM steps)
#
# The browser's number is the second of two runs in one page (the first compiles shaders);
# native numbers exclude warm-up the same way. Output: a markdown table on stdout, JSON per
# measurement in web/test-output/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffnas/target}"
bin="$CARGO_TARGET_DIR/release/diffnas"
N="${N:-16}"
STEPS="${STEPS:-10}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f web/pkg/diffnas_web_bg.wasm ] || { echo "build first: bash web/build.sh" >&2; exit 1; }
[ $# -gt 0 ] || set -- tests/fixtures/fmnist-tiny

out=web/test-output/bench
site=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$site"' EXIT
mkdir -p "$out" "$site/models"
for f in index.html main.js worker.js pkg; do ln -s "$PWD/web/$f" "$site/$f"; done
names=()
for run in "$@"; do
  name=$(basename "$(cd "$run" && pwd)")
  [ "$name" = student ] && name=$(basename "$(cd "$run/.." && pwd)")-student
  "$bin" export "$run" --out "$site/models" --name "$name" >/dev/null
  names+=("$name")
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null; do sleep 0.2; done

echo "| model | params | MACs/img | backend | image-steps/s | images/s ($STEPS steps) | vs native flex |"
echo "|---|---|---|---|---|---|---|"
for name in "${names[@]}"; do
  genome="$site/models/$name/genome.json"
  "$bin" bench --genome "$genome" --train-steps 0 --sample-evals "$STEPS" --batch-size "$N" --device flex --json "$out/$name-native-flex.json" >/dev/null 2>&1
  "$bin" bench --genome "$genome" --train-steps 0 --sample-evals "$STEPS" --batch-size "$N" --device wgpu --json "$out/$name-native-wgpu.json" >/dev/null 2>&1 || true
  for backend in webgpu cpu; do
    node web/tests/drive.mjs --url "http://127.0.0.1:$port/index.html?model=$name&n=$N&steps=$STEPS&seed=0&backend=$backend&run=1" \
      --out "$out/$name-browser-$backend.json" --screenshot "$out/$name-browser-$backend.png" --repeat 2 --timeout 1800 >/dev/null
  done
  python3 - "$out" "$name" "$N" "$STEPS" "$site/models/$name/model.json" <<'PY'
import json, os, sys
out, name, n, steps, manifest = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
m = json.load(open(manifest))
def load(kind):
    p = os.path.join(out, f"{name}-{kind}.json")
    return json.load(open(p)) if os.path.exists(p) else None
rows = []
for kind, label in [("native-flex", None), ("native-wgpu", None)]:
    r = load(kind)
    if r and r.get("sample"):
        rows.append((f"native {r['device']['backend']} ({r['device']['name']})", r["sample"]["image_steps_per_s"]))
for kind in ["browser-webgpu", "browser-cpu"]:
    r = load(kind)
    if r and r.get("state") == "done" and len(r["runs"]) >= 2:
        rows.append((f"browser {r['backend']}", n * steps / r["runs"][-1]["seconds"]))
    else:
        rows.append((f"browser {kind[8:]}: {r.get('state') if r else 'missing'} {r.get('error') if r else ''}", float("nan")))
flex = rows[0][1] if rows and rows[0][0].startswith("native flex") else float("nan")
for label, isps in rows:
    print(f"| {name} | {m['params']/1e3:.0f} k | {m['macs']/1e6:.1f} M | {label} | {isps:.1f} | {isps/steps:.2f} | {isps/flex:.2f}x |")
PY
done
