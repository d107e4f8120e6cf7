#!/usr/bin/env bash
# The GPU measurements, in one command, for a GPU machine with PyTorch and no Rust toolchain.
#
# Here:    ../shared/tools/device-pack.sh ../shared/datasets/camvid   (binary + Vulkan loader + data)
# There:   <the prefix device-pack.sh prints> bench/gpu.sh > $OUT/gpu.md
# Smoke:   bench/gpu.sh --smoke     (same steps at tiny sizes; for a CPU machine with lavapipe)
#
# Steps, each under its own time limit so that the whole script stays within 8 minutes:
#   1. segkit selftest on wgpu (WGSL compiler) and vulkan (SPIR-V compiler): the GPU against the
#      CPU (forward, gradients, training, resume, predict);
#   2. segkit bench (train and infer) for FCN-8s 512x512 batch 8 and U-Net 572x572 batch 4 on wgpu
#      and vulkan, next to bench/torch_bench.py on the same GPU: eager fp32 and channels_last.
#      PyTorch runs with its defaults: TF32 off for matmuls, on for cuDNN convolutions;
#   3. FCN-8s on CamVid for 3 minutes of GPU training (Ctrl-C at the limit saves a checkpoint):
#      its metrics.csv (loss curve and val mean IoU);
#   4. a kernel profile of each step-2 case on vulkan: each kernel's time and launches per
#      training step (cubecl's profiling logger, in a pass of its own because it times every
#      kernel separately) and every autotune choice made in step 2 (cubecl's decision log), so
#      that one GPU run leaves what the GPU speed work needs offline (bench/kernel_profile.py).
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

# wgpu = cubecl's WGSL compiler, vulkan = its SPIR-V compiler (docs/GPU.md); on lavapipe too.
if [ $smoke = 1 ]; then
    devices=(wgpu vulkan) torch_dev=cpu
    cases=("fcn8s 64 1 --base-width 4" "unet 188 1 --base-width 4")
    train_s=60 limit=120
else
    devices=(wgpu vulkan) torch_dev=cuda
    cases=("fcn8s 512 8" "unet 572 4")
    train_s=180 limit=100
fi

echo "# segkit on the GPU ($(date -u +%Y-%m-%d), $(uname -m))"
echo
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'
python3 -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null
echo

echo "## 1. selftest"
echo
echo '```'
for d in "${devices[@]}"; do
    timeout "$(( smoke ? 300 : 90 ))" "$SEGKIT" selftest --device "$d" 2>&1 | tail -n 25
    echo "(selftest --device $d: exit ${PIPESTATUS[0]})"
done
echo '```'
echo

echo "## 2. training and inference steps"
echo
echo "| case | mode | implementation | ms/step | images/s | TFLOP/s | peak MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
json_row() { # case mode impl json exit-status
    python3 -c '
import json, sys
case, mode, impl, line, rc = sys.argv[1:6]
try:
    r = json.loads(line)
except Exception:
    rc = int(rc)
    why = "time limit" if rc == 124 else f"crashed (signal {rc - 128})" if rc > 128 else f"failed (exit {rc})"
    print(f"| {case} | {mode} | {impl} | {why} | | | |"); sys.exit()
ms, b, tf, mem = r["ms_per_step"], r["batch"], r["tflops"], r["peak_memory_mb"]
print(f"| {case} | {mode} | {impl} | {ms:.1f} | {b * 1e3 / ms:.1f} | {tf:.2f} | {mem:.0f} |")' "$@"
}
for c in "${cases[@]}"; do
    read -r model size batch extra <<<"$c"
    gflop=$("$SEGKIT" summary --model "$model" --size "$size" ${extra:-} --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["forward_gflop"])')
    for mode in train infer; do
        for d in "${devices[@]}"; do
            dir=$(log_dir "$model-$size-b$batch-$mode-$d" tune)
            out=$(cd "$dir" && timeout "$limit" "$SEGKIT" bench --model "$model" --size "$size" --batch "$batch" ${extra:-} \
                --device "$d" --mode "$mode" --steps 10 --warmup 3 --json 2>"$dir/stderr.log"; echo " rc=$?")
            json_row "$model $size b$batch" "$mode" "segkit $d" "$(grep '^{' <<<"$out" | tail -n 1)" "${out##*rc=}"
        done
        if [ $smoke = 0 ]; then
            for cl in "" --channels-last; do
                out=$(timeout "$limit" python3 bench/torch_bench.py --model "$model" --size "$size" --batch "$batch" \
                    --device "$torch_dev" --mode "$mode" --steps 10 --warmup 3 --gflop "$gflop" --json $cl 2>/dev/null; echo " rc=$?")
                json_row "$model $size b$batch" "$mode" "PyTorch eager fp32 ${cl:+channels_last}" "$(grep '^{' <<<"$out" | tail -n 1)" "${out##*rc=}"
            done
        fi
    done
done
echo

echo "## 3. FCN-8s on CamVid, ${train_s} s of training on ${devices[1]}"
echo
if [ $smoke = 1 ]; then
    args=(--set model.base_width=4 --set model.fc_width=16 --set augment.crop=64 --set train.batch_size=2)
else
    args=()
fi
timeout -s INT "$train_s" "$SEGKIT" train configs/fcn8s-camvid.toml --device "${devices[1]}" \
    --set "data.root="$CAMVID"" --set 'train.init_from=""' --set "train.out_dir="$RUNS"" \
    --set train.val_every_steps=50 --set train.val_limit=20 --set train.epochs=1000 "${args[@]}" \
    > "$RUNS/train.log" 2>&1
echo "exit $? (124 or 130: stopped at the time limit, as intended)"
run=$(ls -td "$RUNS"/fcn8s-camvid* 2>/dev/null | head -n 1)
echo
echo '```'
[ -n "$run" ] && cat "$run/metrics.csv" 2>/dev/null
grep -E "^(step|error)" "$RUNS/train.log" | tail -n 5
echo '```'
echo

echo "## 4. kernel profile (vulkan, a profiled pass of 3 steps after step 2's timed one)"
echo
profile_steps=3
for c in "${cases[@]}"; do
    read -r model size batch extra <<<"$c"
    for mode in train infer; do
        name="$model-$size-b$batch-$mode-vulkan"
        dir=$(log_dir "$name" profile)
        (cd "$dir" && timeout "$limit" "$SEGKIT" bench --model "$model" --size "$size" --batch "$batch" ${extra:-} \
            --device vulkan --mode "$mode" --steps $((profile_steps - 1)) --warmup 1 --json > bench.json 2> stderr.log)
        echo "### $model $size b$batch $mode (exit $?; logs in $LOGS/$name)"
        echo
        python3 bench/kernel_profile.py "$LOGS/$name" --steps "$profile_steps"
    done
done
