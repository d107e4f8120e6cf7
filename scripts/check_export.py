#!/usr/bin/env python3
"""Checks a file written by `segkit export`: it opens with the `safetensors` package (numpy
backend, no torch), holds the reference state-dict names with the expected shapes, and carries
segkit's metadata. Exit status 0 when all is well.

  python3 scripts/check_export.py model.safetensors [--torch [--io io.json]]

With --torch (and PyTorch installed), the weights are also loaded into the reference PyTorch
model of bench/torch_bench.py.
"""
import json
import sys

from safetensors import safe_open


def expected(arch):
    """State-dict names and shapes of the reference model for a segkit architecture config."""
    n, cin, b = arch["classes"], arch["in_channels"], arch["base_width"]
    out = {}
    if arch["model"] == "unet":
        ch = [b << i for i in range(arch["depth"] + 1)]
        k = 1 if arch["padded"] else 1  # kernel sizes do not depend on padding

        def dc(prefix, i, o):
            out[f"{prefix}.conv1.weight"] = (o, i, 3, 3)
            out[f"{prefix}.conv1.bias"] = (o,)
            out[f"{prefix}.conv2.weight"] = (o, o, 3, 3)
            out[f"{prefix}.conv2.bias"] = (o,)
            if arch["batch_norm"]:
                for j in (1, 2):
                    for t in ("weight", "bias", "running_mean", "running_var"):
                        out[f"{prefix}.bn{j}.{t}"] = (o,)

        for i in range(arch["depth"]):
            dc(f"down.{i}", cin if i == 0 else ch[i - 1], ch[i])
        dc("bottom", ch[-2], ch[-1])
        for j, i in enumerate(reversed(range(arch["depth"]))):
            out[f"upconv.{j}.weight"] = (ch[i + 1], ch[i], 2, 2)
            out[f"upconv.{j}.bias"] = (ch[i],)
            dc(f"up.{j}", 2 * ch[i], ch[i])
        out["final.weight"] = (n, ch[0], k, k)
        out["final.bias"] = (n,)
        return out
    c = [b, 2 * b, 4 * b, 8 * b, 8 * b]
    prev = cin
    for s, reps in enumerate([2, 2, 3, 3, 3]):
        for r in range(reps):
            out[f"conv{s + 1}_{r + 1}.weight"] = (c[s], prev, 3, 3)
            out[f"conv{s + 1}_{r + 1}.bias"] = (c[s],)
            prev = c[s]
    fc = arch["fc_width"]
    out["fc6.weight"], out["fc6.bias"] = (fc, c[4], 7, 7), (fc,)
    out["fc7.weight"], out["fc7.bias"] = (fc, fc, 1, 1), (fc,)
    out["score_fr.weight"], out["score_fr.bias"] = (n, fc, 1, 1), (n,)
    m = arch["model"]
    if m == "fcn32s":
        out["upscore.weight"] = (n, n, 64, 64)
    else:
        out["score_pool4.weight"], out["score_pool4.bias"] = (n, c[3], 1, 1), (n,)
        out["upscore2.weight"] = (n, n, 4, 4)
        if m == "fcn16s":
            out["upscore16.weight"] = (n, n, 32, 32)
        else:
            out["score_pool3.weight"], out["score_pool3.bias"] = (n, c[2], 1, 1), (n,)
            out["upscore_pool4.weight"] = (n, n, 4, 4)
            out["upscore8.weight"] = (n, n, 16, 16)
    return out


def torch_check(path, arch):
    """Loads the file into the PyTorch reference model of bench/torch_bench.py, strictly; with
    `--io FILE` (JSON with `input` and segkit's `output`), also compares the outputs."""
    import importlib.util
    import os

    from safetensors.torch import load_file

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("tb", os.path.join(here, "..", "bench", "torch_bench.py"))
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    if arch["model"] == "unet":
        if arch["padded"] or arch["batch_norm"]:
            return []  # the reference U-Net is the paper's; nothing to load it into
        model = tb.UNet(arch["in_channels"], arch["classes"], arch["base_width"], arch["depth"])
        state = load_file(path)
    else:
        model = tb.FCN(arch["model"].replace("-atonce", ""), arch["classes"], arch["base_width"], arch["fc_width"])
        # pytorch-fcn's conv names: rename the torchvision-style `features.N` modules.
        idx = [i for i, m in enumerate(model.features) if hasattr(m, "weight")]
        names = [f"conv{s}_{r}" for s, n in enumerate([2, 2, 3, 3, 3], 1) for r in range(1, n + 1)]
        sd = load_file(path)
        renamed = {}
        for k, v in sd.items():
            head = k.split(".")[0]
            renamed[f"features.{idx[names.index(head)]}.{k.split('.')[1]}" if head in names else k] = v
        state = renamed
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        return [f"torch: missing {missing}, unexpected {unexpected}"]
    if "--io" in sys.argv:
        import torch

        io = json.load(open(sys.argv[sys.argv.index("--io") + 1]))
        model.eval()
        with torch.no_grad():
            out = model(torch.tensor(io["input"]).reshape(io["shape"])).flatten()
        want = torch.tensor(io["output"])
        if out.shape != want.shape:
            return [f"torch output has {out.numel()} values, segkit's {want.numel()}"]
        diff = (out - want).abs().max().item()
        if diff > 1e-4 * max(1.0, want.abs().max().item()):
            return [f"torch and segkit outputs differ by {diff}"]
        print(f"{path}: PyTorch output equals segkit's (max difference {diff:.2e})")
    return []


def main(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") not in ("segkit-export-1", "segkit-export-2"):
            print(f"{path}: no segkit metadata")
            return 1
        arch = json.loads(meta["architecture"])
        want = expected(arch)
        have = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    problems = [f"missing {k} {s}" for k, s in want.items() if k not in have]
    problems += [f"unexpected {k} {s}" for k, s in have.items() if k not in want]
    problems += [f"{k}: shape {have[k]}, expected {s}" for k, s in want.items() if k in have and have[k] != s]
    if not problems and "--torch" in sys.argv:
        problems += torch_check(path, arch)
    for p in problems:
        print(f"{path}: {p}")
    if not problems:
        print(f"{path}: {len(have)} tensors, names and shapes of the reference {arch['model']}; classes {json.loads(meta['class_names'])}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
