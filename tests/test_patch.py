"""fastmde.patch / unpatch: up-projection blocks of other codebases get the fused forward.

The blocks below are written here, in the structure of the two codebases the paper builds on
(module and parameter names, which conv is the shortcut, the forward's signature): Hu et al.'s
``_UpProjection`` (JunjH/Revisiting_Single_Depth_Estimation, models/modules.py: upsample to a
``size`` argument, 5x5 / 3x3 branch, 5x5 shortcut ``conv2``/``bn2``) and the paper authors'
``UpProjection`` (thatcherfreeman/CS231A-FinalProject, models.py: optional skip concatenated,
upsample by ``self.scale`` with align_corners=True, k x k convs, with or without the 1x1
``conv0``/``bn0`` reduction), plus a block of the same structure under other names and blocks
that must be left alone. Each patched block is compared with an unpatched copy: output, input
and parameter gradients, BatchNorm running statistics (two training steps, then eval).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import fastmde
import fastmde.models


class HuStyleUpProjection(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv1_2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cin, cout, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, size):
        x = F.interpolate(x, size=size, mode="bilinear")
        x_conv1 = self.relu(self.bn1(self.conv1(x)))
        bran1 = self.bn1_2(self.conv1_2(x_conv1))
        bran2 = self.bn2(self.conv2(x))
        return self.relu(bran1 + bran2)


class AuthorsStyleUpProjection(nn.Module):
    def __init__(self, cin, cout, scale=2, ksize=3, use_1x1=False):
        super().__init__()
        self.scale = scale
        self.use_1x1 = use_1x1
        mid = cin
        if use_1x1:
            self.conv0 = nn.Conv2d(cin, cout, kernel_size=1, stride=1, bias=False)
            self.bn0 = nn.BatchNorm2d(cout)
            mid = cout
        self.conv1 = nn.Conv2d(mid, cout, kernel_size=ksize, stride=1, padding=ksize // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv1_2 = nn.Conv2d(cout, cout, kernel_size=ksize, stride=1, padding=ksize // 2, bias=False)
        self.bn1_2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(mid, cout, kernel_size=ksize, stride=1, padding=ksize // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x, block=None):
        if block is not None:
            x = torch.cat([x, block], dim=1)
        if self.use_1x1:
            x = F.relu(self.bn0(self.conv0(x)))
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)
        x_conv1 = self.relu(self.bn1(self.conv1(x)))
        bran1 = self.bn1_2(self.conv1_2(x_conv1))
        bran2 = self.bn2(self.conv2(x))
        return self.relu(bran1 + bran2)


class RenamedUpBlock(nn.Module):
    """The same structure under other names: an nn.Upsample module (align_corners=False), the
    shortcut declared first and added first, Tensor.relu(), 'same' padding."""

    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.skip_conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.skip_norm = nn.BatchNorm2d(cout, momentum=None)
        self.a = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.a_norm = nn.BatchNorm2d(cout, momentum=0.3)
        self.b = nn.Conv2d(cout, cout, 1, bias=False)
        self.b_norm = nn.BatchNorm2d(cout, affine=False)

    def forward(self, inp):
        u = self.up(inp)
        s = self.skip_norm(self.skip_conv(u))
        h = self.a_norm(self.a(u)).relu()
        return torch.relu(s + self.b_norm(self.b(h)))


class TransposedConvUpsampler(nn.Module):
    """Must be left alone: upsamples with a transposed conv, then conv-BN-ReLU twice."""

    def __init__(self, cin, cout):
        super().__init__()
        self.upres = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = self.upres(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn3(self.conv3(y)) + self.bn2(self.conv2(x)))


class BiasedUpProjection(HuStyleUpProjection):
    """An up-projection whose shortcut conv has a bias: recognised, reported, not patched."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout)
        self.conv2 = nn.Conv2d(cin, cout, kernel_size=5, padding=2, bias=True)


