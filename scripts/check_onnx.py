#!/usr/bin/env python3
"""Checks an ONNX file written by `segkit export --format onnx` against segkit's own output.

  python3 scripts/check_onnx.py MODEL.onnx STEM_input.npy [...]     # segkit's input/logits pair
  python3 scripts/check_onnx.py MODEL.onnx IMAGE --segkit DIR [...]  # an image, prepared here
  python3 scripts/check_onnx.py --all DIR                            # every NAME.onnx and NAME.*_input.npy in DIR

Every model gets `onnx.checker.check_model(full_check=True)` and runs in onnxruntime (CPU).

- An `.npy` input is fed as it is; its logits are read from the file next to it
  (`STEM_logits.npy`, as `segkit predict --save-logits` and the tests write them).
- An image is prepared from the model's metadata alone (normalisation, channel order, size rule,
  mirrored context for an unpadded U-Net), as a deployer would, and compared with segkit's input
  (`DIR/STEM_input.npy`): equal up to the image decoders' rounding (JPEG decoders differ by a few
  pixel levels; more than 8 fails). The logits are then compared on segkit's input with
  `DIR/STEM_logits.npy`, and, where the decoders differ, the mask on this decoder's pixels is
  reported too.

Pass: max |logit difference| <= 1e-4 and identical arg-max masks for float32 weights; for float16
weights (`--half`) the difference within 1e-2 of the largest logit and >= 99.9% identical mask
pixels. Exit status 0 when every check passes. Needs numpy, onnx, onnxruntime (and pillow for
images).
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def prepare_image(path, meta):
    """The network input for an image, from the metadata only, and the size of one pixel level in
    input units (the smallest, over the channels)."""
    from PIL import Image

    img = Image.open(path)
    order = meta["input_channel_order"]
    arr = np.asarray(img.convert("L" if order == "grey" else "RGB"), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if order == "BGR":
        arr = arr[:, :, ::-1]
    if meta.get("normalize") == "per-image":
        # Each image's own statistics over the whole image, before padding (input_normalization).
        mean = arr.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        std = np.maximum(arr.std(axis=(0, 1), dtype=np.float64), 1.0).astype(np.float32)
        x = (arr - mean) / std
        level = float(1.0 / std.max())
    else:
        mean = np.array(json.loads(meta["input_mean"]), dtype=np.float32)
        std = np.array(json.loads(meta["input_std"]), dtype=np.float32)
        x = (arr * np.float32(meta["input_scale"]) - mean) / std
        level = float(np.float32(meta["input_scale"]) / std.max())
    h, w = x.shape[:2]
    lo, step, shrink = (int(meta[k]) for k in ("input_size_min", "input_size_step", "output_shrink"))
    # The smallest valid input whose output covers the image; the context mirrored.
    side = lambda n: lo + step * max(0, -(-(n + shrink - lo) // step))
    in_h, in_w, m = side(h), side(w), shrink // 2
    x = np.pad(x, ((m, in_h - m - h), (m, in_w - m - w), (0, 0)), mode="reflect")
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), level


def compare(name, got, want, half):
    if got.shape != want.shape:
        return False, f"{name}: shape {got.shape} from onnxruntime, {want.shape} from segkit"
    diff = float(np.abs(got - want).max())
    same = float((got.argmax(1) == want.argmax(1)).mean())
    if half:
        # float16 keeps 11 significant bits per weight (relative 4.9e-4); through a network's
        # dozens of layers that grows to about 1e-3 of the logits' scale.
        tol = 1e-2 * max(1.0, float(np.abs(want).max()))
        ok = diff <= tol and same >= 0.999
    else:
        tol = 1e-4
        # A pixel whose two best classes are within the tolerance may flip either way.
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
        ok = diff <= tol and bool((got.argmax(1) == want.argmax(1))[clear].all())
    return ok, f"{name}: max |diff| {diff:.2e} (tolerance {tol:.1e}), mask pixels identical {100 * same:.3f}%"


def check(model_path, inputs, segkit_dir=None):
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    meta = metadata(model)
    half = meta.get("weights_dtype", "").startswith("float16")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ok_all = True
    print(f"{model_path.name}: checker ok, opset {model.opset_import[0].version}, {meta.get('model')}")
    for inp in inputs:
        inp = pathlib.Path(inp)
        if inp.suffix == ".npy":
            x = np.load(inp)
            want = np.load(inp.with_name(inp.name.replace("_input.npy", "_logits.npy")))
        else:
            d = pathlib.Path(segkit_dir or inp.parent)
            own, level = prepare_image(inp, meta)
            x = np.load(d / f"{inp.stem}_input.npy")
            want = np.load(d / f"{inp.stem}_logits.npy")
            # The preparation from the metadata must match segkit's up to the image decoders'
            # rounding (JPEG decoders differ by a few levels); in pixel levels:
            levels = float(np.abs(own - x).max()) / level if own.shape == x.shape else None
            if levels is None or levels > 8:
                print(f"  FAIL {inp.name}: the input prepared from the metadata differs from segkit's "
                      f"({own.shape} vs {x.shape}, {levels} pixel levels)")
                ok_all = False
                continue
            if levels > 0.5:
                own_mask = sess.run(None, {"input": own.astype(np.float32)})[0].argmax(1)
                agree = float((own_mask == want.argmax(1)).mean())
                print(f"  note {inp.name}: this decoder and segkit's differ by up to {levels:.0f} pixel levels (JPEG "
                      f"rounding); on this decoder's pixels {100 * agree:.2f}% of the mask agrees; the check below "
                      "uses segkit's input")
        outs = sess.run(None, {"input": x.astype(np.float32)})
        ok, msg = compare(inp.name, outs[0], want, half)
        if len(outs) > 1:
            mask_ok = bool((outs[1] == outs[0].argmax(1)).all())
            ok = ok and mask_ok
            msg += f"; mask output {'matches' if mask_ok else 'DIFFERS from'} argmax(logits)"
        print(f"  {'ok  ' if ok else 'FAIL'} {msg}")
        ok_all = ok_all and ok
    return ok_all


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--segkit", help="folder with segkit's STEM_input.npy and STEM_logits.npy for image inputs")
    ap.add_argument("--all", metavar="DIR", help="check every NAME.onnx in DIR with its NAME.*_input.npy files")
    a = ap.parse_args()
    if a.all:
        d = pathlib.Path(a.all)
        models = sorted(d.glob("*.onnx"))
        if not models:
            sys.exit(f"{d}: no .onnx files")
        ok = True
        for m in models:
            ok = check(m, sorted(d.glob(f"{m.stem}.*_input.npy"))) and ok
        print(f"{len(models)} models: {'all passed' if ok else 'FAILURES'}")
        sys.exit(0 if ok else 1)
    if not a.model or not a.inputs:
        ap.error("give MODEL.onnx and at least one input, or --all DIR")
    sys.exit(0 if check(pathlib.Path(a.model), a.inputs, a.segkit) else 1)


if __name__ == "__main__":
    main()
