"""Shared test problems and helpers, imported by every test folder (``from helpers import rel_err``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def compile_and_compare(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, dict]:
    """Compile ``net`` with ``anodev2.compile`` (aot_eager: dynamo tracing, no code generation), assert
    that its parameter gradients of ``mean(net(x)^2)`` equal eager's (rtol 1e-5, atol 1e-7), and
    return ``(compiled, graph breaks counted while tracing and running it)``."""
    import anodev2
    from torch._dynamo.utils import counters

    def grads(model):
        net.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    eager = grads(net)
    counters.clear()
    compiled = anodev2.compile(net, backend="aot_eager")
    for a, b in zip(eager, grads(compiled)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    return compiled, dict(counters["graph_break"])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, tiny)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ----------------------------------------------------------------------------- train_coupled.py in a subprocess
REPO = Path(__file__).resolve().parents[1]
#: a tiny run of the smoke config on synthetic data: 64 / 32 images, 4 steps of 16 per epoch
TINY = ["--config", "smoke", "data.name=synthetic", "data.subset_train=64", "data.subset_test=32",
        "model.width=0.25", "train.batch_size=16", "log.evolution_batch=2", "model.steps=3"]


def cli_env() -> dict:
    """The environment of a train_coupled.py subprocess: unbuffered, one thread (robust on a busy 2-core machine)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def run_cli(*args, launcher=(), timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run ``python [launcher] train_coupled.py ARGS`` in the repository; captured text output."""
    return subprocess.run([sys.executable, *launcher, str(REPO / "train_coupled.py"), *map(str, args)],
                           cwd=kw.pop("cwd", REPO), env=cli_env(), capture_output=True, text=True,
                           timeout=timeout, **kw)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Assert exit status 0 (showing the output otherwise)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def metrics(run_dir) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl (strict JSON: a bare NaN fails here)."""
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return [json.loads(line, parse_constant=no_constants)
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def hold_run_lock(run_dir) -> subprocess.Popen:
    """Another live process holding RUN_DIR/run.lock as a run does (flock + its PID), without importing torch."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.ftruncate(fd, 0); "
            "os.write(fd, f'{os.getpid()}\\n'.encode()); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(Path(run_dir) / "run.lock")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
