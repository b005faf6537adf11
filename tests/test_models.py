"""U-Net, Hu et al., the intermediate-resolution wrapper, named variants, describe_model.

The ResNet50 variants cost up to 1.6 TMAC per image at 288x384, far beyond a CI budget on a
2-core CPU, so the grid is covered in three layers: every variant at both paper internal sizes
on the meta device (builds, forward and backward run, output at the input's size); every
variant computed for real (forward + backward, finite) at a small odd internal size; and the
Table 2 U-Net at 288x384 and Hu et al.'s baseline at 228x304 computed for real from 480x640.
"""
import re

import pytest
import torch
import torch.nn.functional as F

import fastmde.models as M
from fastmde.models import HuModel, IntermediateResolution, UNet, build, variants
from fastmde.nn import UpProjection

ALL = list(variants())
PAPER_INTERNAL = [(288, 384), (228, 304)]


def _image(h=480, w=640, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g) * 255


def _fwd_bwd(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    (y.float() ** 2).mean().backward()
    return y, x.grad


def test_variant_grid_is_complete():
    names = set(ALL)
    for arch in ("unet", "hu"):
        for depth in (34, 50):
            for k in (3, 5):
                assert f"{arch}{depth}-k{k}" in names and f"{arch}{depth}-k{k}-1x1" in names
    assert {"hu34", "hu50"} <= names
    for name, v in variants().items():
        c = v["config"]
        assert v["description"]
        assert name.startswith(c["arch"] + str(c["encoder"]))
        assert ("-1x1" in name) == c["reduce"]
    assert variants()["hu50"]["config"] == dict(arch="hu", encoder=50, kernel_size=5, reduce=False, original=True)


@pytest.mark.parametrize("name", ALL)
def test_every_variant_at_paper_sizes_meta(name):
    for size in PAPER_INTERNAL:
        with torch.device("meta"):
            model = build(name, size=size)
        x = torch.empty(1, 3, 480, 640, device="meta", requires_grad=True)
        y = model(x)
        assert tuple(y.shape) == (1, 1, 480, 640)
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_every_variant_runs_for_real_small_internal(name):
    torch.manual_seed(0)
    model = build(name, size=(33, 45))  # odd, not divisible by 32
    y, gx = _fwd_bwd(model, _image(96, 128))
    assert tuple(y.shape) == (1, 1, 96, 128)
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,size", [("unet34-k3-1x1", (288, 384)), ("hu50", (228, 304))])
def test_paper_sizes_for_real(name, size):
    torch.manual_seed(0)
    model = build(name, size=size)
    y, gx = _fwd_bwd(model, _image())
    assert tuple(y.shape) == (1, 1, 480, 640)
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()


@pytest.mark.parametrize("name,hw,size", [
    ("unet34-k3-1x1", (97, 131), None), ("hu34-k5", (61, 45), None),
    ("unet34-k5", (61, 45), (37, 53)), ("hu34", (97, 131), (50, 70)),
])
def test_odd_input_sizes(name, hw, size):
    torch.manual_seed(0)
    model = build(name, size=size).eval()
    with torch.no_grad():
        y = model(_image(*hw))
    assert tuple(y.shape) == (1, 1, *hw)
    assert torch.isfinite(y).all()


def test_unet_layers_match_design():
    net = UNet(34, kernel_size=5, reduce=True)
    assert (net.entry_conv.in_channels, net.entry_conv.out_channels, net.entry_conv.kernel_size) == (512, 256, (1, 1))
    dims = [(b.in_channels, b.out_channels) for b in (net.up1, net.up2, net.up3, net.up4)]
    assert dims == [(512, 128), (256, 64), (128, 64), (64, 64)]
    assert all(b.kernel_size == 5 and b.second_kernel_size == 5 and b.reduce for b in (net.up1, net.up4))
    assert (net.head_conv1.kernel_size, net.head_conv2.out_channels, net.head_conv2.bias is not None) == ((5, 5), 1, True)
    with torch.device("meta"):
        net50 = UNet(50, kernel_size=3, reduce=False)
    dims = [(b.in_channels, b.out_channels) for b in (net50.up1, net50.up2, net50.up3, net50.up4)]
    assert dims == [(2048, 512), (1024, 256), (512, 256), (256, 256)]
    assert not net50.up1.reduce and net50.up1.second_kernel_size == 3


def test_hu_layers_match_design():
    with torch.device("meta"):
        slim = HuModel(50, kernel_size=3, reduce=True)
        orig = HuModel(50, original=True)
    dims = [(b.in_channels, b.out_channels) for b in (slim.up1, slim.up2, slim.up3, slim.up4)]
    assert dims == [(2048, 1024), (1024, 512), (512, 256), (256, 256)]
    assert [m.in_channels for m in slim.mff_up] == [256, 512, 1024, 2048]
    assert all(m.out_channels == 16 for m in slim.mff_up)
    convs = [m for m in slim.refine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3  # the paper's code, not its text (four)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(320, 320), (320, 320), (320, 1)]
    # Hu et al.'s original: 1x1 2048->1024, decoder to 64, refinement on 128, 5x5/3x3 blocks
    assert (orig.entry[0].in_channels, orig.entry[0].out_channels) == (2048, 1024)
    dims = [(b.in_channels, b.out_channels) for b in (orig.up1, orig.up2, orig.up3, orig.up4)]
    assert dims == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert all(not b.reduce and b.kernel_size == 5 and b.second_kernel_size == 3 for b in (orig.up1, *orig.mff_up))
    convs = [m for m in orig.refine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.kernel_size) for c in convs] == [(128, (5, 5))] * 3
    # original predicts at half resolution; the wrapper brings it to the input size
    y = orig(torch.empty(1, 3, 98, 130, device="meta"))
    assert tuple(y.shape) == (1, 1, 49, 65)
    with pytest.raises(ValueError, match="original=True"):
        HuModel(50, original=True, kernel_size=3)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("reduce", [False, True])
def test_hu_mff_fusion_conv_is_5x5_for_every_kernel_size(k, reduce):
    # The authors' code (CS231A-FinalProject models.py, class MFF) and Hu et al.'s
    # (models/modules.py, class MFF) fuse the four 16-channel maps with a fixed 5x5 conv; k
    # changes the up-projections and the refinement only.
    with torch.device("meta"):
        net = HuModel(34, kernel_size=k, reduce=reduce)
    fusion = net.mff_conv[0]
    assert (fusion.in_channels, fusion.out_channels, fusion.kernel_size, fusion.padding) == (64, 64, (5, 5), (2, 2))
    assert all(b.kernel_size == k for b in (net.up1, net.up4, *net.mff_up))
    assert all(c.kernel_size == (k, k) for c in net.refine.modules() if isinstance(c, torch.nn.Conv2d))
    # and it keeps the map's size (padding 2), at an odd size too
    net = HuModel(34, kernel_size=k, reduce=reduce).eval()
    with torch.no_grad():
        assert tuple(net(_image(37, 53)).shape) == (1, 1, 37, 53)


class _Probe(torch.nn.Module):
    """Records its input and returns its first channel as 'depth' (at half size if asked)."""

    def __init__(self, half=False):
        super().__init__()
        self.half = half
        self.seen = None

    def forward(self, x):
        self.seen = x
        d = x[:, :1]
        return d[..., ::2, ::2] if self.half else d


def test_resolution_wrapper_semantics():
    x = _image(480, 640)
    probe = _Probe()
    out = IntermediateResolution(probe, size=(288, 384))(x)
    torch.testing.assert_close(probe.seen, F.interpolate(x, size=(288, 384), mode="area"))
    expected = F.interpolate(probe.seen[:, :1], size=(480, 640), mode="bicubic", align_corners=True)
    torch.testing.assert_close(out, expected)
    # same size: untouched; None: network at the input's size, output brought back to it
    out = IntermediateResolution(probe, size=(480, 640))(x)
    assert probe.seen is x and torch.equal(out, x[:, :1])
    half = _Probe(half=True)
    out = IntermediateResolution(half, size=None)(x)
    assert half.seen is x and out.shape[-2:] == (480, 640)
    # internal larger than the input: bilinear up
    out = IntermediateResolution(probe, size=(100, 140))(_image(50, 70))
    assert probe.seen.shape[-2:] == (100, 140) and out.shape[-2:] == (50, 70)


def test_keep_aspect_runs_every_input_at_the_training_scale():
    """aspect="keep": scaled by max(size_h / H, size_w / W), so KITTI's 352x704 training crops
    and its 352x1216 evaluation frames both run at half scale inside (176x352, 176x608)."""
    probe = _Probe()
    model = IntermediateResolution(probe, size=(176, 352), aspect="keep")
    for (h, w), inside in {(352, 704): (176, 352), (352, 1216): (176, 608), (375, 1242): (176, 583),
                           (480, 640): (264, 352)}.items():
        x = _image(h, w)
        out = model(x)
        assert probe.seen.shape[-2:] == inside and out.shape[-2:] == (h, w)
    torch.testing.assert_close(probe.seen, F.interpolate(x, size=(264, 352), mode="area"))
    stretch = IntermediateResolution(probe, size=(176, 352))
    stretch(_image(352, 1216))
    assert probe.seen.shape[-2:] == (176, 352)          # the default stretches, as the paper's code
    assert build("unet34-k3-1x1", encoder=18, size=(32, 64), aspect="keep").aspect == "keep"
    with pytest.raises(ValueError, match="aspect must be one of"):
        IntermediateResolution(probe, size=(8, 8), aspect="fit")


def test_wrapper_input_errors():
    model = IntermediateResolution(_Probe(), size="288x384")
    assert model.size == (288, 384)
    with pytest.raises(TypeError, match="uint8"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 8, 8))
    for bad in ("288", "axb", (0, 4), "3x-4"):
        with pytest.raises(ValueError, match="size"):
            IntermediateResolution(_Probe(), size=bad)


