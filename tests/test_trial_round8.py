"""Faults found by using round 8's changes as a new user would, each with the right value.

* ``torch.autograd.grad(fastmde.depth_loss(pred, target), pred)`` returned the map the forward
  saved, still an output of the loss's node: a gradient with ``requires_grad=True`` and that node
  as its ``grad_fn`` (``.numpy()`` refused it; for a (B, 1, H, W) prediction an in-place change
  of it raised "a view was created in no_grad mode"), and a tensor hook on ``pred`` saw the same.
"""
from __future__ import annotations

import pytest
import torch

import fastmde
from fastmde.reference.depth_loss import depth_loss_terms_reference


def _pair(shape, dtype):
    g = torch.Generator().manual_seed(8)
    pred = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    target = torch.rand(shape, generator=g) * 5 + 0.5
    return pred, target


def _reference_gradient(pred, target):
    p = pred.detach().clone().requires_grad_(True)
    three = lambda t: t.reshape(t.shape[0], *t.shape[-2:])  # noqa: E731
    depth_loss_terms_reference(three(p), three(target), blur=True)["total"].backward()
    return p.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 9, 11), (2, 1, 9, 11)], ids=["BHW", "B1HW"])
def test_autograd_grad_of_the_depth_loss_is_a_plain_gradient(shape, dtype):
    pred, target = _pair(shape, dtype)
    want = _reference_gradient(pred, target)
    p = pred.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(fastmde.depth_loss(p, target, preset="hu_blurred"), p)
    assert not got.requires_grad and got.grad_fn is None
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, want)
    assert got.numpy().shape == shape                      # refused while it required grad
    got.mul_(2.0)                                          # raised for the (B, 1, H, W) view
    torch.testing.assert_close(got, want * 2)
    # a tensor hook on pred (a network's output) sees the same plain gradient
    w = torch.ones((), dtype=dtype, requires_grad=True)
    q = pred * w
    seen = []
    q.register_hook(lambda grad: seen.append((grad.requires_grad, grad.grad_fn)))
    fastmde.depth_loss(q, target, preset="hu_blurred").backward()
    assert seen == [(False, None)]
    torch.testing.assert_close(w.grad, (want * pred).sum())


# ---------------------------------------------------------------- resume, --init-from, export tolerance

from engine_helpers import cache, fastmde_cli, tiny_config  # noqa: E402,F401 (cache: fixture)


def _saved_run(cache_dir, out, damage, part=lambda ckpt: ckpt["model"], **changes):
    """A tiny run's last.pt (saved before any step; ``changes`` to its configuration) with
    ``damage(part(ckpt))`` applied: by default to its weights."""
    from fastmde.engine import Trainer

    cfg = tiny_config(cache_dir, str(out), **changes)
    trainer = Trainer(cfg, overwrite=True, log=lambda text: None)
    trainer.save()
    ckpt = torch.load(trainer.last_path, weights_only=False)
    damage(part(ckpt))
    torch.save(ckpt, trainer.last_path)
    return cfg, trainer.last_path


def resume_refusal(cfg) -> str:
    """The one-line CheckpointError of ``--resume`` for ``cfg`` (no warning on the way)."""
    import warnings

    from fastmde.engine import Trainer
    from fastmde.engine.checkpoint import CheckpointError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            Trainer(cfg, resume=True, log=lambda text: None)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("kind", ["complex", "string", "nan"])
def test_resume_checks_the_weights_as_the_other_commands_do(cache, tmp_path, kind):
    """``--resume`` loaded last.pt with a bare load_state_dict: complex weights resumed after
    torch's "discards the imaginary part" warning, a string weight gave a traceback, NaN weights
    stopped at the first step with "lower --lr". Now one line each, naming --resume and the file."""
    key = "net.head_conv1.weight"

    def damage(state):
        if kind == "complex":
            state[key] = state[key] * (1 + 1j)
        elif kind == "string":
            state[key] = "weights"
        else:
            state[key][0, 0, 0, 0] = float("nan")

    cfg, last = _saved_run(cache, tmp_path / "run", damage)
    said = {"complex": f"--resume: {last!r} is a damaged fastmde checkpoint: 1 of its weights holds complex numbers",
            "string": f"--resume: {last!r}: its weights do not fit model 'unet34-k3-1x1': 1 not tensors: {key} is str",
            "nan": f"--resume: {last!r}: 1 weight tensor holds NaN/inf ({key}; a diverged run?): resume from an "
                   "earlier checkpoint, or start again (--overwrite)"}[kind]
    message = resume_refusal(cfg)
    assert message.startswith(said), message


def test_init_from_nan_weights_is_refused_in_one_line(cache, tmp_path, capsys):
    """It warned, then stopped at step 0 with "loss became nan ...: lower --lr" (advice that does
    not apply to NaN weights)."""
    def nan_head(state):
        state["net.head_conv1.weight"][0, 0, 0, 0] = float("nan")

    _, last = _saved_run(cache, tmp_path / "run", nan_head)
    from engine_helpers import cli_data_args

    status, _, err = fastmde_cli(["train", "--model", "unet34-k3-1x1", "--encoder", "18", "--size", "32x48",
                                  "--init-from", last, "--out", tmp_path / "new", "--device", "cpu",
                                  "--epochs", "1", "--workers", "0", *cli_data_args(cache)], capsys)
    assert status == 2, err
    assert err == (f"fastmde: error: --init-from {last!r}: 1 weight tensor holds NaN/inf (net.head_conv1.weight; "
                   "a diverged run?): start from another checkpoint\n"), err
    assert not (tmp_path / "new" / "last.pt").exists()


@pytest.mark.parametrize("value", [float("inf"), 1e999])
def test_export_refuses_an_infinite_tolerance(value):
    """``--tolerance inf`` was taken ("verified ... <= inf": the check off)."""
    from fastmde.export import check_options

    with pytest.raises(ValueError, match=r"^tolerance must be a positive finite number, got inf$"):
        check_options("onnx", (32, 48), 18, value)
