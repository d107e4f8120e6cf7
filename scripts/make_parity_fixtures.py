#!/usr/bin/env python3
"""Training-parity fixtures: PyTorch's trajectory of short training runs, for
crates/segkit-train/tests/parity.rs to follow step by step (run once, from the repository root,
with torch and safetensors installed; the outputs in crates/segkit-train/tests/fixtures/parity/
are committed; CI needs no PyTorch).

Each case writes one safetensors file:
  init.<name>, final.<name>  the model's state dict before and after training, under the
                             reference names segkit exports (conv1_1.weight ..., down.0.conv1.weight
                             ..., bn running_mean/running_var; num_batches_tracked left out; no
                             final.* for frozen tensors, which must keep their initial values)
  x.<k>, y.<k>               batch k: uint8 image [B, C, H, W] (the input is x / 255 - 0.5 in
                             float32, computed the same way on both sides) and uint8 labels
                             [B, H', W'] with void = 255
  loss, lr                   float64 [steps]: the loss of each optimiser step (summed over its
                             accumulated batches, each divided by the accumulation count) and the
                             learning rate it used
  metadata                   "overrides": the segkit config (--set strings) of the same run;
                             "steps", "accum", "reference": which reference the case follows

The models are written here from the papers' reference nets, independently of segkit: FCN as
pytorch-fcn (crop offsets 19; 5, 27; 5, 9, 31 as literals, as the reference has them), U-Net as
the paper (valid convolutions, crop-and-concatenate [skip, up]); the padded + batch-norm U-Net is
conv -> BatchNorm2d -> ReLU. Losses follow the references: FCN's "sum" is Caffe's
SoftmaxWithLoss with normalize: false, i.e. the sum over valid pixels divided by the batch size
(pytorch-fcn: size_average=False, then loss /= len(data)); "mean" is F.cross_entropy's weighted
mean. Dropout is off (model.dropout = 0): its random stream cannot match.
"""
import importlib.util
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "segkit-train", "tests", "fixtures", "parity")
VOID = 255


# The bilinear kernel of the reference FCN upsamplers, shared with the benchmark's models.
_spec = importlib.util.spec_from_file_location("torch_bench", os.path.join(HERE, "..", "bench", "torch_bench.py"))
_torch_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_torch_bench)
bilinear_weight = _torch_bench.bilinear_weight


VGG = [["conv1_1", "conv1_2"], ["conv2_1", "conv2_2"], ["conv3_1", "conv3_2", "conv3_3"],
       ["conv4_1", "conv4_2", "conv4_3"], ["conv5_1", "conv5_2", "conv5_3"]]


class FCN(nn.Module):
    """pytorch-fcn's FCN-32s/16s/8s/8s-atonce under the Caffe layer names."""

    def __init__(self, variant, n_class, base, fc, learnable):
        super().__init__()
        self.variant = variant
        widths = [base, 2 * base, 4 * base, 8 * base, 8 * base]
        cin = 3
        for stage, names in enumerate(VGG):
            for name in names:
                pad = 100 if name == "conv1_1" else 1
                setattr(self, name, nn.Conv2d(cin, widths[stage], 3, padding=pad))
                cin = widths[stage]
        self.fc6 = nn.Conv2d(cin, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        up = lambda k, s: nn.ConvTranspose2d(n_class, n_class, k, s, bias=False)
        if variant == "fcn32s":
            self.upscore = up(64, 32)
        else:
            self.score_pool4 = nn.Conv2d(widths[3], n_class, 1)
            self.upscore2 = up(4, 2)
            if variant == "fcn16s":
                self.upscore16 = up(32, 16)
            else:
                self.score_pool3 = nn.Conv2d(widths[2], n_class, 1)
                self.upscore_pool4 = up(4, 2)
                self.upscore8 = up(16, 8)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(bilinear_weight(n_class, m.kernel_size[0]))
                m.weight.requires_grad_(learnable)
            elif isinstance(m, nn.Conv2d):
                # Non-zero score layers (the reference zero-initialises them), so that the first
                # step already sends gradients through every layer.
                nn.init.normal_(m.weight, std=(2.0 / (m.in_channels * m.kernel_size[0] ** 2)) ** 0.5)
                nn.init.normal_(m.bias, std=0.1)

    def forward(self, x):
        h, w = x.shape[2:]
        pools = []
        for names in VGG:
            for name in names:
                x = F.relu(getattr(self, name)(x))
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            pools.append(x)
        x = F.relu(self.fc6(x))
        x = F.relu(self.fc7(x))
        x = self.score_fr(x)
        if self.variant == "fcn32s":
            return self.upscore(x)[:, :, 19:19 + h, 19:19 + w]
        at_once = self.variant == "fcn8s-atonce"
        up2 = self.upscore2(x)
        p4 = self.score_pool4(pools[3] * 0.01 if at_once else pools[3])
        x = up2 + p4[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
        if self.variant == "fcn16s":
            return self.upscore16(x)[:, :, 27:27 + h, 27:27 + w]
        up4 = self.upscore_pool4(x)
        p3 = self.score_pool3(pools[2] * 0.0001 if at_once else pools[2])
        x = up4 + p3[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
        return self.upscore8(x)[:, :, 31:31 + h, 31:31 + w]


class DoubleConv(nn.Module):
    def __init__(self, cin, cout, padded, bn):
        super().__init__()
        p = 1 if padded else 0
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=p)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=p)
        if bn:
            self.bn1 = nn.BatchNorm2d(cout)
            self.bn2 = nn.BatchNorm2d(cout)
        self.bn = bn

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x) if self.bn else x)
        x = self.conv2(x)
        return F.relu(self.bn2(x) if self.bn else x)


