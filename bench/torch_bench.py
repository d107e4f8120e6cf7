#!/usr/bin/env python3
"""The PyTorch side of `segkit bench`: the same reference models (same layers, crops, parameter
counts), the same loss (pixel-wise cross-entropy, ignore 255, mean), the same optimiser (SGD,
momentum 0.9, weight decay 5e-4) and the same protocol (warm-up steps, then timed steps with the
device synchronised before each clock reading; median reported).

Plain torch only. Usage:
  python3 bench/torch_bench.py --model fcn8s --size 224 --batch 1 --threads 2 --json
  python3 bench/torch_bench.py --model unet --size 572 --batch 4 --device cuda --channels-last --bf16
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def bilinear_weight(c, k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    f = 1 - (og - center).abs() / factor
    w = torch.zeros(c, c, k, k)
    for i in range(c):
        w[i, i] = f[:, None] * f[None, :]
    return w


class FCN(nn.Module):
    """pytorch-fcn's FCN-32s/16s/8s: conv1_1 pad 100, ceil-mode pooling, crops 19; 5, 27; 5, 9, 31."""

    def __init__(self, variant, n_class=21, base=64, fc=4096):
        super().__init__()
        self.variant = variant
        c = [base, 2 * base, 4 * base, 8 * base, 8 * base]
        layers, cin = [], 3
        for i, n in enumerate([2, 2, 3, 3, 3]):
            for j in range(n):
                pad = 100 if (i, j) == (0, 0) else 1
                layers += [nn.Conv2d(cin, c[i], 3, padding=pad), nn.ReLU(inplace=True)]
                cin = c[i]
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.features = nn.ModuleList(layers)
        self.fc6 = nn.Conv2d(c[4], fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d(0.5)
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        up = lambda k, s: nn.ConvTranspose2d(n_class, n_class, k, s, bias=False)
        if variant == "fcn32s":
            self.upscore = up(64, 32)
        else:
            self.score_pool4 = nn.Conv2d(c[3], n_class, 1)
            self.upscore2 = up(4, 2)
            if variant == "fcn16s":
                self.upscore16 = up(32, 16)
            else:
                self.score_pool3 = nn.Conv2d(c[2], n_class, 1)
                self.upscore_pool4 = up(4, 2)
                self.upscore8 = up(16, 8)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(bilinear_weight(n_class, m.kernel_size[0]))
                m.weight.requires_grad_(False)

    def forward(self, x):
        h, w = x.shape[2:]
        pools, pool_i = {}, 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pool_i += 1
                pools[pool_i] = x
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        x = self.score_fr(x)
        if self.variant == "fcn32s":
            return self.upscore(x)[:, :, 19:19 + h, 19:19 + w].contiguous()
        up2 = self.upscore2(x)
        p4 = self.score_pool4(pools[4])[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
        x = up2 + p4
        if self.variant == "fcn16s":
            return self.upscore16(x)[:, :, 27:27 + h, 27:27 + w].contiguous()
        up4 = self.upscore_pool4(x)
        p3 = self.score_pool3(pools[3])[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
        return self.upscore8(up4 + p3)[:, :, 31:31 + h, 31:31 + w].contiguous()


class DoubleConv(nn.Module):
    """Names as the reference state dict (`down.0.conv1.weight`), so segkit exports load."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3)
        self.conv2 = nn.Conv2d(cout, cout, 3)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UNet(nn.Module):
    """The original U-Net: unpadded convs, 64-1024, up-conv 2x2, crop-and-concat [skip, up]."""

    def __init__(self, in_ch=1, n_class=2, base=64, depth=4):
        # Unpadded only: this is the paper's model (segkit's padded/batch-norm options are not here).
        super().__init__()
        ch = [base << i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_ch if i == 0 else ch[i - 1], ch[i]) for i in range(depth)])
        self.bottom = DoubleConv(ch[depth - 1], ch[depth])
        self.upconv = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, 2) for i in reversed(range(depth))])
        self.up = nn.ModuleList([DoubleConv(2 * ch[i], ch[i]) for i in reversed(range(depth))])
        self.final = nn.Conv2d(ch[0], n_class, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for upc, block, skip in zip(self.upconv, self.up, reversed(skips)):
            u = upc(x)
            dy, dx = (skip.shape[2] - u.shape[2]) // 2, (skip.shape[3] - u.shape[3]) // 2
            x = block(torch.cat([skip[:, :, dy:dy + u.shape[2], dx:dx + u.shape[3]], u], 1))
        return self.final(x)


def conv_probe(a, size):
    c, b = a.conv, a.batch
    conv = nn.Conv2d(c, c, 3, padding=1)
    x = torch.randn(b, c, size, size)
    xr = x.clone().requires_grad_(True)
    A, B = torch.randn(c, c * 9), torch.randn(c * 9, b * size * size)

    def timed(f):
        t = []
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            f()
            if i >= a.warmup:
                t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)

    with torch.no_grad():
        fwd = timed(lambda: conv(x).sum().item())
    train = timed(lambda: conv(xr).sum().backward())
    with torch.no_grad():
        mm = timed(lambda: (A @ B).sum().item())
    gflop = 2 * c * c * 9 * b * size * size / 1e9
    print(f"pytorch conv 3x3 {c}->{c} at {size}x{size}, batch {b}, {torch.get_num_threads()} threads: {gflop:.2f} GFLOP per forward")
    print(f"conv forward            {fwd:8.1f} ms  {gflop / fwd * 1e3:6.1f} GFLOP/s")
    print(f"conv forward+backward   {train:8.1f} ms  {3 * gflop / train * 1e3:6.1f} GFLOP/s (3x forward FLOPs)")
    print(f"matmul, same FLOPs      {mm:8.1f} ms  {gflop / mm * 1e3:6.1f} GFLOP/s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["fcn32s", "fcn16s", "fcn8s", "unet"])
    p.add_argument("--conv", type=int, help="instead of a model: one 3x3 conv with this many channels, and the same-FLOP matmul")
    p.add_argument("--size", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mode", default="train", choices=["train", "infer"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--amp", action="store_true", help="fp16 autocast with a GradScaler (PyTorch AMP, what segkit's f16-mixed mirrors)")
    p.add_argument("--tf32", action="store_true", help="TF32 for matmuls and cuDNN convolutions (Ampere and later)")
    p.add_argument("--gflop", type=float, help="forward GFLOP of one image (from `segkit summary --json`)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.lower().split("x")) if "x" in a.size.lower() else (int(a.size),) * 2
    # PyTorch's defaults: TF32 off for matmuls, on for cuDNN convolutions; --tf32 turns both on,
    # and without it both are off, so that "fp32" means fp32 products.
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    if a.conv:
        return conv_probe(a, h)
    unet = a.model == "unet"
    classes = a.classes or (2 if unet else 21)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = (UNet(1, classes) if unet else FCN(a.model, classes)).to(dev)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(a.batch, 1 if unet else 3, h, w, device=dev)
    oh, ow = (h - 184, w - 184) if unet else (h, w)
    y = (torch.arange(a.batch * oh * ow, device=dev) * 7919 % classes).reshape(a.batch, oh, ow)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9, weight_decay=5e-4)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    if a.bf16 or a.amp:
        half = torch.bfloat16 if a.bf16 else torch.float16
        ctx = lambda: torch.autocast(dev.type, dtype=half)
    else:
        ctx = lambda: torch.autocast(dev.type, enabled=False)
    scaler = torch.amp.GradScaler(dev.type, enabled=a.amp)
    if a.mode == "infer":
        model.eval()
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        if a.mode == "train":
            with ctx():
                out = model(x)
                loss = F.cross_entropy(out.float(), y, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            with torch.no_grad(), ctx():
                model(x).argmax(1).cpu()
        sync()
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    if dev.type == "cuda":
        peak, source = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    else:
        peak, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
    factor = 3.0 if a.mode == "train" else 1.0
    tflops = a.gflop * a.batch * factor / (ms / 1e3) / 1e3 if a.gflop else float("nan")
    r = {
        "impl": "pytorch " + torch.__version__, "model": a.model, "mode": a.mode, "device": str(dev),
        "threads": torch.get_num_threads(), "batch": a.batch, "height": h, "width": w, "classes": classes,
        "parameters": params, "channels_last": a.channels_last, "bf16": a.bf16, "amp": a.amp, "tf32": a.tf32, "steps": a.steps,
        "warmup": a.warmup, "step_ms": times, "ms_per_step": ms, "images_per_s": a.batch / (ms / 1e3),
        "tflops": tflops, "peak_memory_mb": peak, "memory_source": source,
        # ATen's vector kernels (ATEN_CPU_CAPABILITY caps them); oneDNN's convolutions follow
        # ONEDNN_MAX_CPU_ISA, which bench/compare.sh sets to the same level.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(f"pytorch {a.model} {a.mode} batch {a.batch} at {h}x{w} on {dev} ({torch.get_num_threads()} threads): "
          f"{ms:.1f} ms/step, {r['images_per_s']:.2f} images/s, {tflops:.3f} TFLOP/s, peak {peak:.0f} MiB")
    if a.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
