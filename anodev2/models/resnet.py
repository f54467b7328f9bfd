"""CIFAR ResNets with basic blocks: "resnet4", "resnet10" (widths 16-32-64) and "resnet18"
(widths 64-128-256-512). ResNet-18 is the ANODE repository's (Gholami et al. 2019); the paper's
ResNet-4 / ResNet-10 were never published, ours are built the same way (see ``RESNET_LAYOUTS``).

Residual function of a basic block (He et al. 2016), ``[B, Cin, H, W] -> [B, C, H/s, W/s]``::

    f(z) = norm(conv3x3(relu(norm(conv3x3_s(z)))))

* non-downsampling block (``Cin == C``, stride 1): ``f`` becomes ``spec.residual(f)``, i.e.
  ``z + f(z)`` (baseline) or an ODE block ``dz/dt = f(z)`` on ``[0, 1]``;
* downsampling block (stride 2, ``Cin != C``): always discrete,
  ``relu(f(x) + norm(conv1x1_s(x)))`` (projection shortcut).

Network: stem ``relu(norm(conv3x3(x)))`` -> stages -> relu -> global average pool -> linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import BlockSpec

__all__ = ["CifarResNet", "BasicResidualFn", "DownsampleBlock", "RESNET_LAYOUTS"]

#: name -> (stage widths, blocks per stage). The name counts the stem conv plus one per
#: residual block (a block counted as one layer, as SqueezeNext-23 counts): resnet4 has
#: 8 weight layers (ResNet-8 topology), resnet10 has 20 (ResNet-20 topology); resnet18 uses
#: the usual weight-layer count (stem + 2 convs per block + linear = 18).
RESNET_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet4": ((16, 32, 64), (1, 1, 1)),
    "resnet10": ((16, 32, 64), (3, 3, 3)),
    "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2)),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicResidualFn(nn.Module):
    """``f(z) = norm2(conv2(relu(norm1(conv1(z)))))``; ``[B, Cin, H, W] -> [B, C, H/s, W/s]``.

    No in-place operations (safe inside ODE blocks under recomputation)."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.norm1 = spec.norm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.norm2 = spec.norm2d(cout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(F.relu(self.norm1(self.conv1(z)))))


class DownsampleBlock(nn.Module):
    """Discrete residual block ``relu(f(x) + norm(conv1x1_s(x)))``, ``[B, Cin, H, W] -> [B, C, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        self.f = BasicResidualFn(cin, cout, stride, spec)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), spec.norm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.f(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Basic-block CIFAR ResNet; ``[B, in_channels, H, W] -> [B, num_classes]`` logits.

    Stage ``i`` (module ``layer{i+1}``) has ``blocks[i]`` blocks at width ``widths[i]``;
    stage 1 runs at stride 1, later stages start with a stride-2 downsampling block.
    Block ``layer{i}.{j}`` is a ``DownsampleBlock`` iff its input width or stride differs,
    otherwise ``spec.residual(BasicResidualFn(...))`` (an ODE block in the ODE variants).
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], spec: BlockSpec,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        widths = tuple(spec.channels(w) for w in widths)
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), spec.norm2d(widths[0]), nn.ReLU())
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if stride == 1 and cin == w:
                    layers.append(spec.residual(BasicResidualFn(w, w, 1, spec)))
                else:
                    layers.append(DownsampleBlock(cin, w, stride, spec))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        for i in range(self.num_stages):
            z = getattr(self, f"layer{i + 1}")(z)
        z = F.adaptive_avg_pool2d(F.relu(z), 1).flatten(1)
        return self.fc(z)


def build_resnet(name: str, spec: BlockSpec, num_classes: int, in_channels: int) -> CifarResNet:
    widths, blocks = RESNET_LAYOUTS[name]
    return CifarResNet(widths, blocks, spec, num_classes, in_channels)
