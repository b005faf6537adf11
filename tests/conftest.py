"""Shared test set-up: Triton runs under its interpreter on machines without a GPU.

``TRITON_INTERPRET`` must be set before any Triton kernel module is imported, so it is set here,
at collection time, and only when no CUDA device exists (on a GPU the same tests run natively).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
