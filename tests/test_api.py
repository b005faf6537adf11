"""Public API: input checking, presets, modules, and the documented edge results."""
import math
import os

import pytest
import torch

import fastmde
from fastmde.reference.depth_metrics import depth_metrics_reference
from fastmde.reference.up_projection import up_projection_block_reference


def maps(shape=(2, 1, 6, 7), dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(shape, generator=g).to(dtype) * 5 + 0.5, torch.rand(shape, generator=g).to(dtype) * 5 + 0.5


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 5), "shapes differ"),
        (torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), r"\(B, 1, H, W\)"),
        (torch.rand(4, 4), torch.rand(4, 4), r"\(B, 1, H, W\)"),
        (torch.rand(0, 1, 4, 4), torch.rand(0, 1, 4, 4), "empty"),
        (torch.randint(0, 5, (1, 4, 4)), torch.rand(1, 4, 4), "float16, bfloat16"),
    ],
)
def test_bad_shapes_and_dtypes_are_named(pred, target, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastmde.depth_loss(pred, target)
    with pytest.raises((ValueError, TypeError), match=match):
        fastmde.depth_metrics(pred, target)


def test_bad_options_are_named():
    # the loss's options are checked per backend in test_depth_loss.py::test_bad_input_is_named
    pred, target = maps()
    with pytest.raises(ValueError, match="aggregate"):
        fastmde.depth_metrics(pred, target, aggregate="mean")
    with pytest.raises(ValueError, match="max_depth"):
        fastmde.depth_metrics(pred, target, min_depth=5, max_depth=1)


def test_dtype_of_target_follows_pred_and_masks_accept_numbers():
    pred, target = maps()
    as_bool = fastmde.depth_loss(pred, target.double(), mask=target > 2)
    as_float = fastmde.depth_loss(pred, target, mask=(target > 2).float())
    assert torch.allclose(as_bool, as_float)


def test_three_and_four_dim_inputs_agree():
    pred, target = maps()
    assert torch.allclose(fastmde.depth_loss(pred, target), fastmde.depth_loss(pred[:, 0], target[:, 0]))


def test_terms_dict_and_weights():
    pred, target = maps()
    pred.requires_grad_()
    terms = fastmde.depth_loss_terms(pred, target, preset="l1_hu", weights=(1.0, 0.5, 2.0))
    assert set(terms) == {"total", "depth", "gradient", "normal"}
    assert terms["total"].requires_grad and not terms["depth"].requires_grad
    expected = terms["depth"] + 0.5 * terms["gradient"] + 2.0 * terms["normal"]
    assert torch.allclose(terms["total"].detach(), expected, rtol=1e-6)


def test_nan_ground_truth_and_all_invalid_mask_give_documented_results():
    pred, target = maps()
    target[0, 0, 2, 3] = float("nan")
    target[1, 0, 0, 0] = float("inf")
    pred.requires_grad_()
    loss = fastmde.depth_loss(pred, target, preset="hu_blurred")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    pred.grad = None
    zero = fastmde.depth_loss(pred, target, mask=torch.zeros_like(target, dtype=torch.bool))
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(pred.grad) == 0
    metrics = fastmde.depth_metrics(pred.detach(), torch.zeros_like(target))
    assert all(math.isnan(v.item()) for v in metrics.values())   # nothing scored: NaN, never 0


def test_depth_loss_module_matches_function():
    pred, target = maps()
    module = fastmde.nn.DepthLoss("hu_blurred")
    assert torch.allclose(module(pred, target), fastmde.depth_loss(pred, target, preset="hu_blurred"))
    assert "hu_blurred" in repr(module)
    with pytest.raises(ValueError, match="preset"):
        fastmde.nn.DepthLoss("l2")


def test_depth_metrics_accumulator_matches_one_big_batch():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(7, 1, 9, 10, generator=g, dtype=torch.float64) * 5 + 0.5
    target = torch.rand(7, 1, 9, 10, generator=g, dtype=torch.float64) * 5 + 0.5
    target[4] = 0  # an image with no valid pixel
    for aggregate in ("per_image", "pooled"):
        acc = fastmde.nn.DepthMetrics(aggregate=aggregate, crop=(1, 8, 1, 9), max_depth=5.0)
        for lo, hi in [(0, 3), (3, 4), (4, 7)]:  # batches of different sizes
            acc.update(pred[lo:hi], target[lo:hi])
        got = acc.compute()
        expected = depth_metrics_reference(pred[:, 0], target[:, 0], crop=(1, 8, 1, 9), max_depth=5.0, aggregate=aggregate)
        for k in expected:
            assert torch.allclose(got[k], expected[k], rtol=1e-12), (aggregate, k)
        assert got["count"].item() == (6 if aggregate == "per_image" else got["count"].item())
        acc.reset()
        assert acc.compute()["count"].item() == 0


@pytest.mark.parametrize("reduce, k", [(True, 3), (True, 5), (False, 5)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_up_projection_matches_plain_block(reduce, k, align_corners):
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 4, kernel_size=k, reduce=reduce, align_corners=align_corners).double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out = block(x, skip=skip)
    assert out.shape == (2, 4, 10, 14)
    expected = up_projection_block_reference(block, x, skip=skip)
    assert torch.allclose(out, expected, atol=1e-10)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    (ex,) = torch.autograd.grad(expected.square().sum(), x)
    assert torch.allclose(gx, ex, atol=1e-9)
    if not reduce:
        assert block.second_kernel_size == 3  # Hu et al.'s 5x5 / 3x3 / 5x5


def test_up_projection_size_and_skip_resizing():
    block = fastmde.nn.UpProjection(8, 4)
    x = torch.randn(1, 4, 5, 6)
    skip = torch.randn(1, 4, 9, 11)  # not twice x: x is resized to the skip first
    assert block(x, skip=skip).shape == (1, 4, 18, 22)
    assert block(torch.randn(1, 8, 5, 6), size=(15, 13)).shape == (1, 4, 15, 13)
    with pytest.raises(ValueError, match="UpProjection expects"):
        block(torch.randn(1, 5, 5, 6))
    with pytest.raises(ValueError, match="kernel_size"):
        fastmde.nn.UpProjection(8, 4, kernel_size=4)


# ---------------------------------------------------------------- the command line


def _python(code: str):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)


HEAVY = ("fastmde.engine", "fastmde.data", "fastmde.models")
REPORT_HEAVY = ("import sys; print('HEAVY', sorted(m for m in sys.modules if m.startswith(%r)))" % (HEAVY,))


def test_info_command_imports_no_engine_data_or_model_module():
    out = _python("from fastmde.cli import main; rc = main(['info']); " + REPORT_HEAVY)
    assert out.returncode == 0, out.stderr
    assert "depth_loss" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout.splitlines()[-1]


def test_help_lists_every_command_without_importing_them():
    from fastmde.cli import COMMANDS

    out = _python("from fastmde.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" + REPORT_HEAVY)
    assert out.returncode == 0, out.stderr
    for name, (_, help_text) in COMMANDS.items():
        assert name in out.stdout and help_text.split()[0] in out.stdout
    assert "HEAVY []" in out.stdout


def test_a_command_gets_its_own_options_and_the_full_parser_has_all():
    from fastmde.cli import build_parser, main

    with pytest.raises(SystemExit):
        main(["predict", "--no-such-option"])
    full = build_parser()
    assert full.parse_args(["eval", "--checkpoint", "x.pt"]).checkpoint == "x.pt"
    assert full.parse_args(["predict", "a.png", "--checkpoint", "c", "--out", "o"]).images == ["a.png"]
    assert full.parse_args(["synth", "--out", "o"]).layout == "frames"
    assert build_parser([]).parse_args(["info"]).command == "info"   # listed even when not built
    assert main([]) == 2


def test_console_prints_user_errors_without_a_traceback():
    """`fastmde ...` (the console entry point) turns a bad value into one line and exit status 2;
    FASTMDE_DEBUG=1 keeps the traceback."""
    import subprocess
    import sys

    run = lambda env: subprocess.run([sys.executable, "-m", "fastmde", "train", "--size", "abc"],
                                     capture_output=True, text=True, env={**os.environ, **env})
    plain = run({})
    assert plain.returncode == 2
    assert plain.stderr.strip() == "fastmde: error: size (--size) must be HxW such as 288x384, got 'abc'"
    debug = run({"FASTMDE_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ValueError: size (--size) must be HxW" in debug.stderr


def test_subpackages_load_on_first_use():
    import subprocess
    import sys

    code = ("import sys, fastmde; assert 'fastmde.engine' not in sys.modules; "
            "assert fastmde.engine.get_protocol('hu').name == 'hu'; "
            "assert callable(fastmde.models.from_external) and fastmde.data.NYUFrames")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