def test_build_errors_and_overrides():
    with pytest.raises(ValueError, match=r"unknown model 'unet35'.*unet34-k3-1x1.*hu50"):
        build("unet35")
    with pytest.raises(TypeError, match="unknown option"):
        build("unet34-k3", depth=18)
    with pytest.raises(ValueError, match="Hu et al"):
        build("unet34-k3", original=True)
    with torch.device("meta"):
        m = build("unet34-k3", encoder=18, kernel_size=5, reduce=True, normalize=True, size=None)
    assert m.size is None and m.net.encoder.depth == 18 and m.net.encoder.normalize
    assert m.net.up1.kernel_size == 5 and m.net.up1.reduce


def test_build_pretrained_loads_encoder(tmp_path):
    torch.manual_seed(1)
    src = M.ResNetEncoder(34)
    path = tmp_path / "r34.pth"
    torch.save(src.state_dict(), path)
    model = build("unet34-k3-1x1", pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.net.encoder.state_dict()[k], v), k
    with pytest.raises(Exception, match="resnet50"):
        build("unet50-k3", pretrained=str(path))


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = build("unet34-k3-1x1", size=(48, 64)).eval()
    x = _image(96, 128)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    y, gx = _fwd_bwd(model_cl.train(), x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("name", ["unet34-k3-1x1", "hu34"])
def test_autocast_bfloat16(name):
    torch.manual_seed(0)
    model = build(name, size=(48, 64)).eval()
    x = _image(96, 128)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; errors compound over ~40 layers (eval-mode BN)
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, gx = _fwd_bwd(model, x)
    assert y.shape == ref.shape and torch.isfinite(y.float()).all() and torch.isfinite(gx).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_count_macs_simple_and_fused():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1))
    assert M.count_macs(conv, torch.zeros(2, 3, 10, 12)) == 2 * 10 * 12 * (8 * 3 * 9 + 4 * 8)
    block = UpProjection(6, 4, kernel_size=3, reduce=True)
    # 1x1 at 5x7, then conv1 + shortcut (4 <- 4, 3x3) and conv2 (4 <- 4, 3x3) at 10x14
    expected = 5 * 7 * 4 * 6 + 3 * 10 * 14 * 4 * 4 * 9
    assert M.count_macs(block, torch.zeros(1, 6, 5, 7)) == expected


