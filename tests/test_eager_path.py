"""The ops' direct eager path (``fastmde/ops/_dispatch.py: with_eager_path``): in plain eager mode
each op's implementation is called directly, under an autograd.Function of the op's own
setup_context/backward; everywhere torch.library is needed (torch.compile, FakeTensor, Python
dispatch and function modes, functorch transforms, tensor subclasses) the registered op runs.
Both paths must give the same values and gradients, bit for bit, on every backend."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastmde
from fastmde.ops import _dispatch
from fastmde.ops import depth_loss as depth_loss_module


class Recorder(TorchDispatchMode):
    """Records the ops dispatched while active (and so forces the torch.library path)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def maps(dtype=torch.float32, shape=(2, 19, 23), seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    target = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    mask = torch.rand(shape, generator=g) > 0.005   # a few holes: the 9x9 stencil terms still count
    return pred, target, mask


def both_paths(fn, *leaves):
    """fn(*leaves) in plain eager mode and under a recording dispatch mode (the op path): the
    outputs, the gradients of the leaves that require grad, and the ops the mode saw."""
    results = []
    for recorder in (None, Recorder()):
        copies = [x.detach().clone().requires_grad_(x.requires_grad) for x in leaves]
        if recorder is None:
            out = fn(*copies)
        else:
            with recorder:
                out = fn(*copies)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.double().sum() for o in outs if o.requires_grad)
        if isinstance(loss, torch.Tensor):
            if recorder is None:
                loss.backward()
            else:
                with recorder:
                    loss.backward()
        grads = [c.grad for c in copies if c.requires_grad]
        results.append(([o.detach() for o in outs], grads, recorder.names if recorder else None))
    return results


def assert_same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.nan_to_num(), y.nan_to_num()) and torch.equal(x.isnan(), y.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_depth_loss_eager_path_matches_the_op(backend, dtype):
    pred, target, mask = maps(dtype)
    pred.requires_grad_()
    (eager, eager_grads, _), (op, op_grads, names) = both_paths(
        lambda p: fastmde.depth_loss_terms(p, target, preset="hu_blurred", mask=mask)["total"], pred)
    assert "fastmde.depth_loss.default" in names and "fastmde.depth_loss_backward.default" in names
    assert_same(eager, op)
    assert_same(eager_grads, op_grads)


@pytest.mark.parametrize("preset", ["silog", "ssi"])
def test_scale_invariant_loss_eager_path_matches_the_op(backend, preset):
    pred, target, mask = maps()
    pred.requires_grad_()
    (eager, eager_grads, _), (op, op_grads, names) = both_paths(
        lambda p: fastmde.scale_invariant_loss(p, target, preset=preset, mask=mask), pred)
    assert "fastmde.scale_invariant_loss.default" in names
    assert "fastmde.scale_invariant_loss_backward.default" in names
    assert_same(eager, op)
    assert_same(eager_grads, op_grads)


def test_depth_metrics_eager_path_matches_the_op(backend):
    pred, target, mask = maps()
    (eager, _, _), (op, _, names) = both_paths(
        lambda p: fastmde.depth_metric_sums(p, target, mask=mask, crop=(1, 10, 2, 12), max_depth=4.0), pred)
    assert "fastmde.depth_metric_sums.default" in names
    assert_same(eager, op)


@pytest.mark.parametrize("stack_convs,fuse_batchnorm", [(False, False), (True, False), (True, True)])
def test_up_projection_eager_path_matches_the_op(backend, stack_convs, fuse_batchnorm):
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 4, stack_convs=stack_convs, fuse_batchnorm=fuse_batchnorm).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for mode in (None, Recorder()):
        block.zero_grad()
        xc = x.detach().clone().requires_grad_()
        if mode is None:
            out = block(xc)
            out.square().sum().backward()
        else:
            with mode:
                out = block(xc)
                out.square().sum().backward()
        results.append((out.detach(), xc.grad, [p.grad.clone() for p in block.parameters()], mode))
    (o1, g1, w1, _), (o2, g2, w2, mode) = results
    assert any(name.startswith("fastmde.upsample_conv2d") for name in mode.names)
    assert_same([o1, g1, *w1], [o2, g2, *w2])


