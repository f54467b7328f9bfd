"""CIFAR networks with ODE blocks: ResNet-4/10/18, AlexNet, SqueezeNext-23.

    model = anodev2.models.build(name, variant, num_classes=10, in_channels=3, **options)

Names (``MODELS``; full tables in docs/MODELS.md, ``python -m anodev2.models``):

* ``resnet4``  - stem conv3x3 16, stages 16-32-64 with 1-1-1 basic blocks, linear. The name
  counts stem + blocks (a block = one layer); weight layers: 1 + 3*2 + 1 = 8 (He et al.'s
  ResNet-8 topology). ODE blocks: ``layer1.0`` (the stage-2/3 blocks downsample).
* ``resnet10`` - same with 3-3-3 blocks (stem + 9 blocks; 20 weight layers, ResNet-20's
  topology). ODE blocks: ``layer1.{0,1,2}``, ``layer2.{1,2}``, ``layer3.{1,2}``.
* ``resnet18`` - the ANODE repo's ResNet-18: stem conv3x3 64, stages 64-128-256-512 with 2-2-2-2
  blocks (18 weight layers); the first block of each stage is discrete, as in the ANODE code.
  ODE blocks: ``layer{1,2,3,4}.1``, whose f ends in a relu (the ANODE code's ``BasicBlock2``).
* ``alexnet``  - 5 convs (64-192-384-384-256) + 3 linear (1024-1024-classes); ODE block:
  ``features.conv4`` (the only conv with equal in/out channels), ``f = relu(norm(conv3x3))``.
* ``sqnxt23``  - the ANODE repo's ``SqNxt_23_1x``: stem 64, stages 32-64-128-256 with 2-2-2-2
  SqueezeNext blocks, 1x1 conv to 128, linear (461,466 parameters); ODE blocks: ``stage{1,2,3,4}.1``,
  whose f ends in a relu as in the ANODE code.

Residual functions ``f`` of resnet4/resnet10 end in a norm (no final relu); those of resnet18 and
sqnxt23 end in a relu, as in the ANODE code. The residual form is ``z + f(z)`` and the ODE is
``dz/dt = f(z)``. Downsampling / transition blocks
(channel or resolution change) are ordinary residual blocks with a projection shortcut in
every variant.

Variants (``VARIANTS``) and their defaults (ODE blocks integrate ``[0, 1]`` with
``steps=3, method="euler"``, so that an ANODEV2 ``f`` sees θ at three times; the ANODE repo's
``--Nt 2 --method Euler`` is what the paper configs pin):

* ``baseline``  - discrete residual blocks ``z + f(z)``;
* ``neuralode`` - ODE blocks, ``grad="backsolve"`` (Chen et al. 2018 adjoint), static weights;
* ``anode``     - ODE blocks, ``grad="checkpoint"`` (exact discrete adjoint), static weights;
* ``anodev2``   - ODE blocks, ``grad="checkpoint"``, ``evolution="rda"`` on every conv weight of f
  with a spatial kernel (kH*kW > 1: all convs of the ResNets / AlexNet, the 3x1 and 1x3 convs of
  SqueezeNext; on 1x1 kernels diffusion and advection vanish identically, so their coefficients
  would be dead parameters); ``evolution={"targets": [...]}`` names other targets.

Options: ``steps``, ``method``, ``grad``, ``evolution`` override the variant's ODE defaults
(``build("resnet4", "anode", grad="backprop")`` is the same network differentiated by
autograd); they are a ValueError for ``baseline``. They are spelled as in a config's ``model``
section and resolved once, by the engine's registries:

* ``grad``: a name (``"checkpoint"``), an object (``anodev2.Checkpoint(checkpoints=2)``) or a
  mapping ``{"mode": "checkpoint", "checkpoints": 2, "keep_forward": True}``; without
  ``mode`` the mapping adjusts the variant's mode (``grad={"checkpoints": 2}``). The object is
  handed unchanged to every ``ODEBlock`` and from there to ``odeint``.
* ``evolution``: a kind name (``"rda"``) or a mapping ``{"kind": "rda", "targets": [...],
  "a_max": 0.1, ...}`` (the kind's options: ``anodev2.evolution``); without ``kind`` it adjusts
  the variant's kind (``evolution={"a_max": 0.1}`` for ``anodev2``); ``targets`` left out or
  None = the spatial conv weights above.

The flat spellings of earlier versions (``checkpoints=``, ``keep_forward=``,
``evolution_targets=``) are a ValueError naming the new one. ``width`` (channel multiplier, for
tiny test networks) and ``norm`` ("batch" | "group" | "batch_t") apply to every network.

Normalisation: BatchNorm by default, one BatchNorm per layer of ``f`` shared across all time
steps (and RK stages) of the block, as in ANODE and ANODEV2, so results are comparable with
both papers and parameter counts equal the discrete network's. In training it normalises
each evaluation ``f(z(t_n))`` with that evaluation's batch statistics (a deterministic
function of the current state, so the ODE is well defined in t); the engine recomputes
steps without touching running statistics, so they are updated exactly as under
backprop. Caveat: the running statistics average over time steps, so in eval mode
``f`` uses time-averaged statistics - a small train/eval mismatch that grows with the
spread of z(t) over the block. ``norm="group"`` (GroupNorm, ``gcd(C, 8)`` groups) has no
running statistics, is identical in train and eval and independent of the batch, and is
the choice when the time-consistency of ``f`` matters more than matching the papers.
``norm="batch_t"`` (:class:`anodev2.time_norm.TimeBatchNorm2d`) is BatchNorm with one set of
running statistics per evaluation time of the block (a slot per stage / step time of its fixed
grid): identical to ``"batch"`` in training, in eval mode each t uses its own slot; outside
ODE blocks (stem, shortcuts, baseline) it is exactly BatchNorm2d.

Inspection: ``ode_blocks(model)`` -> ``[(path, ODEBlock)]``; ``describe(model)`` -> one dict per
ODE block; ``format_description(model)`` -> text; ``param_counts(model)`` -> parameter counts.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

from torch import nn

from ._blocks import (COMMON_OPTIONS, MOVED_OPTIONS, NORMS, ODE_OPTIONS, VARIANT_DEFAULTS, VARIANTS, BlockSpec, Residual,
                      resolve, resolve_grad, resolve_variant_evolution)
from .alexnet import build_alexnet
from .resnet import build_resnet
from .sqnxt import build_sqnxt
from .summary import describe, format_description, ode_blocks, param_counts

__all__ = [
    "MODELS",
    "VARIANTS",
    "ODE_OPTIONS",
    "COMMON_OPTIONS",
    "NORMS",
    "VARIANT_DEFAULTS",
    "MOVED_OPTIONS",
    "build",
    "resolve_grad",
    "resolve_variant_evolution",
    "ode_blocks",
    "describe",
    "format_description",
    "param_counts",
    "Residual",
    "BlockSpec",
]

#: name -> builder(name, spec: BlockSpec, num_classes, in_channels) -> nn.Module
MODELS: dict[str, Callable[[str, BlockSpec, int, int], nn.Module]] = {
    "resnet4": build_resnet,
    "resnet10": build_resnet,
    "resnet18": build_resnet,
    "alexnet": build_alexnet,
    "sqnxt23": build_sqnxt,
}


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def build(name: str, variant: str, num_classes: int = 10, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build network ``name`` in ``variant``; ``[B, in_channels, H, W] -> [B, num_classes]`` logits.

    Args:
        name: one of ``MODELS`` ("resnet4", "resnet10", "resnet18", "alexnet", "sqnxt23").
        variant: one of ``VARIANTS`` ("baseline", "neuralode", "anode", "anodev2").
        num_classes, in_channels: ints >= 1.
        **options: ``steps``, ``method`` (name or ``ButcherTableau``), ``grad`` (name, object
            or mapping), ``evolution`` (kind name or mapping) (ODE variants only; see the module
            docstring), ``width`` (channel multiplier, default 1.0), ``norm`` ("batch", "group" or "batch_t").

    Raises:
        ValueError: unknown name, variant or option, an option that makes no sense for the
            variant, or an invalid option value (the engine validates ODE option values).
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; allowed: {tuple(MODELS)}")
    num_classes = _check_count(num_classes, "num_classes")
    in_channels = _check_count(in_channels, "in_channels")
    spec = resolve(variant, options)
    return MODELS[name](name, spec, num_classes, in_channels)
