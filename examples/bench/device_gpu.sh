#!/usr/bin/env bash
# One prepared measurement on a machine with a GPU that builds nothing there: it runs binaries
# built elsewhere (x86-64, default features and optionally `--features vulkan`) and writes one
# archive of results. About 8 minutes on an H100-class card; every step has a time limit and
# the side-by-side stops starting measurements at a deadline, so it ends in time whatever
# autotune costs on a cold machine.
#
#   bash examples/bench/device_gpu.sh BIN_DIR OUT_DIR [BUDGET_S]
#
# BIN_DIR holds `diffnas` and optionally `diffnas-vulkan` (plain or .xz-compressed, as made by
# `examples/bench/pack_binaries.sh`). OUT_DIR receives summary.md (the side-by-side table and
# what the adapters offer) and results.tar.gz (every report, log and profile, and the autotune
# cache, CubeCL's SQLite database, which records the convolution and matmul candidate autotune
# chose for every shape).
#
# What it measures, `ddpm-cifar10` at batch 128, in this order (cheapest and most needed first):
#   1. the adapters: nvidia-smi, `diffnas devices` of both builds (shader-f16, cooperative-matrix
#      shapes, and whether the `vulkan` build's SPIR-V is valid and used on each adapter),
#      vulkaninfo's cooperative-matrix properties where vulkaninfo exists, and the SPIR-V of
#      every kernel two short `vulkan`-build steps compile (results/spirv.log.xz, to check
#      afterwards with examples/bench/validate_spirv.sh where spirv-tools is installed);
#   2. side by side (examples/bench/side_by_side.py, one round): PyTorch eager f32, AMP bf16 and
#      AMP f16 first, then diffnas on wgpu with our im2col convolution in f32, the `vulkan`
#      build (SPIR-V, where cooperative matrices exist) in f16, the default build in f16,
#      Burn's direct convolution in f32 (the earlier baseline) and the `vulkan` build in f32;
#   3. a per-kernel device profile of diffnas f32 im2col training and sampling
#      (examples/bench/kernel_profile.py), from the autotune cache step 2 filled, and what
#      autotune chose in step 2 for every operation and shape (each measurement's
#      DIFFNAS_AUTOTUNE_LOG, summarised by examples/bench/autotune_choices.py into autotune.md);
#   4. peak memory: each diffnas report has the device allocator's reservation, each PyTorch
#      report its peak allocation;
#   5. ceilings: each diffnas measurement with `--peak` times Burn's matmul on one 4096 x 4096
#      product in its precision, copy bandwidth and launch cost, and each PyTorch one cuBLAS on
#      the same product (a table under the side-by-side one).
# A dry run on a machine without a GPU (software Vulkan) takes the smallest genome instead:
#   DRY_RUN=1 bash examples/bench/device_gpu.sh "$CARGO_TARGET_DIR/release" /tmp/device-dry 900
set -u
BIN=${1:?usage: device_gpu.sh BIN_DIR OUT_DIR [BUDGET_S]}
OUT=${2:?usage: device_gpu.sh BIN_DIR OUT_DIR [BUDGET_S]}
BUDGET=${3:-450}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
START=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/results"
left() { echo $((BUDGET - ($(date +%s) - START))); }
log() { echo "[$(date +%H:%M:%S) +$(($(date +%s) - START))s] $*" | tee -a "$WORK/results/steps.log" >&2; }

unpack() { # name -> path of an executable, or empty
    if [ -f "$BIN/$1.xz" ]; then
        xz -dc "$BIN/$1.xz" >"$WORK/$1" && chmod +x "$WORK/$1" && echo "$WORK/$1"
    elif [ -x "$BIN/$1" ]; then
        echo "$BIN/$1"
    fi
}
DIFFNAS=$(unpack diffnas)
VULKAN=$(unpack diffnas-vulkan)
[ -n "$DIFFNAS" ] || { echo "no diffnas binary in $BIN" >&2; exit 2; }
export DIFFNAS_HOME="$WORK/home" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ -n "${DRY_RUN:-}" ]; then
    GENOME=examples/bench/genomes/micro-16px.json BATCH=2 STEPS=2 EVALS=2 TORCH_DEVICE=cpu
    TORCH=eager:f32,eager:bf16
else
    GENOME=ddpm-cifar10 BATCH=128 STEPS=10 EVALS=10 TORCH_DEVICE=cuda
    TORCH=eager:f32,eager:bf16,eager:f16
fi

