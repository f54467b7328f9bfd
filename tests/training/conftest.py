"""Runs shared by the training tests (session-scoped: each tiny run is trained once per test session)."""
import pytest
from helpers import TINY, ok, run_cli


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    proc = ok(run_cli(*TINY, "train.epochs=2", f"out_dir={out}"))
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    ok(run_cli(*TINY, "train.epochs=1", f"out_dir={out}"))
    return out
