"""Faults of the depth loss and SILog ops found in review, each with the right value:

* the raw depth-loss op returns terms (4,) = [depth, gradient, normal, total], but a gradient
  into terms[0..2] was dropped (pred got only the total's);
* the ops-level eager ``fastmde.ops.depth_loss.depth_loss`` handed the gradient map it had
  returned over as pred.grad, so later backwards accumulated into the caller's map;
* under torch.compile a floating mask holding 0.5 or NaN counted as valid where eager mode refuses it;
* SILog of a prediction that is the ground truth times a constant (λ = 1: the loss is 0 in exact
  arithmetic) gave 0 on one backend and a rounding residue (up to 3e-3) on another."""
from __future__ import annotations

import math

import pytest
import torch

import fastmde
from fastmde.ops import depth_loss as depth_loss_module
from fastmde.ops.depth_loss import depth_loss, depth_loss_op
from fastmde.ops.scale_invariant_loss import scale_invariant_loss, scale_invariant_loss_op
from fastmde.reference import scale_invariant_loss as si
from fastmde.reference.depth_loss import depth_loss_terms_reference

OPTIONS = ("log", 0.5, True, True, True)   # depth_term, alpha, gradient, normal, blur
WEIGHTS = [1.0, 0.5, 2.0]
TERMS = ("depth", "gradient", "normal", "total")


def maps(shape=(1, 12, 13), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 + 0.5).to(dtype)
    target = (torch.rand(shape, generator=g, dtype=torch.float64) * 4 + 0.5).to(dtype)
    mask = torch.rand(shape, generator=g) > 0.03
    return pred, target, mask


def reference_gradient(pred, target, mask, incoming, *, weights=WEIGHTS, blur=True):
    """d/d pred of Σ_k incoming[k] * terms[k], by autograd of the plain-PyTorch spec."""
    p = pred.detach().double().requires_grad_()
    terms = depth_loss_terms_reference(p, target.double(), mask, depth_term="log", alpha=0.5, gradient=True,
                                       normal=True, blur=blur, weights=tuple(weights))
    (grad,) = torch.autograd.grad(sum(c * terms[name] for c, name in zip(incoming, TERMS)), p)
    return grad


# ------------------------------------------------------------------ 1. every term is differentiable

@pytest.mark.parametrize("path", ["eager", "registered"])
@pytest.mark.parametrize("incoming", [(0.3, -1.2, 2.0, 0.7), (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0),
                                      (0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0, -2.5)])
def test_a_gradient_into_any_depth_loss_term_reaches_pred(backend, path, incoming):
    """terms[0..2] carried no gradient: ``terms[0].backward()`` left pred.grad at 0 and
    ``(terms * c).sum()`` gave only c_3's part. Now d/d pred of Σ c_k terms_k, against autograd of
    the spec, on the direct eager path and the registered op, on every backend."""
    pred, target, mask = maps()
    fn = depth_loss if path == "eager" else depth_loss_op
    p = pred.clone().requires_grad_()
    terms, _, _ = fn(p, target, mask, *OPTIONS, WEIGHTS)
    (terms * torch.tensor(incoming, dtype=terms.dtype)).sum().backward()
    want = reference_gradient(pred, target, mask, incoming)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)


def test_a_gradient_into_one_term_under_torch_compile():
    """The registered backward is an op, so compiled code takes the same decision at run time:
    the depth term alone, and the normal term beside the total, against the spec."""
    pred, target, mask = maps()

    def f(p, t, m):
        terms, _, _ = depth_loss_op(p, t, m, *OPTIONS, WEIGHTS)
        return terms

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for incoming in ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.5, 1.0)):
        p = pred.clone().requires_grad_()
        (compiled(p, target, mask) * torch.tensor(incoming, dtype=torch.float64)).sum().backward()
        torch.testing.assert_close(p.grad, reference_gradient(pred, target, mask, incoming), rtol=1e-9, atol=1e-12)


