"""Input edges of the public API and the commands, round 8: kernel sizes checked in one place,
the up-projection op refusing a dtype mismatch, whole numbers of any kind for export's opset,
and checkpoints whose weights hold NaN/inf or complex numbers.

* ``integer_argument(..., odd=True)`` is the one odd-kernel check of ``UNet``, ``HuModel``,
  ``UpProjection`` and ``build`` / ``variant_name`` (``variant_name("unet34-k3", kernel_size=4)``
  was ``"unet34-k4"``); a bool tensor or a shape-(1,) tensor is no count.
* ``fastmde.ops.up_projection`` cast float32 weights to a bfloat16 ``x`` outside autocast (the
  fused path silently; the plain one failed in torch's words); it refuses as the module does.
* ``export(..., opset=numpy.int64(18))`` was refused; numpy floats for ``tolerance`` and the
  point cloud intrinsics too (``Intrinsics(numpy.float32(500), ...)``), while bools were read
  as 1.0 by ``Intrinsics.of``.
* A diverged run's checkpoint (NaN/inf weights) was scored (NaN metrics, δ 0), predicted and
  exported without a word; complex weights loaded with torch's "discards the imaginary part".
"""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastmde
from fastmde import models
from fastmde._checks import integer_argument

from test_patch import AuthorsStyleUpProjection  # the paper authors' block
from engine_helpers import cache, fastmde_cli, tiny_config  # noqa: F401 (cache: fixture)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- 1. odd kernel sizes, one check

KERNEL_OWNERS = {
    "UNet": (lambda k: models.UNet(18, kernel_size=k), "UNet: kernel_size"),
    "HuModel": (lambda k: models.HuModel(18, kernel_size=k), "HuModel: kernel_size"),
    "UpProjection": (lambda k: fastmde.nn.UpProjection(4, 2, kernel_size=k), "UpProjection: kernel_size"),
    "UpProjection second": (lambda k: fastmde.nn.UpProjection(4, 2, second_kernel_size=k),
                            "UpProjection: second_kernel_size"),
    "build": (lambda k: models.build("unet34-k3", kernel_size=k, size=(32, 32)), "kernel_size"),
    "variant_name": (lambda k: models.variant_name("unet34-k3", kernel_size=k), "kernel_size"),
}


@pytest.mark.parametrize("owner", list(KERNEL_OWNERS))
@pytest.mark.parametrize("value", [4, 0, -3, -2, np.int64(2)])
def test_a_kernel_size_that_is_not_a_positive_odd_integer_is_refused(owner, value):
    make, name = KERNEL_OWNERS[owner]
    with torch.device("meta"), pytest.raises(ValueError) as info:
        make(value)
    assert _one_line(info) == f"{name} must be a positive odd integer, got {int(value)}"


@pytest.mark.parametrize("owner", list(KERNEL_OWNERS))
@pytest.mark.parametrize("value", [True, np.bool_(False), torch.tensor(True), 3.0, np.float64(5.0), "3",
                                   torch.tensor([3])], ids=repr)
def test_a_kernel_size_that_is_no_integer_is_refused(owner, value):
    make, name = KERNEL_OWNERS[owner]
    with torch.device("meta"), pytest.raises(TypeError) as info:
        make(value)
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        shown = f"the bool {value!r}"
    elif isinstance(value, torch.Tensor):
        shown = "a tensor of shape (1,)"
    else:
        shown = f"{value!r} ({type(value).__name__})"
    assert _one_line(info) == f"{name} must be an integer, got {shown}"


