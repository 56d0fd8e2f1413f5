import contextlib
import io
import os
import sys
from collections.abc import Callable

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


# A float32 forward pass whose bits change on the simulated CPU below: proof that the simulation is real.
FLOAT32_PROBE = """import hashlib, timm, torch, repnext
torch.manual_seed(0)
model = timm.create_model("repnext_m0", num_classes=8).eval()
print(hashlib.sha256(model(torch.randn(1, 3, 64, 64)).detach().numpy().tobytes()).hexdigest())"""


def run_here(code: str, *argv: str) -> str:
    """What ``python -c code *argv`` prints natively (``OMP_NUM_THREADS=1``), computed in this process on one
    thread and torch's defaults (a test may have changed the default dtype): the native half of a comparison with
    the simulated CPU, without a second interpreter importing torch."""
    threads, dtype, printed = torch.get_num_threads(), torch.get_default_dtype(), io.StringIO()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    saved_argv, sys.argv = sys.argv, ["-c", *argv]
    try:
        with contextlib.redirect_stdout(printed):
            exec(code, {"__name__": "__main__"})
    finally:
        sys.argv = saved_argv
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    return printed.getvalue()


@pytest.fixture(scope="session")
def natively() -> Callable[..., str]:
    return run_here


@pytest.fixture(scope="session")
def other_cpu_env() -> dict[str, str]:
    """The environment of a subprocess that computes as a CPU without this one's vector units would (ATen's scalar
    kernels, oneDNN, MKL and numpy capped at SSE4, two threads); skips where that changes no float32 result."""
    import subprocess

    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__

    other = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__), "OMP_NUM_THREADS": "2"}  # fmt: skip
    simulated = {**os.environ, "OMP_NUM_THREADS": "1", **other}
    probe = subprocess.run([sys.executable, "-c", FLOAT32_PROBE], env=simulated, capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    if probe == run_here(FLOAT32_PROBE):
        pytest.skip("capping this CPU's vector units changes no float32 result here: no other CPU to simulate")
    return other


def pytest_configure(config):
    """Refuse ``--dist loadgroup`` where it ignores the ``xdist_group`` marks that keep each group's expensive
    fixtures in one worker: pytest 9.2 with pytest-xdist up to 3.8 (pytest-xdist issue #1386)."""
    import xdist
    from packaging.version import Version

    broken = Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= Version("3.8")
    if broken and config.getoption("dist", "no") == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        versions = f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__}"
        raise pytest.UsageError(f"{versions} ignores xdist_group (pytest-xdist #1386): install requirements.lock's")


def pytest_addoption(parser):
    help_text = "write the digests of each reduced pipeline stage's outputs to tests/data/stage_outputs/"
    parser.addoption("--record-stage-outputs", action="store_true", help=help_text)
