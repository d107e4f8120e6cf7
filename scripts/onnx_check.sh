#!/usr/bin/env bash
# Runs scripts/check_onnx.py --all DIR in a throw-away virtual environment with onnx, onnxruntime,
# numpy and pillow from PyPI. DIR holds what `SEGKIT_ONNX_OUT=DIR cargo test --release --workspace`
# wrote (crates/segkit-train/tests/onnx.rs). Where the environment cannot be made (no python3 -m
# venv, no network), CI (CI=true) fails loudly and anywhere else the check is skipped with a message.
set -euo pipefail
dir="${1:?usage: scripts/onnx_check.sh DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
        onnx onnxruntime numpy pillow; }; then
    if [ "${CI:-}" = "true" ]; then
        echo "onnx check: FAILED to make a Python environment with onnx and onnxruntime (CI=true)" >&2
        exit 1
    fi
    echo "onnx check: SKIPPED, no Python environment with onnx and onnxruntime could be made" >&2
    exit 0
fi
"$venv/bin/python" "$here/check_onnx.py" --all "$dir"