def test_odd_kernel_sizes_of_any_integer_kind_are_taken():
    sizes = (np.int64(5), np.int32(5), torch.tensor(5))
    with torch.device("meta"):
        with pytest.raises(TypeError, match=r"^UNet: kernel_size must be an integer, got a meta tensor \(no value\)$"):
            models.UNet(18, kernel_size=torch.tensor(5))        # made on the meta device here
        for k in sizes:
            unet = models.UNet(18, kernel_size=k)
            assert type(unet.kernel_size) is int and unet.kernel_size == 5
            assert unet.head_conv1.weight.shape[-2:] == (5, 5)
            hu = models.HuModel(18, kernel_size=k)
            assert hu.kernel_size == 5 and type(hu.kernel_size) is int
            block = fastmde.nn.UpProjection(4, 2, kernel_size=k, second_kernel_size=np.int64(1))
            assert (block.kernel_size, block.second_kernel_size) == (5, 1)
            assert block.conv1.weight.shape == (2, 2, 5, 5) and block.conv2.weight.shape == (2, 2, 1, 1)
    assert models.variant_name("unet34-k3", kernel_size=np.int64(5)) == "unet34-k5"
    # the option itself: a minimum and oddness, each named with the value
    assert integer_argument(-3, "k", odd=True) == -3
    with pytest.raises(ValueError, match=r"^k must be an odd integer, got -4$"):
        integer_argument(-4, "k", odd=True)
    with pytest.raises(ValueError, match=r"^k must be an odd integer >= 3, got 1$"):
        integer_argument(1, "k", minimum=3, odd=True)
    with pytest.raises(ValueError, match=r"^k must be an integer >= 3, got 2$"):
        integer_argument(2, "k", minimum=3)


# ---------------------------------------------------------------- 2. the op refuses a dtype mismatch

def _x(dtype=torch.float32, shape=(1, 4, 3, 5)):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2).to(dtype)


@pytest.mark.parametrize("reduce", [True, False])
@pytest.mark.parametrize("fuse", [False, True])
def test_the_up_projection_op_refuses_another_dtype_than_the_weights_outside_autocast(reduce, fuse):
    """The fused path cast the float32 weights to a bfloat16 x and ran; the plain one failed in
    torch's words ("Input type (CPUBFloat16Type) and weight type ...")."""
    from fastmde.ops import up_projection

    block = fastmde.nn.UpProjection(4, 2, reduce=reduce, fuse_batchnorm=fuse).eval()
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(TypeError) as info:
            up_projection(_x(dtype), block.layers(), (6, 10), True, fuse_batchnorm=fuse)
        assert _one_line(info) == (f"up_projection: x is {dtype} but the block's weights are torch.float32: convert "
                                   f"one (block.to({dtype}) or x.to(torch.float32)), or run under torch.autocast")
        with pytest.raises(TypeError, match=rf"^UpProjection: x is {dtype} but the block's weights are torch.float32"):
            block(_x(dtype))
    # the same dtype on both sides runs, and gives the module's output
    out = up_projection(_x(), block.layers(), (6, 10), True, fuse_batchnorm=fuse)
    torch.testing.assert_close(out, block(_x(), size=(6, 10)), rtol=0, atol=0)
    double = copy.deepcopy(block).double()
    assert up_projection(_x(torch.float64), double.layers(), (6, 10), True).dtype == torch.float64


@pytest.mark.parametrize("fuse", [False, True])
def test_under_autocast_the_op_mixes_dtypes_as_before(fuse):
    from fastmde.ops import up_projection

    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(4, 2, fuse_batchnorm=fuse).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x in (_x(), _x(torch.bfloat16)):
            got = up_projection(x, block.layers(), (6, 10), True, fuse_batchnorm=fuse)
            torch.testing.assert_close(got, block(x, size=(6, 10)), rtol=0, atol=0)
            assert torch.isfinite(got).all()
        # a float32 x beside bfloat16 weights as well
        half = copy.deepcopy(block).bfloat16()
        got = up_projection(_x(), half.layers(), (6, 10), True, fuse_batchnorm=fuse)
        torch.testing.assert_close(got, half(_x(), size=(6, 10)), rtol=0, atol=0)
        # autocast never casts float64: refused, and the message says so
        with pytest.raises(TypeError) as info:
            up_projection(_x(torch.float64), block.layers(), (6, 10), True)
    assert _one_line(info).endswith("(block.to(torch.float64) or x.to(torch.float32)) (autocast does not cast float64)")


def test_the_up_projection_op_names_other_bad_inputs_in_one_line():
    from fastmde.ops import up_projection

    block = fastmde.nn.UpProjection(4, 2).eval()
    for x, layers, error, said in [
        (_x()[0], block.layers(), ValueError, r"x must be \(B, 4, h, w\) for the block's first conv, got \(4, 3, 5\)"),
        (_x(shape=(1, 3, 3, 5)), block.layers(), ValueError, r"x must be \(B, 4, h, w\) .*got \(1, 3, 3, 5\)"),
        (_x().long(), block.layers(), TypeError, "x must be a floating tensor, got torch.int64"),
        ([1.0], block.layers(), TypeError, "x must be a torch.Tensor, got list"),
        (_x(), tuple(block.layers()), TypeError, "layers must be an UpProjectionLayers, got tuple"),
        (_x().to("meta"), block.layers(), ValueError, "x is on meta but the block's weights are on cpu"),
    ]:
        with pytest.raises(error, match=rf"^up_projection: {said}") as info:
            up_projection(x, layers, (6, 10), True)
        _one_line(info)