def test_public_functions_keep_the_total_only_gradient(backend):
    """depth_loss_terms returns the three terms detached: loss.backward() through its total is the
    forward's map, bit for bit the registered op's scaled gradient, and runs no scaling pass."""
    pred, target, mask = maps(dtype=torch.float32)
    p_op = pred.clone().requires_grad_()
    depth_loss_op(p_op, target, mask, *OPTIONS, [1.0, 1.0, 1.0])[0][3].backward()
    p = pred.clone().requires_grad_()
    out = fastmde.depth_loss_terms(p, target, preset="hu_blurred", mask=mask)
    assert not any(out[k].requires_grad for k in ("depth", "gradient", "normal"))
    out["total"].backward()
    assert torch.equal(p.grad, p_op.grad)


def test_scale_invariant_loss_statistics_carry_no_gradient(backend):
    """The scale-invariant op's coefficients and count (its outputs beside the loss) are marked
    non-differentiable on both paths: a backward through them fails in one line instead of
    dropping the gradient."""
    pred, target, mask = maps(dtype=torch.float32)
    for fn in (scale_invariant_loss, scale_invariant_loss_op):
        p = pred.clone().requires_grad_()
        loss, coeffs, count = fn(p, target, mask, "silog", 0.85, 10.0, 0.5, False, 1e-6)
        assert loss.requires_grad and not coeffs.requires_grad and not count.requires_grad
        with pytest.raises(RuntimeError, match="does not require grad"):
            coeffs.sum().backward()


# ------------------------------------------------------------------ 2. a kept map is never handed over

def count_scaling_passes(monkeypatch):
    calls = []
    scale = depth_loss_module._depth_loss_backward

    def counted(*args):
        calls.append(1)
        return scale(*args)

    monkeypatch.setattr(depth_loss_module, "_depth_loss_backward", counted)
    return calls


@pytest.mark.parametrize("hold", ["map", "view"])
def test_a_kept_gradient_map_is_not_handed_over(backend, monkeypatch, hold):
    """``fastmde.ops.depth_loss.depth_loss`` returns the map (output[1]); loss.backward() handed
    that tensor over as pred.grad, so the next backward's accumulation doubled the caller's map.
    Now the caller's map (or a view of it) stays as it was, and pred.grad is the registered op's
    gradient, twice after two backwards."""
    calls = count_scaling_passes(monkeypatch)
    pred, target, mask = maps(dtype=torch.float32)
    p_op = pred.clone().requires_grad_()
    depth_loss_op(p_op, target, mask, *OPTIONS, WEIGHTS)[0][3].backward()   # the op always scales
    calls.clear()
    p = pred.clone().requires_grad_()
    terms, grad, _ = depth_loss(p, target, mask, *OPTIONS, WEIGHTS)
    kept = grad if hold == "map" else grad[0, 2:5]
    before = kept.clone()
    del grad
    terms[3].backward()
    assert torch.equal(p.grad, p_op.grad)
    depth_loss(p, target, mask, *OPTIONS, WEIGHTS)[0][3].backward()
    assert torch.equal(kept, before)                      # it was doubled: p.grad was the map
    torch.testing.assert_close(p.grad, 2 * p_op.grad, rtol=0, atol=0)
    assert len(calls) == 1                                # the first backward scaled; the second's map was free
    # the public functions drop the map: the zero-pass hand-over stays theirs
    calls.clear()
    p = pred.clone().requires_grad_()
    fastmde.depth_loss(p, target, mask=mask, preset="hu_blurred", weights=WEIGHTS).backward()
    assert calls == [] and torch.equal(p.grad, p_op.grad)


# ------------------------------------------------------------------ 3. floating masks under compile

