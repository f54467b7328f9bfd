"""Unit tests of the training application's pieces: checkpoint files, RNG capture, TensorBoard views."""
import random

import numpy as np
import pytest
import torch

from anodev2 import models
from anodev2.training import tb_logging as tb
from anodev2.training.run_files import atomic_save, load_checkpoint, rng_state, set_rng_state


def test_atomic_save_replaces_whole_file_and_cleans_up(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_save({"a": torch.zeros(3), "b": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "ck.pt.sha256"]  # no temporary left behind


def test_rng_state_round_trips_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # populate numpy's cached gaussian state too
    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.randn(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.randn(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_kernel_grid_layout_and_common_colour_scale():
    w0 = torch.zeros(4, 2, 3, 3)
    w1 = w0.clone()
    w1[0, 0, 1, 1] = 2.0  # one positive value at t1
    w1[0, 1, 0, 0] = -1.0
    img = tb.kernel_grid([w0, w1], max_kernels=3, min_pixels=6)
    # 2 rows (t0, t1) x 3 kernels, each 3x3 upscaled x2 plus a 1-pixel frame: 8x8 cells
    assert img.shape == (3, 2 * 8, 3 * 8) and img.min() >= 0 and img.max() <= 1
    assert torch.equal(img[:, 1:7, 1:7], torch.ones(3, 6, 6))  # zero -> white
    centre = img[:, 8 + 3, 3]  # row t1, kernel 0, centre pixel: the maximum -> pure red
    assert torch.allclose(centre, torch.tensor([1.0, 0.0, 0.0]))
    corner = img[:, 8 + 1, 8 + 1]  # row t1, kernel 1, corner: -1 on scale 2 -> half blue
    assert torch.allclose(corner, torch.tensor([0.5, 0.5, 1.0]))
    assert torch.equal(img[:, 0, :], torch.zeros(3, 24))  # frame


class _Writer:
    def __init__(self):
        self.tags = {}

    def _add(self, kind, tag, value, step):
        self.tags.setdefault(tag, []).append((kind, step))

    def add_scalar(self, tag, value, step):
        assert value == value
        self._add("scalar", tag, value, step)

    def add_histogram(self, tag, value, step):
        self._add("hist", tag, value, step)

    def add_image(self, tag, value, step):
        assert value.dim() == 3 and value.shape[0] == 3
        self._add("image", tag, value, step)


def test_log_evolution_covers_every_evolving_weight_and_step():
    net = models.build("resnet4", "anodev2", width=0.25, steps=2)
    net.train()
    w = _Writer()
    found = tb.log_evolution(w, net, models.ode_blocks(net), torch.randn(2, 3, 32, 32), step=5, max_kernels=4)
    assert net.training  # mode restored
    assert found
    for name, block in models.ode_blocks(net):
        assert set(found[name]["weights"]) == set(block.evolving_names)
        for weight in block.evolving_names:
            times = found[name]["times"]
            assert times == block.evaluation_times()[:len(times)] and len(times) == block.steps  # euler: one per step
            for tag in tb.evolution_tags(name, weight, times=len(times)):
                assert w.tags[tag][0][1] == 5, tag
    anode = models.build("resnet4", "anode", width=0.25)
    assert tb.log_evolution(_Writer(), anode, models.ode_blocks(anode), torch.randn(2, 3, 32, 32), 1) == {}


def test_evolution_views_are_at_the_distinct_times_f_evaluated_theta():
    """rk4 x 2 on [0, 1] evaluates f at 0, 1/4 (twice), 1/2 (end of step 1 and start of step 2), 3/4
    (twice), 1: five distinct times, θ shown as f first saw it at each."""
    import anodev2

    f = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Tanh())
    block = anodev2.ODEBlock(f, steps=2, method="rk4", evolution="linear")
    with torch.no_grad():
        for p in block.evolution.parameters():  # θ1 ≠ 0: θ(t) differs at every time
            p.normal_()
        block(torch.randn(1, 2, 5, 5))
    times, weights = tb.evaluated_weights(block)
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0]
    seen = block.weights_at("evaluations")["0.weight"]
    first = [block.evaluation_times().index(t) for t in times]
    assert all(torch.equal(a, seen[i]) for a, i in zip(weights["0.weight"], first))
    assert not torch.equal(weights["0.weight"][0], weights["0.weight"][-1])
    static = anodev2.ODEBlock(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1)), steps=2, evolution="static")
    static(torch.randn(1, 2, 5, 5))
    assert tb.evaluated_weights(static) == ([], {})
