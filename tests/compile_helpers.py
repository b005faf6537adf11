"""torch.compile checks shared by the hot paths' test modules."""
import torch


def compile_counting(fn):
    """torch.compile(fn, dynamic=True, fullgraph=True) with a backend that counts its calls and
    runs forward and backward through AOTAutograd (as inductor would)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, dynamic=True, fullgraph=True), counter


def assert_compiled_matches_eager(compiled, fn, pred, *args):
    """``compiled(pred, *args)`` equals ``fn(pred, *args)`` in value and in the gradient of pred."""
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    v1 = compiled(p1, *args)
    v1.backward()
    v2 = fn(p2, *args)
    v2.backward()
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(p1.grad, p2.grad)
