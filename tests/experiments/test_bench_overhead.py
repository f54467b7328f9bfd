"""The overhead benchmark's reference rows compute what the library computes: the hand-written
coupled rda loop (the evolving block's floor row) is the library's rda block, so its time ratio to
the hand static loop is the cost of the method, not of a different one."""
import csv

import torch

import anodev2
from experiments import bench_overhead as bo


def test_hand_rda_floor_row_is_the_library_rda_block():
    f = bo.make_f(4)
    static, rda, (speeds, react) = bo.hand_fields(f)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    block = anodev2.ODEBlock(f, steps=3, method="rk4", grad="backprop", evolution="rda", record_weights=False)
    o = f[0].weight.shape[0]
    coefs = {}
    for k, (name, rows) in enumerate((("0.weight", slice(0, o)), ("2.weight", slice(o, 2 * o)))):
        for j, term in enumerate(("advection_right", "advection_left", "advection_down", "advection_up")):
            coefs[f"{name}/{term}"] = speeds.detach()[rows, j]
        coefs[f"{name}/reaction"] = react.detach()[rows].reshape(o, 3, 3)
    block.evolution.set_coefficients(coefs)
    rda.fold()
    with torch.no_grad():
        hand = bo.hand_tuple("rk4", rda, (x, f[0].weight, f[2].weight), 3)[0]
        ref = block(x)
        plain = bo.hand_tuple("rk4", static, (x,), 3)[0]
    torch.testing.assert_close(hand, ref, rtol=1e-5, atol=1e-6)
    assert (hand - plain).abs().max() > 1e-3  # the evolution changes the output: the comparison means something


def test_quick_run_reports_the_evolving_floor(tmp_path, capsys):
    assert bo.main(["--quick", "--no-tdq", "--no-minimal", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "evolving block: hand rda / hand static =" in out
    rows = list(csv.DictReader(open(tmp_path / "overhead.csv")))
    floor = [r for r in rows if r["kind"] == "hand-rda" and r["clock"] == "cpu"]
    static = [r for r in rows if r["kind"] == "hand-func" and r["clock"] == "cpu"]
    assert len(floor) == len(static) == 1 and float(floor[0]["x_static"]) > 0  # a ratio was measured
    # q costs something in every regime: counted (deterministic), not timed (load-dependent)
    assert int(floor[0]["ops_per_step"]) > int(static[0]["ops_per_step"]) > 0
    assert {r["variant"] for r in rows} >= {"hand", "hand static, F.conv2d", "none/checkpoint", "rda/checkpoint"}
