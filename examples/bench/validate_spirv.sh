#!/usr/bin/env bash
# Validates every SPIR-V kernel a diffnas run compiles, with SPIRV-Tools' `spirv-val`.
#
#   bash examples/bench/validate_spirv.sh LOG            # a CubeCL compilation log already written
#   bash examples/bench/validate_spirv.sh LOG -- CMD...  # run CMD with the log switched on, then check
#
# CMD is a `vulkan`-build diffnas command (e.g. `diffnas bench --device wgpu ...`): CubeCL writes
# each kernel's name and SPIR-V disassembly to LOG (CUBECL_DEBUG_LOG=LOG). Each kernel is assembled
# with `spirv-as` and checked with `spirv-val --target-env vulkan1.3`; the script prints one line
# per kernel (valid / INVALID, its name, the validator's first message) and exits 1 when any kernel
# is invalid. A run that crashes still leaves the kernels compiled up to the crash in LOG: the last
# one is usually the culprit. Needs `spirv-tools` (Debian: apt-get install spirv-tools).
#
# Why: on an adapter without VK_KHR_workgroup_memory_explicit_layout (lavapipe in Mesa 22.3),
# CubeCL 0.11.3 declares shared memory as a Workgroup variable whose type is itself a pointer, so
# every kernel with shared memory is invalid SPIR-V; this is what `diffnas devices` reports as
# "refused by this build" and what crashed lavapipe (`src/device.rs`, `SpirvKernels`).
set -euo pipefail
log=${1:?usage: validate_spirv.sh LOG [-- CMD...]}
shift
if [ "${1:-}" = "--" ]; then
  shift
  rm -f "$log"
  set +e
  CUBECL_DEBUG_LOG="$log" "$@" >"$log.run" 2>&1
  echo "command exited with $? (its output: $log.run)"
  set -e
fi
[ -s "$log" ] || { echo "no compilation log at $log" >&2; exit 2; }
command -v spirv-val >/dev/null || { echo "spirv-val not found (apt-get install spirv-tools)" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# One file per kernel: its name line, then the disassembly between ```spirv and ```.
awk -v dir="$dir" '
  /^\[START_KERNEL_COMPILATION\]/ { n++; name = ""; code = 0; next }
  /^name: / && name == "" { name = substr($0, 7); getline nxt; if (nxt !~ /^id:/) name = name nxt;
                            gsub(/[ \t]+/, " ", name); print name > (dir "/" n ".name"); next }
  /^```spirv/ { code = 1; next }
  /^```/ { code = 0; next }
  code { print > (dir "/" n ".spvasm") }
' "$log"
total=0
bad=0
for asm in $(ls "$dir"/*.spvasm 2>/dev/null | sort -V); do
  [ -e "$asm" ] || continue
  k=${asm%.spvasm}
  total=$((total + 1))
  name=$(cat "$k.name" 2>/dev/null || echo '?')
  if ! msg=$(spirv-as --target-env vulkan1.3 "$asm" -o "$k.spv" 2>&1); then
    bad=$((bad + 1))
    echo "UNPARSED  $name: $(echo "$msg" | head -1)"
  elif msg=$(spirv-val --target-env vulkan1.3 "$k.spv" 2>&1); then
    echo "valid     $name"
  else
    bad=$((bad + 1))
    echo "INVALID   $name: $(echo "$msg" | head -2 | tr '\n' ' ')"
  fi
done
echo "$total kernels, $bad invalid"
[ "$total" -gt 0 ] || { echo "the log holds no SPIR-V (a WGSL run?)" >&2; exit 2; }
[ "$bad" -eq 0 ]
