#!/usr/bin/env bash
# TensorBoard's own reader on segkit's event files: trains a tiny run on the CPU that is killed
# after step 13 (its last checkpoint at step 10) and resumed to step 20, then loads the run
# directory with the `tensorboard` package's EventAccumulator (scripts/check_tensorboard.py) in a
# throw-away virtual environment: scalar tags, steps and values against metrics.csv, each training
# step once despite the kill, the sample grid a PNG of the size it claims. As scripts/onnx_check.sh:
# where the environment cannot be made (no python3 -m venv, no network), CI (CI=true) fails
# loudly and anywhere else the check is skipped with a message.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
segkit="${SEGKIT:-${CARGO_TARGET_DIR:-$here/../target}/release/segkit}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
venv="$scratch/venv"
if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check tensorboard; }; then
    if [ "${CI:-}" = "true" ]; then
        echo "tensorboard check: FAILED to make a Python environment with tensorboard (CI=true)" >&2
        exit 1
    fi
    echo "tensorboard check: SKIPPED, no Python environment with tensorboard could be made" >&2
    exit 0
fi
args=(--device cpu --name tb --set "train.out_dir=\"$scratch/runs\"" --set data.synth_size=32 --set data.synth_train=12
    --set data.synth_val=4 --set augment.crop=32 --set model.depth=2 --set model.base_width=4 --set train.batch_size=2
    --set train.epochs=0 --set train.max_steps=20 --set train.val_every=0 --set train.val_every_steps=5
    --set train.checkpoint_every=5 --set train.grid_images=2 --set train.workers=1)
# The kill: abort right after step 13, as abrupt as SIGKILL (lib.rs `fault`).
if SEGKIT_FAULT=abort-after-step=13 "$segkit" train "${args[@]}" > "$scratch/first.log" 2>&1; then
    echo "tensorboard check: the run meant to be killed after step 13 finished" >&2
    exit 1
fi
run="$scratch/runs/tb"
"$segkit" train --resume "$run" --device cpu > "$scratch/resume.log" 2>&1 || {
    cat "$scratch/resume.log" >&2
    exit 1
}
"$venv/bin/python" "$here/check_tensorboard.py" "$run" --steps 20
