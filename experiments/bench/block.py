"""One ODE block, one gradient mode per fresh subprocess, peak RSS and median training-step
time: the measurement of ``bench_adjoint.py`` and ``memory_time_study.py``.

The block (ANODE, Gholami et al. 2019, arXiv 1902.10298): ``dz/dt = f(z)`` on ``t in [0, 1]``
with ``f = conv3x3 -> BatchNorm -> ReLU -> conv3x3`` (C -> C channels), input ``[B, C, H, W]``,
``Nt`` fixed steps of an explicit RK method. A *variant* is how the block is differentiated:

* ``backprop``           anodev2, autograd through the unrolled solver
* ``checkpoint``         anodev2 discrete adjoint; ``checkpoints=None`` ("all") or a slot count c
* ``backsolve``          anodev2 reverse-time continuous adjoint (Chen et al. 2018)
* ``tdq_odeint``         torchdiffeq 0.2.5 ``odeint`` (autograd through its loop)
* ``tdq_adjoint``        torchdiffeq 0.2.5 ``odeint_adjoint``

torchdiffeq's ``"rk4"`` is the 3/8-rule (``rk4_alt_step_func``), ours the classical tableau;
both take 4 evaluations of ``f`` per step, and with ``options={"step_size": 1/Nt}`` on
``t = [0, 1]`` torchdiffeq takes exactly ``Nt`` steps. Every worker counts the calls of ``f``
(forward pass and whole training step) so the equality is measured, not assumed.

Measurement (fresh ``subprocess`` es of ``sys.executable``, threads fixed by
``torch.set_num_threads``), per variant:

* memory, in one fresh process: the RSS high-water mark (``/proc/self/status`` VmHWM, else
  ``getrusage`` ``ru_maxrss``) over a warm-up and a measured SGD training step (forward, loss,
  backward, parameter update) minus that of the *forward-only baseline*, a fresh process that
  builds the same block (anodev2's, or the torchdiffeq wrapper for the torchdiffeq rows) and
  runs the same forward under ``torch.no_grad()``. The difference is the memory a training step
  adds (activations kept for backward, checkpoints, gradients, autograd buffers). This process
  fixes glibc's mmap threshold (``mmap_threshold``, via ``mallopt``) so every freed tensor
  buffer goes back to the OS and the peak is that of live memory, not of heap fragmentation;
* time, in another fresh process with glibc's default allocator: ``warmup`` + ``repeats``
  training steps; medians of wall time, of process CPU time and of the forward/backward split.

Worker entry point (internal): ``python -m experiments.bench.block --worker JSON``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from experiments.bench.args import NORMS
from experiments.bench.memory import fix_mmap_threshold, peak_rss_mib
from experiments.bench.timing import time_steps

ROOT = Path(__file__).resolve().parents[2]
MODES = ("forward", "tdq_forward", "backprop", "checkpoint", "backsolve", "tdq_odeint", "tdq_adjoint")
TDQ_MODES = ("tdq_forward", "tdq_odeint", "tdq_adjoint")
TDQ_MISSING = ("torchdiffeq is not installed: its rows are skipped. Install the optional benchmark "
               "requirements with `pip install -r requirements-bench.txt` to compare against it.")


IN_PROCESS_NOTE = ("rows ran in this process (--isolation in-process, the --quick default): no fresh "
                   "subprocess per row, so the memory column is not a per-row measurement")


def have_torchdiffeq() -> bool:
    """True if ``torchdiffeq`` can be imported (checked without importing it: it pulls in scipy)."""
    return importlib.util.find_spec("torchdiffeq") is not None


@dataclass(frozen=True)
class Variant:
    """One way of differentiating the block: ``mode`` in :data:`MODES` (not a "*forward"
    baseline) and, for
    ``checkpoint``, ``checkpoints`` = None (every state) or a slot count c >= 0."""

    mode: str
    checkpoints: Optional[int] = None
    keep_forward: bool = False  # checkpoint only: keep the forward pass's states (odeint keep_forward)

    @property
    def label(self) -> str:
        if self.mode == "checkpoint":
            keep = ", keep fwd" if self.keep_forward else ""
            return f"checkpoint({'all' if self.checkpoints is None else f'c={self.checkpoints}'}{keep})"
        return {"tdq_odeint": "torchdiffeq odeint", "tdq_adjoint": "torchdiffeq odeint_adjoint"}.get(
            self.mode, self.mode)

    @property
    def needs_torchdiffeq(self) -> bool:
        return self.mode in TDQ_MODES


@dataclass
class BenchConfig:
    """Sizes and measurement settings shared by all variants of one run."""

    batch: int = 32
    channels: int = 16
    size: int = 32
    method: str = "rk4"
    norm: str = "group"  # the normalisation inside f: "group" (GroupNorm, issue 8's setting) or "batch"
    threads: int = 1
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    mmap_threshold: int = 65536
    isolate: bool = True

    def check(self) -> None:
        for name in ("batch", "channels", "size", "threads", "repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if self.method != "rk4":
            raise ValueError(f"method must be 'rk4' (the only method compared with torchdiffeq here), "
                             f"got {self.method!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.mmap_threshold, int) or self.mmap_threshold < 0:
            raise ValueError(f"mmap_threshold must be an int >= 0 (0: glibc default), got {self.mmap_threshold!r}")


# ----------------------------------------------------------------------------------------------
# worker side (runs in the fresh subprocess)
# ----------------------------------------------------------------------------------------------
def build_block(spec: dict):
    """(model, f, x): the block as an nn.Module for the requested mode, its field f (which counts
    its calls in ``f.calls``) and the input ``x [B, C, H, W]`` (requires grad, as inside a net)."""
    import torch
    from torch import nn

    import anodev2

    class Field(nn.Module):
        """f(t, z) = conv(ReLU(norm(conv(z)))), C -> C channels, 3x3, padding 1; norm is
        GroupNorm(gcd(C, 8) groups) or BatchNorm (``spec["norm"]``)."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.norm = nn.GroupNorm(math.gcd(c, 8), c) if spec.get("norm", "group") == "group" else nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)
            self.calls = 0

        def forward(self, t, z):
            self.calls += 1
            return self.conv2(torch.relu(self.norm(self.conv1(z))))

    torch.manual_seed(spec["seed"])
    c, nt, mode = spec["channels"], spec["steps"], spec["mode"]
    f = Field(c)
    if mode in TDQ_MODES:
        import torchdiffeq

        solve = torchdiffeq.odeint_adjoint if mode == "tdq_adjoint" else torchdiffeq.odeint

        class TdqBlock(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.f = f
                self.register_buffer("t", torch.tensor([0.0, 1.0]))

            def forward(self, z):
                return solve(self.f, z, self.t, method=spec["method"], options={"step_size": 1.0 / nt})[-1]

        model = TdqBlock()
    else:
        grad = "backprop" if mode == "forward" else mode
        if grad == "checkpoint":
            grad = anodev2.Checkpoint(checkpoints=spec.get("checkpoints"), keep_forward=bool(spec.get("keep_forward")))
        model = anodev2.ODEBlock(f, steps=nt, method=spec["method"], grad=grad)
    x = torch.randn(spec["batch"], c, spec["size"], spec["size"], requires_grad=True)
    return model, f, x


def _page_in_library_code(f, x) -> None:
    """Make lazily loaded library code resident in every worker, baselines included, so that it
    cancels in the difference: one throw-away vector-Jacobian product of a copy of ``f`` on a
    ``[1, C, 4, 4]`` input. Without it, whichever rows first run a backward would count ~10 MiB
    of libtorch code pages, and those that call ``torch.autograd.grad(..., grad_outputs=...)``
    (checkpoint, backsolve, odeint_adjoint) ~35 MiB more for the ``sympy`` that it imports on
    first use (``torch.fx.experimental.symbolic_shapes``), as 'training memory'."""
    import copy

    import torch

    g = copy.deepcopy(f)
    z = torch.randn(1, x.shape[1], 4, 4, requires_grad=True)
    out = g(torch.zeros(()), z)
    torch.autograd.grad(out, [z, *g.parameters()], grad_outputs=torch.ones_like(out))


def run_worker(spec: dict) -> dict:
    """Measure one variant (or a forward-only baseline, mode "forward" / "tdq_forward") in
    this process; ``spec["phase"]`` says what:

    * "memory": glibc's mmap threshold is fixed at ``mmap_threshold`` bytes (``mallopt``), so
      every freed tensor buffer goes back to the OS and VmHWM is the peak of live memory rather
      than of heap fragmentation; one warm-up and one measured step (or forward).
    * "time": the allocator is left at glibc's defaults (what a user gets; no memory phase before
      it, whose allocation pattern would change the heap state); ``warmup`` + ``repeats`` steps,
      medians of wall time, process CPU time and the forward/backward split.
    * "both": "memory" then "time" in one process (in-process smoke runs).
    """
    import torch

    phase = spec.get("phase", "both")
    if phase not in ("memory", "time", "both"):
        raise ValueError(f"phase must be 'memory', 'time' or 'both', got {phase!r}")
    torch.set_num_threads(spec["threads"])
    fixed = phase == "memory" and fix_mmap_threshold(spec["mmap_threshold"])
    model, f, x = build_block(spec)
    if phase != "time":  # the time phase's warm-up step loads the code; only memory needs it beforehand
        _page_in_library_code(f, x)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    forward_only = spec["mode"] in ("forward", "tdq_forward")
    split = []  # (forward s, backward s) of the last step

    def step() -> tuple[int, int]:
        f.calls = 0
        t0 = time.perf_counter()
        if forward_only:
            with torch.no_grad():
                model(x)
            split[:] = [time.perf_counter() - t0, 0.0]
            return f.calls, f.calls
        loss = model(x).square().mean()
        fwd = f.calls
        t1 = time.perf_counter()
        loss.backward()
        with torch.no_grad():  # plain SGD by hand: torch.optim would import torch._dynamo (~2 s, ~180 MiB)
            for p in params:
                p.add_(p.grad, alpha=-1e-3)
                p.grad = None
        x.grad = None
        split[:] = [t1 - t0, time.perf_counter() - t1]
        return fwd, f.calls

    rec = {"threads": torch.get_num_threads(), "mmap_threshold_fixed": fixed, "torch": torch.__version__}
    if phase in ("memory", "both"):
        for _ in range(2):
            calls = step()
        rec["peak_rss_mib"] = peak_rss_mib()
    if phase in ("time", "both"):
        fwd, bwd, counted = [], [], []

        def timed_step() -> None:
            counted[:] = [step()]

        def record_split() -> None:
            fwd.append(split[0])
            bwd.append(split[1])

        rec.update(time_steps(timed_step, spec["warmup"], spec["repeats"], on_timed=record_split))
        rec.update(forward_s=statistics.median(fwd), backward_s=statistics.median(bwd))
        calls = counted[0]
    rec.update(f_calls_forward=calls[0], f_calls_step=calls[1],
               stats=model.last_stats.as_dict() if hasattr(model, "last_stats") and not forward_only else None)
    return rec


# ----------------------------------------------------------------------------------------------
# driver side
# ----------------------------------------------------------------------------------------------
def _worker_env(threads: int) -> dict:
    """The subprocess environment: OpenMP threads = ``threads`` (glibc's mmap threshold is set
    inside the memory worker, see :func:`run_worker`)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def spawn(cfg: BenchConfig, steps: int, mode: str, checkpoints: Optional[int] = None,
          keep_forward: bool = False) -> dict:
    """Measure one row: its memory in one fresh ``sys.executable`` subprocess and its time in
    another (see :func:`run_worker`); returns the merged record.

    With ``cfg.isolate = False`` (smoke tests only) both run in this process instead: no
    subprocess start-up, but the RSS peak is the whole process's, so memory is not measured."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    spec = {**asdict(cfg), "steps": steps, "mode": mode, "checkpoints": checkpoints, "keep_forward": keep_forward}
    if not cfg.isolate:
        return _in_process({**spec, "phase": "both"})
    mem = _subprocess({**spec, "phase": "memory"})
    rec = _subprocess({**spec, "phase": "time"})
    rec.update(peak_rss_mib=mem["peak_rss_mib"], mmap_threshold_fixed=mem["mmap_threshold_fixed"])
    for key in ("f_calls_forward", "f_calls_step", "stats"):
        if mem[key] != rec[key]:
            raise RuntimeError(f"memory and time runs of {mode} disagree on {key}: {mem[key]} vs {rec[key]}")
    return rec


def _subprocess(spec: dict) -> dict:
    """``run_worker(spec)`` in a fresh ``sys.executable``; returns its JSON record."""
    mode, steps, checkpoints = spec["mode"], spec["steps"], spec["checkpoints"]
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.block", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=_worker_env(spec["threads"]), cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {mode} ({spec['phase']}, steps={steps}, checkpoints={checkpoints}) "
                           f"failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _in_process(spec: dict) -> dict:
    """``run_worker`` in this process, leaving its thread count and allocator settings alone."""
    import torch

    threads = torch.get_num_threads()
    try:
        return run_worker({**spec, "mmap_threshold": 0})
    finally:
        torch.set_num_threads(threads)


@dataclass
class Row:
    """One measured variant at one Nt (memory in MiB above the forward-only baseline)."""

    steps: int
    variant: str
    mode: str
    checkpoints: Optional[int]
    mem_mib: float
    time_s: float
    time_min_s: float
    time_max_s: float
    cpu_s: float
    step_forward_s: float
    step_backward_s: float
    peak_rss_mib: float
    baseline_rss_mib: float
    baseline_forward_s: float
    f_calls_forward: int
    f_calls_step: int
    threads: int
    recomputed_steps: Optional[int] = None
    backward_steps: Optional[int] = None
    checkpoints_held: Optional[int] = None
    extra: dict = field(default_factory=dict)


def measure(cfg: BenchConfig, steps: int, variants: list[Variant], pool: Optional[Executor] = None,
            log=print) -> list[Row]:
    """Every variant at ``steps``, each in its own subprocess, with the forward-only baseline of
    its own block (anodev2's, and torchdiffeq's when a torchdiffeq variant is present).
    ``pool`` (e.g. a ThreadPoolExecutor) runs the subprocesses concurrently: fine for smoke
    tests, but concurrent workers compete for cores and distort the timings."""
    submit = pool.submit if pool is not None and cfg.isolate else (lambda fn, *a: _Done(fn(*a)))
    fams = [(fam, mode) for fam, mode in (("anodev2", "forward"), ("torchdiffeq", "tdq_forward"))
            if any(v.needs_torchdiffeq == (fam == "torchdiffeq") for v in variants)]
    base_jobs = {fam: submit(spawn, cfg, steps, mode) for fam, mode in fams}
    jobs = [submit(spawn, cfg, steps, v.mode, v.checkpoints, v.keep_forward) for v in variants]
    bases = {fam: j.result() for fam, j in base_jobs.items()}
    for fam, b in bases.items():
        log(f"  Nt={steps:<3d} forward-only baseline ({fam}): peak RSS {b['peak_rss_mib']:.1f} MiB, "
            f"forward {b['time_s'] * 1e3:.1f} ms, {b['f_calls_forward']} f evals")
    rows = []
    for v, job in zip(variants, jobs):
        r = job.result()
        base = bases["torchdiffeq" if v.needs_torchdiffeq else "anodev2"]
        st = r["stats"] or {}
        ck = v.mode == "checkpoint"
        row = Row(steps=steps, variant=v.label, mode=v.mode, checkpoints=v.checkpoints,
                  mem_mib=r["peak_rss_mib"] - base["peak_rss_mib"], time_s=r["time_s"],
                  time_min_s=min(r["times_s"]), time_max_s=max(r["times_s"]), cpu_s=r["cpu_s"],
                  step_forward_s=r["forward_s"], step_backward_s=r["backward_s"],
                  peak_rss_mib=r["peak_rss_mib"], baseline_rss_mib=base["peak_rss_mib"],
                  baseline_forward_s=base["time_s"], f_calls_forward=r["f_calls_forward"],
                  f_calls_step=r["f_calls_step"], threads=r["threads"],
                  recomputed_steps=st.get("recomputed_steps") if ck else None,
                  backward_steps=st.get("backward_steps"),
                  checkpoints_held=st.get("checkpoints_held") if ck else None)
        log(f"  Nt={steps:<3d} {v.label:<27s} +{row.mem_mib:8.1f} MiB  {row.time_s * 1e3:9.1f} ms/step "
            f"(cpu {row.cpu_s * 1e3:9.1f} ms)  "
            f"f evals fwd/step {row.f_calls_forward}/{row.f_calls_step}")
        rows.append(row)
    return rows


class _Done:
    """A finished 'future' (sequential runs without an executor)."""

    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


def row_dict(r: Row) -> dict:
    d = asdict(r)
    d.update(d.pop("extra"))
    return d


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("internal worker of experiments/bench_adjoint.py and experiments/memory_time_study.py; "
                 "run one of those instead")
