"""API v2: gradient modes and methods as values, one registry resolving every spelling of a mode
(object, name, config mapping), one set of defaults."""
import dataclasses
import inspect

import pytest
import torch
from torch import nn

import anodev2
import anodev2.models
from anodev2.adjoint import GRAD_MODES, get_grad_mode
from anodev2.solvers import RK4, TABLEAUX


def test_names_resolve_in_one_registry():
    assert {n: type(get_grad_mode(n)) for n in GRAD_MODES} == {
        "backprop": anodev2.Backprop, "checkpoint": anodev2.Checkpoint, "backsolve": anodev2.Backsolve}
    mode = anodev2.Checkpoint(checkpoints=3)
    assert get_grad_mode(mode) is mode and get_grad_mode("checkpoint") == anodev2.Checkpoint()
    with pytest.raises(ValueError, match=r"grad='adjoint' is not allowed; allowed: backprop \| checkpoint \| "
                                         r"backsolve, a mapping"):
        get_grad_mode("adjoint")


def test_mappings_resolve_to_the_same_objects_and_back():
    """The config spelling {"mode": ..., **options}: as_dict() writes it, get_grad_mode reads it back."""
    for mode in (anodev2.Backprop(), anodev2.Backsolve(), anodev2.Checkpoint(2, keep_forward=True, preserve_rng=False)):
        assert get_grad_mode(mode.as_dict()) == mode
    assert anodev2.Checkpoint(3).as_dict() == {"mode": "checkpoint", "checkpoints": 3, "keep_forward": False,
                                               "preserve_rng": True}
    assert get_grad_mode({"checkpoints": 2}, default_mode="checkpoint") == anodev2.Checkpoint(2)
    st = anodev2.SolveStats()  # odeint reads the mapping too (mode left out: its default, checkpoint)
    y = torch.ones(2, requires_grad=True)
    anodev2.odeint(lambda t, z: -z, y, steps=3, grad={"checkpoints": 1}, stats=st).sum().backward()
    assert (st.grad, st.checkpoints, st.checkpoints_held) == ("checkpoint", 1, 1)
    assert anodev2.Checkpoint.option_specs()["checkpoints"].allowed == "null | integer >= 0"
    assert anodev2.Backprop.option_specs() == {}


@pytest.mark.parametrize("value,exc,msg", [
    ({"checkpoints": 2}, ValueError, r"^model.grad=\{'checkpoints': 2\} needs 'mode'; allowed: backprop \| checkpoint"),
    ({"mode": "adjoint"}, ValueError, r"^model.grad.mode='adjoint' is not allowed; allowed: backprop \| checkpoint \| backsolve$"),
    ({"mode": "checkpoint", "slots": 2}, ValueError,
     r"^model.grad.slots is not an option of grad mode 'checkpoint'; allowed: checkpoints, keep_forward, preserve_rng$"),
    ({"mode": "backsolve", "checkpoints": 2}, ValueError, r"^model.grad.checkpoints is not an option of grad mode "
                                                         r"'backsolve'; allowed: no options"),
    ({"mode": "checkpoint", "checkpoints": -1}, ValueError,
     r"^model.grad.checkpoints=-1 is not allowed for grad mode 'checkpoint'; allowed: null \| integer >= 0$"),
    ({"mode": "checkpoint", "keep_forward": "yes"}, ValueError,
     r"^model.grad.keep_forward='yes' is not allowed for grad mode 'checkpoint'; allowed: true \| false$"),
    (3, TypeError, r"^model.grad must be a mode name \(backprop \| checkpoint \| backsolve\), a mapping"),
])
def test_bad_mappings_name_the_key_the_value_and_what_is_allowed(value, exc, msg):
    with pytest.raises(exc, match=msg):
        get_grad_mode(value, where="model.grad")


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
    assert not hasattr(anodev2.Backprop(), "checkpoints") and c.checkpoints == 4  # one mode's option, on that mode


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
    """The object given (or the one a mapping resolves to) reaches odeint unchanged: the solve's
    stats record its options."""
    mode = anodev2.Checkpoint(checkpoints=1, keep_forward=True)
    block = anodev2.ODEBlock(nn.Conv2d(2, 2, 3, padding=1), grad=mode, method=RK4, steps=3)
    assert block.grad_mode is mode
    assert anodev2.ODEBlock(nn.Identity(), grad=mode.as_dict()).grad_mode == mode
    assert anodev2.ODEBlock(nn.Identity(), grad={"keep_forward": True}).grad_mode == anodev2.Checkpoint(keep_forward=True)
    model = anodev2.models.build("resnet4", "anode", grad=mode, width=0.25)
    (_, blk), = anodev2.models.ode_blocks(model)
    assert blk.grad_mode is mode
    for grad in ({"checkpoints": 1, "keep_forward": True}, mode.as_dict()):  # mode left out: the variant's
        built = anodev2.models.build("resnet4", "anode", grad=grad, width=0.25)
        (_, blk), = anodev2.models.ode_blocks(built)
        assert blk.grad_mode == mode
    blk(torch.randn(2, 4, 8, 8, requires_grad=True)).sum().backward()
    assert (blk.last_stats.grad, blk.last_stats.checkpoints) == ("checkpoint", 1)


def test_flat_options_name_their_new_spelling():
    with pytest.raises(ValueError, match=r"option checkpoints=1 has moved: write grad=\{'checkpoints': 1\}"):
        anodev2.models.build("resnet4", "anode", checkpoints=1, width=0.25)
    with pytest.raises(ValueError, match=r"option keep_forward=True has moved: write grad=\{'keep_forward': True\}"):
        anodev2.models.build("resnet4", "anode", keep_forward=True, width=0.25)
    with pytest.raises(ValueError, match=r"grad.keep_forward is not an option of grad mode 'backsolve'"):
        anodev2.models.build("resnet4", "neuralode", grad={"keep_forward": True}, width=0.25)
    with pytest.raises(ValueError, match=r"option evolution_targets=\['conv1.weight'\] has moved: write "
                                         r"evolution=\{'targets': \['conv1.weight'\]\}"):
        anodev2.models.build("resnet4", "anodev2", evolution_targets=["conv1.weight"], width=0.25)
    with pytest.raises(TypeError, match=r"ODEBlock\(\) no longer takes evolution_targets.*"
                                        r"evolution=\{'kind': ..., 'targets': \['0.weight'\]\}"):
        anodev2.ODEBlock(nn.Conv2d(2, 2, 3), evolution="rda", evolution_targets=["0.weight"])


def test_subpackage_all_lists_public_names_only():
    for mod in (anodev2, anodev2.adjoint, anodev2.solvers, anodev2.models):
        assert all(not n.startswith("_") for n in mod.__all__)
        assert all(hasattr(mod, n) for n in mod.__all__)
    assert "SolveSpec" not in anodev2.adjoint.__all__
