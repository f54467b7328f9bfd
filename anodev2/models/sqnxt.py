"""SqueezeNext for CIFAR as the ANODE repository's ``SqNxt_23_1x`` (github amirgholami/anode,
models/sqnxt.py; SqueezeNext: Gholami et al. 2018, arXiv 1803.10615).

SqueezeNext residual function on ``Cin -> C`` channels with ``mid = Cin * reduction`` (every conv
with a bias, each followed by norm and relu, as in the ANODE code)::

    1x1 Cin -> mid (stride s) -> 1x1 mid -> mid/2 -> 1x3 mid/2 -> mid -> 3x1 mid -> mid -> 1x1 mid -> C

The function ends in a relu (``dz/dt >= 0``), as the ANODE code's ``BasicBlock2``. The second
block of every stage is ``spec.residual(f)`` with ``reduction = 1/2`` (an ODE block in the ODE
variants). The first block of every stage (channel change and/or stride 2) stays discrete:
``f_t(x) + relu(norm(conv1x1_s(x)))``, with the reduction of the SqueezeNext code (1 at stride 2,
1/4 when shrinking channels, else 1/2). The ANODE code applies one more relu to that sum, an
identity on a sum of non-negative terms, so it is left out.

Network: stem ``relu(norm(conv3x3 in -> 64))`` (stride 1 for CIFAR), stages of widths
32-64-128-256 with 2-2-2-2 blocks (strides 1-2-2-2), ``relu(norm(conv1x1 256 -> 128))``, global
average pool, linear. The ANODE code names this layout "23" although it has 8 blocks (SqueezeNext-23
proper has 6-6-8-1); 461,466 parameters for 10 classes, 4 ODE blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import BlockSpec

__all__ = ["SqueezeNext", "SqnxtFn", "SqnxtTransition", "SqnxtLayout", "SQNXT23_LAYOUT"]

#: (stem width, stage widths, blocks per stage, final conv width)
SqnxtLayout = tuple[int, tuple[int, ...], tuple[int, ...], int]
SQNXT23_LAYOUT: SqnxtLayout = (64, (32, 64, 128, 256), (2, 2, 2, 2), 128)


class SqnxtFn(nn.Module):
    """SqueezeNext residual function, ``[B, Cin, H, W] -> [B, C, H/s, W/s]``, ending in a relu.

    Convs: 1x1 (stride s) Cin->mid, 1x1 mid->mid/2, 1x3 mid/2->mid, 3x1 mid->mid, 1x1 mid->C,
    each with a bias and followed by norm and relu. No in-place operations.
    """

    def __init__(self, cin: int, cout: int, mid: int, stride: int, spec: BlockSpec):
        super().__init__()
        half = max(1, mid // 2)
        self.conv1 = nn.Conv2d(cin, mid, 1, stride=stride)
        self.norm1 = spec.norm2d(mid)
        self.conv2 = nn.Conv2d(mid, half, 1)
        self.norm2 = spec.norm2d(half)
        self.conv3 = nn.Conv2d(half, mid, (1, 3), padding=(0, 1))
        self.norm3 = spec.norm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, (3, 1), padding=(1, 0))
        self.norm4 = spec.norm2d(mid)
        self.conv5 = nn.Conv2d(mid, cout, 1)
        self.norm5 = spec.norm2d(cout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.norm1(self.conv1(z)))
        z = F.relu(self.norm2(self.conv2(z)))
        z = F.relu(self.norm3(self.conv3(z)))
        z = F.relu(self.norm4(self.conv4(z)))
        return F.relu(self.norm5(self.conv5(z)))


class SqnxtTransition(nn.Module):
    """Discrete first block of a stage, ``f(x) + relu(norm(conv1x1_s(x)))``,
    ``[B, Cin, H, W] -> [B, C, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        reduction = 1.0 if stride == 2 else (0.25 if cin > cout else 0.5)
        mid = max(2, int(cin * reduction))
        self.f = SqnxtFn(cin, cout, mid, stride, spec)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), spec.norm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + F.relu(self.shortcut(x))


class SqueezeNext(nn.Module):
    """SqueezeNext for CIFAR, ``[B, in_channels, H, W] -> [B, num_classes]``.

    Stage ``i`` is module ``stage{i+1}``: block 0 a ``SqnxtTransition``, blocks 1.. are
    ``spec.residual(SqnxtFn(C, C, C/2, 1))`` (ODE blocks in the ODE variants).
    """

    def __init__(self, spec: BlockSpec, num_classes: int = 10, in_channels: int = 3,
                 layout: SqnxtLayout = SQNXT23_LAYOUT):
        super().__init__()
        stem, widths, blocks, final = layout
        stem = spec.channels(stem, 4)
        widths = tuple(spec.channels(w, 4) for w in widths)  # C/4 must be an integer
        final = spec.channels(final, 4)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1), spec.norm2d(stem), nn.ReLU())
        cin = stem
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [SqnxtTransition(cin, w, stride, spec)]
            layers += [spec.residual(SqnxtFn(w, w, w // 2, 1, spec)) for _ in range(n - 1)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            cin = w
        self.num_stages = len(widths)
        self.head = nn.Sequential(nn.Conv2d(cin, final, 1), spec.norm2d(final), nn.ReLU())
        self.fc = nn.Linear(final, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        for i in range(self.num_stages):
            z = getattr(self, f"stage{i + 1}")(z)
        z = F.adaptive_avg_pool2d(self.head(z), 1).flatten(1)
        return self.fc(z)


def build_sqnxt(name: str, spec: BlockSpec, num_classes: int, in_channels: int) -> SqueezeNext:
    return SqueezeNext(spec, num_classes, in_channels)
