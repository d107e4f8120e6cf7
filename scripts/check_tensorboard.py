#!/usr/bin/env python3
"""Checks a segkit run directory's TensorBoard event files with TensorBoard's own reader.

Usage: check_tensorboard.py RUN_DIR --steps N
- every training step 1..N has exactly one `train/loss` (a resumed run's SessionLog START drops
  what the killed process logged after its last checkpoint);
- the validation scalars (`val/loss`, `val/pixel_acc`, `val/mean_acc`, `val/mean_iou`,
  `val/fw_iou`, `val/mean_dice`) have the steps and values of metrics.csv (float32 rounding);
- `val/samples` holds PNG images whose IHDR size is the size the event claims.
"""
import argparse
import csv
import math
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, required=True)
    a = ap.parse_args()
    files = sorted(f for f in os.listdir(a.run) if f.startswith("events.out.tfevents."))
    acc = EventAccumulator(a.run, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    failures = []
    steps = [e.step for e in acc.Scalars("train/loss")]
    if steps != list(range(1, a.steps + 1)):
        failures.append(f"train/loss steps {steps}, expected 1..{a.steps} once each")
    with open(os.path.join(a.run, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    for key in ["val_loss", "pixel_acc", "mean_acc", "mean_iou", "fw_iou", "mean_dice"]:
        tag = "val/" + key.removeprefix("val_")
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(int(r["step"]), float(r[key])) for r in rows if math.isfinite(float(r[key]))]
        if [s for s, _ in got] != [s for s, _ in want]:
            failures.append(f"{tag}: steps {[s for s, _ in got]}, metrics.csv {[s for s, _ in want]}")
            continue
        for (s, g), (_, w) in zip(got, want):
            if abs(g - w) > 1e-5 * max(1.0, abs(w)):
                failures.append(f"{tag} at step {s}: {g} in the events, {w} in metrics.csv")
    images = acc.Images("val/samples")
    if not images:
        failures.append("no val/samples image")
    for im in images:
        png = im.encoded_image_string
        if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
            failures.append(f"val/samples at step {im.step} is not a PNG")
            continue
        w, h = struct.unpack(">II", png[16:24])
        if (w, h) != (im.width, im.height):
            failures.append(f"val/samples at step {im.step}: PNG {w}x{h}, event says {im.width}x{im.height}")
    print(f"tensorboard check: {len(files)} event files, {len(tags['scalars'])} scalar tags, "
          f"{len(steps)} training steps, {len(rows)} validations, {len(images)} images")
    for f in failures:
        print("  FAIL", f)
    if failures:
        sys.exit(1)
    print("tensorboard check: passed")


if __name__ == "__main__":
    main()
