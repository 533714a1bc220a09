"""A small residual CNN for spectrograms: the example a researcher starts from.

BatchNorm, a residual Add, a Concat of average- and max-pooled features, Dropout, and a linear
head returning one logit (sigmoid → P(nocalls)). About 40 k parameters: trains in seconds on a
CPU at 128×128, which makes it handy for trying the service's researcher workflow.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import ModelSpec, register


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@register("small_cnn", ModelSpec(rows=128, cols=128, learning_rate=1e-3))
class SmallCNN(nn.Module):
    def __init__(self, rows: int = 128, cols: int = 128, width: int = 16, dropout: float = 0.3):
        super().__init__()
        self.stem = conv_bn(3, width, stride=2)
        self.block = nn.Sequential(conv_bn(width, width), nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width))
        self.down = conv_bn(width, 2 * width, stride=2)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))  # residual Add
        x = self.down(x)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # Concat
        return self.head(pooled)
