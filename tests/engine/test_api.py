"""API v2: gradient modes and methods as values, one registry of shorthands, one set of defaults."""
import dataclasses
import inspect

import pytest
import torch
from torch import nn

import anodev2
import anodev2.models
from anodev2.adjoint import GRAD_MODES, get_grad_mode, with_checkpoint_options
from anodev2.solvers import RK4, TABLEAUX


def test_names_resolve_in_one_registry():
    assert {n: type(get_grad_mode(n)) for n in GRAD_MODES} == {
        "backprop": anodev2.Backprop, "checkpoint": anodev2.Checkpoint, "backsolve": anodev2.Backsolve}
    mode = anodev2.Checkpoint(checkpoints=3)
    assert get_grad_mode(mode) is mode and get_grad_mode("checkpoint") == anodev2.Checkpoint()
    with pytest.raises(ValueError, match=r"grad='adjoint' is not supported; allowed: \['backprop', 'checkpoint', "
                                         r"'backsolve'\] or an object"):
        get_grad_mode("adjoint")


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(checkpoints=-1), ValueError, r"checkpoints=...\) must be None \(keep every state\) or an int >= 0, got -1"),
    (dict(checkpoints=2.0), ValueError, r"int >= 0, got 2.0"),
    (dict(checkpoints=True), ValueError, r"int >= 0, got True"),
    (dict(keep_forward=1), TypeError, r"Checkpoint\(keep_forward=...\) must be a bool, got 1"),
    (dict(preserve_rng="yes"), TypeError, r"Checkpoint\(preserve_rng=...\) must be a bool, got 'yes'"),
])
def test_checkpoint_validates_once_on_construction(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        anodev2.Checkpoint(**kwargs)


def test_modes_are_frozen_values():
    c = anodev2.Checkpoint(4, keep_forward=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.checkpoints = 2
    assert c == anodev2.Checkpoint(checkpoints=4, keep_forward=True) and hash(c) == hash(anodev2.Checkpoint(4, True))
    assert anodev2.Backprop().checkpoints is None and c.checkpoints == 4


def test_odeint_is_keyword_only_after_t1():
    params = inspect.signature(anodev2.odeint).parameters
    assert [p.name for p in params.values() if p.kind == p.POSITIONAL_OR_KEYWORD] == ["func", "y0", "t0", "t1"]
    with pytest.raises(TypeError, match="positional"):
        anodev2.odeint(lambda t, y: -y, torch.ones(2), 0.0, 1.0, 4)


def test_odeint_and_odeblock_share_their_defaults():
    from anodev2.odeint import DEFAULT_GRAD, DEFAULT_METHOD, DEFAULT_STEPS
    block = anodev2.ODEBlock(nn.Identity())
    assert (block.steps, block.tableau, block.grad_mode) == (DEFAULT_STEPS, TABLEAUX[DEFAULT_METHOD], DEFAULT_GRAD)
    sig = inspect.signature(anodev2.odeint).parameters
    assert (sig["steps"].default, sig["method"].default, sig["grad"].default) == (DEFAULT_STEPS, DEFAULT_METHOD,
                                                                                 DEFAULT_GRAD)
    st = anodev2.SolveStats()
    y = torch.ones(1, 2, requires_grad=True)
    anodev2.odeint(lambda t, z: -z, y, stats=st).sum().backward()
    assert (st.method, st.steps, st.grad) == ("rk4", 4, "checkpoint")


def test_block_and_build_take_the_same_objects():
    mode = anodev2.Checkpoint(checkpoints=1, keep_forward=True)
    block = anodev2.ODEBlock(nn.Conv2d(2, 2, 3, padding=1), grad=mode, method=RK4, steps=3)
    assert block.grad_mode is mode and (block.grad, block.checkpoints, block.keep_forward) == ("checkpoint", 1, True)
    model = anodev2.models.build("resnet4", "anode", grad=mode, width=0.25)
    (_, blk), = anodev2.models.ode_blocks(model)
    assert blk.grad_mode == mode
    flat = anodev2.models.build("resnet4", "anode", checkpoints=1, keep_forward=True, width=0.25)
    assert anodev2.models.ode_blocks(flat)[0][1].grad_mode == mode


def test_flat_checkpoint_options_need_a_checkpoint_mode():
    assert with_checkpoint_options("backsolve", checkpoints=None, keep_forward=False) == anodev2.Backsolve()
    assert with_checkpoint_options("checkpoint", checkpoints=2) == anodev2.Checkpoint(2)
    with pytest.raises(ValueError, match=r"keep_forward=True only applies to grad='checkpoint', got grad='backprop'"):
        with_checkpoint_options("backprop", keep_forward=True)
    with pytest.raises(ValueError, match=r"unknown checkpoint option\(s\) \['slots'\]"):
        with_checkpoint_options("checkpoint", slots=2)
    with pytest.raises(ValueError, match="keep_forward=True only applies"):
        anodev2.models.build("resnet4", "neuralode", keep_forward=True, width=0.25)


def test_subpackage_all_lists_public_names_only():
    for mod in (anodev2, anodev2.adjoint, anodev2.solvers, anodev2.models):
        assert all(not n.startswith("_") for n in mod.__all__)
        assert all(hasattr(mod, n) for n in mod.__all__)
    assert "SolveSpec" not in anodev2.adjoint.__all__
