#!/usr/bin/env bash
# Runs segkit and PyTorch on the same case, alternating, and prints the ratio.
# Usage: bench/compare.sh MODEL SIZE BATCH DEVICE [ROUNDS] [extra torch args...]
#   bench/compare.sh unet 252 1 cpu 3
#   bench/compare.sh fcn8s 224 1 cpu 3
# STEPS, WARMUP (default 10, 3) and THREADS (default: all cores) set the protocol; MODE=infer
# times inference (forward only, no autodiff) instead of training steps.
# DEVICE: cpu for both, or e.g. "vulkan:cuda" (segkit device : torch device).
# ISA=avx2 caps both sides' CPU kernels at AVX2 on an AVX-512 machine: segkit's gemm
# (SEGKIT_GEMM_ISA, patches/gemm-common), PyTorch's ATen (ATEN_CPU_CAPABILITY) and oneDNN
# (ONEDNN_MAX_CPU_ISA). Unset: each side uses the best the CPU has.
# SEGKIT_ARGS adds flags to segkit's side only, e.g. SEGKIT_ARGS=--no-winograd.
set -euo pipefail
case "${ISA:-}" in
  "") ;;
  avx2) export SEGKIT_GEMM_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  *) echo "ISA=$ISA: expected avx2 (or unset)" >&2; exit 2 ;;
esac
model=$1 size=$2 batch=$3 dev=$4 rounds=${5:-3}
shift $(( $# < 5 ? $# : 5 ))
sk_dev=${dev%%:*} pt_dev=${dev##*:}
[ "$pt_dev" = "$sk_dev" ] && [ "$sk_dev" != cpu ] && pt_dev=cuda
SEGKIT=${SEGKIT:-target/release/segkit}
threads=${THREADS:-$(nproc)}
steps=${STEPS:-10} warmup=${WARMUP:-3} mode=${MODE:-train}
gflop=$($SEGKIT summary --model "$model" --size "$size" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["forward_gflop"])')
for r in $(seq "$rounds"); do
  RAYON_NUM_THREADS=$threads $SEGKIT bench --model "$model" --size "$size" --batch "$batch" --device "$sk_dev" --steps "$steps" --warmup "$warmup" --mode "$mode" ${SEGKIT_ARGS:-} --json | tail -1 > /tmp/sk.$r.json
  python3 "$(dirname "$0")/torch_bench.py" --model "$model" --size "$size" --batch "$batch" --device "$pt_dev" \
    --threads "$threads" --steps "$steps" --warmup "$warmup" --mode "$mode" --gflop "$gflop" --json "$@" | tail -1 > /tmp/pt.$r.json
done
python3 - "$rounds" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
sk = [json.load(open(f"/tmp/sk.{r}.json")) for r in range(1, n + 1)]
pt = [json.load(open(f"/tmp/pt.{r}.json")) for r in range(1, n + 1)]
s = statistics.median(x["ms_per_step"] for x in sk)
p = statistics.median(x["ms_per_step"] for x in pt)
print(f"segkit  {s:9.1f} ms/step  {sk[0]['batch'] / s * 1e3:7.2f} img/s  {statistics.median(x['tflops'] for x in sk):.3f} TFLOP/s  peak {max(x['peak_memory_mb'] for x in sk):.0f} MiB  ({sk[0]['device']})")
print(f"pytorch {p:9.1f} ms/step  {pt[0]['batch'] / p * 1e3:7.2f} img/s  {statistics.median(x['tflops'] for x in pt):.3f} TFLOP/s  peak {max(x['peak_memory_mb'] for x in pt):.0f} MiB  ({pt[0]['impl']}, {pt[0]['threads']} threads, ATen {pt[0].get('cpu_capability', '?')})")
print(f"ratio (segkit time / pytorch time): {s / p:.2f}")
PY
