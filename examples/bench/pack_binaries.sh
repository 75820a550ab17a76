#!/usr/bin/env bash
# Strip and compress the release binaries for a GPU machine that builds nothing
# (examples/bench/device_gpu.sh): OUT/diffnas.xz and, if built, OUT/diffnas-vulkan.xz.
#   cargo build --release
#   cargo build --release --features vulkan --target-dir "$CARGO_TARGET_DIR/vulkan"   # optional
#   bash examples/bench/pack_binaries.sh .devbin
set -eu
OUT=${1:?usage: pack_binaries.sh OUT_DIR}
T=${CARGO_TARGET_DIR:-$HOME/.cache/diffnas/target}
mkdir -p "$OUT"
pack() {
    [ -x "$1" ] || { echo "skipping $2: no binary at $1"; return; }
    strip -o "$OUT/$2" "$1"
    xz -T2 -6 -f "$OUT/$2"
    ls -l "$OUT/$2.xz"
}
pack "$T/release/diffnas" diffnas
pack "$T/vulkan/release/diffnas" diffnas-vulkan
