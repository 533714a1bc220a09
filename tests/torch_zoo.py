"""Small PyTorch CNNs for the ONNX → PyTorch and ONNX → Keras converters.

Between them: BatchNorm (after an Add, after a Concat and on a flat vector, so that the
exporter cannot fold it into a convolution), max and average pooling (with and without
padding, count_include_pad both ways), a residual Add, a Concat, Dropout, depthwise
convolutions (multiplier 1 and 2), a dilated convolution, an asymmetric zero Pad, a transposed
convolution, ReLU6 (Clip), LeakyReLU, Sigmoid, Tanh, a squeeze-and-excitation Multiply, a
Linear head on a flattened conv map (`x.view(x.size(0), -1)`: Shape→Gather→Unsqueeze→Concat→
Reshape in ONNX) and one after global average pooling. Weights are random, biases and
BatchNorm statistics non-zero; inputs are non-square (3×29×37).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

INPUT_SHAPE = (3, 29, 37)  # C, H, W


class FlattenHead(nn.Module):
    """Conv stem, residual depthwise block + BatchNorm, Concat, pooling, flatten → Linear."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)                                    # 29×37 → 14×18
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)                                     # after the Add: kept
        self.dilated = nn.Conv2d(8, 4, 3, padding=2, dilation=2)
        self.avg = nn.AvgPool2d(2)                                      # 14×18 → 7×9
        self.down = nn.Conv2d(12, 6, 3, stride=2, padding=1)            # 7×9 → 4×5
        self.drop = nn.Dropout(0.25)
        self.fc1 = nn.Linear(6 * 4 * 5, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(self.bn(F.relu(self.depthwise(x)) + self.pointwise(x)))
        x = torch.cat([x, F.leaky_relu(self.dilated(x), 0.1)], dim=1)
        x = self.avg(x)
        x = F.relu6(self.down(x))
        x = self.drop(x)
        x = x.view(x.size(0), -1)
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc2(x)


class PooledHead(nn.Module):
    """Strided conv, padded max/avg pools, depthwise ×2, SE gate, Pad, ConvTranspose, GAP head."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 5, stride=2, padding=2)           # 29×37 → 15×19
        self.stem_bn = nn.BatchNorm2d(12)                               # folded into the conv
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)                # 15×19 → 8×10
        self.depthwise = nn.Conv2d(12, 24, 3, padding=1, groups=12)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.skip = nn.Conv2d(12, 24, 1)
        self.se_reduce = nn.Conv2d(24, 6, 1)
        self.se_expand = nn.Conv2d(6, 24, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))                           # asymmetric
        self.side = nn.Conv2d(24, 8, 2)
        self.bn = nn.BatchNorm2d(32)                                    # after the Concat: kept
        self.up = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(16, 12)
        self.bn1d = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, classes)

    def forward(self, x):
        x = self.pool(F.leaky_relu(self.stem_bn(self.stem(x)), 0.2))
        y = F.relu(self.avg(self.depthwise(x)))
        x = y + self.skip(x)
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = x * gate
        x = torch.cat([x, self.side(self.pad(x))], dim=1)
        x = torch.tanh(self.bn(x))
        x = F.relu(self.up(x))
        x = x.mean(dim=(2, 3))
        x = self.drop(x)
        x = F.relu(self.bn1d(self.fc1(x)))
        return torch.softmax(self.fc2(x), dim=1)


MODELS = {"flatten_head": FlattenHead, "pooled_head": PooledHead}


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, non-zero biases and BatchNorm statistics (deterministic for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            scale = (1.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.2
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
            if name.endswith("weight") and p.dim() == 1:  # BatchNorm gamma: around 1
                p.add_(1.0)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return module.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(MODELS[name](), seed)


def example_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch,) + INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
