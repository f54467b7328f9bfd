"""Quick-mode runs of the engine experiments (bench_adjoint, memory_time_study, grad_accuracy).

These test the scripts (they run, write well-formed CSV/PNG into --out only, and the numbers
they record are consistent with the engine: exact checkpoint gradients, binomial recompute
counts, equal f-evaluation counts), not the science: quick sizes make timings meaningless.
"""
import csv
import math

import pytest

import experiments.bench_adjoint as ba
import experiments.grad_accuracy as ga
import experiments.memory_time_study as mts
from anodev2.adjoint import binomial_cost, slots_for
from experiments.bench import block as bc


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- grad_accuracy
def test_grad_accuracy_quick_csv_content(tmp_path):
    ga.main(["--quick", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "grad_accuracy.csv", "grad_accuracy.md", "grad_accuracy_summary.csv", "grad_accuracy_w1.png"]
    rows = _read(tmp_path / "grad_accuracy.csv")
    # quick: relu,tanh x BN no/yes x euler,rk4 x Nt 1,4 x 1 seed
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["activation"] for r in rows} == {"relu", "tanh"}
    for r in rows:
        # the discrete adjoint is exact: round-off against backprop (float64)
        assert float(r["ck_err_input"]) < 1e-10 and float(r["ck_err_params"]) < 1e-10, r
        # backsolve is not the gradient of the computed map; reversal does not return z(0)
        assert float(r["bs_err_input"]) > 1e-8 and float(r["bs_err_params"]) > 1e-8, r
        assert float(r["reverse_err"]) > 1e-8, r
    relu = [r for r in rows if r["activation"] == "relu"]
    assert max(float(r["bs_err_params"]) for r in relu) > 1e-3  # clearly inexact, not round-off
    summary = _read(tmp_path / "grad_accuracy_summary.csv")
    assert len(summary) == len(rows) and all(s["seeds"] == "1" for s in summary)


def test_grad_accuracy_cli(capsys):
    with pytest.raises(SystemExit) as e:
        ga.parse_args(["--help"])
    assert e.value.code == 0 and "backsolve" in capsys.readouterr().out
    for bad in (["--activations", "sigmoid"], ["--methods", "dopri5"], ["--seeds", "0"], ["--weight-scale", "1,-1"]):
        with pytest.raises(SystemExit) as e:
            ga.parse_args(bad)
        assert e.value.code == 2, bad


# ----------------------------------------------------------------------------- bench_adjoint
def test_bench_adjoint_quick(tmp_path, capsys):
    ba.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "torch.set_num_threads(1)" in out and "Targets at Nt=4" in out and "in-process" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_adjoint.csv", "bench_adjoint.md"]
    rows = {r["variant"]: r for r in _read(tmp_path / "bench_adjoint.csv")}
    want = {"backprop", "checkpoint(all)", "checkpoint(c=2)", "checkpoint(c=4)", "checkpoint(all, keep fwd)",
            "backsolve"}
    if bc.have_torchdiffeq():
        want |= {"torchdiffeq odeint", "torchdiffeq odeint_adjoint"}
    assert set(rows) == want
    nt = 4
    for name, r in rows.items():
        assert int(r["steps"]) == nt
        assert int(r["f_calls_forward"]) == 4 * nt, name  # rk4 (classical or 3/8): 4 evals per step
        assert float(r["time_s"]) > 0 and float(r["cpu_s"]) > 0 and math.isfinite(float(r["mem_mib"]))
        assert float(r["baseline_rss_mib"]) > 0
    for name in ("checkpoint(all)", "checkpoint(c=2)", "checkpoint(c=4)"):
        r = rows[name]
        c = None if r["checkpoints"] == "" else int(r["checkpoints"])
        t = binomial_cost(nt, slots_for(nt, c))
        assert int(r["recomputed_steps"]) == t
        assert int(r["f_calls_step"]) == 4 * (nt + t + nt)  # forward + recompute + reverse
        assert int(r["checkpoints_held"]) == slots_for(nt, c)
    keep = rows["checkpoint(all, keep fwd)"]  # the forward's states: nothing recomputed
    assert int(keep["recomputed_steps"]) == 0 and int(keep["f_calls_step"]) == 4 * (nt + nt)
    assert int(rows["backprop"]["f_calls_step"]) == 4 * nt
    assert int(rows["backsolve"]["f_calls_step"]) == 8 * nt
    if bc.have_torchdiffeq():
        assert int(rows["torchdiffeq odeint"]["f_calls_step"]) == 4 * nt
        assert int(rows["torchdiffeq odeint_adjoint"]["f_calls_step"]) == 8 * nt
        # in-process (quick) rows share one RSS high-water mark: the memory column may be 0 (ratio empty)
        mem_ratio = rows["torchdiffeq odeint"]["mem_vs_tdq_odeint"]
        assert mem_ratio == "" or float(mem_ratio) == pytest.approx(1.0)
        assert out.count("PASS") + out.count("MISS") == 8  # 4 time targets x (wall, cpu); memory SKIP: in-process
        assert out.count("SKIP") == 2


def test_bench_worker_runs_in_a_fresh_subprocess():
    """The measurement path of the real runs: one row in a fresh python, memory above baseline."""
    cfg = bc.BenchConfig(batch=2, channels=4, size=8, warmup=0, repeats=1)
    rec = bc.spawn(cfg, 3, "checkpoint", 0)
    assert rec["stats"]["recomputed_steps"] == binomial_cost(3, 0) == 3
    assert rec["stats"]["checkpoints_held"] == 0
    assert rec["f_calls_forward"] == 12 and rec["f_calls_step"] == 4 * (3 + 3 + 3)
    assert rec["threads"] == 1 and rec["mmap_threshold_fixed"] in (True, False)
    assert rec["peak_rss_mib"] > 50 and rec["time_s"] > 0 and rec["cpu_s"] > 0
    with pytest.raises(ValueError, match="mode must be one of"):
        bc.spawn(cfg, 3, "adjoint")