def test_plain_eager_calls_skip_torch_library():
    """The eager path is really taken: the registered op object is never called in plain eager
    mode (forward or backward), and is under a dispatch mode."""
    calls = []

    class Spy:
        _name = "depth_loss_spy"

        def __call__(self, *args):
            calls.append(1)
            return depth_loss_module.depth_loss_op(*args)

    wrapped = _dispatch.with_eager_path(Spy(), depth_loss_module._depth_loss, depth_loss_module._backward,
                                        depth_loss_module._setup_context)
    pred, target, mask = maps()
    pred.requires_grad_()
    args = (target, mask, "log", 0.5, True, True, False, [1.0, 1.0, 1.0])
    wrapped(pred, *args)[0][3].backward()
    assert calls == [] and pred.grad is not None
    with Recorder():
        wrapped(pred.detach(), *args)
    assert calls == [1]


def test_runs_eagerly_only_where_torch_library_is_not_needed():
    pred, target, _ = maps()
    assert _dispatch.runs_eagerly((pred, target, None, 1.0, "log"))
    with Recorder():
        assert not _dispatch.runs_eagerly((pred,))
    with torch.device("cpu"):   # a torch function mode
        assert not _dispatch.runs_eagerly((pred,))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(pred)
    assert not _dispatch.runs_eagerly((fake,))
    assert not _dispatch.runs_eagerly((pred.to("meta"),))   # meta: the op's fake kernel
    seen = []
    torch.func.vmap(lambda p: seen.append(_dispatch.runs_eagerly((p,))) or p)(pred)
    assert seen == [False]
    seen.clear()

    @torch.compile(backend="eager", fullgraph=False)
    def compiled(p):
        seen.append(_dispatch.runs_eagerly((p,)))
        return p + 1

    torch._dynamo.reset()
    compiled(pred)
    assert seen in ([], [False])   # dynamo runs the function body symbolically (no Python call)


def test_compiled_loss_and_metrics_keep_the_ops():
    """Under torch.compile the graph holds the fastmde ops (not the eager path's Python calls)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    pred, target, mask = maps()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    @torch.compile(backend=backend, fullgraph=True)
    def step(p):
        return fastmde.depth_loss(p, target, preset="hu", mask=mask), \
            fastmde.depth_metric_sums(p, target, mask=mask, max_depth=4.0)

    step(pred)
    assert any("fastmde.depth_loss" in g for g in graphs)
    assert any("fastmde.depth_metric_sums" in g for g in graphs)
    del CompileCounterWithBackend


@pytest.mark.parametrize("path", ["eager", "op"])
@pytest.mark.parametrize("loss", ["depth_loss", "silog", "ssi"])
def test_a_second_derivative_is_refused_not_silently_wrong(loss, path):
    """The losses' backward passes are kernels over saved maps: not differentiable again.
    create_graph=True raises in one line, on the eager path and through the op (a torch function
    mode such as torch.device takes the op), instead of a gradient penalty silently adding 0 or
    autograd.functional.jvp returning 0."""
    pred, target, mask = maps(torch.float64)

    def value(p):
        if loss == "depth_loss":
            return fastmde.depth_loss(p, target, preset="hu", mask=mask)
        return fastmde.scale_invariant_loss(p, target, preset=loss, mask=mask)

    p = pred.clone().requires_grad_()
    with torch.device("cpu") if path == "op" else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(value(p), p, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.functional.jvp(value, pred, torch.ones_like(pred))
        (grad,) = torch.autograd.grad(value(p), p)      # first order: unchanged
    p2 = pred.clone().requires_grad_()
    value(p2).backward()
    assert torch.equal(grad, p2.grad)
