#!/usr/bin/env bash
# Times two segkit binaries on the same case, alternating, to measure one change (the VMs this
# runs on are noisy: only alternating runs on one machine compare).
# Usage: OLD=path/to/segkit-before NEW=path/to/segkit-after bench/ab.sh ROUNDS MODEL SIZE MODE STEPS WARMUP [bench flags...]
#   OLD=/tmp/segkit-old NEW=$CARGO_TARGET_DIR/release/segkit bench/ab.sh 8 unet 252 infer 10 2
# Prints one line per run: which binary, the case, its median ms per step and peak memory.
set -euo pipefail
if [ $# -lt 6 ] || [ -z "${OLD:-}" ] || [ -z "${NEW:-}" ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
rounds=$1 model=$2 size=$3 mode=$4 steps=$5 warmup=$6
shift 6
for r in $(seq "$rounds"); do
  for which in OLD NEW; do
    bin=${!which}
    # segkit's own error (a bad size, say) ends the script with segkit's message.
    json=$("$bin" bench --model "$model" --size "$size" --batch 1 --device cpu --steps "$steps" --warmup "$warmup" \
      --mode "$mode" "$@" --json | tail -1)
    printf '%s\n' "$json" |
      python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.1f ms/step, peak %.0f MiB" % (d["ms_per_step"], d["peak_memory_mb"]))' |
      sed "s|^|$which $model $size $mode round $r: |"
  done
done
