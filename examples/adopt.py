"""Adopting fastmde in an existing depth project: two lines change, the weights do not.

The first half of this file is a depth project as such projects are written: a U-Net with a
torchvision-style ResNet34 encoder (torchvision's module names, so ImageNet weights load), a
decoder of up-projection blocks in the style of the paper authors' code (1x1 reduction
``conv0``/``bn0``, bilinear upsample, branch ``conv1``/``bn1`` -> ``conv1_2``/``bn1_2``, shortcut
``conv2``/``bn2``), the intermediate resolution (area down to 288x384, bicubic back to 480x640),
and Hu et al.'s loss written with ``F.conv2d`` (Sobel gradients, surface normals, optionally
the blurred ground truth), trained with Adam.

The second half adopts fastmde::

    report = fastmde.patch(model)                                      # fused up-projections
    loss = fastmde.depth_loss(pred, depth, preset="hu_blurred")        # was: PlainDepthLoss()(pred, depth)

and checks what that promises: the same ``state_dict`` keys, and the same training. From the
same initial weights on the same batch, N Adam steps are run three times: plain PyTorch in
float32 (timed), plain PyTorch in float64 (the exact computation), and fastmde in float32
(timed). float32 rounding, amplified by BatchNorm (at small internal sizes the deepest maps
hold a few values per channel) and by Adam's normalised steps, moves any float32 run away from
the float64 one as the steps go on; the weights agree when fastmde's run ends as close to the
float64 run as plain PyTorch's float32 run does (within ``--factor``, 2), for the weights and
for the BatchNorm running statistics. ``--dtype float64`` (CPU) runs plain PyTorch and fastmde
in float64 and compares them directly: they agree to ``--floor`` (1e-8 of the update). It prints
the median step time of both runs and the speed-up.

    python examples/adopt.py                       # the paper's setting: 480x640 in, 288x384 inside, batch 1
    python examples/adopt.py --batch 8 --steps 20
    python examples/adopt.py --small               # CI's size: 96x128 frames, 3 steps per run

``--small`` still trains the full ResNet34 U-Net (25 M parameters; Adam and the backward pass
are most of its time): three runs of 3 steps, about 10-25 s on a 2-core CPU with one thread,
import included. On a CPU busy with other work, PyTorch's threads wait on each other: on a
loaded 2-core VM (load average 9) the same run took 92 s with the default 2 threads and 22 s
with ``OMP_NUM_THREADS=1``.

Exit status 1 when the weights do not agree. The plain model, loss and step are also what
``python bench/run.py --only dropin`` times.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------
# A depth project, written without fastmde
# ----------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's names (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet34Encoder(nn.Module):
    """torchvision's ResNet34 without ``avgpool``/``fc``; returns the four blocks' outputs
    (strides 4, 8, 16, 32; 64, 128, 256, 512 channels)."""

    channels = (64, 128, 256, 512)

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip(self.channels, layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        block1 = self.layer1(x)
        block2 = self.layer2(block1)
        block3 = self.layer3(block2)
        block4 = self.layer4(block3)
        return block1, block2, block3, block4


class UpProjection(nn.Module):
    """The paper authors' up-projection: [cat skip] -> 1x1 conv0/bn0/ReLU -> bilinear x scale
    (align_corners=True) -> {conv1/bn1/ReLU -> conv1_2/bn1_2} + {conv2/bn2 (shortcut)} -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, ksize: int = 3):
        super().__init__()
        self.scale = scale
        self.conv0 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, ksize, padding=ksize // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1_2 = nn.Conv2d(out_channels, out_channels, ksize, padding=ksize // 2, bias=False)
        self.bn1_2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, ksize, padding=ksize // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.relu(self.bn0(self.conv0(x)))
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)
        branch = self.bn1_2(self.conv1_2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = self.bn2(self.conv2(x))
        return self.relu(branch + shortcut)


class SkipDecoder(nn.Module):
    """1x1 entry conv, four up-projections with encoder skips, two-conv head (the paper's U-Net)."""

    def __init__(self, channels=(64, 128, 256, 512), ksize: int = 3):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.conv = nn.Conv2d(c3, c2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.up1 = UpProjection(2 * c2, c1, ksize=ksize)
        self.up2 = UpProjection(2 * c1, c0, ksize=ksize)
        self.up3 = UpProjection(2 * c0, c0, ksize=ksize)
        self.up4 = UpProjection(c0, c0, ksize=ksize)
        self.conv2 = nn.Conv2d(c0, c0, ksize, padding=ksize // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(c0)
        self.conv3 = nn.Conv2d(c0, 1, ksize, padding=ksize // 2)

    def forward(self, block1, block2, block3, block4):
        x = F.relu(self.bn(self.conv(block4)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.up1(x, block3)
        x = self.up2(x, block2)
        x = self.up3(x, block1)
        x = self.up4(x)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


class DepthUNet(nn.Module):
    """Image (B, 3, H, W), ImageNet-normalised -> depth (B, 1, H, W) in metres, computed at the
    intermediate resolution ``size`` (area down, bicubic up; H, W of ``size`` divisible by 32)."""

    def __init__(self, size=(288, 384), ksize: int = 3):
        super().__init__()
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"the internal size must be divisible by 32 (x2 upsamples), got {size[0]}x{size[1]}")
        self.size = tuple(size)
        self.encoder = ResNet34Encoder()
        self.decoder = SkipDecoder(ResNet34Encoder.channels, ksize)

    def forward(self, image):
        h, w = image.shape[-2:]
        x = F.interpolate(image, size=self.size, mode="area")
        depth = self.decoder(*self.encoder(x))
        return F.interpolate(depth, size=(h, w), mode="bicubic", align_corners=True)


class Sobel(nn.Module):
    """Unnormalised Sobel gradients (cross-correlation, zero padding 1): (B, 1, H, W) -> (B, 2, H, W)."""

    def __init__(self):
        super().__init__()
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        ky = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        self.register_buffer("weight", torch.stack([kx, ky])[:, None])

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), padding=1)


def gaussian_blur(depth, ksize: int = 7, sigma: float = 1.4):
    """7x7 Gaussian (σ 1.4) with reflect padding: the paper's blurred ground truth."""
    r = ksize // 2
    t = torch.arange(ksize, dtype=depth.dtype, device=depth.device) - r
    g = torch.exp(-t * t / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.pad(depth, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, ksize, 1))
    return F.conv2d(x, g.view(1, 1, 1, ksize))


class PlainDepthLoss(nn.Module):
    """Hu et al.'s loss as depth projects write it: log error + Sobel gradient + normal terms."""

    def __init__(self, blur: bool = True, alpha: float = 0.5):
        super().__init__()
        self.blur, self.alpha = blur, alpha
        self.sobel = Sobel()

    def forward(self, pred, depth):
        ones = torch.ones_like(depth)
        gt = self.sobel(gaussian_blur(depth) if self.blur else depth)
        out = self.sobel(pred)
        gx, gy, px, py = gt[:, 0:1], gt[:, 1:2], out[:, 0:1], out[:, 1:2]
        normal_gt = torch.cat((-gx, -gy, ones), dim=1)
        normal_out = torch.cat((-px, -py, ones), dim=1)
        loss_depth = torch.log(torch.abs(pred - depth) + self.alpha).mean()
        loss_dx = torch.log(torch.abs(px - gx) + self.alpha).mean()
        loss_dy = torch.log(torch.abs(py - gy) + self.alpha).mean()
        loss_normal = torch.abs(1 - F.cosine_similarity(normal_out, normal_gt, dim=1, eps=0)).mean()
        return loss_depth + (loss_dx + loss_dy) + loss_normal


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_batch(batch: int, input_size=(480, 640), device="cpu", seed: int = 0):
    """``batch`` synthetic frames (fastmde's NYU-like scenes stand in for the project's data):
    ImageNet-normalised images (B, 3, H, W) and depth (B, 1, H, W) in metres."""
    from fastmde.data import SyntheticScenes

    frames = SyntheticScenes(batch, seed=seed, size=input_size, frames_per_scene=1)
    items = [frames[i] for i in range(batch)]
    image = torch.stack([it["image"] for it in items]).float() / 255.0
    image = (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    depth = torch.stack([it["depth"] for it in items])
    return image.to(device), depth.to(device)


def train_step(model, optimizer, loss_fn, image, depth):
    """One step of the project's loop: forward, loss, backward, Adam. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(image), depth)
    loss.backward()
    optimizer.step()
    return loss.detach()


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_steps(model, loss_fn, image, depth, steps: int, lr: float = 1e-4):
    """``steps`` Adam steps on the same batch; (seconds per step, loss per step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    seconds, losses = [], []
    for _ in range(steps):
        synchronize(image.device)
        start = time.perf_counter()
        loss = train_step(model, optimizer, loss_fn, image, depth)
        synchronize(image.device)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
    return seconds, losses


# ----------------------------------------------------------------------------------------
# The same project on fastmde
# ----------------------------------------------------------------------------------------


def adopt(model, preset: str = "hu_blurred"):
    """The two lines: patch the model's up-projections and use fastmde's fused loss.

    Returns (the patch report, the loss function)."""
    import fastmde

    report = fastmde.patch(model)
    return report, lambda pred, depth: fastmde.depth_loss(pred, depth, preset=preset)


def distance(initial: dict, exact: dict, run: dict, parameters) -> tuple[float, float]:
    """How far a float32 run ended from the float64 run of the same steps: (relative distance of
    the parameters' updates Δ = final - initial, ||Δrun - Δexact|| / ||Δexact|| over all
    ``parameters`` as one vector; relative distance of the BatchNorm running statistics)."""
    num = den = bnum = bden = 0.0
    for name, w0 in initial.items():
        if not w0.is_floating_point():   # num_batches_tracked
            if not torch.equal(exact[name].cpu(), run[name].cpu()):
                return math.inf, math.inf
            continue
        a, b, w0 = exact[name].double(), run[name].double(), w0.double()
        if name in parameters:
            num += float(((b - w0) - (a - w0)).pow(2).sum())
            den += float((a - w0).pow(2).sum())
        else:
            bnum += float((b - a).pow(2).sum())
            bden += float(a.pow(2).sum())
    return math.sqrt(num / max(den, 1e-300)), math.sqrt(bnum / max(bden, 1e-300))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps of each run, the first a warm-up (default 10; --small: 3)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--input", default="480x640", help="frame size HxW")
    parser.add_argument("--size", default="288x384", help="internal size HxW (divisible by 32)")
    parser.add_argument("--loss", default="hu_blurred", choices=("hu", "hu_blurred"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="float64 (CPU): both runs in float64, compared directly (exact to --floor)")
    parser.add_argument("--factor", type=float, default=2.0,
                        help="fastmde's float32 run may end at most this many times as far from the float64 "
                             "run as the plain float32 run (default 2)")
    parser.add_argument("--floor", type=float, default=1e-8,
                        help="distances up to this agree whatever the plain run's (default 1e-8)")
    parser.add_argument("--small", action="store_true",
                        help="CI size: 96x128 frames, 64x96 inside, 3 steps (10-25 s on a 2-core CPU; on a busy "
                             "one set OMP_NUM_THREADS=1)")
    args = parser.parse_args(argv)
    if args.small:
        args.input, args.size = "96x128", "64x96"
    if args.steps is None:
        args.steps = 3 if args.small else 10
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.dtype == "float64" and torch.device(args.device).type != "cpu":
        parser.error("--dtype float64 runs on the CPU only (fastmde's GPU kernels take float32, float16, bfloat16)")
    input_size = tuple(int(v) for v in args.input.split("x"))
    size = tuple(int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    plain = DepthUNet(size).to(device, dtype)
    fused = copy.deepcopy(plain)
    initial = {k: v.detach().clone().double() for k, v in plain.state_dict().items()}
    parameters = {name for name, _ in plain.named_parameters()}
    image, depth = make_batch(args.batch, input_size, device)
    image, depth = image.to(dtype), depth.to(dtype)
    blur = args.loss == "hu_blurred"

    plain_s, plain_losses = run_steps(plain, PlainDepthLoss(blur).to(device), image, depth, args.steps)
    exact = plain
    if dtype != torch.float64:
        # The same steps in float64: how close float32 gets to exact (plain PyTorch and fastmde alike).
        exact = copy.deepcopy(fused).double()
        run_steps(exact, PlainDepthLoss(blur).to(device), image.double(), depth.double(), args.steps)

    keys_before = list(fused.state_dict())
    report, loss_fn = adopt(fused, args.loss)
    if list(fused.state_dict()) != keys_before:
        raise SystemExit("fastmde.patch changed the model's state_dict keys")
    fused_s, fused_losses = run_steps(fused, loss_fn, image, depth, args.steps)

    exact_state = exact.state_dict()
    plain_err = distance(initial, exact_state, plain.state_dict(), parameters)
    fused_err = distance(initial, exact_state, fused.state_dict(), parameters)
    # Agreement: fastmde's run ends as close to the float64 run as plain PyTorch's run does, within
    # a factor (float32 rounding, amplified by BatchNorm and by Adam's normalised steps, sets both
    # distances), or within the floor (float64: the plain run is the exact one, its distance 0).
    agree = all(f <= args.factor * p + args.floor for f, p in zip(fused_err, plain_err))
    plain_ms = 1e3 * statistics.median(plain_s[1:] or plain_s)
    fused_ms = 1e3 * statistics.median(fused_s[1:] or fused_s)
    print(f"{device}, {args.dtype}: batch {args.batch}, {args.input} frames, {args.size} inside, loss {args.loss}, "
          f"{args.steps} Adam steps from the same weights")
    print(f"patched: {', '.join(report.replaced) or 'nothing'}"
          + (f"; left alone: {', '.join(f'{k} ({v})' for k, v in report.skipped.items())}" if report.skipped else ""))
    print(f"plain PyTorch                  {plain_ms:9.1f} ms/step (median after 1 warm-up step)")
    print(f"fastmde.patch + depth_loss     {fused_ms:9.1f} ms/step")
    print(f"speed-up                       {plain_ms / fused_ms:9.2f}x")
    print(f"first loss: plain {plain_losses[0]:.10g}, fastmde {fused_losses[0]:.10g}")
    print(f"distance from the float64 run after {args.steps} steps (weight updates; BatchNorm statistics): "
          f"plain {plain_err[0]:.2e}; {plain_err[1]:.2e}, fastmde {fused_err[0]:.2e}; {fused_err[1]:.2e}: "
          + ("the weights agree" if agree else
             f"DO NOT AGREE (fastmde beyond {args.factor:g}x the plain run's distance + {args.floor:g})"))
    return {"plain_ms": plain_ms, "fused_ms": fused_ms, "speedup": plain_ms / fused_ms, "agree": agree,
            "plain_distance": plain_err, "fused_distance": fused_err, "replaced": dict(report.replaced),
            "skipped": dict(report.skipped), "plain_losses": plain_losses, "fused_losses": fused_losses}


if __name__ == "__main__":
    raise SystemExit(0 if main()["agree"] else 1)
