import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per worker: two workers share the two cores without oversubscription


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread_kernels(monkeypatch):
    """Notebook kernels on one thread: the suite's two workers share two cores. Every test that starts kernels
    uses this one setting, so one kernel server (per worker) serves them all."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    help_text = "write the digests of each reduced pipeline stage's outputs to tests/data/stage_outputs/"
    parser.addoption("--record-stage-outputs", action="store_true", help=help_text)