# summary.md and results.tar.gz, written again after every step so that a run cut short still
# leaves what it measured.
summarize() {
    cp -r "$DIFFNAS_HOME/kernel-cache" "$WORK/results/autotune-cache" 2>/dev/null
    {
        echo "# GPU measurement ($(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - START)) s)"
        echo
        echo '```'
        cat "$WORK/results/adapters.txt" 2>/dev/null
        echo '```'
        echo
        cat "$WORK/results/side-by-side/table.md" 2>/dev/null || echo "no side-by-side table (see side-by-side.log)"
        echo
        head -60 "$WORK/results/kernels/kernels.md" 2>/dev/null
        echo
        head -200 "$WORK/results/autotune.md" 2>/dev/null
        echo
        echo '```'
        cat "$WORK/results/steps.log"
        echo '```'
    } >"$OUT/summary.md"
    tar -C "$WORK" -czf "$OUT/results.tar.gz" results
}

log "1. adapters"
{
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo
    "$DIFFNAS" devices 2>&1
    # The `vulkan` build says, per Vulkan adapter, whether its SPIR-V is valid and used.
    [ -z "$VULKAN" ] || { echo; echo "vulkan build:"; "$VULKAN" devices 2>&1; }
    if command -v vulkaninfo >/dev/null; then
        vulkaninfo 2>/dev/null | grep -i -A 12 "cooperative" | head -200
    else
        echo "vulkaninfo: not installed (the cooperative-matrix shapes above come from wgpu)"
    fi
} >"$WORK/results/adapters.txt"
# Every SPIR-V kernel of two short vulkan-build steps, to check here with validate_spirv.sh
# (the GPU machine may lack spirv-tools); compressed into the archive.
if [ -n "$VULKAN" ]; then
    (cd "$ROOT" && CUBECL_DEBUG_LOG="$WORK/results/spirv.log" timeout 60 "$VULKAN" bench \
        --genome examples/bench/genomes/micro-16px.json --batch-size 2 --device wgpu \
        --train-steps 2 --sample-evals 1 --warmup 1) >"$WORK/results/spirv-run.log" 2>&1
    log "   SPIR-V log of the vulkan build: exit $?"
    xz -f "$WORK/results/spirv.log" 2>/dev/null || true
fi
summarize
# and every 45 s while the long steps run
touch "$WORK/running"
(exec >/dev/null 2>&1; n=0; while [ -f "$WORK/running" ]; do
    sleep 5; n=$((n + 1)); [ $((n % 9)) -ne 0 ] || summarize; done) &
TICKER=$!

log "2. side by side (deadline $(( $(left) - 120 )) s)"
# Most needed first, since the deadline may stop the last ones: tensor cores (the `vulkan` build
# in f16), f16 on WGSL, the baseline, SPIR-V in f32.
VARIANTS=()
# `--peak` adds each one's matmul ceiling (the f32 row of the default build has it already).
[ -z "$VULKAN" ] || VARIANTS+=(--variant "vulkan build f16|$VULKAN|--precision f16 --peak")
VARIANTS+=(--variant "f16 im2col||--precision f16 --conv im2col --peak"
           --variant "Burn's direct convolution (before)||--conv direct")
[ -z "$VULKAN" ] || VARIANTS+=(--variant "vulkan build f32|$VULKAN|--precision f32 --peak")
(cd "$ROOT" && timeout $(( $(left) - 60 )) "$PY" examples/bench/side_by_side.py --preset gpu \
    --genomes "$GENOME" --batch-sizes $BATCH --diffnas-devices wgpu --convs im2col \
    --torch-configs "$TORCH" --torch-device $TORCH_DEVICE --train-steps $STEPS --sample-evals $EVALS --warmup 2 --repeats 1 \
    --timeout 200 --deadline $(( $(left) - 120 )) --torch-first --autotune-logs --diffnas "$DIFFNAS" \
    "${VARIANTS[@]}" --out "$WORK/results/side-by-side") >"$WORK/results/side-by-side.log" 2>&1
log "   side by side exit $?"
"$PY" "$ROOT/examples/bench/autotune_choices.py" "$WORK"/results/side-by-side/*.autotune.log \
    >"$WORK/results/autotune.md" 2>&1
summarize

if [ "$(left)" -gt 90 ]; then
    log "3. kernel profile"
    (cd "$ROOT" && timeout $(( $(left) - 30 )) "$PY" examples/bench/kernel_profile.py --genome "$GENOME" \
        --batch-size $BATCH --device wgpu --train-steps 2 --sample-evals 2 --warmup 1 --no-prime \
        --diffnas "$DIFFNAS" --out "$WORK/results/kernels") >"$WORK/results/kernels.log" 2>&1
    log "   kernel profile exit $?"
else
    log "3. kernel profile: skipped, $(left) s left"
fi

log "4. archive"
rm -f "$WORK/running"; wait $TICKER
summarize
log "done: $OUT/summary.md, $OUT/results.tar.gz"
