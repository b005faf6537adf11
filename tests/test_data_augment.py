"""Batched augmentation: alignment of image and depth, exact flips and rotations, depth values, fill."""
import pytest
import torch
import torch.nn.functional as F

from fastmde.data import Augment
from fastmde.data.augment import affine_theta, color_jitter

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(b=4, h=24, w=32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    depth = torch.rand(b, 1, h, w, generator=g) * 9.5 + 0.5
    depth[:, :, 0, :3] = 0  # some invalid pixels
    return image.to(device), depth.to(device)


def _identity(b):
    return {"flip": torch.zeros(b, dtype=torch.bool), "scale": torch.ones(b), "tx": torch.zeros(b),
            "ty": torch.zeros(b), "angle": torch.zeros(b)}


@pytest.mark.parametrize("device", DEVICES)
def test_flip_is_exact(device):
    image, depth = _batch(device=device)
    out_i, out_d = Augment(flip=1.0, color=None, crop=0, rotate=0)(image, depth)
    assert torch.equal(out_i, image.flip(-1)) and torch.equal(out_d, depth.flip(-1))
    params = _identity(4)
    params["flip"] = torch.tensor([True, False, False, True])
    out_i, out_d = Augment().apply(image, depth, params)
    assert torch.equal(out_i[[0, 3]], image[[0, 3]].flip(-1)) and torch.equal(out_i[[1, 2]], image[[1, 2]])
    assert torch.equal(out_d[[0, 3]], depth[[0, 3]].flip(-1)) and torch.equal(out_d[[1, 2]], depth[[1, 2]])


@pytest.mark.parametrize("device", DEVICES)
def test_identity_when_disabled_and_through_the_grid(device):
    image, depth = _batch(device=device)
    out_i, out_d = Augment(flip=0, color=None, crop=0, rotate=0)(image, depth)
    assert torch.equal(out_i, image) and torch.equal(out_d, depth)
    assert out_d.data_ptr() != depth.data_ptr()  # a new tensor, never the caller's
    # the resampling path itself is the identity at 0 degrees and no crop
    theta = affine_theta(torch.ones(4), torch.zeros(4), torch.zeros(4), torch.zeros(4), 24, 32).to(device)
    grid = F.affine_grid(theta, [4, 1, 24, 32], align_corners=False)
    assert torch.equal(F.grid_sample(depth, grid, mode="nearest", align_corners=False), depth)
    x = image.float() / 255
    torch.testing.assert_close(F.grid_sample(x, grid, mode="bilinear", align_corners=False), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rotation_exact_on_pixel_grid(device):
    b = 2
    _, depth = _batch(b, 8, 8, device=device)
    params = _identity(b)
    params["angle"] = torch.full((b,), 90.0)
    image = torch.zeros(b, 3, 8, 8, dtype=torch.uint8, device=device)
    _, out = Augment().apply(image, depth, params)
    # output (row i, col j) samples input (row j, col N-1-i)
    assert torch.equal(out, torch.rot90(depth, 1, dims=(2, 3)))
    params["angle"] = torch.full((b,), 180.0)
    _, depth = _batch(b, 6, 10, device=device)
    _, out = Augment().apply(torch.zeros(b, 3, 6, 10, dtype=torch.uint8, device=device), depth, params)
    assert torch.equal(out, depth.flip(2, 3))
    # 90 degrees on a non-square image: a rotation in pixels (not in normalised coordinates)
    params["angle"] = torch.full((b,), 90.0)
    _, out = Augment().apply(torch.zeros(b, 3, 6, 10, dtype=torch.uint8, device=device), depth, params)
    for i in range(6):
        for j in range(10):
            r, c = j - 2, 7 - i  # pixel offsets from the centre (2.5, 4.5) rotated by 90 degrees
            expect = depth[:, 0, r, c] if 0 <= r < 6 and 0 <= c < 10 else torch.zeros(b, device=device)
            assert torch.equal(out[:, 0, i, j], expect), (i, j)


@pytest.mark.parametrize("device", DEVICES)
def test_marker_moves_with_image_and_depth(device):
    b, h, w = 8, 48, 64
    image = torch.zeros(b, 3, h, w, dtype=torch.uint8, device=device)
    depth = torch.full((b, 1, h, w), 2.0, device=device)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(12, h - 12, (b,), generator=g)
    cols = torch.randint(12, w - 12, (b,), generator=g)
    for k in range(b):
        image[k, :, rows[k] - 2:rows[k] + 3, cols[k] - 2:cols[k] + 3] = 255
        depth[k, :, rows[k] - 2:rows[k] + 3, cols[k] - 2:cols[k] + 3] = 7.0
    aug = Augment(flip=0.5, color=(0.9, 1.1), crop=0.2, rotate=5.0)
    out_i, out_d = aug(image, depth, torch.Generator().manual_seed(2))
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    moved = 0
    for k in range(b):
        wi = out_i[k].float().mean(0)
        wi = wi * (wi > 0.5 * wi.max())
        wd = (out_d[k, 0] == 7.0).float()
        ci = torch.stack([(wi * ys).sum() / wi.sum(), (wi * xs).sum() / wi.sum()])
        cd = torch.stack([(wd * ys).sum() / wd.sum(), (wd * xs).sum() / wd.sum()])
        assert (ci - cd).abs().max() < 0.75, (k, ci, cd)
        moved += bool((cd - torch.tensor([rows[k], cols[k]], device=device)).abs().max() > 1)
    assert moved >= b // 2  # the augmentation did move the marker


@pytest.mark.parametrize("device", DEVICES)
def test_depth_values_come_from_the_input_and_fill_is_zero(device):
    image, depth = _batch(8, 30, 40, seed=3, device=device)
    aug = Augment()
    for seed in range(3):
        out_i, out_d = aug(image, depth, torch.Generator().manual_seed(seed))
        assert out_i.dtype == torch.uint8 and out_d.dtype == depth.dtype and out_d.shape == depth.shape
        allowed = torch.cat([depth.flatten(), torch.zeros(1, device=device)])
        assert torch.isin(out_d, allowed).all()
        assert out_d.min() >= 0 and out_d.max() <= depth.max()
    # a rotation with no crop leaves the corners without a source: invalid depth, black image
    params = _identity(8)
    params["angle"] = torch.full((8,), 5.0)
    out_i, out_d = aug.apply(image, torch.full_like(depth, 3.0), params)
    assert (out_d[:, :, 0, 0] == 0).all() and (out_d[:, :, -1, -1] == 0).all()
    assert (out_i[:, :, 0, 0] == 0).all()
    assert (out_d[:, :, 10:20, 15:25] == 3.0).all()


def test_parameters_per_sample_and_deterministic():
    aug = Augment()
    p = aug.sample(20000, torch.Generator().manual_seed(0))
    for k in ("brightness", "contrast", "saturation"):
        assert 0.6 <= p[k].min() and p[k].max() <= 1.4 and abs(p[k].mean().item() - 1.0) < 0.01
    assert -5 <= p["angle"].min() and p["angle"].max() <= 5 and p["angle"].abs().max() > 4.9
    assert 0.8 <= p["scale"].min() and p["scale"].max() <= 1.0
    assert ((p["tx"].abs() <= 1 - p["scale"] + 1e-7) & (p["ty"].abs() <= 1 - p["scale"] + 1e-7)).all()
    assert abs(p["flip"].float().mean().item() - 0.5) < 0.02
    image, depth = _batch()
    a = aug(image, depth, torch.Generator().manual_seed(5))
    b = aug(image, depth, torch.Generator().manual_seed(5))
    c = aug(image, depth, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    same = aug(image[:1].expand(4, -1, -1, -1), depth[:1].expand(4, -1, -1, -1), torch.Generator().manual_seed(5))
    assert not torch.equal(same[0][0], same[0][1])  # each sample draws its own parameters


def test_color_jitter_formulas():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    x_before = x.clone()
    one = torch.ones(2)
    torch.testing.assert_close(color_jitter(x, torch.tensor([0.5, 1.3]), one, one),
                               (x * torch.tensor([0.5, 1.3]).view(-1, 1, 1, 1)).clamp(0, 1))
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    flat = color_jitter(x, one, torch.zeros(2), one)  # contrast 0: every pixel the mean grey
    torch.testing.assert_close(flat, grey.mean((1, 2)).view(-1, 1, 1, 1).expand_as(x))
    mono = color_jitter(x, one, one, torch.zeros(2))  # saturation 0: grey in every channel
    torch.testing.assert_close(mono, grey[:, None].expand_as(x))
    # uint8 in, uint8 out, as the rounded float result
    u8 = (x * 255).round().to(torch.uint8)
    params = _identity(2)
    params.update(brightness=torch.tensor([0.7, 1.2]), contrast=torch.tensor([1.1, 0.8]), saturation=torch.tensor([0.6, 1.4]))
    out_u8, _ = Augment().apply(u8, torch.ones(2, 1, 5, 7), params)
    ref = color_jitter(u8.float() / 255, params["brightness"], params["contrast"], params["saturation"])
    assert out_u8.dtype == torch.uint8 and torch.equal(out_u8, (ref * 255).round().to(torch.uint8))
    out_f, _ = Augment().apply(u8.float() / 255, torch.ones(2, 1, 5, 7), params)
    assert out_f.dtype == torch.float32 and 0 <= out_f.min() and out_f.max() <= 1
    torch.testing.assert_close(out_f, ref)
    # inputs are never modified in place
    depth = torch.rand(2, 1, 5, 7)
    depth_before, float_image = depth.clone(), u8.float() / 255
    image_before = float_image.clone()
    Augment(flip=1.0)(float_image, depth, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before) and torch.equal(depth, depth_before) and torch.equal(float_image, image_before)


def test_bad_input():
    aug = Augment()
    with pytest.raises(ValueError, match="image"):
        aug(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="depth"):
        aug(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        aug(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(TypeError, match="depth"):
        aug(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="flip"):
        Augment(flip=2.0)


@pytest.mark.parametrize("color", [(0.6, 1.4), None], ids=["jitter", "no-jitter"])
def test_float_image_outside_0_1_is_refused_with_its_range(color):
    """Issue 22 §1 (pytorch/vision#4915): a float image in 0-255 (the models' and to_images'
    convention) came out 99% white from the colour jitter, or passed through at 0-255 without
    it. Floating images must be in [0, 1]; the error names the range found and the fix."""
    image, depth = _batch(b=2, seed=4)                 # uint8
    aug = Augment(color=color)
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[\d+(\.\d+)?, 2\d\d(\.\d+)?\].*0-255 float image"):
        aug(image.float(), depth, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"got values in \[-\d"):
        aug(image.float() / 255 - 0.5, depth, torch.Generator().manual_seed(0))   # normalised
    # the documented conventions: uint8 0-255 and float 0-1 give the same picture
    out_u8, _ = aug(image, depth, torch.Generator().manual_seed(0))
    out_f, _ = aug(image.float() / 255, depth, torch.Generator().manual_seed(0))
    assert out_f.dtype == torch.float32 and 0 <= out_f.min() and out_f.max() <= 1
    assert (out_f * 255 - out_u8.float()).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("h,w", [(24, 32), (7, 5)])
def test_affine_grid_matches_torch(h, w):
    from fastmde.data.augment import affine_grid

    g = torch.Generator().manual_seed(0)
    theta = affine_theta(torch.rand(5, generator=g) * 0.2 + 0.8, torch.rand(5, generator=g) * 0.2 - 0.1,
                         torch.rand(5, generator=g) * 0.2 - 0.1, torch.rand(5, generator=g) * 10 - 5, h, w)
    torch.testing.assert_close(affine_grid(theta, h, w), F.affine_grid(theta, [5, 1, h, w], align_corners=False),
                               atol=1e-6, rtol=0)


def test_from_parts_turns_on_only_the_named_transforms():
    image, depth = _batch(b=8, seed=3)
    flip_only = Augment.from_parts(["flip"])
    assert (flip_only.flip, flip_only.color, flip_only.crop, flip_only.rotate) == (0.5, None, 0.0, 0.0)
    out_i, out_d = flip_only(image, depth, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out_i[k], image[k].flip(-1)) for k in range(8)]
    for k in range(8):  # each item exactly itself or its mirror, image and depth alike
        want_i, want_d = (image[k].flip(-1), depth[k].flip(-1)) if flipped[k] else (image[k], depth[k])
        assert torch.equal(out_i[k], want_i) and torch.equal(out_d[k], want_d)
    assert 0 < sum(flipped) < 8
    every = Augment.from_parts("rotate,crop,color,flip")
    paper = Augment()
    assert (every.flip, every.color, every.crop, every.rotate) == (paper.flip, paper.color, paper.crop, paper.rotate)
    assert Augment.from_parts(["crop"]).crop == paper.crop and Augment.from_parts(["crop"]).flip == 0.0


@pytest.mark.parametrize("parts", ["flip,zoom", "", [], ["Flip"]])
def test_from_parts_rejects_unknown_or_no_parts(parts):
    with pytest.raises(ValueError, match="flip, color, crop, rotate"):
        Augment.from_parts(parts)
