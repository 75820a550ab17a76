#!/usr/bin/env bash
# Builds the browser demo into web/pkg:
#   1. the wasm crate (diffnas-web) for wasm32-unknown-unknown with the size-tuned profile,
#   2. the JS bindings with wasm-bindgen-cli of exactly the wasm-bindgen version in Cargo.lock
#      (installed from crates.io into ~/.cache/diffnas/tools on first use),
#   3. wasm-opt -Oz when binaryen is available (web/node_modules from `npm ci --prefix web`),
#   4. the test driver's dependency (playwright-core, pinned in web/package-lock.json).
# Prints the .wasm size, raw and gzipped. Serve with: python3 -m http.server 8080 --bind 127.0.0.1 --directory web
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffnas/target}"
tools="${DIFFNAS_TOOLS:-$HOME/.cache/diffnas/tools}"
profile="${DIFFNAS_WEB_PROFILE:-wasm-release}"

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$version" ] || { echo "web/build.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
bindgen="$tools/bin/wasm-bindgen"
if ! "$bindgen" --version 2>/dev/null | grep -q " $version\$"; then
  echo "installing wasm-bindgen-cli $version into $tools"
  cargo install --root "$tools" wasm-bindgen-cli --version "$version" --force
fi
if [ ! -d web/node_modules/playwright-core ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  npm ci --prefix web --no-audit --no-fund
fi

cargo build -p diffnas-web --profile "$profile" --target wasm32-unknown-unknown
wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/$profile/diffnas_web.wasm"
rm -rf web/pkg
"$bindgen" --target web --no-typescript --out-dir web/pkg "$wasm"
out=web/pkg/diffnas_web_bg.wasm
before=$(stat -c %s "$out")
opt=web/node_modules/.bin/wasm-opt
if [ -x "$opt" ]; then
  # Exactly the features rustc emits for this target (its defaults plus simd128): `--all-features`
  # would let wasm-opt use proposals that browsers do not ship yet (compact imports, for one).
  "$opt" -Oz --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int \
    --enable-bulk-memory --enable-bulk-memory-opt --enable-multivalue --enable-reference-types \
    --enable-call-indirect-overlong --enable-simd "$out" -o "$out.opt" && mv "$out.opt" "$out"
  echo "wasm-opt -Oz: $before -> $(stat -c %s "$out") bytes"
fi
raw=$(stat -c %s "$out")
gz=$(gzip -9 -c "$out" | wc -c)
awk -v r="$raw" -v g="$gz" 'BEGIN { printf "web/pkg/diffnas_web_bg.wasm: %d bytes (%.2f MiB), gzip -9: %d bytes (%.2f MiB)\n", r, r / 1048576, g, g / 1048576 }'
