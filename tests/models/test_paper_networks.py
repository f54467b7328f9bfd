"""The networks against the ANODE code (github amirgholami/anode, models/) and He et al.'s CIFAR
ResNets: parameter counts, ODE-block positions, depth, and the sign of the ODE functions.

Counts are checked two ways: the ANODE code's numbers for its networks (SqNxt_23_1x: 461,466;
ResNet18: 11,173,962, 10 classes), and an independent closed-form count of each topology."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anodev2.models import build, format_description, ode_blocks, param_counts
from anodev2.models.summary import weight_layers


def conv(cin: int, cout: int, kh: int, kw: int, bias: bool) -> int:
    return cin * cout * kh * kw + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def resnet_count(widths, blocks, classes=10) -> int:
    """He et al.'s basic-block CIFAR ResNet: bias-free convs, projection shortcuts on shape change."""
    total = conv(3, widths[0], 3, 3, False) + bn(widths[0])
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            total += conv(cin, w, 3, 3, False) + bn(w) + conv(w, w, 3, 3, False) + bn(w)
            if stride != 1 or cin != w:
                total += conv(cin, w, 1, 1, False) + bn(w)
            cin = w
    return total + cin * classes + classes


def anode_sqnxt_count(classes=10) -> int:
    """The ANODE code's SqNxt_23_1x: convs with biases; reduction 1 at stride 2, 1/4 when
    shrinking channels, else 1/2; 1x1, 1x1, 1x3, 3x1, 1x1 convs per block."""

    def block(ci, co, stride):
        r = 1.0 if stride == 2 else (0.25 if ci > co else 0.5)
        m, h = int(ci * r), int(ci * r * 0.5)
        n = (conv(ci, m, 1, 1, True) + bn(m) + conv(m, h, 1, 1, True) + bn(h) + conv(h, m, 1, 3, True) + bn(m)
             + conv(m, m, 3, 1, True) + bn(m) + conv(m, co, 1, 1, True) + bn(co))
        if stride == 2 or ci != co:
            n += conv(ci, co, 1, 1, True) + bn(co)
        return n

    total, cin = conv(3, 64, 3, 3, True) + bn(64), 64
    for w, s in zip((32, 64, 128, 256), (1, 2, 2, 2)):
        total += block(cin, w, s) + block(w, w, 1)
        cin = w
    return total + conv(256, 128, 1, 1, True) + bn(128) + 128 * classes + classes


# name -> (ODE block paths, weight layers, closed-form parameter count)
EXPECTED = {
    "resnet4": (["layer1.0"], 8, resnet_count((16, 32, 64), (1, 1, 1))),
    "resnet10": (["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"], 20,
                 resnet_count((16, 32, 64), (3, 3, 3))),
    "resnet18": (["layer1.1", "layer2.1", "layer3.1", "layer4.1"], 18,
                 resnet_count((64, 128, 256, 512), (2, 2, 2, 2))),
    "sqnxt23": (["stage1.1", "stage2.1", "stage3.1", "stage4.1"], 43, anode_sqnxt_count()),
}


def test_closed_forms_give_the_anode_code_numbers():
    assert anode_sqnxt_count() == 461_466
    assert EXPECTED["resnet18"][2] == 11_173_962
    assert EXPECTED["resnet10"][2] == 272_474  # He et al.'s ResNet-20 (0.27 M parameters)


@pytest.mark.parametrize("variant", ["baseline", "anode"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_blocks_and_depth(name, variant):
    paths, depth, count = EXPECTED[name]
    model = build(name, variant)
    assert param_counts(model)["total"] == count
    assert [p for p, _ in ode_blocks(model)] == (paths if variant == "anode" else [])
    assert weight_layers(model) == depth
    assert format_description(model).startswith(f"{type(model).__name__}: {depth} weight layers, ")


def test_resnet18_first_block_is_discrete_with_identity_shortcut():
    model = build("resnet18", "anode", width=1 / 16)
    first = model.layer1[0]
    assert type(first).__name__ == "DiscreteBlock" and isinstance(first.shortcut, nn.Identity)


@pytest.mark.parametrize("name, final_relu", [("resnet18", True), ("sqnxt23", True), ("resnet4", False)])
def test_ode_function_ends_in_relu_as_in_the_anode_code(name, final_relu):
    torch.manual_seed(0)
    model = build(name, "anode", width=1 / 8)
    _, block = ode_blocks(model)[0]
    c = next(m for m in block.f.modules() if isinstance(m, nn.Conv2d)).in_channels
    out = block.f(torch.randn(4, c, 6, 6))
    assert (out.min() >= 0) == final_relu
