"""Shared test set-up: Triton runs under its interpreter on machines without a GPU.

``TRITON_INTERPRET`` must be set before any Triton kernel module is imported, so it is set here,
at collection time, and only when no CUDA device exists (on a GPU the same tests run natively).
"""
import os
import signal

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A test run started in the background (`nohup`, `cmd &` in a script) inherits SIGINT as ignored,
# and so would every fastmde process the tests start: the Ctrl-C tests need Python's handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Hypothesis draws the same examples on every run (derandomize), so that a run of the suite (CI's
# included) is reproducible; `pytest --hypothesis-profile explore` draws fresh random examples, to
# look for new failures (a failure it finds becomes an @example of its test).
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Under pytest-xdist (`pytest -n N`) each worker is one process per core: one thread each, so
# that N workers do not fight over the cores with N thread pools.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path_factory):
    """Nothing downloads in the tests: torch hub's fetches fail as they do offline, and its cache
    ($TORCH_HOME) is an empty folder of the session, so a test that needs ImageNet weights puts a
    file there itself (tests/test_imagenet_weights.py) and the user's own cache plays no part."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))


@pytest.fixture
def triton_backend():
    """Force the Triton kernels for the test (CPU tensors go through the interpreter); yields the
    device to put tensors on."""
    import fastmde
    from fastmde import _backend

    _backend.set_backend("triton")
    try:
        yield torch.device("cuda" if torch.cuda.is_available() else "cpu")
    finally:
        _backend.set_backend(None)


@pytest.fixture
def native_backend():
    """Force the C++ kernels for the test; fails (never skips) when fastmde._C is missing."""
    from fastmde import _backend
    from native_kernel_helpers import require_native_extension

    require_native_extension()
    _backend.set_backend("native")
    try:
        yield
    finally:
        _backend.set_backend(None)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (realistic shapes)")


# --- One contract per hot path -------------------------------------------------------------
# Each hot path's test module (test_depth_loss.py, test_depth_metrics.py, test_up_projection.py)
# runs the same named checks over every implementation this machine has, through these fixtures.

BACKEND_PARAMS = ["reference", "native", "triton"]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Force one implementation (``reference``, ``native``, ``triton``) for the test and yield its
    name. ``native`` fails (never skips) when fastmde._C is missing; ``triton`` runs CPU tensors
    under the interpreter where no GPU exists."""
    from fastmde import _backend

    name = request.param
    if name == "native":
        from native_kernel_helpers import require_native_extension

        require_native_extension()
    _backend.set_backend(name)
    try:
        yield name
    finally:
        _backend.set_backend(None)


@pytest.fixture
def device(backend):
    """Where the forced backend's tensors live: CUDA for Triton on a GPU machine, else the CPU."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(params=[torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def dtype(request):
    return request.param