class Decoder(nn.Module):
    """A small model holding one block of each kind (and a block to leave alone)."""

    def __init__(self):
        super().__init__()
        self.hu = HuStyleUpProjection(6, 4)
        self.authors = AuthorsStyleUpProjection(8, 5, scale=2, ksize=3)
        self.authors_1x1 = AuthorsStyleUpProjection(10, 3, scale=2, ksize=5, use_1x1=True)
        self.renamed = RenamedUpBlock(3, 4)
        self.transposed = TransposedConvUpsampler(4, 2)
        self.biased = BiasedUpProjection(2, 3)

    def forward(self, x, skip, skip2):
        y = self.hu(x, [2, 3])
        y = self.authors(y, skip)                   # 4 + 4 channels -> 5, 4x6
        y = self.authors_1x1(y, skip2)              # 5 + 5 channels -> 3, 8x12
        y = self.renamed(y)                         # 4, 16x24
        return self.transposed(y)


KINDS = {"hu": "hu2019", "authors": "freeman2021", "authors_1x1": "freeman2021_1x1", "renamed": "up_projection"}


def _randomise_batchnorms(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


def _inputs(seed, device, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 6, 2, 2, generator=g).to(device)
    skip = torch.randn(batch, 4, 2, 3, generator=g).to(device)
    skip2 = torch.randn(batch, 5, 4, 6, generator=g).to(device)
    return x, skip, skip2


def _model(device):
    torch.manual_seed(0)
    model = Decoder()
    _randomise_batchnorms(model)
    return model.to(device)


def test_patch_report_and_state_dict():
    model = _model("cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    report = fastmde.patch(model)
    assert report.replaced == KINDS
    assert set(report.skipped) == {"biased"} and "bias" in report.skipped["biased"]
    assert "transposed" not in report.replaced and "transposed" not in report.skipped
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert [id(p) for p in model.parameters()] == params
    assert fastmde.patch(model).replaced == KINDS  # patching again changes nothing
    assert fastmde.unpatch(model) == KINDS
    assert "forward" not in model.hu.__dict__ and fastmde.unpatch(model) == {}
    assert list(model.state_dict()) == list(before)
    assert "hu2019" in str(report)


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def _compare_grads(patched, plain, x_p, x_r, rtol):
    """Every gradient within ``rtol`` of its largest entry (a weight gradient sums thousands of
    products, so its error scales with the largest, not with each entry)."""
    for a, b in zip(x_p, x_r):
        assert _rel_err(a.grad, b.grad) < rtol
    for (name, p), q in zip(patched.named_parameters(), plain.parameters()):
        if name.startswith("biased."):  # not in the forward
            assert p.grad is None and q.grad is None
            continue
        assert p.grad is not None and _rel_err(p.grad, q.grad) < rtol, name


# Seeds of _inputs whose forward passes keep every ReLU input of the model at least
# _RELU_MARGIN from zero (see _assert_away_from_relu_kinks). Seed 0 does not: in the unpatched
# TransposedConvUpsampler one pre-ReLU value of the reference is -1.0e-6, which the patched
# model's rounding (under the Triton interpreter) put at +1.1e-7, so that one element's gradient
# passed the ReLU in one model and not in the other, and every gradient upstream of it differed
# by a few %.
TRAIN_SEEDS = (8, 63)
_RELU_MARGIN = 1e-4   # ~20x the largest difference between patched and plain activations seen here


class _ReluInputs(TorchFunctionMode):
    """Records the smallest |input| of every ReLU called under it (F.relu, nn.ReLU, torch.relu,
    Tensor.relu, in place or not)."""

    RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __init__(self):
        super().__init__()
        self.smallest = float("inf")
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RELUS:
            self.calls += 1
            self.smallest = min(self.smallest, args[0].detach().abs().min().item())
        return func(*args, **(kwargs or {}))


def _assert_away_from_relu_kinks(plain, inputs):
    """A patched model's activations differ from the plain model's by rounding (~1e-6): a
    gradient comparison is meaningful only where no ReLU input lies that close to zero, else the
    two models may take different sides of the kink there. Checked on a copy (train mode: the
    batch statistics of the test; the copy's running statistics are discarded)."""
    probe = copy.deepcopy(plain)
    with torch.no_grad(), _ReluInputs() as relus:
        for x in inputs:
            probe(*x)
    assert relus.calls > 0
    assert relus.smallest > _RELU_MARGIN, (
        f"a ReLU input of the reference lies {relus.smallest:.1e} from zero: choose other seeds")


def test_relu_kink_guard_sees_every_relu_spelling():
    x = torch.tensor([[-3e-5, 2.0]])
    for relu in (F.relu, nn.ReLU(inplace=True), torch.relu, torch.Tensor.relu, torch.Tensor.relu_):
        with _ReluInputs() as relus:
            relu(x.clone())
        assert relus.calls == 1 and relus.smallest == pytest.approx(3e-5), relu
    with pytest.raises(AssertionError, match="from zero"):
        _assert_away_from_relu_kinks(_model("cpu"), [_inputs(0, "cpu")])  # the old seed: -1.0e-6


def test_patched_model_matches_unpatched(backend, device):
    """Training (two steps: outputs, input and parameter gradients, running statistics), then
    eval, on every backend (Triton: the BatchNorm-folded path)."""
    plain = _model(device)
    _assert_away_from_relu_kinks(plain, [_inputs(seed, device) for seed in TRAIN_SEEDS])
    patched = copy.deepcopy(plain)
    report = fastmde.patch(patched)
    assert report.replaced == KINDS
    for step, seed in enumerate(TRAIN_SEEDS):
        x_p = [t.clone().requires_grad_() for t in _inputs(seed, device)]
        x_r = [t.clone().requires_grad_() for t in _inputs(seed, device)]
        out_p, out_r = patched(*x_p), plain(*x_r)
        torch.testing.assert_close(out_p, out_r, rtol=1e-4, atol=1e-5)
        weight = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(step)).to(device)
        (out_p * weight).sum().backward()
        (out_r * weight).sum().backward()
        _compare_grads(patched, plain, x_p, x_r, 1e-4)
        for (name, b), c in zip(patched.named_buffers(), plain.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)
        patched.zero_grad()
        plain.zero_grad()
    patched.eval()
    plain.eval()
    with torch.no_grad():
        x = _inputs(5, device, batch=1)
        torch.testing.assert_close(patched(*x), plain(*x), rtol=1e-4, atol=1e-5)


def test_patched_forward_takes_arguments_by_position_and_name():
    torch.manual_seed(1)
    block = AuthorsStyleUpProjection(6, 4)
    plain = copy.deepcopy(block)
    fastmde.patch(block)
    x, skip = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    for args, kwargs in (((x, skip), {}), ((x,), {"block": skip}), ((), {"x": x, "block": skip})):
        torch.testing.assert_close(block(*args, **kwargs), plain(*args, **kwargs), rtol=1e-4, atol=1e-5)
    # without the optional skip: no concatenation (6 channels expected, so a 6-channel input)
    x6 = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(block(x6), plain(x6), rtol=1e-4, atol=1e-5)
    hu = HuStyleUpProjection(3, 2)
    hu_plain = copy.deepcopy(hu)
    fastmde.patch(hu)
    torch.testing.assert_close(hu(x[:, :3], size=(7, 9)), hu_plain(x[:, :3], size=(7, 9)), rtol=1e-4, atol=1e-5)


class LegacyUpsampleUpProjection(HuStyleUpProjection):
    """Hu et al.'s original call: F.upsample (deprecated), positional size, default align_corners."""

    def forward(self, x, size):
        x = F.upsample(x, size=size, mode="bilinear")
        x_conv1 = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn1_2(self.conv1_2(x_conv1)) + self.bn2(self.conv2(x)))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_legacy_upsample_call_is_recognised():
    torch.manual_seed(4)
    block = LegacyUpsampleUpProjection(3, 2)
    plain = copy.deepcopy(block)
    assert fastmde.patch(block).replaced == {"": "hu2019"}
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(block(x, [7, 9]), plain(x, [7, 9]), rtol=1e-4, atol=1e-5)


