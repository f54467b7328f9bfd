"""Fault injection driver for tests/training/test_run_safety.py (run as a script, one torch start-up for all cases).

    python tests/training/fault_driver.py SPEC.json REPORT.json

SPEC: {"args": [train_coupled.py arguments without out_dir], "work": DIR, "kill_every_point_of_epoch": EPOCH,
       "seeds": [train.seed values to try], "best_epochs": [epochs that must write best.pt],
       "cases": [{"at": "EPOCH:POINT", "action": "kill" | "enospc" | "sigterm" | "sigint",
                  "rerun": true to run the same command again instead of --resume}, ...]}

A traced, uninterrupted reference run (in this process) first records every point of the run's
file writes (``run_files.fault_hook``) as ``EPOCH:POINT`` (EPOCH = the epoch whose end is being
written, 0 while the outputs are opened). Each case then runs ``train_coupled.py`` (its ``main``,
in a forked child with stdout/stderr in files) into a fresh directory; at its point the child
SIGKILLs itself ("kill"), raises OSError(ENOSPC) ("enospc"), or sends itself SIGTERM / SIGINT.
Then another forked child runs ``--resume`` on that directory (and when the kill came before the
run had written its config.yaml, which --resume needs, the same command again). With
``kill_every_point_of_epoch``, a "kill" case is added for every traced point of that epoch's end.
Cases run in two forked groups at once. The report lists, per case, how each child ended, the
files left after the fault, what the checkpoints verify as, and both outputs.
"""
import errno
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # before any torch op: forked children then never enter an OpenMP region

from anodev2.training import run_files  # noqa: E402
from anodev2.training.cli import main  # noqa: E402


def _child(argv, out_prefix: Path, hook=None) -> dict:
    """Run main(argv) in a forked child; how it ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        status = 99
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                f = os.open(f"{out_prefix}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            run_files.fault_hook = hook
            status = main([str(a) for a in argv])
        except BaseException as e:  # a traceback: the test shows it
            import traceback
            traceback.print_exc()
            status = 98 if not isinstance(e, SystemExit) else e.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, st = os.waitpid(pid, 0)
    return {"status": os.waitstatus_to_exitcode(st),
            "stdout": Path(f"{out_prefix}.out").read_text(), "stderr": Path(f"{out_prefix}.err").read_text()}


def _at(target: str, action: str):
    state = {"epoch": 0}

    def hook(point: str):
        if point.startswith("epoch") and ":" not in point:
            state["epoch"] = int(point[5:])
        if f"{state['epoch']}:{point}" != target:
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        elif action in ("sigterm", "sigint"):
            os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGINT)
    return hook


def _state(d: Path) -> dict:
    """What the directory holds right after the fault: last.pt's epoch (strictly verified, or the error), the
    epoch recover_checkpoint finds, the number of metrics.jsonl lines."""
    out = {}
    for name in ("last.pt", "best.pt"):
        try:
            out[name] = run_files.load_checkpoint(d / name)["epoch"]
        except run_files.CheckpointError as e:
            out[name] = str(e)
        try:
            out[name + " recovered"] = run_files.recover_checkpoint(d / name)[0]["epoch"]
        except run_files.CheckpointError as e:
            out[name + " recovered"] = str(e)
    m = d / "metrics.jsonl"
    out["metrics lines"] = len(m.read_text().splitlines()) if m.exists() else None
    return out


def run(spec: dict) -> dict:
    work = Path(spec["work"])
    args = spec["args"]
    points = []

    def trace(point):
        if point.startswith("epoch") and ":" not in point:
            trace.epoch = int(point[5:])
        points.append(f"{trace.epoch}:{point}")
    trace.epoch = 0
    # the traced run also imports everything a run imports lazily (torch._dynamo through the optimiser,
    # TensorBoard), so that the forked children start warm. With "best_epochs", seeds are tried until
    # those epochs are all best-so-far epochs (so best.pt is written at each of them).
    for seed in spec.get("seeds", [None]):
        points.clear()
        trace.epoch = 0
        run_args = [*map(str, args)] + ([f"train.seed={seed}"] if seed is not None else [])
        ref = work / f"reference{seed if seed is not None else ''}"
        run_files.fault_hook = trace
        with open(f"{ref}.out", "w") as out:
            saved, sys.stdout = sys.stdout, out
            try:
                traced = {"status": main([*run_args, f"out_dir={ref}"]), "seed": seed, "dir": str(ref)}
            finally:
                sys.stdout = saved
                run_files.fault_hook = None
        recs = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
        if all(recs[e - 1].get("best") for e in spec.get("best_epochs", [])):
            break
    args = run_args
    cases = list(spec.get("cases", []))
    if spec.get("kill_every_point_of_epoch"):
        epoch = f"{spec['kill_every_point_of_epoch']}:"
        cases += [{"at": p, "action": "kill"} for p in points if p.startswith(epoch)]
    report = {"points": points, "reference": traced, "cases": []}
    # the cases are independent: run them in (at most 2) forked groups at once, each writing its part of the report
    groups = min(2, os.cpu_count() or 1, len(cases)) or 1
    pids = []
    for g in range(groups):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                part = [_case(i, cases[i], args, work) for i in range(g, len(cases), groups)]
                (work / f"part{g}.json").write_text(json.dumps(part))
                status = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(status)
        pids.append(pid)
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0, "a group of cases failed"
    parts = [json.loads((work / f"part{g}.json").read_text()) for g in range(groups)]
    report["cases"] = sorted((c for part in parts for c in part), key=lambda c: c["index"])
    return report


def _case(i: int, case: dict, args: list, work: Path) -> dict:
    d = work / f"case{i:02d}"
    faulted = _child([*args, f"out_dir={d}"], work / f"case{i:02d}", _at(case["at"], case["action"]))
    files = sorted(p.name for p in d.iterdir()) if d.is_dir() else None
    after = _state(d)
    again = [*args, f"out_dir={d}"] if case.get("rerun") else ["--resume", d]
    resumed = _child(again, work / f"case{i:02d}.resume")
    if resumed["status"] == 2 and not (d / "config.yaml").exists():  # killed before the run had a config:
        resumed["restarted"] = _child([*args, f"out_dir={d}"], work / f"case{i:02d}.restart")  # start anew
    return {**case, "index": i, "dir": str(d), "faulted": faulted, "files": files, "after": after, "resumed": resumed}

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(spec), indent=1))
