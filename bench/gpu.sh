#!/usr/bin/env bash
# The GPU measurements, in one command, for a GPU machine with PyTorch and no Rust toolchain.
#
# Here:    ../shared/tools/device-pack.sh ../shared/datasets/camvid   (binary + Vulkan loader + data)
# There:   <the prefix device-pack.sh prints> bench/gpu.sh > $OUT/gpu.md
# Smoke:   bench/gpu.sh --smoke     (same steps at tiny sizes; for a CPU machine with lavapipe)
#
# Steps, all under one time budget (BUDGET seconds, default 480: 8 minutes; a step or case that
# would not fit is dropped, and says so, rather than run over):
#   0. what the GPU offers cubecl: Vulkan extensions (cooperative matrix = tensor cores, explicit
#      shared-memory layout; bench/vk_features.py) and cubecl's "Supported CMMA sizes" log line;
#   1. segkit selftest on vulkan (SPIR-V compiler) with --gpu-conv gemm: the GPU against the CPU
#      (GEMM convolutions, forward, gradients, training incl. f16-mixed, resume, predict);
#   2. the matrix for FCN-8s 512x512 batch 8 and U-Net 572x572 batch 4, train and infer, on
#      vulkan: segkit {--gpu-conv gemm, burn} x {f32, f16-mixed}, next to bench/torch_bench.py on
#      the same GPU: eager fp32 (TF32 off), TF32, and AMP (fp16 autocast + GradScaler). Cases in
#      order of what they decide (segkit's best guess and PyTorch AMP first);
#   3. FCN-8s on CamVid for TRAIN_S seconds of GPU training (Ctrl-C at the limit saves a
#      checkpoint): its metrics.csv (loss curve and val mean IoU);
#   4. a kernel profile of the gemm f32 training step per model on vulkan: each kernel's time
#      and launches per step (cubecl's profiling logger, in a pass of its own because it times
#      every kernel separately) and every autotune choice made in step 2 (cubecl's decision log),
#      so that one GPU run leaves what the GPU speed work needs offline (bench/kernel_profile.py);
#   5. the selftest on wgpu (WGSL compiler), if time is left.
# Output: Markdown on stdout, ready for docs/BENCHMARKS.md; cubecl's raw logs under LOGS.
# Environment: SEGKIT (the binary; default .device/bin/segkit, else target/release/segkit),
# CAMVID (default .device/data/camvid, else ../shared/datasets/camvid), RUNS (scratch run
# directory, default /tmp/segkit-gpu-runs), LOGS (cubecl's logs: $OUT/gpu-logs on the device
# machine, else $RUNS/logs).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
SEGKIT=${SEGKIT:-$( [ -x .device/bin/segkit ] && echo .device/bin/segkit || echo target/release/segkit )}
CAMVID=${CAMVID:-$( [ -d .device/data/camvid ] && echo .device/data/camvid || echo ../shared/datasets/camvid )}
RUNS=${RUNS:-/tmp/segkit-gpu-runs}
mkdir -p "$RUNS"
if ! [ -x "$SEGKIT" ]; then
    echo "bench/gpu.sh: no segkit binary at $SEGKIT (set SEGKIT=path/to/segkit)" >&2
    exit 2
fi
# The benches run inside their log folders (cubecl reads cubecl.toml from the working directory).
SEGKIT=$(realpath "$SEGKIT")
LOGS=${LOGS:-${OUT:+$OUT/gpu-logs}}
LOGS=$(realpath -m "${LOGS:-$RUNS/logs}")
mkdir -p "$LOGS"

# A folder for one case's cubecl logs with the cubecl.toml that asks for them: `tune` records
# every autotune decision (no effect on timings), `profile` times every kernel (slows the step).
log_dir() { # name tune|profile
    local dir="$LOGS/$1/$2"
    mkdir -p "$dir"
    if [ "$2" = tune ]; then
        printf '[autotune.logger]\nfile = "autotune.log"\nlevel = "full"\nappend = false\n\n[autotune.decisions]\nfile = "autotune-decisions.jsonl"\nappend = false\n' > "$dir/cubecl.toml"
    else
        printf '[profiling.logger]\nfile = "profile.log"\nlevel = "basic"\nappend = false\n' > "$dir/cubecl.toml"
    fi
    echo "$dir"
}