def test_a_patched_block_refuses_and_mixes_dtypes_as_the_module_and_the_op_do():
    torch.manual_seed(0)
    block = AuthorsStyleUpProjection(4, 2).eval()
    plain = copy.deepcopy(block)
    assert fastmde.patch(block).replaced == {"": "freeman2021"}
    x = _x()
    with pytest.raises(TypeError) as info:
        block(x.bfloat16())
    assert _one_line(info) == ("AuthorsStyleUpProjection: x is torch.bfloat16 but the block's weights are torch.float32: "
                               "convert one (block.to(torch.bfloat16) or x.to(torch.float32)), or run under "
                               "torch.autocast")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = block(x.bfloat16()), plain(x.bfloat16())
        with pytest.raises(TypeError, match=r"\(autocast does not cast float64\)$"):
            block(x.double())
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


# ---------------------------------------------------------------- 3. whole numbers of any kind

def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.Softplus())


def test_export_takes_a_numpy_opset_and_refuses_what_is_no_whole_number(tmp_path):
    onnx = pytest.importorskip("onnx")
    from fastmde.export import export

    report = export(_tiny_model(), tmp_path / "m.onnx", size=(8, 10), opset=np.int64(18), quiet=True)
    assert report.opset == 18 and type(report.opset) is int
    assert {op.domain: op.version for op in onnx.load(str(tmp_path / "m.onnx")).opset_import}.get("") == 18
    for opset, shown in [(True, "the bool True"), (18.0, "18.0 (float)"), ("18", "'18' (str)"),
                         (np.float64(18), "(float64)"), (torch.tensor(18.0), "tensor(18.) (Tensor)"),
                         (None, "None (NoneType)")]:
        for name in ("n.onnx", "n.pt2"):     # a .pt2 has no opset, but a bool is no opset either
            with pytest.raises(TypeError) as info:
                export(_tiny_model(), tmp_path / name, size=(8, 10), opset=opset, quiet=True)
            assert _one_line(info).startswith("opset must be an integer, got ") and str(info.value).endswith(shown)
    with pytest.raises(ValueError, match=r"^opset must be an integer from 18 to \d+ .*, got 17$"):
        export(_tiny_model(), tmp_path / "n.onnx", size=(8, 10), opset=np.int32(17), quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_options_take_numpy_and_tensor_numbers():
    from fastmde.export import check_options

    assert check_options("pt2", (8, 10), torch.tensor(19), np.float32(0.5)) == ((8, 10), 19, 0.5)
    assert check_options("onnx", (np.int64(8), 10), np.uint8(20), torch.tensor(0.25)) == ((8, 10), 20, 0.25)
    for tolerance in (np.nan, 0, -1e-4, True, np.bool_(True), "1e-4", torch.tensor(True)):
        with pytest.raises(ValueError, match=r"^tolerance must be a positive finite number, got "):
            check_options("pt2", (8, 10), 18, tolerance)


def test_intrinsics_take_numpy_numbers_and_refuse_bools_and_strings():
    from fastmde.pointcloud import Intrinsics, depth_to_points, intrinsics_for

    depth = torch.rand(1, 1, 4, 5, generator=torch.Generator().manual_seed(0)) + 1
    want = depth_to_points(depth, (2.0, 3.0, 1.5, 2.0))
    for k in (Intrinsics(np.float32(2), np.int64(3), torch.tensor(1.5), 2), (np.float32(2), 3, 1.5, 2),
              {"fx": np.float64(2), "fy": 3, "cx": 1.5, "cy": torch.tensor(2.0)}):
        torch.testing.assert_close(depth_to_points(depth, k), want, rtol=0, atol=0)
    assert type(Intrinsics(np.float32(2), 3, 1, 1).fx) is float
    for bad, said in [
        (lambda: Intrinsics(True, 3, 1, 1), "intrinsics: fx must be a finite number of pixels, got True"),
        (lambda: Intrinsics("500", 3, 1, 1), "intrinsics: fx must be a finite number of pixels, got '500'"),
        (lambda: Intrinsics.of({"fx": 2, "fy": np.bool_(True), "cx": 1, "cy": 1}),
         "intrinsics: fy must be a finite number of pixels, got np.True_"),
        (lambda: Intrinsics.of((True, 1, 0, 0)),                     # numpy read it as 1.0
         "intrinsics must be numbers (fx, fy, cx, cy) or a camera matrix, got (True, 1, 0, 0)"),
        (lambda: Intrinsics.of(("500", 1, 0, 0)),
         "intrinsics must be numbers (fx, fy, cx, cy) or a camera matrix, got ('500', 1, 0, 0)"),
        (lambda: intrinsics_for((4, 5), focal=True), "intrinsics: fx must be a finite number of pixels, got True"),
    ]:
        with pytest.raises(ValueError) as info:
            bad()
        assert _one_line(info) == said


def test_quantities_refuse_bool_tensors():
    p = torch.rand(1, 1, 4, 5) + 1
    with pytest.raises(TypeError, match=r"^max_depth must be a number, got tensor\(True\) \(Tensor\)$"):
        fastmde.depth_metrics(p, p, max_depth=torch.tensor(True))
    assert fastmde.depth_metrics(p, p, max_depth=torch.tensor(10.0))["rms"].item() == 0.0


# ---------------------------------------------------------------- 4-5. NaN/inf and complex weights

def _checkpoint(path, cache_dir, *, damage=None):
    """A fastmde checkpoint of the tests' tiny U-Net18 (32x48), its config pointing at the tiny
    synthetic dataset; ``damage(state)`` changes its weights before saving."""
    from fastmde.engine.checkpoint import FORMAT, VERSION

    cfg = tiny_config(cache_dir, str(path) + ".run")
    spec = {"name": cfg.model, "size": list(cfg.size), "overrides": {"encoder": 18}}
    torch.manual_seed(0)
    model = models.build(cfg.model, size=tuple(cfg.size), pretrained=None, encoder=18)
    state = model.state_dict()
    if damage is not None:
        damage(state)
    torch.save({"format": FORMAT, "version": VERSION, "model_spec": spec, "model": state,
                "config": cfg.to_dict()}, path)
    return str(path)


def _diverged(state):
    state["net.head_conv1.weight"][0, 0, 0, 0] = float("nan")
    state["net.encoder.bn1.running_var"][1] = float("inf")


def _nonfinite_said(path) -> str:
    # parameters are named before buffers
    return f"checkpoint {path!r}: 2 weight tensors hold NaN/inf (net.head_conv1.weight, +1 more; a diverged run?)"


def _cli_warnings(argv, capsys):
    """``fastmde <argv>`` with every warning it gives recorded (pytest records them otherwise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, err = fastmde_cli(argv, capsys)
    return status, err, [str(w.message) for w in caught]


def test_a_diverged_checkpoint_is_told_of_once_by_eval_and_predict(cache, tmp_path, capsys):
    path = _checkpoint(tmp_path / "last.pt", cache, damage=_diverged)
    said = _nonfinite_said(path) + ": its predictions will be NaN"
    result = tmp_path / "r.json"
    status, err, told = _cli_warnings(["eval", "--checkpoint", path, "--out", result, "--batch-size", "2",
                                       "--workers", "0", "--device", "cpu"], capsys)
    assert status == 0, err
    assert [m for m in told if "NaN/inf" in m] == [said], told
    metrics = json.loads(result.read_text())["metrics"]
    assert np.isnan(metrics["rms"]) and metrics["delta1"] == 0.0   # what it warned of
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(photo)
    (tmp_path / "photos.txt").write_text(f"{photo} None 518.8579\n")   # BTS's image-only line
    for extra in ([photo], ["--data-format", "list", "--data", tmp_path / "photos.txt"]):
        status, err, told = _cli_warnings(["predict", "--checkpoint", path, "--out", tmp_path / "maps",
                                           "--overwrite", "--device", "cpu", *extra], capsys)
        assert status == 0, err
        assert [m for m in told if "NaN/inf" in m] == [said], (extra, told)


def test_a_diverged_checkpoint_is_refused_by_export(cache, tmp_path, capsys):
    path = _checkpoint(tmp_path / "last.pt", cache, damage=_diverged)
    for out in (tmp_path / "m.pt2", tmp_path / "m.onnx"):
        status, err, told = _cli_warnings(["export", path, "--out", out, "--size", "32x48"], capsys)
        assert status == 2 and err == (f"fastmde: error: {_nonfinite_said(path)}: its export would predict NaN "
                                       "everywhere; nothing was written\n"), err
        assert not [m for m in told if "NaN/inf" in m], told     # refused, not also warned of
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # the Python API: fastmde.load warns; export refuses the loaded model, and any other module
    with pytest.warns(UserWarning) as caught:
        model = fastmde.load(path)
    assert [str(w.message) for w in caught] == [_nonfinite_said(path) + ": its predictions will be NaN"]
    from fastmde.export import ExportError, export

    with pytest.raises(ExportError) as info:
        export(model, tmp_path / "m.pt2", size=(32, 48), quiet=True)
    assert _one_line(info).startswith(_nonfinite_said(path))
    tiny = _tiny_model()
    with torch.no_grad():
        tiny[0].bias.fill_(float("-inf"))
    with pytest.raises(ExportError, match=r"^the model: 1 weight tensor holds NaN/inf \(0.bias; a diverged run\?\): "):
        export(tiny, tmp_path / "m.pt2", size=(8, 10), quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_finite_checkpoint_loads_without_a_warning(cache, tmp_path):
    path = _checkpoint(tmp_path / "best.pt", cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fastmde.load(path)
    assert model.fastmde_variant == "unet18-k3-1x1"


def _complex_head(state):
    state["net.head_conv1.weight"] = state["net.head_conv1.weight"] * (1 + 1j)


def _bool_head(state):
    state["net.head_conv1.weight"] = state["net.head_conv1.weight"] > 0
    state["net.head_bn.weight"] = state["net.head_bn.weight"] > 0


@pytest.mark.parametrize("damage,damaged", [
    # loaded with torch's "Casting complex values to real discards the imaginary part"
    (_complex_head, "1 of its weights holds complex numbers where the model's are real: net.head_conv1.weight is "
                    "complex64 (the model's is float32)"),
    # loaded as 0/1 without a word
    (_bool_head, "2 of its weights hold true/false or integer values where the model's are floating: "
                 "net.head_conv1.weight is bool (the model's is float32), net.head_bn.weight is bool (the model's "
                 "is float32)"),
], ids=["complex", "bool"])
def test_weights_of_another_kind_are_a_damaged_checkpoint(cache, tmp_path, capsys, damage, damaged):
    from fastmde.engine.checkpoint import CheckpointError
    from fastmde.models.external import ExternalCheckpointError

    path = _checkpoint(tmp_path / "c.pt", cache, damage=damage)
    said = f"{path!r} is a damaged fastmde checkpoint: {damaged}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            fastmde.load(path)
    assert _one_line(info) == said
    status, _, err = fastmde_cli(["eval", "--checkpoint", path, "--out", tmp_path / "r.json"], capsys)
    assert status == 2 and err == f"fastmde: error: --checkpoint: {said}\n", err
    # a plain state dict read by from_external: the same refusal in the file's own names
    state = torch.load(path, weights_only=True)["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExternalCheckpointError) as info:
            models.from_external(state, source="fastmde", size=(32, 48))
    assert _one_line(info) == f"the checkpoint is damaged: {damaged}"
    assert not (tmp_path / "r.json").exists()


def test_parse_size_takes_a_numpy_array_or_tensor_pair():
    """A size computed with numpy or torch (np.array([288, 384]), image.shape[-2:] as a tensor) was
    refused as 'not a pair'; whole numbers are taken, anything else refused as from a tuple."""
    import numpy as np
    from fastmde._text import parse_size

    assert parse_size(np.array([288, 384])) == (288, 384)
    assert parse_size(np.array([288.0, 384.0])) == (288, 384)
    assert parse_size(torch.tensor([288, 384])) == (288, 384)
    assert parse_size(torch.Size([2, 3])) == (2, 3)
    for bad in (np.array([287.6, 384]), np.array([[288, 384]]), np.array([1, 2, 3]), torch.tensor([True, False]),
                np.array([0, 384])):
        with pytest.raises(ValueError, match="size must"):
            parse_size(bad)
