"""Bring your own nn.Module: export, inspect, compile and run the artifact from Python.

python examples/own_module.py
"""

import numpy as np
import torch
from torch import nn

import edgeformer


class TinyViT(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return self.head(t.mean(1))


graph = edgeformer.export(TinyViT(), (torch.randn(1, 3, 32, 32),), name="tiny_vit")
print(graph.summary().format(max_nodes=10))

report = edgeformer.compile(TinyViT(), "host-ort", "out/tiny_vit", input_shapes=[(1, 3, 32, 32)])
artifact = edgeformer.load_artifact(report.path)
runner = artifact.runner()
(logits,) = runner.run([np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)])
print("logits", logits.shape, "numerics", report.manifest.numerics.status)