# Seconds for a command that wants `want` seconds, within the budget up to `until` seconds after
# the start (0: none left).
slot() { # until want
    local left=$(( $1 - SECONDS )) t=$2
    (( left < t )) && t=$left
    (( t < 15 )) && t=0
    echo "$t"
}

if [ $smoke = 1 ]; then
    torch_dev=cpu
    cases=("fcn8s 64 1 --base-width 4" "unet 188 1 --base-width 4")
    BUDGET=${BUDGET:-2400} TRAIN_S=${TRAIN_S:-60} limit=240 steps=2 warmup=1
else
    torch_dev=cuda
    cases=("fcn8s 512 8" "unet 572 4")
    BUDGET=${BUDGET:-480} TRAIN_S=${TRAIN_S:-60} limit=75 steps=10 warmup=3
fi
# Where each step must end, in seconds from the start.
end1=$(( BUDGET * 15 / 100 )) end2=$(( BUDGET * 70 / 100 )) end3=$(( BUDGET * 80 / 100 )) end4=$(( BUDGET * 95 / 100 ))

echo "# segkit on the GPU ($(date -u +%Y-%m-%d), $(uname -m))"
echo
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'
python3 -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null
echo

echo "## 0. what the GPU offers cubecl"
echo
echo '```'
python3 bench/vk_features.py 2>&1
RUST_LOG=debug timeout 60 "$SEGKIT" --gpu-conv gemm bench --model unet --size 188 --batch 1 --base-width 4 --device vulkan \
    --precision f16-mixed --steps 1 --warmup 0 --trust-device 2>&1 | grep -A 40 "Supported CMMA sizes" | head -n 40 ||
    echo "(no \"Supported CMMA sizes\" line from cubecl)"
echo '```'
echo

echo "## 1. selftest (vulkan, --gpu-conv gemm)"
echo
echo '```'
t=$(slot $end1 $(( smoke ? 600 : 90 )))
if [ "$t" -gt 0 ]; then
    timeout "$t" "$SEGKIT" --gpu-conv gemm selftest --device vulkan 2>&1 | tail -n 25
    echo "(selftest --device vulkan: exit ${PIPESTATUS[0]})"
else
    echo "(skipped: time budget)"
fi
echo '```'
echo

echo "## 2. training and inference steps (vulkan)"
echo
echo "| case | mode | implementation | ms/step | images/s | TFLOP/s | peak MiB | im2col MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
json_row() { # case mode impl json exit-status
    python3 -c '
import json, sys
case, mode, impl, line, rc = sys.argv[1:6]
try:
    r = json.loads(line)
except Exception:
    if rc == "notorch":
        print(f"| {case} | {mode} | {impl} | PyTorch not installed | | | | |"); sys.exit()
    rc = int(rc)
    why = "skipped (time budget)" if rc == 0 else "time limit" if rc == 124 else f"crashed (signal {rc - 128})" if rc > 128 else f"failed (exit {rc})"
    print(f"| {case} | {mode} | {impl} | {why} | | | | |"); sys.exit()
ms, b, tf, mem = r["ms_per_step"], r["batch"], r["tflops"], r["peak_memory_mb"]
cols = r.get("peak_im2col_mb")
cols = f"{cols:.0f}" if cols else "-"
print(f"| {case} | {mode} | {impl} | {ms:.1f} | {b * 1e3 / ms:.1f} | {tf:.2f} | {mem:.0f} | {cols} |")' "$@"
}
segkit_case() { # model size batch extra mode conv precision
    local t dir out
    t=$(slot $end2 $limit)
    [ "$t" -eq 0 ] && { echo " rc=0"; return; }
    dir=$(log_dir "$1-$2-b$3-$5-$6-$7" tune)
    (cd "$dir" && timeout "$t" "$SEGKIT" --gpu-conv "$6" bench --model "$1" --size "$2" --batch "$3" $4 \
        --device vulkan --mode "$5" --precision "$7" --steps $steps --warmup $warmup --json 2>"$dir/stderr.log"; echo " rc=$?")
}
torch_case() { # model size batch mode gflop flags...
    local t model=$1 size=$2 batch=$3 mode=$4 gflop=$5
    shift 5
    [ "$have_torch" = 1 ] || { echo " rc=notorch"; return; }
    t=$(slot $end2 $limit)
    [ "$t" -eq 0 ] && { echo " rc=0"; return; }
    timeout "$t" python3 bench/torch_bench.py --model "$model" --size "$size" --batch "$batch" --device "$torch_dev" \
        --mode "$mode" --steps $steps --warmup $warmup --gflop "$gflop" --json "$@" 2>/dev/null
    echo " rc=$?"
}
have_torch=$(python3 -c 'import torch' 2>/dev/null && echo 1 || echo 0)
for mode in train infer; do
    for c in "${cases[@]}"; do
        read -r model size batch extra <<<"$c"
        gflop=$("$SEGKIT" summary --model "$model" --size "$size" ${extra:-} --json 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["forward_gflop"])')
        # segkit's most likely fastest, then PyTorch's, then the rest.
        for impl in "gemm f16-mixed" "torch --amp" "gemm f32" "torch --tf32" "burn f32" "torch" "burn f16-mixed"; do
            read -r what flag <<<"$impl"
            if [ "$what" = torch ]; then
                label="PyTorch eager ${flag:+${flag#--} }fp32"
                [ "$flag" = --amp ] && label="PyTorch AMP (fp16 autocast)"
                [ "$flag" = --tf32 ] && label="PyTorch eager TF32"
                out=$(torch_case "$model" "$size" "$batch" "$mode" "$gflop" $flag)
            else
                label="segkit --gpu-conv $what, $flag"
                out=$(segkit_case "$model" "$size" "$batch" "${extra:-}" "$mode" "$what" "$flag")
            fi
            json_row "$model $size b$batch" "$mode" "$label" "$(grep '^{' <<<"$out" | tail -n 1)" "${out##*rc=}"
        done
    done
