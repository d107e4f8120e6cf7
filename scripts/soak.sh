#!/usr/bin/env bash
# The crash soak, for humans (the test suite has a deterministic one: crates/segkit/tests/crash.rs).
#
# Trains a run once without interruption, then the same run again, killed with SIGKILL at random
# moments ROUNDS times and resumed with `segkit train --resume` after every kill, and compares the
# two: metrics.csv (every column but elapsed seconds) and the final checkpoint's tensors.
#
# Usage: scripts/soak.sh [--rounds N] [--max-delay SECONDS] [--seed S] [--bin PATH] [-- TRAIN_ARGS...]
#   TRAIN_ARGS go to `segkit train` (default: the quick start on the CPU, a checkpoint every 10
#   steps, as in issue 14's report). Exit status 0 when the runs are identical, 1 when not.
set -euo pipefail

rounds=8
max_delay=20
seed=$$
bin=${SEGKIT_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/segkit-target}/release/segkit}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --max-delay) max_delay=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "soak.sh: no segkit binary at $bin: build with 'cargo build --release --workspace --all-targets' or pass --bin" >&2; exit 2; }
train_args=("$@")
[ ${#train_args[@]} -gt 0 ] || train_args=(--device cpu --set train.checkpoint_every=10)

out=$(mktemp -d "${TMPDIR:-/tmp}/segkit-soak.XXXXXX")
RANDOM=$seed
common=("${train_args[@]}" --set "train.out_dir=\"$out\"")
echo "soak: $rounds rounds, kills up to ${max_delay} s apart, seed $seed, in $out"

t0=$(date +%s)
"$bin" train "${common[@]}" --set name=reference > "$out/reference.log" 2>&1
echo "soak: uninterrupted run done in $(( $(date +%s) - t0 )) s"

kills=0; in_writes=0; finished=0; starts=0
start() {
    starts=$((starts + 1))
    touch "$out/.round"
    if [ "$1" = first ]; then
        "$bin" train "${common[@]}" --set name=soak >> "$out/soak.log" 2>&1 &
    else
        "$bin" train --resume "$out/soak" >> "$out/soak.log" 2>&1 &
    fi
    pid=$!
}
start first
for ((r = 1; r <= rounds; r++)); do
    # A random delay in tenths of a second.
    delay=$(( RANDOM % (max_delay * 10 + 1) ))
    sleep "$(printf '%d.%d' $((delay / 10)) $((delay % 10)))"
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"
        wait "$pid" 2>/dev/null || true
        kills=$((kills + 1))
        # A temporary file left behind: the kill landed inside a write.
        if [ -n "$(find "$out/soak" -name '*.tmp' -newer "$out/.round" 2>/dev/null)" ]; then in_writes=$((in_writes + 1)); fi
        echo "soak: round $r: killed after ${delay}00 ms (step $(grep -o 'step [0-9]*' "$out/soak.log" | tail -1 | cut -d' ' -f2))"
    else
        wait "$pid" && finished=$((finished + 1))
        echo "soak: round $r: the run had finished"
        break
    fi
    start resume
done
if kill -0 "$pid" 2>/dev/null || [ "$finished" = 0 ]; then
    wait "$pid" 2>/dev/null || true
    "$bin" train --resume "$out/soak" >> "$out/soak.log" 2>&1 && finished=$((finished + 1))
fi

strip() { cut -d, -f1-10 "$1"; }
ref_rows=$(( $(wc -l < "$out/reference/metrics.csv") - 1 ))
soak_rows=$(( $(wc -l < "$out/soak/metrics.csv") - 1 ))
same_csv=no
if diff <(strip "$out/reference/metrics.csv") <(strip "$out/soak/metrics.csv") > "$out/metrics.diff"; then same_csv=yes; fi
same_ck=no
if python3 - "$out/reference/last.safetensors" "$out/soak/last.safetensors" <<'EOF'
import json, struct, sys
def tensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()}
sys.exit(0 if tensors(sys.argv[1]) == tensors(sys.argv[2]) else 1)
EOF
then same_ck=yes; fi
last_col() { tail -1 "$1" | cut -d, -f"$2"; }
echo
echo "| rounds | kills | kills inside a write | processes started | run finished | rows (reference / soak) | final mean IoU (reference / soak) | metrics.csv identical | final tensors identical |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
echo "| $rounds | $kills | $in_writes | $starts | $finished | $ref_rows / $soak_rows | $(last_col "$out/reference/metrics.csv" 7) / $(last_col "$out/soak/metrics.csv" 7) | $same_csv | $same_ck |"
echo
echo "logs and runs: $out"
[ "$same_csv" = yes ] && [ "$same_ck" = yes ]
