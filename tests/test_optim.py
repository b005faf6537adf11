"""fastmde.engine.optim.Adam: torch's fused Adam on flat views of channels_last weights.

Same update, state and state_dict as ``torch.optim.Adam(fused=True)`` to the bit; the fused
kernel receives views of the weights' own memory (no contiguous copies)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastmde.engine.optim import Adam


def small_net(channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 5, 3, padding=1),
                        nn.Conv2d(5, 4, 1), nn.Flatten(), nn.Linear(4 * 6 * 7, 2))
    return net.to(memory_format=torch.channels_last) if channels_last else net


def run_steps(net, optimizer, steps=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 3, 6, 7, generator=g)
        optimizer.zero_grad(set_to_none=True)
        net(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
        optimizer.step()


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"weight_decay": 0.1, "maximize": True}],
                         ids=["plain", "amsgrad", "decay-maximize"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_same_update_and_state_as_torch_adam(channels_last, options):
    ours, theirs = small_net(channels_last), small_net(channels_last)
    opt_ours = Adam(ours.parameters(), lr=1e-2, fused=True, **options)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True, **options)
    run_steps(ours, opt_ours)
    run_steps(theirs, opt_theirs)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b) and a.stride() == b.stride()
    sa, sb = opt_ours.state_dict(), opt_theirs.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for name, value in sa["state"][k].items():
            assert torch.equal(value, sb["state"][k][name]) and value.stride() == sb["state"][k][name].stride()
    # the state dict moves between the two classes (checkpoints of either resume with the other)
    again = small_net(channels_last)
    plain = torch.optim.Adam(again.parameters(), lr=1e-2, fused=True, **options)
    plain.load_state_dict(sa)
    run_steps(again, plain, steps=0)


def test_fused_kernel_reads_the_weights_in_place(monkeypatch):
    """Every channels_last weight reaches torch._fused_adam_ as a flat view of its own memory
    (same data pointer, contiguous), with its gradient and moments likewise; torch's own Adam
    hands it contiguous copies instead (the 21 ms vs 7.6 ms of docs/kernels.md)."""
    net = small_net(True)
    opt = Adam(net.parameters(), lr=1e-2, fused=True)
    seen = []
    real = torch._fused_adam_

    def spy(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs):
        seen.append([(p.data_ptr(), p.is_contiguous(), p.dim()) for p in params])
        return real(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    run_steps(net, opt, steps=2)
    ptrs = {p.data_ptr(): p for p in net.parameters()}
    flat = 0
    for call in seen:
        for ptr, contiguous, dim in call:
            p = ptrs[ptr]
            assert contiguous
            if p.dim() == 4 and not p.is_contiguous():
                assert dim == 1
                flat += 1
    assert flat == 2 * 2   # the two 3x3 convs' weights (the 1x1 conv's is contiguous either way), two steps


def test_plain_adam_without_fused_is_untouched():
    """foreach / for-loop Adam take strided tensors as they are: the class leaves them alone."""
    ours, theirs = small_net(True), small_net(True)
    opt_ours = Adam(ours.parameters(), lr=1e-2, foreach=True)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, foreach=True)
    run_steps(ours, opt_ours)
    run_steps(theirs, opt_theirs)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
