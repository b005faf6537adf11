"""fastmde.export / ``fastmde export``: ONNX and torch.export (.pt2) models that match the PyTorch model.

One export per model family and format, shared by the tests (module-scoped fixtures; the
exporters take seconds per model even at tiny sizes):

* ``unet``: a checkpoint of the paper authors' code (``Baseline``, ResNet18 U-Net, 3x3 with the
  1x1 reduction; internal size 288x384 from the file), through the ``fastmde export`` command;
* ``hu``: the paper's slimmed Hu et al. model without the 1x1 (``hu34-k3``, ResNet18 encoder,
  internal 32x48), through ``fastmde.export``;
* ``hu50``: Hu et al.'s original ResNet50 model from a checkpoint of their code (ImageNet input
  normalisation, half-resolution output), internal 32x48.

Each exported file is run (onnxruntime; ``torch.export.load``) at two input sizes with batch 1
and 2 and compared with the model; the .pt2 files also run in a Python that cannot import
fastmde, and the README's ``python -c`` onnxruntime + numpy script runs as written in
docs/export.md.
"""
import contextlib
import io
import itertools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastmde
from fastmde.cli import console_main, main
from fastmde.export import ExportError, MissingDependencyError, export
from fastmde.models import build, from_external
from fastmde.models.plain import ExportResolution, FoldedUpProjection, area_resize, plain_copy
from fastmde.models.resolution import IntermediateResolution
from fastmde.nn import UpProjection
from fastmde.reference.up_projection import up_projection_block_reference

from test_external_checkpoints import fixture_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
# a Python that cannot import fastmde: prepended to the scripts run in a subprocess
BLOCK_FASTMDE = textwrap.dedent("""
    import sys
    class _NoFastmde:
        def find_spec(self, name, path=None, target=None):
            if name == "fastmde" or name.startswith("fastmde."):
                raise ImportError("fastmde is blocked in this test")
    sys.meta_path.insert(0, _NoFastmde())
    try:
        import fastmde
    except ImportError:
        pass
    else:
        raise SystemExit("the fastmde blocker did not block")
""")


def _randomise_batchnorm(model, seed=0):
    """Running statistics and affines away from 0/1, so that folding them is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _images(batch, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g) * 255


def _relative(got, ref):
    got, ref = torch.as_tensor(got).double(), ref.double()
    assert got.shape == ref.shape
    return float((got - ref).abs().max() / ref.abs().max())


def _quiet(fn, *args, **kwargs):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = fn(*args, **kwargs)
    return result, err.getvalue()


# ---------------------------------------------------------------- the three families, exported once

@pytest.fixture(scope="module")
def authors_checkpoint(tmp_path_factory):
    """A checkpoint file of the paper authors' code: ``Baseline`` (ResNet18 U-Net, 3x3, 1x1)."""
    ckpt = str(tmp_path_factory.mktemp("authors") / "Baseline_best_val.checkpoint")
    torch.save(fixture_state("freeman2021/Baseline-k3-1x1"), ckpt)
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory, authors_checkpoint):
    """family -> {"model", "sizes", "onnx", "pt2", "log": {format: printed report}, "run": {format:
    the loaded export}, "cases": [(input, the model's output)]}."""
    out = tmp_path_factory.mktemp("export")
    families = {}

    # unet: the paper authors' checkpoint file, through the command
    ckpt = authors_checkpoint
    model = fastmde.load(ckpt)
    assert model.fastmde_source["source"] == "freeman2021" and model.size == (288, 384)
    model.size = (32, 48)   # what --internal-size does (the file's 288x384 costs seconds per run here)
    entry = {"model": model, "sizes": [(48, 64), (37, 51)], "log": {}}
    for fmt in ("onnx", "pt2"):
        path = str(out / f"unet.{fmt}")
        status, log = _quiet(main, ["export", ckpt, "--out", path, "--size", "48x64", "--internal-size", "32x48"])
        assert status == 0
        entry[fmt], entry["log"][fmt] = path, log
    families["unet"] = entry

    # hu: the paper's slimmed Hu et al. model (no 1x1), Python API
    torch.manual_seed(0)
    model = _randomise_batchnorm(build("hu34-k3", size=(32, 48), encoder=18).eval())
    families["hu"] = {"model": model, "sizes": [(48, 64), (40, 44)], "log": {}}

    # hu50: Hu et al.'s original ResNet50 model from their code's checkpoint layout
    model = from_external({"state_dict": {"module." + k: v for k, v in fixture_state("hu2019/resnet50").items()}},
                          size=(32, 48)).eval()
    families["hu50"] = {"model": model, "sizes": [(48, 64), (30, 52)], "log": {}}

    for name in ("hu", "hu50"):
        entry = families[name]
        for fmt in ("onnx", "pt2"):
            path = str(out / f"{name}.{fmt}")
            report, log = _quiet(export, entry["model"], path, size=entry["sizes"][0])
            assert report.relative <= TOLERANCE and os.path.isfile(path)
            entry[fmt], entry["log"][fmt] = path, log
    for entry in families.values():   # loaded once: loading is what the tests below run
        entry["run"] = {"onnx": _onnx_runner(entry["onnx"]), "pt2": _pt2_runner(entry["pt2"])}
        entry["cases"] = []           # two sizes, batch 1 and 2, with the model's output
        for i, (batch, size) in enumerate(itertools.product((1, 2), entry["sizes"])):
            x = _images(batch, size, seed=10 + i)
            with torch.no_grad():
                entry["cases"].append((x, entry["model"](x)))
    return families


