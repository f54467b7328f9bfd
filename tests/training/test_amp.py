"""train.amp (issue 19 item 4): false | true (= fp16, CUDA float16 autocast + GradScaler) | bf16
(bfloat16 autocast on CPU or CUDA, no scaler). A bf16 run on the CPU trains and its training
loss tracks the float32 run's."""
import pytest
import torch
from helpers import TINY, metrics

from anodev2.training import config as C
from anodev2.training.cli import main
from anodev2.training.trainer import amp_dtype


@pytest.mark.parametrize("value, want", [(False, False), ("off", False), (True, True), ("fp16", True),
                                         ("bf16", "bf16"), ("bfloat16", "bf16")])
def test_amp_spellings(value, want):
    cfg = C.config_from_dict({"train": {"amp": value}})
    assert cfg.train.amp == want and type(cfg.train.amp) is type(want)
    assert amp_dtype(cfg.train.amp) == (torch.bfloat16 if want == "bf16" else torch.float16)


def test_amp_rejects_other_values_naming_the_allowed_ones():
    with pytest.raises(C.ConfigError, match=r"train.amp='int8' is not allowed; allowed: false \| true .* \| bf16"):
        C.config_from_dict({"train": {"amp": "int8"}})


def test_bf16_run_on_cpu_tracks_float32(tmp_path, capsys):
    """Two epochs of the tiny ANODEV2 run (2 steps each, checkpointed adjoint), float32 vs bf16
    autocast: each epoch's mean training loss agrees within 1 % (measured: <= 3e-4 relative).
    The test loss is not compared: a few test images through BatchNorm running statistics that
    bf16 rounds differently drifted apart by ~10 % at epoch 3 of the 64-image run (measured)
    without saying anything about the optimisation."""
    losses = {}
    for amp in ("false", "bf16"):
        out = tmp_path / amp
        assert main([*TINY, "data.subset_train=32", "data.subset_test=16", "train.epochs=2", "train.device=cpu", f"train.amp={amp}", "log.tensorboard=false",
                     "log.progress=false", f"out_dir={out}"]) == 0
        losses[amp] = [r["train_loss"] for r in metrics(out)]
    capsys.readouterr()
    assert len(losses["bf16"]) == len(losses["false"]) == 2
    for a, b in zip(losses["false"], losses["bf16"]):
        assert abs(a - b) <= 0.01 * abs(a), losses