def test_non_integer_scale_with_align_corners_false_falls_back():
    """PyTorch maps coordinates by 1/scale there, the kernels by the sizes: the original runs
    where they differ, the fused path where they agree."""
    torch.manual_seed(2)
    block = RenamedUpBlock(3, 2)
    block.up.scale_factor = 1.5
    plain = copy.deepcopy(block)
    assert fastmde.patch(block).replaced == {"": "up_projection"}
    for h, w in ((3, 5), (4, 6)):   # 4.5 x 7.5 (differs) and 6 x 9 (exact)
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(block(x), plain(x), rtol=1e-4, atol=1e-5)


def test_deepcopy_of_a_patched_model_is_patched_with_its_own_modules():
    model = _model("cpu")
    fastmde.patch(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    model.eval()
    clone.eval()
    x = _inputs(0, "cpu")
    with torch.no_grad():
        assert not torch.allclose(clone(*x), model(*x))
        fastmde.unpatch(clone)
        patched_out = model(*x)
        fastmde.unpatch(model)
        torch.testing.assert_close(patched_out, model(*x), rtol=1e-4, atol=1e-5)


def test_patched_model_saves_and_loads_with_torch_save():
    # torch.save(model) of a patched model used to save, then torch.load failed with
    # "'_UpProjection' object has no attribute '_fused_forward'" (a bound method pickles by name).
    import io

    model = _model("cpu").eval()
    report = fastmde.patch(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert fastmde.patch(loaded).replaced == report.replaced      # still patched, nothing new
    x = _inputs(0, "cpu", batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), model(*x), rtol=0, atol=0)
        loaded.hu.forward.args[0].conv1.weight.mul_(0.5)      # the loaded forward reads its own block
        assert not torch.allclose(loaded(*x), model(*x))
    assert fastmde.unpatch(loaded) == report.replaced
    assert "forward" not in loaded.hu.__dict__


def test_fastmde_models_are_left_as_they_are():
    model = fastmde.models.build("unet34-k3-1x1", size=(32, 32))
    model.eval()
    keys = list(model.state_dict())
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        before = model(x)
    report = fastmde.patch(model)
    assert report.replaced == {}
    blocks = [k for k in report.skipped if k.split(".")[-1].startswith("up")]
    assert len(blocks) == 4 and all("already" in report.skipped[k] for k in blocks)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_fastmde_block_inside_a_foreign_model_is_reported():
    model = nn.Sequential(fastmde.nn.UpProjection(4, 3), HuStyleUpProjection(3, 2))
    report = fastmde.patch(model)
    assert report.replaced == {"1": "hu2019"} and set(report.skipped) == {"0"}


def test_patched_model_compiles_fullgraph(backend, device):
    plain = _model(device)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1  # momentum=None reads num_batches_tracked as a number: no full graph, patched or not
    seed = TRAIN_SEEDS[0]
    _assert_away_from_relu_kinks(plain, [_inputs(seed, device)])
    patched = copy.deepcopy(plain)
    fastmde.patch(patched)
    torch._dynamo.reset()
    compiled = torch.compile(patched, fullgraph=True, backend="aot_eager")
    x_p = [t.clone().requires_grad_() for t in _inputs(seed, device)]
    x_r = [t.clone().requires_grad_() for t in _inputs(seed, device)]
    out_p, out_r = compiled(*x_p), plain(*x_r)
    torch.testing.assert_close(out_p, out_r, rtol=1e-4, atol=1e-5)
    out_p.square().sum().backward()
    out_r.square().sum().backward()
    _compare_grads(patched, plain, x_p, x_r, 1e-4)
    for b, c in zip(patched.buffers(), plain.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="nn.Module"):
        fastmde.patch("model.pt")
