"""Issue 18's small library items: a wrong ``stats`` is a TypeError naming what is allowed, and ODEBlock takes
any integral ``steps`` (numpy integers too) exactly as odeint does."""
import numpy as np
import pytest
import torch
from torch import nn

import anodev2


@pytest.mark.parametrize("bad", [5, "stats", {}])
def test_odeint_stats_must_be_solvestats(bad):
    with pytest.raises(TypeError, match=r"stats must be an anodev2.SolveStats or None, got "):
        anodev2.odeint(lambda t, y: -y, torch.ones(2), steps=1, stats=bad)


def test_odeblock_steps_accepts_numpy_integers_like_odeint():
    torch.manual_seed(0)
    f = nn.Linear(3, 3).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    ref = anodev2.ODEBlock(f, steps=2, method="euler")
    blk = anodev2.ODEBlock(f, steps=np.int64(2), method="euler")
    assert blk.steps == 2 and type(blk.steps) is int
    assert torch.equal(blk(z), ref(z))
    assert torch.equal(anodev2.odeint(lambda t, y: f(y), z, steps=np.int64(2), method="euler"), ref(z))
    for bad in (True, 2.0, np.float64(2.0), 0, np.int64(0)):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            anodev2.ODEBlock(f, steps=bad)
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            anodev2.odeint(lambda t, y: f(y), z, steps=bad)