class UNet(nn.Module):
    def __init__(self, in_ch, n_class, base, depth, padded, bn):
        super().__init__()
        ch = [base << i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_ch if i == 0 else ch[i - 1], ch[i], padded, bn) for i in range(depth)])
        self.bottom = DoubleConv(ch[depth - 1], ch[depth], padded, bn)
        self.upconv = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, 2) for i in reversed(range(depth))])
        self.up = nn.ModuleList([DoubleConv(2 * ch[i], ch[i], padded, bn) for i in reversed(range(depth))])
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


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "num_batches_tracked" not in k}


def batches(rng, n, b, c, hw, out_hw, classes):
    """Images of random blobs and labels that follow them (so the loss can fall), with void."""
    xs, ys = [], []
    for _ in range(n):
        x = rng.integers(0, 256, size=(b, c, hw, hw), dtype=np.uint8)
        y = rng.integers(0, classes, size=(b, out_hw, out_hw), dtype=np.uint8)
        # Labels correlated with the image: class by the first channel's brightness, centred.
        off = (hw - out_hw) // 2
        bright = x[:, 0, off:off + out_hw, off:off + out_hw].astype(np.int32)
        y = np.where(rng.random(y.shape) < 0.7, (bright * classes) // 256, y).astype(np.uint8)
        y[rng.random(y.shape) < 0.1] = VOID
        xs.append(x)
        ys.append(y)
    return xs, ys


def as_input(x):
    return torch.from_numpy(x).float() / 255.0 - 0.5


def median_frequency(ys, classes):
    class_px, image_px = np.zeros(classes), np.zeros(classes)
    for y in ys:
        for img in y:
            counts = np.array([(img == c).sum() for c in range(classes)], dtype=np.float64)
            total = counts.sum()
            class_px += counts
            image_px += np.where(counts > 0, total, 0)
    freq = np.where(image_px > 0, class_px / np.maximum(image_px, 1), 0)
    med = np.median(freq[freq > 0])
    return [float(np.float32(med / f)) if f > 0 else 0.0 for f in freq]


def train(model, opt_factory, xs, ys, steps, accum, loss_fn, sched):
    """`steps` optimiser steps of `accum` batches each: (loss per step, learning rate per step)."""
    opt = opt_factory(model)
    scheduler = sched(opt) if sched else None
    losses, lrs = [], []
    model.train()
    for s in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        total = 0.0
        for a in range(accum):
            k = s * accum + a
            out = model(as_input(xs[k]))
            loss = loss_fn(out, torch.from_numpy(ys[k]).long()) / accum
            loss.backward()
            total += loss.item()
        opt.step()
        if scheduler:
            scheduler.step()
        losses.append(total)
    return losses, lrs


def self_deviation(model_factory, init, opt_factory, xs, ys, steps, accum, loss_fn, sched, final):
    """How far PyTorch itself strays when the conv biases in front of a batch norm move by 1e-7:
    a change that cannot alter the function (the batch norm subtracts the mean), only the
    rounding. The largest final deviation, relative to each tensor's scale."""
    model = model_factory()
    model.load_state_dict(init, strict=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("conv1.bias") or n.endswith("conv2.bias"):
                p.add_(torch.randn(p.shape, generator=g) * 1e-7)
    train(model, opt_factory, xs, ys, steps, accum, loss_fn, sched)
    other = state(model)
    return max(((other[k] - v).abs().max() / v.abs().max().clamp_min(1e-30)).item()
               for k, v in final.items() if not (k.endswith("conv1.bias") or k.endswith("conv2.bias")))


def run(name, model, opt_factory, xs, ys, steps, accum, loss_fn, sched=None, overrides=(), reference="",
        model_factory=None):
    init = state(model)
    losses, lrs = train(model, opt_factory, xs, ys, steps, accum, loss_fn, sched)
    tensors = {f"init.{k}": v for k, v in init.items()}
    # Frozen tensors (fixed bilinear upsamplers) are not stored twice: the test checks that
    # they kept their initial values.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    tensors.update({f"final.{k}": v for k, v in state(model).items() if k not in frozen})
    for k, (x, y) in enumerate(zip(xs, ys)):
        tensors[f"x.{k}"] = torch.from_numpy(x)
        tensors[f"y.{k}"] = torch.from_numpy(y)
    tensors["loss"] = torch.tensor(losses, dtype=torch.float64)
    tensors["lr"] = torch.tensor(lrs, dtype=torch.float64)
    meta = {"overrides": json.dumps(list(overrides)), "steps": str(steps), "accum": str(accum), "reference": reference}
    if model_factory:
        dev = self_deviation(model_factory, init, opt_factory, xs, ys, steps, accum, loss_fn, sched, state(model))
        meta["self_deviation"] = repr(dev)
        print(f"{name}: PyTorch against itself with the conv biases in front of batch norm moved by 1e-7: {dev:.2e}")
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"{name}: losses {losses[0]:.5f} -> {losses[-1]:.5f}, {os.path.getsize(path) / 1024:.0f} KiB")


def unet_overrides(classes, in_ch, depth, padded, bn, batch, crop, steps):
    """The segkit keys every U-Net case shares: the architecture, the batch and the crop."""
    return [f"model.model=\"unet\"", f"model.classes={classes}", f"model.in_channels={in_ch}",
            "model.base_width=4", f"model.depth={depth}", f"model.padded={str(padded).lower()}",
            f"model.batch_norm={str(bn).lower()}", "train.bias_lr_mult=1", "train.bias_decay=true",
            "train.warmup_steps=0", "train.loss=\"mean\"", f"train.batch_size={batch}",
            f"train.max_steps={steps}", f"augment.crop={crop}"]


def caffe_sgd(lr, momentum, wd):
    """The FCN Caffe recipe: biases at 2x the learning rate and without weight decay."""
    def make(model):
        weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
        biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
        return torch.optim.SGD([{"params": weights, "lr": lr, "weight_decay": wd},
                                {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}], lr=lr, momentum=momentum)
    return make


def sum_per_image(weight=None):
    """Caffe's SoftmaxWithLoss, normalize: false: the sum over valid pixels / batch size."""
    return lambda out, y: F.cross_entropy(out, y, weight=weight, ignore_index=VOID, reduction="sum") / out.shape[0]


def mean(weight=None):
    return lambda out, y: F.cross_entropy(out, y, weight=weight, ignore_index=VOID, reduction="mean")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(12)
    rng = np.random.default_rng(12)
    steps, classes = 10, 4
    fcn_common = ["model.base_width=2", "model.fc_width=8", "model.dropout=0", "model.batch_norm=false", f"model.classes={classes}",
                  "train.optimizer=\"sgd\"", "train.momentum=0.99", "train.weight_decay=0.0005",
                  "train.bias_lr_mult=2", "train.bias_decay=false", "train.schedule=\"constant\"",
                  "train.warmup_steps=0", "train.batch_size=2", f"train.max_steps={steps}"]
    xs, ys = batches(rng, steps, 2, 3, 32, 32, classes)
    for variant in ["fcn32s", "fcn16s", "fcn8s"]:
        model = FCN(variant, classes, 2, 8, learnable=False)
        run(f"{variant}_caffe_sum", model, caffe_sgd(2e-5, 0.99, 5e-4), xs, ys, steps, 1, sum_per_image(),
            overrides=fcn_common + [f"model.model=\"{variant}\"", "model.learnable_upsampling=false",
                                    "train.loss=\"sum\"", "train.lr=2e-5"],
            reference="Caffe voc-fcn*s solver (SGD momentum 0.99, weight decay 5e-4, bias lr x2 without "
                      "decay, fixed lr, SoftmaxWithLoss normalize: false) / pytorch-fcn")
    w = median_frequency(ys, classes)
    model = FCN("fcn8s", classes, 2, 8, learnable=False)
    run("fcn8s_caffe_mean_weighted", model, caffe_sgd(1e-2, 0.99, 5e-4), xs, ys, steps, 1, mean(torch.tensor(w)),
        overrides=fcn_common + ["model.model=\"fcn8s\"", "model.learnable_upsampling=false", "train.loss=\"mean\"",
                                "train.lr=1e-2", "train.class_weights=[" + ", ".join(repr(v) for v in w) + "]"],
        reference="FCN-8s with PyTorch's weighted mean cross-entropy and median-frequency weights (SegNet's CamVid recipe)")
    model = FCN("fcn8s-atonce", classes, 2, 8, learnable=True)
    run("fcn8s_atonce_learnable", model, caffe_sgd(2e-5, 0.99, 5e-4), xs, ys, steps, 1, sum_per_image(),
        overrides=fcn_common + ["model.model=\"fcn8s-atonce\"", "model.learnable_upsampling=true",
                                "train.loss=\"sum\"", "train.lr=2e-5"],
        reference="Caffe voc-fcn8s-atonce (PAMI 2016): pool4 x0.01, pool3 x0.0001, learnable upsampling")

    # U-Net as the paper: valid convolutions, depth 4, SGD momentum 0.99, batch 1. 204 -> 20 (the
    # paper's 572 -> 388 is the same geometry, 24 tiles larger; the fixture stays small).
    xs, ys = batches(rng, steps, 1, 1, 204, 20, 2)
    model = UNet(1, 2, 4, 4, padded=False, bn=False)
    run("unet_paper_sgd", model, lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.99), xs, ys, steps, 1,
        mean(), overrides=unet_overrides(2, 1, 4, False, False, 1, 20, steps)
        + ["train.optimizer=\"sgd\"", "train.momentum=0.99", "train.weight_decay=0", "train.schedule=\"constant\"",
           "train.lr=1e-2"],
        reference="U-Net paper: unpadded, SGD momentum 0.99, batch 1 (the paper's weight map left out)")

    # Padded U-Net with batch norm and plain SGD: the batch-norm forward, backward and running
    # statistics, without Adam's amplification of float noise (see the case below).
    xs, ys = batches(rng, steps, 2, 3, 48, 48, 3)
    bn_unet = lambda: UNet(3, 3, 4, 3, padded=True, bn=True)
    model = bn_unet()
    run("unet_bn_sgd", model, lambda m: torch.optim.SGD(m.parameters(), lr=5e-2, momentum=0.9), xs, ys, steps, 1,
        mean(), overrides=unet_overrides(3, 3, 3, True, True, 2, 48, steps)
        + ["train.optimizer=\"sgd\"", "train.momentum=0.9", "train.weight_decay=0", "train.schedule=\"constant\"",
           "train.lr=5e-2"],
        reference="padded U-Net + BatchNorm2d (momentum 0.1, eps 1e-5, unbiased running variance), SGD momentum 0.9",
        model_factory=bn_unet)

    # Padded U-Net with batch norm, Adam, poly LR, accumulation 2: 20 batches of 2 at 48x48. Adam's
    # eps is 1e-4, not 1e-8: with 1e-8 every weight moves by about the learning rate whatever the
    # size of its gradient, and weights whose gradient is float noise (the conv biases in front of
    # a batch norm have an exactly zero one) then walk at random in either framework.
    xs, ys = batches(rng, 2 * steps, 2, 3, 48, 48, 3)
    model = bn_unet()
    run("unet_bn_adam_poly_accum2", model,
        lambda m: torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-4, weight_decay=1e-4),
        xs, ys, steps, 2, mean(),
        sched=lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=steps, power=0.9),
        overrides=unet_overrides(3, 3, 3, True, True, 2, 48, steps)
        + ["train.optimizer=\"adam\"", "train.lr=2e-3", "train.beta1=0.9", "train.beta2=0.999", "train.eps=1e-4",
           "train.weight_decay=1e-4", "train.schedule=\"poly\"", "train.poly_power=0.9", "train.accum_steps=2"],
        reference="padded U-Net + BatchNorm2d (momentum 0.1, eps 1e-5, unbiased running variance), torch.optim.Adam (eps 1e-4) "
                  "with L2 weight decay, PolynomialLR(power 0.9), gradient accumulation 2",
        model_factory=bn_unet)


if __name__ == "__main__":
    main()