done
echo

echo "## 3. FCN-8s on CamVid, up to ${TRAIN_S} s of training on vulkan (segkit's defaults)"
echo
if [ $smoke = 1 ]; then
    args=(--set model.base_width=4 --set model.fc_width=16 --set augment.crop=64 --set train.batch_size=2)
else
    args=()
fi
t=$(slot $end3 "$TRAIN_S")
if [ "$t" -gt 0 ]; then
    timeout -s INT "$t" "$SEGKIT" train configs/fcn8s-camvid.toml --device vulkan \
        --set "data.root=\"$CAMVID\"" --set 'train.init_from=""' --set "train.out_dir=\"$RUNS\"" \
        --set train.val_every_steps=50 --set train.val_limit=20 --set train.epochs=1000 "${args[@]}" \
        > "$RUNS/train.log" 2>&1
    echo "exit $? (124 or 130: stopped at the time limit, as intended)"
else
    echo "(skipped: time budget)"
fi
run=$(ls -td "$RUNS"/fcn8s-camvid* 2>/dev/null | head -n 1)
echo
echo '```'
[ -n "$run" ] && cat "$run/metrics.csv" 2>/dev/null
grep -E "^(step|error)" "$RUNS/train.log" 2>/dev/null | tail -n 5
echo '```'
echo

echo "## 4. kernel profile (vulkan, --gpu-conv gemm f32, a profiled pass of 3 training steps)"
echo
profile_steps=3
for c in "${cases[@]}"; do
    read -r model size batch extra <<<"$c"
    # The folder of step 2's gemm f32 training case, whose autotune decisions it lists too.
    name="$model-$size-b$batch-train-gemm-f32"
    t=$(slot $end4 $limit)
    if [ "$t" -eq 0 ]; then
        echo "### $model $size b$batch train: skipped (time budget)"
        echo
        continue
    fi
    dir=$(log_dir "$name" profile)
    (cd "$dir" && timeout "$t" "$SEGKIT" --gpu-conv gemm bench --model "$model" --size "$size" --batch "$batch" ${extra:-} \
        --device vulkan --mode train --steps $((profile_steps - 1)) --warmup 1 --json > bench.json 2> stderr.log)
    echo "### $model $size b$batch train (exit $?; logs in $LOGS/$name)"
    echo
    python3 bench/kernel_profile.py "$LOGS/$name" --steps "$profile_steps"
done

echo "## 5. selftest (wgpu, WGSL compiler)"
echo
echo '```'
t=$(slot "$BUDGET" $(( smoke ? 600 : 90 )))
if [ "$t" -gt 0 ]; then
    timeout "$t" "$SEGKIT" selftest --device wgpu 2>&1 | tail -n 25
    echo "(selftest --device wgpu: exit ${PIPESTATUS[0]})"
else
    echo "(skipped: time budget)"
fi
echo '```'
