#!/usr/bin/env python3
"""Summarise cubecl's logs of one `segkit bench` case as Markdown (bench/gpu.sh, step 4).

    bench/kernel_profile.py DIR --steps N

DIR holds what the `cubecl.toml` bench/gpu.sh writes asks cubecl for:
- `profile/profile.log`: one line per kernel launch, `| <duration> | <kernel>` (cubecl's
  profiling logger at level `basic`; it times each kernel on its own, so that pass is not the
  timed one), and a summary table at every sync;
- `tune/autotune-decisions.jsonl`: one JSON object per autotune decision (cubecl's
  `autotune.decisions` sink): the key, every candidate's median time or error, the winner.

Prints each kernel's time per training step (the launches' total over the N steps the profiled
pass ran, warm-up included: its autotune cache is warm from the timed pass), its launch count
per step and share, then the autotune choices. Only the standard library: the GPU machine has
Python but nothing installed for segkit.
"""

import argparse
import collections
import json
import os
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s)$")


def millis(text):
    """Rust's `Debug` of a `Duration` (`1.234ms`, `56.7µs`, `2.1s`) in milliseconds."""
    m = DURATION.match(text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def launches(path):
    """(kernel, ms) for every profiled launch in `path`."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            # `| 1.2ms | name`, where the name may itself hold ` | ` (`ReduceKernel | TensorArgs_..`,
            # `MatmulEntry | FusedMatmulArgs | ...`); the summary tables' rows start with a name,
            # not a duration, and are skipped.
            parts = [p.strip() for p in line.rstrip("\n").split("|")]
            if len(parts) >= 3 and parts[0] == "":
                ms = millis(parts[1])
                if ms is not None:
                    out.append((" | ".join(p for p in parts[2:] if p), ms))
    return out


def short(name, width=110):
    """A kernel's name without its long generic paths, cut to `width`."""
    name = re.sub(r"[a-z_0-9]+::", "", name)
    parts = name.split(" | ")
    if len(parts) > 3:
        # A matmul's name lists its whole configuration: the entry point, the argument kind and
        # the final partitioner tell the kernels apart.
        parts = parts[:2] + ["…", parts[-1]]
    # `/`, not `|`, between the parts: the name goes into a Markdown table cell.
    name = " / ".join(parts)
    return name if len(name) <= width else name[: width - 1] + "…"


def profile_table(path, steps):
    rows = launches(path)
    if not rows:
        print(f"(no profiled launches in {path})")
        return
    total = collections.defaultdict(float)
    count = collections.Counter()
    for name, ms in rows:
        total[name] += ms
        count[name] += 1
    all_ms = sum(total.values())
    print(f"{len(rows)} launches of {len(total)} kernels over {steps} steps: "
          f"{all_ms / steps:.1f} ms of kernel time per step")
    print()
    print("| kernel | ms/step | launches/step | share |")
    print("| --- | --- | --- | --- |")
    ranked = sorted(total, key=total.get, reverse=True)
    for name in ranked[:25]:
        print(f"| `{short(name)}` | {total[name] / steps:.2f} | {count[name] / steps:.1f} | "
              f"{100 * total[name] / all_ms:.1f}% |")
    if len(ranked) > 25:
        rest = sum(total[n] for n in ranked[25:])
        print(f"| {len(ranked) - 25} other kernels | {rest / steps:.2f} | | {100 * rest / all_ms:.1f}% |")
    print()


def decisions_table(path):
    decisions = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    decisions.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    if not decisions:
        print(f"(no autotune decisions in {path}: the on-disk autotune cache answered every key)")
        return
    print(f"{len(decisions)} autotune decisions")
    print()
    print("| key | chosen | its median | candidates (median or error) |")
    print("| --- | --- | --- | --- |")
    for d in decisions:
        cands, skipped = [], []
        chosen = "?"
        for r in d.get("results", []):
            o = r.get("outcome", {})
            ok = o.get("Ok") if isinstance(o, dict) else None
            err = o.get("Err") if isinstance(o, dict) else None
            if ok:
                med = ok.get("computation", {}).get("median")
                med_ms = med.get("secs", 0) * 1e3 + med.get("nanos", 0) / 1e6 if isinstance(med, dict) else None
                cands.append(f"{ok.get('name', '?')} {med_ms:.3f} ms" if med_ms is not None else ok.get("name", "?"))
                if ok.get("index") == d.get("fastest_index"):
                    chosen = ok.get("name", "?")
            elif isinstance(err, dict) and isinstance(err.get("Skip"), dict):
                # Not timed: declined the shape, or (first-candidate mode on software adapters)
                # never tried once an earlier candidate ran.
                skipped.append(err["Skip"].get("name", "?"))
            else:
                cands.append(f"error: {short(json.dumps(err if err is not None else o), 80)}")
        if skipped:
            cands.append("not timed: " + ", ".join(skipped))
        ft = d.get("fastest_time", {})
        ft_ms = ft.get("secs", 0) * 1e3 + ft.get("nanos", 0) / 1e6 if isinstance(ft, dict) else float("nan")
        key = short(json.dumps(d.get("key"), separators=(",", ":")), 240)
        print(f"| `{key}` | {chosen} | {ft_ms:.3f} ms | {'; '.join(cands)[:400]} |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, required=True, help="steps the profiled pass ran, warm-up included")
    a = ap.parse_args()
    prof = os.path.join(a.dir, "profile", "profile.log")
    tune = os.path.join(a.dir, "tune", "autotune-decisions.jsonl")
    if os.path.exists(prof):
        profile_table(prof, max(a.steps, 1))
    else:
        print(f"(no {prof}: the profiled pass did not run or crashed)")
        print()
    if os.path.exists(tune):
        decisions_table(tune)
    else:
        print(f"(no {tune})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
