"""CIFAR ResNets with basic blocks: "resnet4", "resnet10" (widths 16-32-64) and "resnet18"
(widths 64-128-256-512).

``resnet18`` is the ANODE repository's ``ResNet18`` (github amirgholami/anode, models/resnet.py):
the first block of every stage is discrete (``layer1.0`` too, although it keeps the channel
count), the second is the ODE block, and the ODE function ends in a ReLU. ``resnet4`` and
``resnet10`` carry the names of the ANODE / ANODEV2 papers' ResNet-4 / ResNet-10, whose code
was never published; they are He et al.'s CIFAR ResNet-8 / ResNet-20 topologies (16-32-64
channels, 1 or 3 blocks per stage) with every non-downsampling block an ODE block (see
``RESNET_LAYOUTS`` and docs/MODELS.md).

Residual function of a basic block (He et al. 2016), ``[B, Cin, H, W] -> [B, C, H/s, W/s]``::

    f(z) = norm(conv3x3(relu(norm(conv3x3_s(z)))))          (+ a final relu: resnet18's ODE f)

* ODE / residual block (``Cin == C``, stride 1): ``spec.residual(f)``, i.e. ``z + f(z)``
  (baseline) or an ODE block ``dz/dt = f(z)`` on ``[0, 1]``;
* discrete block (downsampling, or resnet18's first block per stage): ``relu(f(x) + shortcut(x))``
  with a projection shortcut ``norm(conv1x1_s(x))`` when shape changes, else the identity.

Network: stem ``relu(norm(conv3x3(x)))`` -> stages -> relu -> global average pool -> linear.
(For resnet18 the relu before pooling is an identity: every block output is already >= 0.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import BlockSpec

__all__ = ["CifarResNet", "BasicResidualFn", "DiscreteBlock", "ResNetLayout", "RESNET_LAYOUTS"]


@dataclass(frozen=True)
class ResNetLayout:
    """Topology of a CIFAR ResNet.

    Attributes:
        widths: channels per stage.
        blocks: basic blocks per stage.
        discrete_first: the first block of every stage is discrete even when it keeps the
            shape (the ANODE code's ``_make_layer`` / ``_make_layer2`` split).
        ode_final_relu: the ODE / residual function ends in a relu (the ANODE code's ``BasicBlock2``).
    """

    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    discrete_first: bool = False
    ode_final_relu: bool = False


#: name -> layout. Weight layers (convs outside shortcuts + linear): resnet4 8, resnet10 20, resnet18 18.
RESNET_LAYOUTS: dict[str, ResNetLayout] = {
    "resnet4": ResNetLayout((16, 32, 64), (1, 1, 1)),
    "resnet10": ResNetLayout((16, 32, 64), (3, 3, 3)),
    "resnet18": ResNetLayout((64, 128, 256, 512), (2, 2, 2, 2), discrete_first=True, ode_final_relu=True),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicResidualFn(nn.Module):
    """``f(z) = norm2(conv2(relu(norm1(conv1(z)))))``, optionally followed by a relu;
    ``[B, Cin, H, W] -> [B, C, H/s, W/s]``. No in-place operations (safe inside ODE blocks
    under recomputation)."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec, final_relu: bool = False):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.norm1 = spec.norm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.norm2 = spec.norm2d(cout)
        self.final_relu = final_relu

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(z)))))
        return F.relu(out) if self.final_relu else out


class DiscreteBlock(nn.Module):
    """Discrete residual block ``relu(f(x) + shortcut(x))``, ``[B, Cin, H, W] -> [B, C, H/s, W/s]``;
    the shortcut is ``norm(conv1x1_s(x))`` when the shape changes, else the identity."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        self.f = BasicResidualFn(cin, cout, stride, spec)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), spec.norm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.f(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Basic-block CIFAR ResNet; ``[B, in_channels, H, W] -> [B, num_classes]`` logits.

    Stage ``i`` (module ``layer{i+1}``) has ``layout.blocks[i]`` blocks at width
    ``layout.widths[i]``; stage 1 runs at stride 1, later stages start at stride 2. Block
    ``layer{i}.{j}`` is a ``DiscreteBlock`` iff it changes width or resolution, or ``j == 0`` and
    ``layout.discrete_first``; otherwise ``spec.residual(BasicResidualFn(...))`` (an ODE block in
    the ODE variants).
    """

    def __init__(self, layout: ResNetLayout, spec: BlockSpec, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        widths = tuple(spec.channels(w) for w in layout.widths)
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), spec.norm2d(widths[0]), nn.ReLU())
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, layout.blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if stride == 1 and cin == w and not (j == 0 and layout.discrete_first):
                    layers.append(spec.residual(BasicResidualFn(w, w, 1, spec, layout.ode_final_relu)))
                else:
                    layers.append(DiscreteBlock(cin, w, stride, spec))
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
    return CifarResNet(RESNET_LAYOUTS[name], spec, num_classes, in_channels)
