#!/usr/bin/env python3
"""Generates the small PyTorch fixtures of crates/segkit-train/tests/fixtures (run once, from the
repository root, with torch and safetensors installed; the outputs are committed):

- vgg16_tiny.pth / .safetensors: a torchvision-layout VGG16 state dict (features.N, classifier.N)
  at width 1 (channels 1-2-4-8-8, fc 4), saved with torch.save;
- fcn8s_tiny.pth: a pytorch-fcn-named FCN-8s state dict (conv1_1 ... upscore8) at width 1, fc 4,
  3 classes, score layers non-zero; fcn8s_tiny_io.json: an input and the model's output.
"""
import importlib.util
import json
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "segkit-train", "tests", "fixtures")
spec = importlib.util.spec_from_file_location("tb", os.path.join(HERE, "..", "bench", "torch_bench.py"))
tb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tb)

torch.manual_seed(2026)
CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]

# A torchvision-layout VGG16 at width 1.
fcn = tb.FCN("fcn8s", n_class=3, base=1, fc=4)
vgg = {}
for i, name in zip(CONV_IDX, CONV_NAMES):
    vgg[f"features.{i}.weight"] = fcn.features[i].weight.detach().clone()
    vgg[f"features.{i}.bias"] = torch.randn_like(fcn.features[i].bias) * 0.1
vgg["classifier.0.weight"] = torch.randn(4, 8 * 7 * 7) * 0.05
vgg["classifier.0.bias"] = torch.randn(4) * 0.1
vgg["classifier.3.weight"] = torch.randn(4, 4) * 0.5
vgg["classifier.3.bias"] = torch.randn(4) * 0.1
vgg["classifier.6.weight"] = torch.randn(10, 4)
vgg["classifier.6.bias"] = torch.randn(10)
torch.save(vgg, os.path.join(OUT, "vgg16_tiny.pth"))
save_file({k: v.contiguous() for k, v in vgg.items()}, os.path.join(OUT, "vgg16_tiny.safetensors"))

# A pytorch-fcn FCN-8s at width 1 with non-zero score layers, its state dict under reference names.
with torch.no_grad():
    for m in [fcn.score_fr, fcn.score_pool4, fcn.score_pool3]:
        m.weight.normal_(0, 0.5)
        m.bias.normal_(0, 0.1)
    for m in fcn.features:
        if isinstance(m, torch.nn.Conv2d):
            m.bias.normal_(0, 0.1)
sd = {}
for k, v in fcn.state_dict().items():
    if k.startswith("features."):
        i = int(k.split(".")[1])
        k = CONV_NAMES[CONV_IDX.index(i)] + "." + k.split(".")[2]
    sd[k] = v
torch.save(sd, os.path.join(OUT, "fcn8s_tiny.pth"))
fcn.eval()
x = torch.randn(1, 3, 20, 24)
with torch.no_grad():
    y = fcn(x)
with open(os.path.join(OUT, "fcn8s_tiny_io.json"), "w") as f:
    json.dump({"input": x.tolist(), "output": y.tolist(), "torch": torch.__version__}, f)
print("wrote fixtures to", OUT)
