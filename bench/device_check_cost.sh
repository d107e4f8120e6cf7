#!/usr/bin/env bash
# What the device check (docs/GPU.md, "The adapter is checked before it is used") adds to
# `segkit train`: the quick start for one step on each software driver, three times: cold
# (segkit's verdicts, cubecl's autotune cache and Mesa's shader cache all emptied: this REMOVES
# ~/.cache/cubecl and ~/.cache/mesa_shader_cache*), warm (the verdict kept) and --trust-device.
#
# Usage: bench/device_check_cost.sh         (lavapipe and llvmpipe as installed)
#        MESA22_ROOT=DIR bench/device_check_cost.sh   (also Mesa 22.3's OpenGL, extracted into DIR
#        with dpkg-deb -x from Debian 12's libgl1-mesa-dri libegl-mesa0 libgbm1 libglapi-mesa)
# Environment: SEGKIT (default $CARGO_TARGET_DIR/release/segkit, else target/release/segkit).
set -uo pipefail
T=${SEGKIT:-${CARGO_TARGET_DIR:-target}/release/segkit}
[ -x "$T" ] || { echo "no segkit binary at $T (set SEGKIT)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run() { # label device [VAR=value ...]
    local label=$1 dev=$2; shift 2
    local args=(train --device "$dev" --set train.max_steps=1 --set train.val_every=0 --set train.grid_images=0
        --set "train.out_dir=\"$scratch/runs\"")
    rm -rf "$scratch/runs" "$scratch/cache" ~/.cache/cubecl ~/.cache/mesa_shader_cache ~/.cache/mesa_shader_cache_db
    for pass in cold warm trust; do
        local extra=()
        [ $pass = trust ] && extra=(--trust-device)
        local s e out rc
        s=$(date +%s.%N)
        out=$(env "$@" SEGKIT_CACHE_DIR="$scratch/cache" "$T" "${args[@]}" "${extra[@]}" 2>&1)
        rc=$?
        e=$(date +%s.%N)
        printf '%s %s: %.1f s (exit %d) | %s\n' "$label" "$pass" "$(echo "$e - $s" | bc)" "$rc" \
            "$(grep -E 'device check|refusing' <<<"$out" | cut -c1-160 | tr '\n' ' ')"
        rm -rf "$scratch/runs"
    done
}
run "lavapipe (vulkan)" vulkan
run "llvmpipe (opengl)" opengl VK_ICD_FILENAMES=/nonexistent VK_DRIVER_FILES=/nonexistent
if [ -n "${MESA22_ROOT:-}" ]; then
    L=$MESA22_ROOT/usr/lib/x86_64-linux-gnu
    run "llvmpipe Mesa 22 (opengl)" opengl VK_ICD_FILENAMES=/nonexistent VK_DRIVER_FILES=/nonexistent \
        LD_LIBRARY_PATH="$L" LIBGL_DRIVERS_PATH="$L/dri" \
        __EGL_VENDOR_LIBRARY_FILENAMES="$MESA22_ROOT/usr/share/glvnd/egl_vendor.d/50_mesa.json"
fi
