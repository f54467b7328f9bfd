"""CIFAR AlexNet: 5 conv layers and 3 linear layers (Krizhevsky et al. 2012, adapted to 32x32).

    conv1  5x5  in  -> 64,  norm, relu, maxpool 2   32x32 -> 16x16
    conv2  5x5  64  -> 192, norm, relu, maxpool 2   16x16 -> 8x8
    conv3  3x3  192 -> 384, norm, relu              8x8
    conv4  3x3  384 -> 384  residual function f(z) = relu(norm(conv(z)))   <- ODE block
    conv5  3x3  384 -> 256, norm, relu, maxpool 2   8x8 -> 4x4
    adaptive avg pool to 4x4, flatten (4096)
    fc1 4096 -> 1024, relu, dropout 0.5; fc2 1024 -> 1024, relu, dropout 0.5; fc3 1024 -> classes

Only conv4 has equal input and output channels (384 -> 384, as in the original AlexNet), so it is
the one layer that becomes a residual / ODE block; the others change the channel count (or
resolution) and stay ordinary layers in every variant. The 11x11 stride-4 stem of the ImageNet
network is replaced by a 5x5 stride-1 conv, and the classifier is narrowed to 1024 for 32x32 inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import BlockSpec

__all__ = ["CifarAlexNet", "ConvNormReLU"]


class ConvNormReLU(nn.Module):
    """``relu(norm(conv(z)))``, ``[B, Cin, H, W] -> [B, C, H, W]`` (no in-place ops)."""

    def __init__(self, cin: int, cout: int, kernel: int, spec: BlockSpec):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = spec.norm2d(cout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(z)))


class CifarAlexNet(nn.Module):
    """``[B, in_channels, H, W] -> [B, num_classes]``; see the module docstring for the layers.

    ``features.conv4`` is ``spec.residual(ConvNormReLU(384, 384, 3))``.
    """

    def __init__(self, spec: BlockSpec, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        c1, c2, c3, c5 = (spec.channels(c) for c in (64, 192, 384, 256))
        hidden = spec.channels(1024)
        self.features = nn.Sequential()
        self.features.add_module("conv1", ConvNormReLU(in_channels, c1, 5, spec))
        self.features.add_module("pool1", nn.MaxPool2d(2))
        self.features.add_module("conv2", ConvNormReLU(c1, c2, 5, spec))
        self.features.add_module("pool2", nn.MaxPool2d(2))
        self.features.add_module("conv3", ConvNormReLU(c2, c3, 3, spec))
        self.features.add_module("conv4", spec.residual(ConvNormReLU(c3, c3, 3, spec)))
        self.features.add_module("conv5", ConvNormReLU(c3, c5, 3, spec))
        self.features.add_module("pool5", nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(c5 * 16, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_alexnet(name: str, spec: BlockSpec, num_classes: int, in_channels: int) -> CifarAlexNet:
    return CifarAlexNet(spec, num_classes, in_channels)
