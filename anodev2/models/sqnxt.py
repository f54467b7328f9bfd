"""SqueezeNext-23 (1.0x) for CIFAR (Gholami et al. 2018, arXiv 1803.10615), as in the ANODE repo.

SqueezeNext block on ``C`` channels (all convs bias-free, each followed by norm; relu between)::

    1x1 C -> C/2 (squeeze) -> 1x1 C/2 -> C/4 (squeeze) -> 3x1 C/4 -> C/2 -> 1x3 C/2 -> C/2 -> 1x1 C/2 -> C (expand)

Non-downsampling blocks use this ``f`` (ending in norm, no final relu) as ``spec.residual(f)``:
``z + f(z)`` or an ODE block. Transition blocks (first block of each stage: channel change and/or
stride 2) stay discrete: ``relu(f_t(x) + norm(conv1x1_s(x)))`` with the first 1x1 strided and the
reduction of the SqueezeNext code (1 at stride 2, 1/4 when shrinking channels, else 1/2).

Network: stem conv3x3 in -> 64 (stride 1 for CIFAR), stages of widths 32-64-128-256 with
6-6-8-1 blocks (strides 1-2-2-2), final conv1x1 256 -> 128, global average pool, linear.
"23" = stem + 21 blocks + final conv (SqueezeNext's count; the linear classifier is not counted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import BlockSpec

__all__ = ["SqueezeNext", "SqnxtFn", "SqnxtTransition", "SQNXT23_LAYOUT"]

#: (stem width, stage widths, blocks per stage, final conv width)
SQNXT23_LAYOUT = (64, (32, 64, 128, 256), (6, 6, 8, 1), 128)


class SqnxtFn(nn.Module):
    """SqueezeNext residual function, ``[B, Cin, H, W] -> [B, C, H/s, W/s]``.

    ``mid = Cin * reduction``; convs: 1x1 (stride s) Cin->mid, 1x1 mid->mid/2, 3x1 mid/2->mid,
    1x3 mid->mid, 1x1 mid->C. No in-place operations.
    """

    def __init__(self, cin: int, cout: int, mid: int, stride: int, spec: BlockSpec):
        super().__init__()
        half = max(1, mid // 2)
        self.conv1 = nn.Conv2d(cin, mid, 1, stride=stride, bias=False)
        self.norm1 = spec.norm2d(mid)
        self.conv2 = nn.Conv2d(mid, half, 1, bias=False)
        self.norm2 = spec.norm2d(half)
        self.conv3 = nn.Conv2d(half, mid, (3, 1), padding=(1, 0), bias=False)
        self.norm3 = spec.norm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, (1, 3), padding=(0, 1), bias=False)
        self.norm4 = spec.norm2d(mid)
        self.conv5 = nn.Conv2d(mid, cout, 1, bias=False)
        self.norm5 = spec.norm2d(cout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.norm1(self.conv1(z)))
        z = F.relu(self.norm2(self.conv2(z)))
        z = F.relu(self.norm3(self.conv3(z)))
        z = F.relu(self.norm4(self.conv4(z)))
        return self.norm5(self.conv5(z))


class SqnxtTransition(nn.Module):
    """Discrete transition block ``relu(f(x) + norm(conv1x1_s(x)))``, ``[B, Cin, H, W] -> [B, C, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int, spec: BlockSpec):
        super().__init__()
        reduction = 1.0 if stride == 2 else (0.25 if cin > cout else 0.5)
        mid = max(2, int(cin * reduction))
        self.f = SqnxtFn(cin, cout, mid, stride, spec)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), spec.norm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.f(x) + self.shortcut(x))


class SqueezeNext(nn.Module):
    """SqueezeNext for CIFAR, ``[B, in_channels, H, W] -> [B, num_classes]``.

    Stage ``i`` is module ``stage{i+1}``: block 0 a ``SqnxtTransition``, blocks 1.. are
    ``spec.residual(SqnxtFn(C, C, C/2, 1))`` (ODE blocks in the ODE variants).
    """

    def __init__(self, spec: BlockSpec, num_classes: int = 10, in_channels: int = 3,
                 layout=SQNXT23_LAYOUT):
        super().__init__()
        stem, widths, blocks, final = layout
        stem = spec.channels(stem, 4)
        widths = tuple(spec.channels(w, 4) for w in widths)  # C/4 must be an integer
        final = spec.channels(final, 4)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, padding=1, bias=False),
                                  spec.norm2d(stem), nn.ReLU())
        cin = stem
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [SqnxtTransition(cin, w, stride, spec)]
            layers += [spec.residual(SqnxtFn(w, w, w // 2, 1, spec)) for _ in range(n - 1)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            cin = w
        self.num_stages = len(widths)
        self.head = nn.Sequential(nn.Conv2d(cin, final, 1, bias=False), spec.norm2d(final), nn.ReLU())
        self.fc = nn.Linear(final, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stem(x)
        for i in range(self.num_stages):
            z = getattr(self, f"stage{i + 1}")(z)
        z = F.adaptive_avg_pool2d(self.head(z), 1).flatten(1)
        return self.fc(z)


def build_sqnxt(name: str, spec: BlockSpec, num_classes: int, in_channels: int) -> SqueezeNext:
    return SqueezeNext(spec, num_classes, in_channels)
