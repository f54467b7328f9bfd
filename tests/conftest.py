"""Shared test settings: deterministic, few threads (CI has 2 cores)."""
import pytest
import torch

torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: runs torch.compile (dynamo tracing; seconds, not milliseconds); "
                                       "deselect with -m 'not compile'")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
