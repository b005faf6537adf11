"""torch.compile(dynamic=True, fullgraph=True) around the modules (issue 22 §3, pytorch#121080):
one graph serves every size, forward and backward equal to eager. The loss's functions and
module are checked in test_depth_loss.py, the metrics' in test_depth_metrics.py.

Sizes are >= 2 in every dimension and pairwise different: dynamo specialises sizes 0 and 1 and,
by duck sizing, two dimensions that happen to be equal at the first call."""
import pytest
import torch

import fastmde
from compile_helpers import compile_counting
from fastmde import models


def assert_one_graph(module, shapes, scale=1.0, atol=1e-5):
    compiled, counter = compile_counting(lambda x: module(x))
    first = None
    for k, shape in enumerate(shapes):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(k)) * scale
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1 = compiled(x1)
        y1.square().mean().backward()
        y2 = module(x2)
        y2.square().mean().backward()
        torch.testing.assert_close(y1, y2, atol=atol, rtol=1e-4)
        torch.testing.assert_close(x1.grad, x2.grad, atol=atol, rtol=1e-4)
        first = counter.frame_count if first is None else first   # dynamo may restart its first analysis once
    assert counter.frame_count == first <= 2


@pytest.mark.parametrize("backend_name", ["reference", "native"])
def test_up_projection_one_graph_for_every_size(backend_name, monkeypatch):
    """The CPU backends (the Triton kernels' compile tests are in test_up_projection.py; under the
    interpreter a dynamic-shape compile costs half a minute)."""
    from fastmde import _backend

    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 4, kernel_size=3, scale=2).eval()   # eval: BatchNorm's running stats
    _backend.set_backend(backend_name)
    try:
        assert fastmde.backends()["up_projection"]["cpu"] == backend_name
        assert_one_graph(block, [(2, 6, 5, 7), (3, 6, 8, 4), (2, 6, 11, 6)])
    finally:
        _backend.set_backend(None)


@pytest.mark.parametrize("name, size", [("unet34-k3", (34, 46)), ("hu34", None)])
def test_models_one_graph_for_every_size(name, size, monkeypatch):
    """Training mode (BatchNorm on batch statistics, the trainable-size check on symbolic sizes).
    The inputs are all larger than the internal size: shrinking (area) and growing (bilinear)
    are two code paths, so an input crossing the internal size compiles the other one."""
    torch.manual_seed(0)
    model = models.build(name, size=size, encoder=18)   # ResNet18: the same code paths, less to run
    assert_one_graph(model, [(2, 3, 36, 52), (3, 3, 50, 47)], scale=255.0, atol=1e-3)