def test_bench_adjoint_memory_accounting():
    """The floor's terms: states held at a reversal (Nt - 1 for every state, else the c slots and
    one transient), and one rk4 step's saved graph of conv-GroupNorm-ReLU-conv: 3 stage inputs and,
    per evaluation, the conv1 output and the ReLU output (11 states) plus GroupNorm's mean and rstd."""
    for nt in range(1, 12):
        for c in (None, *range(0, nt + 2)):
            assert ba.peak_held_states(nt, c) == (nt - 1 if c is None else min(nt - 1, c + 1)), (nt, c)
    cfg = ba.bc.BenchConfig(batch=2, channels=8, size=6)
    s_bytes, graph = ba.step_graph_bytes(cfg, 4)
    assert s_bytes == 2 * 8 * 6 * 6 * 4
    assert graph == 11 * s_bytes + 4 * 2 * (2 * 8) * 4  # 4 evaluations x (mean, rstd) of [B, groups] floats
    rows = [{"steps": 4, "mode": "checkpoint", "checkpoints": None, "variant": "checkpoint(all)", "mem_mib": 1.0}]
    lines = ba.memory_accounting(cfg, rows, 4)
    assert "G = " in lines[0] and lines[-1].split()[1] == "3"  # 3 states held


def test_bench_adjoint_targets_and_missing_torchdiffeq(monkeypatch):
    def row(variant, mem, t, cpu):
        return {"variant": variant, "steps": 16, "mem_mib": mem, "time_s": t, "cpu_s": cpu,
                "mem_vs_tdq_odeint": mem / 400.0}

    rows = [row("torchdiffeq odeint", 400.0, 2.0, 2.0), row("torchdiffeq odeint_adjoint", 40.0, 3.0, 3.0),
            row("backprop", 390.0, 2.1, 1.9), row("checkpoint(all)", 60.0, 2.9, 2.9),
            row("checkpoint(c=4)", 50.0, 3.5, 3.5), row("checkpoint(all, keep fwd)", 70.0, 2.9, 2.9)]
    got = {d: (None if v is None else round(v, 4), verdict) for d, v, _, verdict in ba.targets(rows, 16)}
    assert got["checkpoint(all) memory / torchdiffeq odeint"] == (0.15, "PASS")  # bound 0.16
    assert got["checkpoint(c=4) memory / torchdiffeq odeint"] == (0.125, "MISS")  # bound 0.11
    assert got["checkpoint(all, keep fwd) wall time / torchdiffeq odeint"] == (1.45, "PASS")  # bound 1.5
    assert got["backprop wall time / torchdiffeq odeint (no slower: <= 1)"] == (1.05, "MISS")
    assert got["backprop cpu time / torchdiffeq odeint (no slower: <= 1)"] == (0.95, "PASS")
    assert got["checkpoint(all) cpu time / torchdiffeq odeint_adjoint (faster: < 1)"][1] == "PASS"
    no_tdq = [{**r, "mem_vs_tdq_odeint": None} for r in rows if "torchdiffeq" not in r["variant"]]
    skipped = ba.targets(no_tdq, 16)
    assert [verdict for *_, verdict in skipped] == ["SKIP"] * 10  # every target compares with torchdiffeq

    monkeypatch.setattr(ba.bc, "have_torchdiffeq", lambda: False)
    variants, notes = ba.select_variants(no_torchdiffeq=False)
    assert variants and not any(v.needs_torchdiffeq for v in variants)
    assert "requirements-bench.txt" in notes[0]
    with pytest.raises(SystemExit):
        ba.parse_args(["--batch", "0"])


# ----------------------------------------------------------------------------- memory_time_study
def test_memory_time_study_quick(tmp_path):
    rows, recompute = mts.main(["--quick", "--no-torchdiffeq", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "memory_time.png", "memory_time_study.csv", "memory_time_study.md", "recompute_counts.csv"]
    rec = _read(tmp_path / "recompute_counts.csv")
    assert [(r["steps"], r["checkpoints"]) for r in rec] == [("3", "0"), ("3", "1"), ("3", "all")]
    for r in rec:
        c = None if r["checkpoints"] == "all" else int(r["checkpoints"])
        assert int(r["recomputed_measured"]) == int(r["recomputed_optimal"]) == binomial_cost(3, slots_for(3, c))
        assert int(r["checkpoints_held"]) == slots_for(3, c)
    modes = [r["mode"] for r in _read(tmp_path / "memory_time_study.csv")]
    assert modes.count("checkpoint") == 3 and "backprop" in modes and "backsolve" in modes
    assert not any(m.startswith("tdq") for m in modes)
    assert (tmp_path / "memory_time.png").stat().st_size > 10_000


def test_memory_time_study_budget_parsing():
    assert mts.parse_budgets("0, 2,all") == [0, 2, None]
    for bad in ("-1", "x", ""):
        with pytest.raises(Exception):
            mts.parse_budgets(bad)


def test_profile_models_quick_sees_the_evolution_ops(capsys):
    """profile_models --quick profiles both variants; only ANODEV2 runs the weight ODE's batched
    matmul (the rda evolution applies its folded operators with bmm), and its step issues more ops."""
    from experiments import profile_models

    anode, v2 = profile_models.main(["--quick"])
    assert anode.get("aten::bmm", (0.0, 0.0))[1] == 0 and v2["aten::bmm"][1] > 0
    assert sum(n for _, n in v2.values()) > sum(n for _, n in anode.values())
    assert "anodev2: self CPU" in capsys.readouterr().out