@pytest.mark.parametrize("dynamic", [False, True])
def test_a_floating_mask_is_checked_under_torch_compile(dynamic):
    """Compiled code read a floating mask as ``mask != 0`` (0.5 and NaN = valid) where eager mode
    refuses it: the check now runs in compiled code too, with the same one-line ValueError, and a
    0/1 float mask gives the bool mask's loss in both."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(1, 1, 9, 11, generator=g) * 5 + 0.5
    pred = target + 0.3 * torch.randn(1, 1, 9, 11, generator=g)
    keep = torch.rand(1, 1, 9, 11, generator=g) > 0.3

    def f(p, t, m):
        return fastmde.depth_loss(p, t, preset="l1", mask=m)

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    want = f(pred, target, keep)
    assert want.item() == pytest.approx(float((pred - target).abs()[keep].mean()), rel=1e-6)
    assert torch.equal(compiled(pred, target, keep.float()), want)
    for bad, shown in ((keep.float() * 0.5, "0.5"), (torch.where(keep, 1.0, float("nan")), "nan")):
        for fn in (f, compiled):
            with pytest.raises(ValueError, match=rf"^depth_loss: a floating mask must hold only 0 and 1 "
                                                 rf"\(1 = valid\), found {shown}"):
                fn(pred, target, bad)


# ------------------------------------------------------------------ 4. SILog of a constant ratio

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_silog_of_a_constant_ratio_agrees_on_every_backend(backend, dtype):
    """pred = r * target: d = ln r everywhere. λ = 1 (the variance alone): 0 with a zero gradient
    on every backend and in the oracle (a float32 residue of 1e-3..3e-3 on some, 0 on others
    before); λ = 0.85 (BTS, AdaBins): c √(1 - λ) |ln r|, to 1e-5 in float32. Wide rows: the C++
    pass adds 2048 values a row, where float32 row sums left the largest residue (the Triton
    interpreter takes 30 s there: the small maps only)."""
    for shape in [(2, 9, 11)] + ([(1, 3, 2048)] if backend != "triton" else []):
        check_constant_ratio(shape, dtype)


def check_constant_ratio(shape, dtype):
    g = torch.Generator().manual_seed(4)
    target = torch.rand(shape, generator=g, dtype=torch.float64) * 5 + 0.5
    mask = torch.rand(shape, generator=g) > 0.1
    for r in (1.7, 0.3, 2.0):
        pred = (target * r).to(dtype)
        t = target.to(dtype)
        for kind in ("silog", "silog_unbiased"):
            p = pred.clone().requires_grad_()
            loss, _, _ = scale_invariant_loss(p, t, mask, kind, 1.0, 10.0, 0.5, False, 1e-6)
            loss.backward()
            assert loss.item() == 0.0 and torch.count_nonzero(p.grad) == 0, (r, kind, loss.item())
            assert si.scale_invariant_loss_reference(pred, t, mask, kind=kind, lambd=1.0).item() == 0.0
            value, _, _ = scale_invariant_loss(pred, t, mask, kind, 0.85, 10.0, 0.5, False, 1e-6)
            want = 10.0 * math.sqrt(0.15) * abs(math.log(r))
            assert value.item() == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_silog_keeps_a_real_spread_under_a_large_mean_log_offset(backend, dtype):
    """λ = 1, a prediction in millimetres against metres (x1000: mean log error 6.9) with a 2%
    log spread: the exact loss (the two-pass float64 oracle) is about 0.2, and every backend
    returned 0 with a zero gradient (float32 row sums' residue, then a rule at 1e-5 of Σd²/n that
    took the offset's square for the scale of the error)."""
    g = torch.Generator().manual_seed(7)
    shape = (2, 9, 11) if backend == "triton" else (2, 24, 300)
    target = torch.rand(shape, generator=g, dtype=torch.float64) * 5 + 0.5
    spread = torch.exp(0.02 * torch.randn(shape, generator=g, dtype=torch.float64))
    pred = (target * 1000.0 * spread).to(dtype)
    t = target.to(dtype)
    for kind in ("silog", "silog_unbiased"):
        want = si.scale_invariant_loss_reference(pred.double(), t.double(), None, kind=kind, lambd=1.0).item()
        assert 0.1 < want < 0.3
        p = pred.clone().requires_grad_()
        loss, _, _ = scale_invariant_loss(p, t, None, kind, 1.0, 10.0, 0.5, False, 1e-6)
        loss.backward()
        assert loss.item() == pytest.approx(want, rel=1e-4 if dtype == torch.float32 else 1e-10), kind
        assert torch.count_nonzero(p.grad) == p.numel()


def test_silog_sums_survive_an_outlier_at_the_start_of_a_row(backend):
    """The C++ sums shifted each row by its first valid log error: a prediction at the floor in
    column 0 (k = ln 1e-6 - ln y) beside millimetres against metres left float32 rounding of n k²
    (1x4x4096, λ = 1: 9e-3 relative off, the gradient 2.9e-3 of its largest). Each row is now
    centred on its own mean. Against the two-pass float64 formula, loss and gradient."""
    g = torch.Generator().manual_seed(11)
    shape = (1, 2, 40) if backend == "triton" else (1, 4, 4096)
    y = torch.rand(shape, generator=g) * 9 + 1
    pred = y * 1000.0
    pred[:, :, 0] = 0.0
    p = pred.clone().requires_grad_()
    loss, _, _ = scale_invariant_loss(p, y, None, "silog", 1.0, 10.0, 0.5, False, 1e-6)
    loss.backward()
    q = pred.double().requires_grad_()
    want = si.scale_invariant_loss_reference(q, y.double(), None, kind="silog", lambd=1.0, eps=1e-6)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (p.grad.double() - q.grad).abs().max() <= 1e-4 * q.grad.abs().max()


def test_silog_rounding_rule_is_relative_to_the_mean_square():
    """The rule itself (``silog_combine``): v at half τ Σd²/n reads as 0 with zero coefficients,
    at twice τ it is kept: L = c √v."""
    n, mean = 100.0, 0.5
    s2 = n * mean * mean
    for cdtype in (torch.float32, torch.float64):
        tau = si.flat_tolerance(cdtype)
        for factor, kept in ((0.5, False), (2.0, True)):
            v = factor * tau * s2 / n
            sums = torch.tensor([[n, n * mean, s2 + n * v]], dtype=torch.float64)
            value, coeffs = si.silog_combine(sums, "silog", 1.0, 10.0, cdtype=cdtype)
            if kept:
                assert value.item() == pytest.approx(10.0 * math.sqrt(v), rel=1e-3)
            else:
                assert value.item() == 0.0 and torch.count_nonzero(coeffs) == 0


# ---------------------------------------------------------------- the backward's cost (public functions)

def test_the_backward_makes_no_zero_map_for_the_outputs_without_a_gradient():
    """autograd filled a B x H x W map of zeros for the op's gradient-map output at every backward
    (materialised gradients; 3.5 MiB at the bench's 8x288x384): the loss's backward is to cost
    nothing in eager mode (the map is handed over), on the op path one scaling pass."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MapSizedResults(TorchDispatchMode):
        def __init__(self, numel):
            super().__init__()
            self.numel, self.ops = numel, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(isinstance(t, torch.Tensor) and t.numel() == self.numel for t in torch.utils._pytree.tree_leaves(out)):
                self.ops.append(str(func))
            return out

    pred, target, _ = maps((2, 9, 11), torch.float32)
    for path in ("public", "op"):
        p = pred.clone().requires_grad_()
        if path == "public":
            loss = fastmde.depth_loss(p, target, preset="hu_blurred")
        else:
            loss = depth_loss_op(p, target, None, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])[0][3]
        mode = MapSizedResults(p.numel())
        with mode:
            loss.backward()
        expected = [] if path == "public" else ["fastmde.depth_loss_backward.default"]
        assert [op for op in mode.ops if "zeros" in op or "fill" in op] == [], path
        assert [op for op in mode.ops if op.startswith("fastmde.depth_loss_backward")] == expected, path


def test_the_public_functions_backward_does_not_read_the_other_terms(monkeypatch):
    """fastmde.depth_loss returns the total and depth_loss_terms the other three detached: their
    backward does not look at the other three incoming values (a host read: on CUDA a
    synchronisation at every training step), and its gradient is the op path's."""
    def never(*args):
        raise AssertionError("the other terms' incoming gradients were read")

    pred, target, _ = maps((2, 9, 11), torch.float32)
    p = pred.clone().requires_grad_()
    monkeypatch.setattr(depth_loss_module, "_weights_of_incoming", never)
    fastmde.depth_loss(p, target, preset="hu").backward()
    fastmde.depth_loss_terms(p, target, preset="hu")["total"].mul(0.5).backward()
    monkeypatch.undo()
    q = pred.clone().requires_grad_()
    loss = depth_loss_op(q, target, None, "log", 0.5, True, True, False, [1.0, 1.0, 1.0])[0][3]
    (loss + 0.5 * loss).backward()
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