def test_describe_model():
    text = M.describe_model("unet34-k3-1x1", "288x384")
    params = int(re.search(r"params\s+([\d,]+)", text).group(1).replace(",", ""))
    macs = int(re.search(r"MACs\s+([\d,]+)", text).group(1).replace(",", ""))
    with torch.device("meta"):
        model = build("unet34-k3-1x1")
    assert params == sum(p.numel() for p in model.parameters())
    assert macs == M.count_macs(model, torch.empty(1, 3, 288, 384, device="meta"))
    assert "unet34-k3-1x1" in text and "288x384" in text
    # MACs scale with the pixel count (every layer is convolutional)
    small = M.describe_model("unet34-k3-1x1", "144x192")
    macs_small = int(re.search(r"MACs\s+([\d,]+)", small).group(1).replace(",", ""))
    assert abs(macs / macs_small - 4) < 0.05
    # Hu et al.'s ResNet50 model: 67.6 M parameters, as published
    assert "67.57 M" in M.describe_model("hu50", "228x304")
    with pytest.raises(ValueError, match="unknown model"):
        M.describe_model("resnet", "288x384")


def test_info_cli_prints_model(capsys):
    from fastmde.cli import main

    assert main(["info", "--model", "hu34-k3-1x1", "--size", "96x128"]) == 0
    out = capsys.readouterr().out
    assert "hu34-k3-1x1" in out and "MACs" in out and "96x128" in out