def _onnx_runner(path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["depth"], {"image": x.numpy()})[0]


def _pt2_runner(path):
    program = torch.export.load(path)
    namespaces = {n.target.namespace for n in program.graph.nodes
                  if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
    assert namespaces <= {"aten", "prims"}, namespaces      # no fastmde:: (or other library's) op
    module = program.module()

    def run(x):
        with torch.no_grad():
            return module(x)

    return run


def _run_onnx(path, x):
    return _onnx_runner(path)(x)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("family", ["unet", "hu", "hu50"])
def test_export_matches_pytorch_at_two_sizes_and_batches(exported, family, fmt):
    entry = exported[family]
    assert len(entry["cases"]) == 4
    for x, ref in entry["cases"]:
        assert ref.shape == (x.shape[0], 1, *x.shape[-2:])
        assert _relative(entry["run"][fmt](x), ref) <= TOLERANCE, (family, fmt, tuple(x.shape))
    log = entry["log"][fmt]
    assert "export: verified: max difference" in log and "batch 1.., height 1.., width 1.." in log
    assert ("ONNX opset 18" in log) == (fmt == "onnx")


def test_onnx_graph_is_standard_with_named_dynamic_axes(exported):
    for family in ("unet", "hu", "hu50"):
        model = onnx.load(exported[family]["onnx"])
        assert {op.domain: op.version for op in model.opset_import}.get("") == 18
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
        (image,), (depth,) = model.graph.input, model.graph.output
        assert (image.name, depth.name) == ("image", "depth")
        for value, channels in ((image, 3), (depth, 1)):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == ["batch", channels, "height", "width"], dims
        props = {p.key: p.value for p in model.metadata_props}
        assert "metres" in props["fastmde.output"] and "0-255" in props["fastmde.input"]


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def test_the_models_run_fastmde_ops_the_exports_do_not(exported):
    """The exports' graphs hold ATen ops only (checked where the .pt2 files are loaded, and in
    the ONNX graph test); the models they come from do run fastmde:: ops."""
    for family, entry in exported.items():
        with _OpNames() as seen, torch.no_grad():
            entry["model"](_images(1, entry["sizes"][0], seed=0))
        assert any(n.startswith("fastmde::") for n in seen.names), family   # what export must replace


def test_pt2_loads_and_runs_without_fastmde(exported, tmp_path):
    cases = []
    for family in ("unet", "hu"):      # (hu50's 270 MB program is loaded in-process above)
        x, ref = exported[family]["cases"][-1]
        entry = exported[family]
        np.save(tmp_path / f"{family}_x.npy", x.numpy())
        np.save(tmp_path / f"{family}_ref.npy", ref.numpy())
        cases.append((entry["pt2"], str(tmp_path / f"{family}_x.npy"), str(tmp_path / f"{family}_ref.npy")))
    script = BLOCK_FASTMDE + textwrap.dedent("""
        import json, numpy as np, torch
        for pt2, x, ref in json.loads(sys.argv[1]):
            program = torch.export.load(pt2)
            with torch.no_grad():
                out = program.module()(torch.from_numpy(np.load(x)))
            ref = torch.from_numpy(np.load(ref))
            print(float((out - ref).abs().max() / ref.abs().max()))
        assert not any(m == "fastmde" or m.startswith("fastmde.") for m in sys.modules)
    """)
    import json

    done = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    relative = [float(v) for v in done.stdout.split()]
    assert len(relative) == 2 and max(relative) <= TOLERANCE, relative


def _readme_script():
    """The ``python -c`` block of docs/export.md (between the markers) and its arguments."""
    with open(os.path.join(ROOT, "docs", "export.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- onnx-script -->", 2)[1]
    m = re.search(r'```bash\npython -c "\n(.*?)\n" (.*?)\n```', block, re.S)
    assert m, "docs/export.md lost its python -c block"
    return m.group(1), m.group(2).split()


def test_readme_onnxruntime_numpy_script_runs(exported, tmp_path):
    code, args = _readme_script()
    assert args == ["depth.onnx", "photo.npy", "depth.npy"]
    for module in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", code, re.M):
        assert module.split(".")[0] in ("sys", "numpy", "onnxruntime"), module
    entry = exported["unet"]
    photo = (np.random.default_rng(0).random((37, 51, 3)) * 255).astype(np.uint8)   # (H, W, 3) RGB
    np.save(tmp_path / "photo.npy", photo)
    os.symlink(entry["onnx"], tmp_path / "depth.onnx")
    done = subprocess.run([sys.executable, "-c", BLOCK_FASTMDE + code, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    depth = np.load(tmp_path / "depth.npy")
    with torch.no_grad():
        ref = entry["model"](torch.from_numpy(photo).permute(2, 0, 1)[None].float())[0, 0]
    assert depth.shape == (37, 51) and _relative(torch.from_numpy(depth), ref) <= TOLERANCE
    assert "(37, 51)" in done.stdout


# ---------------------------------------------------------------- the standard-operator copy


@pytest.mark.parametrize("reduce,k,k2", [(True, 3, 3), (True, 5, 5), (False, 3, 3), (False, 5, 3)])
def test_folded_block_is_the_reference_composition(reduce, k, k2):
    torch.manual_seed(0)
    block = _randomise_batchnorm(UpProjection(6, 4, kernel_size=k, reduce=reduce, second_kernel_size=k2)).double()
    block.eval()
    folded = FoldedUpProjection(block)
    x, skip = torch.randn(2, 3, 5, 7, dtype=torch.float64), torch.randn(2, 3, 9, 13, dtype=torch.float64)
    with torch.no_grad():
        for args in ((x, skip, (17, 25)), (torch.cat((x, x), 1), None, None)):
            ref = up_projection_block_reference(block, *args)
            assert torch.allclose(folded(*args), ref, rtol=1e-10, atol=1e-12)
            assert torch.allclose(block(*args), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,m", [(64, 48), (48, 48), (37, 8), (9, 7), (5, 11), (1, 3), (100, 3)])
def test_area_resize_is_adaptive_average_pooling(n, m):
    x = torch.randn(2, 3, n + 3, n, dtype=torch.float64)
    ref = F.interpolate(x, size=(m + 1, m), mode="area")
    assert torch.allclose(area_resize(x, (m + 1, m)), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aspect", ["stretch", "keep"])
@pytest.mark.parametrize("size", [(20, 30), (32, 48), (40, 60), (20, 60), (40, 30), (1, 2)])
def test_export_resolution_takes_the_wrappers_path_at_every_size(size, aspect):
    """Grow (bilinear), equal (none), shrink (area), mixed: one graph, the wrapper's values."""
    net = nn.Conv2d(3, 1, 3, padding=1).double()
    wrapper = IntermediateResolution(net, size=(32, 48), aspect=aspect)
    plain = ExportResolution(wrapper)
    assert (plain.fixed_size_reason is None) == (aspect == "stretch")
    x = torch.rand(2, 3, *size, dtype=torch.float64) * 255
    with torch.no_grad():
        assert torch.allclose(plain(x), wrapper(x), rtol=1e-12, atol=1e-9)


def test_plain_copy_leaves_the_model_alone():
    model = build("unet34-k3-1x1", size=(32, 48), encoder=18).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = plain_copy(model)
    assert model.training and not plain.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, UpProjection) for m in plain.modules())


# ---------------------------------------------------------------- what is refused


class _Tiny(nn.Module):
    """A tiny image -> depth module: conv, then ``extra`` (a function of the features)."""

    def __init__(self, extra=None, norm=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.norm = norm
        self.extra = extra

    def forward(self, x):
        y = self.conv(x / 255)
        if self.norm is not None:
            y = self.norm(y)
        return y if self.extra is None else self.extra(self, y)


def test_refusals_leave_the_target_alone(tmp_path):
    target = tmp_path / "depth.pt2"
    target.write_bytes(b"previous export")

    # BatchNorm without running statistics: each image's depth would depend on the batch
    with pytest.raises(ExportError, match="no running statistics"):
        export(_Tiny(norm=nn.BatchNorm2d(1, track_running_stats=False)), target, size=(8, 10), quiet=True)

    # a fastmde op the copy cannot write in standard operators
    def fused(module, y):
        weight = torch.ones(1, 1, 3, 3)
        return torch.ops.fastmde.upsample_conv2d(y, weight, [y.shape[-2], y.shape[-1]], True)

    with pytest.raises(ExportError, match="fastmde::upsample_conv2d"):
        export(_Tiny(extra=fused), target, size=(8, 10), quiet=True)

    # an export that does not compute what the model computes (fresh noise each call)
    with pytest.raises(ExportError, match="does not match the model"):
        export(_Tiny(extra=lambda module, y: y + torch.rand_like(y)), target, size=(8, 10), quiet=True)

    # not a depth model: two outputs
    with pytest.raises(ExportError, match=r"one \(B, 1, H, W\) tensor"):
        export(_Tiny(extra=lambda module, y: (y, y)), target, size=(8, 10), quiet=True)

    assert target.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["depth.pt2"]      # no temporary file left behind


def _wide_only(module, y):
    # a graph that differs with the input's width: one graph is not right at every size
    return y * 2 if y.shape[-1] > 12 else y


def test_size_dependent_graph_pt2_checks_sizes_onnx_fixes_them(tmp_path):
    model = _Tiny(extra=_wide_only).eval()
    with pytest.raises(ExportError, match="dynamic height and width"):
        export(model, tmp_path / "a.pt2", size=(8, 16), dynamic_size=True, quiet=True)

    report = export(model, tmp_path / "b.pt2", size=(8, 16), quiet=True)
    assert report.sizes["batch"] == "1.." and "checks when it runs" in report.notes[0]
    program = torch.export.load(str(tmp_path / "b.pt2")).module()
    x = _images(1, (9, 20), seed=1)
    assert torch.allclose(program(x), model(x), rtol=1e-6)
    with pytest.raises(Exception, match="[Gg]uard"):
        program(_images(1, (9, 10), seed=1))          # the graph is wrong there: refused, not computed

    report = export(model, tmp_path / "c.onnx", size=(8, 16), quiet=True)
    assert report.sizes == {"batch": "1..", "height": "8 (fixed)", "width": "16 (fixed)"}
    assert "fixed at the example size" in report.notes[0]
    assert _run_onnx(str(tmp_path / "c.onnx"), _images(3, (8, 16), seed=2)).shape == (3, 1, 8, 16)
    with pytest.raises(Exception, match="[Ii]nvalid dimensions|INVALID_ARGUMENT"):
        _run_onnx(str(tmp_path / "c.onnx"), _images(1, (9, 20), seed=2))


def test_aspect_keep_is_exported_at_a_fixed_size(tmp_path):
    model = IntermediateResolution(_Tiny(), size=(6, 8), aspect="keep").eval()
    with pytest.raises(ExportError, match="aspect='keep'.*float rounding"):
        export(model, tmp_path / "a.pt2", size=(8, 14), dynamic_size=True, quiet=True)
    report = export(model, tmp_path / "b.pt2", size=(8, 14), quiet=True)
    assert report.sizes == {"batch": "1..", "height": "8 (fixed)", "width": "14 (fixed)"}
    assert "aspect='keep'" in report.notes[0] and len(report.checks) == 2


class _Foreign(nn.Module):
    """Another project's depth model with the paper authors' up-projection block."""

    def __init__(self):
        super().__init__()
        from test_patch import AuthorsStyleUpProjection

        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = AuthorsStyleUpProjection(4, 3, use_1x1=True)
        self.head = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.head(self.up(F.relu(self.stem(x / 255))))


def test_a_model_patched_by_fastmde_exports_its_own_blocks(tmp_path):
    model = _randomise_batchnorm(_Foreign()).eval()
    assert fastmde.patch(model).replaced == {"up": "freeman2021_1x1"}
    with _OpNames() as seen, torch.no_grad():
        model(_images(1, (8, 10), seed=0))
    assert "fastmde::upsample_conv2d" in seen.names
    model.train()                                      # exported in eval mode, left in training mode
    report = export(model, tmp_path / "foreign.pt2", size=(8, 10), quiet=True)
    assert model.training and model.up.bn1.training
    assert report.relative <= TOLERANCE and report.sizes["batch"] == "1.."
    _pt2_runner(str(tmp_path / "foreign.pt2"))          # loads, and holds ATen ops only
    assert model.up.__dict__.get("_fastmde_patch") is not None      # the model itself stays patched


def test_half_precision_model_is_exported_in_float32(tmp_path):
    model = _Tiny().to(torch.bfloat16).eval()
    report = export(model, tmp_path / "half.pt2", size=(8, 10), quiet=True)
    x = _images(1, (8, 10), seed=3)
    with torch.no_grad():
        ref = model.float()(x)                         # the bf16 weights, upcast exactly
    assert _relative(_pt2_runner(str(tmp_path / "half.pt2"))(x), ref) <= 1e-6 and report.relative <= 1e-6


def test_docs_command_lines_parse():
    import shlex

    from fastmde.cli import build_parser

    text = open(os.path.join(ROOT, "docs", "export.md"), encoding="utf-8").read()
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in block.splitlines()
             if ln.startswith("fastmde ")]
    assert {ln.split()[1] for ln in lines} == {"export", "predict"}
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        build_parser([argv[0]]).parse_args(argv)


def test_bad_arguments(tmp_path):
    model = _Tiny()
    with pytest.raises(ValueError, match="cannot tell the format"):
        export(model, tmp_path / "depth.bin")
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, tmp_path / "depth.bin", format="tflite")
    with pytest.raises(ValueError, match="opset must be an integer from 18"):
        export(model, tmp_path / "depth.onnx", opset=11)
    with pytest.raises(ValueError, match="tolerance"):
        export(model, tmp_path / "depth.pt2", tolerance=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export(lambda x: x, tmp_path / "depth.pt2")
    assert os.listdir(tmp_path) == []


def test_missing_extra_is_one_line_naming_it(authors_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # import onnxruntime -> ImportError
    with pytest.raises(MissingDependencyError, match=r"onnxruntime .*pip install 'fastmde\[export\]'"):
        export(_Tiny(), tmp_path / "depth.onnx")
    status = console_main(["export", authors_checkpoint, "--out", str(tmp_path / "d.onnx")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "fastmde[export]" in err
    assert os.listdir(tmp_path) == []


def test_cli_refuses_an_existing_file_and_a_format_it_cannot_tell(authors_checkpoint, tmp_path, capsys):
    ckpt = authors_checkpoint
    existing = tmp_path / "depth.onnx"
    existing.write_bytes(b"keep")
    assert console_main(["export", ckpt, "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert existing.read_bytes() == b"keep"
    assert console_main(["export", ckpt, "--out", str(tmp_path / "depth.bin")]) == 2
    assert "--format onnx or pt2" in capsys.readouterr().err
