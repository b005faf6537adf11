"""Input edges of the public API and the commands, round 7: switches given as strings or numbers,
counts given as floats or bools, and a damaged or foreign checkpoint named with its flag.

* Every public switch (the losses' ``gradient`` / ``normal`` / ``blur`` / ``interpolate``, the
  metrics' ``*_inclusive`` and ``clamp``, the models' ``reduce`` / ``original`` / ``normalize``,
  ``export``'s ``dynamic_size`` / ``quiet``) takes True / False, numpy's bools too, and refuses
  anything else in one line naming the argument (``"no"`` read as true before).
* The models' counts (encoder depth, kernel size) are ints, numpy's too, never 18.0 or True
  (``UNet(18.0)`` was built and ``variant_name`` called it ``unet18.0-k3``).
* ``eval --checkpoint``, ``predict --checkpoint``, ``export CHECKPOINT`` and ``train --init-from``
  name their flag for a file that is damaged or not a fastmde checkpoint, keeping the file's
  description, after every option's own check.
"""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastmde
from fastmde import models

from engine_helpers import cache, cli_data_args, cli_model_args, fastmde_cli  # noqa: F401 (cache: fixture)


def _maps(seed=0, shape=(1, 1, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 4 + 1, torch.rand(shape, generator=g) * 4 + 1


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- 1. switches

@pytest.mark.parametrize("make, name", [
    (lambda: fastmde.nn.DepthLoss(blur="no"), "blur"),
    (lambda: fastmde.nn.DepthLoss(gradient=1), "gradient"),
    (lambda: fastmde.nn.DepthLoss(normal=None), "normal"),
    (lambda: fastmde.nn.DepthLoss("hu", blur="False"), "blur"),      # checked even where the preset sets it
    (lambda: fastmde.depth_loss(*_maps(), gradient="no"), "gradient"),
    (lambda: fastmde.depth_loss_terms(*_maps(), normal=0), "normal"),
    (lambda: fastmde.nn.ScaleInvariantLoss(interpolate="no"), "interpolate"),
    (lambda: fastmde.scale_invariant_loss(*_maps(), interpolate=1), "interpolate"),
    (lambda: fastmde.nn.ScaleInvariantLoss()(*_maps(), interpolate="yes"), "interpolate"),
    (lambda: fastmde.depth_metrics(*_maps(), min_inclusive="no"), "min_inclusive"),
    (lambda: fastmde.depth_metrics(*_maps(), max_inclusive=0), "max_inclusive"),
    (lambda: fastmde.nn.DepthMetrics(delta_inclusive="False"), "delta_inclusive"),
])
def test_a_switch_refuses_what_is_not_a_bool(make, name):
    with pytest.raises(TypeError, match=rf"^{name} must be True(, False)? or (False|None), got ") as info:
        make()
    _one_line(info)


def test_numpy_bools_are_the_same_switches():
    pred, target = _maps()
    pred_small = torch.nn.functional.interpolate(pred, size=(5, 6), mode="bilinear", align_corners=True)
    for on in (True, False):
        flag = np.bool_(on)
        assert fastmde.nn.DepthLoss(blur=flag, gradient=flag).options == fastmde.nn.DepthLoss(blur=on, gradient=on).options
        assert (fastmde.depth_loss(pred, target, normal=flag).item()
                == fastmde.depth_loss(pred, target, normal=on).item())
        for key in ("min_inclusive", "max_inclusive", "delta_inclusive", "clamp"):
            got = fastmde.depth_metrics(pred, target, max_depth=3.0, **{key: flag})
            want = fastmde.depth_metrics(pred, target, max_depth=3.0, **{key: on})
            assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in want.items()}, key
    # a numpy True resizes a prediction of another size, as True does (AdaBins' interpolate)
    got = fastmde.nn.ScaleInvariantLoss("silog_adabins", interpolate=np.bool_(True))(pred_small, target)
    assert got.item() == fastmde.scale_invariant_loss(pred_small, target, preset="silog_adabins",
                                                      interpolate=True).item()
    with pytest.raises(ValueError, match="shapes differ"):
        fastmde.scale_invariant_loss(pred_small, target, preset="silog_adabins", interpolate=np.bool_(False))


def test_clamp_as_a_pair_keeps_working_and_refuses_bools_inside():
    pred, target = _maps()
    pred = pred.clone()
    pred[0, 0, 0, 0] = 50.0
    # the pair clamps the prediction into [low, high] metres: 50 m reads as 6 m
    clamped = pred.clamp(1.0, 6.0)
    got = fastmde.depth_metrics(pred, target, clamp=(np.float32(1.0), 6))
    want = fastmde.depth_metrics(clamped, target, clamp=False)
    assert got["rms"].item() == want["rms"].item()
    assert fastmde.depth_metrics(pred, target, clamp=(None, 6.0))["rms"].item() == want["rms"].item()
    # a string is no switch and no pair ("no" unpacked as ("n", "o") before)
    for bad in ("no", b"on"):
        with pytest.raises(TypeError, match=r"^clamp must be True, False/None or \(low, high\) in metres, got "
                                            r"b?'(no|on)' \((str|bytes)\)$"):
            fastmde.nn.DepthMetrics(clamp=bad)
    with pytest.raises(TypeError, match=r"^clamp's low must be a number, got True \(bool\)$"):
        fastmde.depth_metrics(pred, target, clamp=(True, 6.0))
    with pytest.raises(TypeError, match=r"^clamp's high must be a number, got '6' \(str\)$"):
        fastmde.nn.DepthMetrics(clamp=(1.0, "6"))
    with pytest.raises(ValueError, match=r"^clamp must be True, False/None or \(low, high\) in metres, got 1$"):
        fastmde.depth_metrics(pred, target, clamp=1)
    with pytest.raises(TypeError, match=r"^nan_prediction must be a number, got True \(bool\)$"):
        fastmde.nn.DepthMetrics(nan_prediction=True)


def test_export_switches_refuse_strings(tmp_path):
    from fastmde.export import export

    for kwargs, name, allowed in [({"dynamic_size": "no"}, "dynamic_size", "True, False or None"),
                                  ({"quiet": "yes"}, "quiet", "True or False")]:
        with pytest.raises(TypeError, match=rf"^{name} must be {allowed}, got '"):
            export(nn.Identity(), tmp_path / "m.pt2", **kwargs)
    with pytest.raises(ValueError, match=r"^tolerance must be a positive finite number, got True$"):
        export(nn.Identity(), tmp_path / "m.pt2", tolerance=True)
    assert not (tmp_path / "m.pt2").exists()


# ---------------------------------------------------------------- 2. the models' counts and switches

@pytest.mark.parametrize("make, message", [
    (lambda: models.UNet(18.0), r"^UNet: encoder must be an integer, got 18.0 \(float\)$"),
    (lambda: models.UNet(True), r"^UNet: encoder must be an integer, got the bool True$"),
    (lambda: models.UNet(18, kernel_size=3.0), r"^UNet: kernel_size must be an integer, got 3.0 \(float\)$"),
    (lambda: models.UNet(18, reduce="no"), r"^UNet: reduce must be True or False, got 'no' \(str\)$"),
    (lambda: models.UNet(18, normalize=1), r"^UNet: normalize must be True or False, got 1 \(int\)$"),
    (lambda: models.HuModel(np.float64(50.0)), r"^HuModel: encoder must be an integer, got "),
    (lambda: models.HuModel(18, kernel_size=True), r"^HuModel: kernel_size must be an integer, got the bool True$"),
    (lambda: models.HuModel(18, original="yes"), r"^HuModel: original must be True or False, got 'yes' \(str\)$"),
    (lambda: models.ResNetEncoder(34.0), r"^ResNetEncoder: depth must be an integer, got 34.0 \(float\)$"),
    (lambda: models.ResNetEncoder(18, normalize="False"), r"^ResNetEncoder: normalize must be True or False"),
    (lambda: models.build("unet34-k3", encoder=18.0), r"^encoder must be an integer, got 18.0 \(float\)$"),
    (lambda: models.build("hu34-k5", kernel_size=5.0), r"^kernel_size must be an integer, got 5.0 \(float\)$"),
    (lambda: models.build("unet34-k3", reduce="no"), r"^reduce must be True or False, got 'no' \(str\)$"),
    (lambda: models.build("hu34", original=1), r"^original must be True or False, got 1 \(int\)$"),
    (lambda: models.build("unet34-k3", normalize="yes"), r"^normalize must be True or False"),
    (lambda: models.variant_name("unet34-k3", encoder=18.0), r"^encoder must be an integer, got 18.0 \(float\)$"),
])
def test_model_counts_are_ints_and_switches_bools(make, message):
    with torch.device("meta"), pytest.raises(TypeError, match=message):
        make()


def test_model_counts_refuse_even_kernels_and_take_numpy_ints():
    with torch.device("meta"):
        with pytest.raises(ValueError, match=r"^UNet: kernel_size must be a positive odd integer, got 4$"):
            models.UNet(18, kernel_size=4)
        with pytest.raises(ValueError, match=r"^ResNet depth must be one of \[18, 34, 50, 101\], got 19$"):
            models.UNet(19)
        unet = models.UNet(np.int64(18), kernel_size=np.int32(5), reduce=np.bool_(False))
        assert type(unet.kernel_size) is int and unet.kernel_size == 5 and unet.reduce is False
        assert unet.encoder.depth == 18 and type(unet.encoder.depth) is int
        assert unet.head_conv1.weight.shape == (64, 64, 5, 5)
        model = models.build("unet34-k3-1x1", encoder=np.int64(18), size=(32, 32))
    assert model.fastmde_variant == "unet18-k3-1x1"
    assert models.variant_name("unet34-k3-1x1", encoder=np.int64(18), kernel_size=np.int64(5)) == "unet18-k5-1x1"


def test_imagenet_weights_depth_is_an_int():
    from fastmde.models.imagenet import file_name, imagenet_state_dict

    assert file_name(np.int64(34)) == "resnet34-b627a593.pth"
    with pytest.raises(TypeError, match=r"^depth must be an integer, got 34.0 \(float\)$"):
        file_name(34.0)
    # refused before the cache is looked at or anything is downloaded
    with pytest.raises(TypeError, match=r"^depth must be an integer, got the bool True$"):
        imagenet_state_dict(True)
    with pytest.raises(TypeError, match=r"^progress must be True or False, got 'no' \(str\)$"):
        imagenet_state_dict(18, progress="no")


# ---------------------------------------------------------------- 3. a damaged or foreign checkpoint

def _bad_checkpoints(folder) -> dict[str, tuple[str, str]]:
    """{kind: (path, what the message says of it)}: a torch.save file cut short, a text file, a
    PyTorch Lightning checkpoint."""
    whole = folder / "whole.pt"
    torch.save({"format": "fastmde-checkpoint", "weights": torch.arange(4096.0)}, whole)
    data = whole.read_bytes()
    half = folder / "half.pt"
    half.write_bytes(data[:len(data) // 2])
    text = folder / "notes.pt"
    text.write_text("not weights\n")
    lightning = folder / "lightning.ckpt"
    torch.save({"pytorch-lightning_version": "2.0", "epoch": 1, "optimizer_states": []}, lightning)
    return {
        "damaged": (str(half), f"checkpoint {str(half)!r} is damaged or truncated: "),
        "text": (str(text), f"{str(text)!r} is not a fastmde checkpoint: "),
        "foreign": (str(lightning), f"{str(lightning)!r} is not a fastmde checkpoint: it is a PyTorch Lightning "
                                    "checkpoint"),
    }


@pytest.mark.parametrize("command", ["eval", "predict", "predict --data-format list", "export"])
def test_a_bad_checkpoint_is_named_with_its_flag(command, tmp_path, capsys, monkeypatch):
    from fastmde.engine import checkpoint

    reads = []
    read_file = checkpoint._read_file
    monkeypatch.setattr(checkpoint, "_read_file", lambda path, where: reads.append(path) or read_file(path, where))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "photos.txt").write_text(f"{tmp_path / 'photo.png'}\n")
    argv = {
        "eval": lambda p: ["eval", "--checkpoint", p, "--out", tmp_path / "r.json"],
        "predict": lambda p: ["predict", "--checkpoint", p, "--out", tmp_path / "maps", tmp_path / "photo.png"],
        "predict --data-format list": lambda p: ["predict", "--checkpoint", p, "--out", tmp_path / "maps",
                                                 "--data-format", "list", "--data", tmp_path / "photos.txt"],
        "export": lambda p: ["export", p, "--out", tmp_path / "model.pt2"],
    }[command]
    for kind, (path, said) in _bad_checkpoints(tmp_path).items():
        reads.clear()
        status, _, err = fastmde_cli(argv(path), capsys)
        assert status == 2 and "Traceback" not in err, err
        # export's positional argument is called "checkpoint" already where the message begins so
        flag = "checkpoint" if command == "export" else "--checkpoint"
        prefix = "" if command == "export" and said.startswith("checkpoint ") else f"{flag}: "
        assert len(err.splitlines()) == 1 and err.startswith(f"fastmde: error: {prefix}{said}"), (kind, err)
        assert reads == [path], reads          # read once
    assert not (tmp_path / "maps").exists() and not (tmp_path / "model.pt2").exists()
    assert not (tmp_path / "r.json").exists()


def test_options_are_checked_before_a_bad_checkpoint(tmp_path, capsys):
    path, _ = _bad_checkpoints(tmp_path)["damaged"]
    for argv, said in [
        (["eval", "--checkpoint", path, "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["export", path, "--out", tmp_path / "m.onnx", "--opset", "7"], "--opset must be an integer from 18"),
        (["predict", "--checkpoint", path, "--batch-size", "0", "--out", tmp_path / "maps", tmp_path / "x.png"],
         "--batch-size must be positive"),
    ]:
        status, _, err = fastmde_cli(argv, capsys)
        assert status == 2 and len(err.splitlines()) == 1 and err.startswith(f"fastmde: error: {said}"), err


def test_train_init_from_a_damaged_checkpoint_is_named_with_its_flag(cache, tmp_path, capsys):
    path, said = _bad_checkpoints(tmp_path)["damaged"]
    status, _, err = fastmde_cli(["train", "--init-from", path, "--max-steps", "1", "--out", tmp_path / "run",
                                  *cli_model_args(), "--pretrained", "none", "--batch-size", "2",
                                  *cli_data_args(cache)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("fastmde: error:")]
    assert status == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"fastmde: error: --init-from: {said}"), err


@pytest.mark.parametrize("call", ["depth_loss", "depth_metrics", "scale_invariant_loss"])
def test_a_floating_mask_holds_only_zero_and_one(call):
    """A probability mask (0.3 / 0.7) or NaN-marked holes read as "every pixel valid" (nonzero):
    refused in one line; a 0/1 float mask and an integer mask (nonzero = valid, e.g. 255) give the
    boolean mask's values."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 12, 14, generator=g) * 5 + 0.5
    pred = target + 0.3 * torch.randn(2, 1, 12, 14, generator=g)
    keep = torch.rand(2, 1, 12, 14, generator=g) > 0.3
    fn = {"depth_loss": lambda m: fastmde.depth_loss(pred, target, preset="l1", mask=m),
          "depth_metrics": lambda m: fastmde.depth_metrics(pred, target, mask=m)["rms"],
          "scale_invariant_loss": lambda m: fastmde.scale_invariant_loss(pred, target, mask=m)}[call]
    want = fn(keep)
    for ok in (keep.float(), keep.double(), keep.to(torch.uint8) * 255, keep.int()):
        torch.testing.assert_close(fn(ok), want, rtol=0, atol=0)
    for bad, shown in ((keep.float() * 0.4 + 0.3, "0.3"), (torch.where(keep, 1.0, float("nan")), "nan")):
        with pytest.raises(ValueError, match=rf"^{call}: a floating mask must hold only 0 and 1 \(1 = valid\), found {shown}"):
            fn(bad)


def _fastmde_checkpoint(path, **changes):
    """A minimal fastmde checkpoint of a small U-Net18 (what fastmde.load needs), with ``changes``."""
    from fastmde.engine.checkpoint import FORMAT, VERSION

    spec = {"name": "unet34-k3-1x1", "size": [64, 80], "overrides": {"encoder": 18}}
    model = fastmde.models.build(spec["name"], size=(64, 80), pretrained=None, encoder=18)
    ckpt = {"format": FORMAT, "version": VERSION, "model_spec": spec, "model": model.state_dict()}
    ckpt.update(changes)
    torch.save(ckpt, path)
    return str(path)


def test_a_checkpoint_with_a_damaged_spec_or_weights_is_described(tmp_path, capsys):
    """A model_spec that is no dict (a fresh-user trial saved 'bogus' there: "string indices must
    be integers"), one naming no network, and weights with missing or differently shaped keys
    (the message ended at "Error(s) in loading state_dict for IntermediateResolution:")."""
    from fastmde.engine.checkpoint import CheckpointError

    good = _fastmde_checkpoint(tmp_path / "good.pt")
    assert fastmde.load(good).fastmde_variant == "unet18-k3-1x1"
    weights = torch.load(good, weights_only=True)["model"]
    first = next(iter(weights))
    dropped = {k: v for k, v in weights.items() if k != first}
    reshaped = dict(weights, **{first: torch.zeros(3)})
    cases = {
        "bogus.pt": ({"model_spec": "bogus"}, "is a damaged fastmde checkpoint: its model_spec is 'bogus'"),
        "nosize.pt": ({"model_spec": {"name": "unet34-k3-1x1"}}, "is a damaged fastmde checkpoint: its model_spec is"),
        "noweights.pt": ({"model": [1, 2]}, "is a damaged fastmde checkpoint: its model entry is list"),
        "unknown.pt": ({"model_spec": {"name": "nope", "size": [64, 80]}}, "its model_spec names no network"),
        "missing.pt": ({"model": dropped}, f"its weights do not fit model 'unet34-k3-1x1': 1 missing: {first}"),
        "shape.pt": ({"model": reshaped}, f"its weights do not fit model 'unet34-k3-1x1': 1 other shapes: {first} (3,)"),
    }
    for name, (changes, said) in cases.items():
        path = _fastmde_checkpoint(tmp_path / name, **changes)
        with pytest.raises(CheckpointError, match=re.escape(said)):
            fastmde.load(path)
        status, _, err = fastmde_cli(["eval", "--checkpoint", path, "--out", tmp_path / "r.json"], capsys)
        assert status == 2 and len(err.splitlines()) == 1 and said in err and "--checkpoint" in err, err


@pytest.mark.parametrize("variant", ["unet34-k3-1x1", "hu50"])
def test_a_model_refuses_an_image_of_another_dtype_in_one_line(variant):
    """An int64 / uint8 image, or a float64 one into a float32 model, gave PyTorch's "expected
    scalar type Long but found Float" from the first convolution; a float32 image under bfloat16
    autocast still runs."""
    model = fastmde.models.build(variant, size=(64, 80), pretrained=None, encoder=18).eval()
    for image, said in ((torch.randint(0, 255, (1, 3, 64, 80)), "expected a float image in 0-255, got torch.int64"),
                        (torch.zeros(1, 3, 64, 80, dtype=torch.uint8), "got torch.uint8"),
                        (torch.zeros(1, 3, 64, 80, dtype=torch.float64),
                         "the image is torch.float64 but the model's weights are torch.float32")):
        with pytest.raises(TypeError, match=rf"^{type(model.net).__name__}: .*{re.escape(said)}"):
            model.net(image)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.net(torch.rand(1, 3, 64, 80) * 255).dtype == torch.bfloat16


def test_small_faults_of_a_fresh_user_trial(tmp_path, capsys):
    """A plain pickle given as a checkpoint printed torch's pickle-protocol warning before the one
    line; max_depth=10+0j gave float()'s message without the argument's name; a 3-D x beside a
    3-D skip was blamed on the skip; an unknown option of a command pointed at fastmde --help."""
    import pickle

    plain = tmp_path / "pickle.pt"
    plain.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    status, _, err = fastmde_cli(["eval", "--checkpoint", plain, "--out", tmp_path / "r.json"], capsys)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"fastmde: error: --checkpoint: {str(plain)!r} is not a fastmde checkpoint"), err

    p = torch.rand(1, 1, 4, 5) + 1
    with pytest.raises(TypeError, match=r"^max_depth must be a number, got \(10\+0j\) \(complex\)$"):
        fastmde.depth_metrics(p, p, max_depth=10 + 0j)
    with pytest.raises(TypeError, match=r"^max_depth must be a real number, got \[1\] \(list\)$"):
        fastmde.depth_metrics(p, p, max_depth=[1])

    block = fastmde.nn.UpProjection(64, 16)
    x = torch.zeros(32, 6, 8)
    for skip in (x, None):
        with pytest.raises(ValueError, match=r"^UpProjection: x must be \(B, C, H, W\), got \(32, 6, 8\)$"):
            block(x, skip=skip)

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:   # argparse exits (status 2) before the command runs
        fastmde_cli(["eval", "--checkpoint", plain, "--max-depth", "0"], capsys)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.strip() == ("fastmde eval: error: unrecognized arguments: --max-depth 0 "
                                                    "(fastmde eval --help: the options)"), err


def test_damaged_checkpoint_entries_of_a_second_trial(tmp_path, capsys):
    """A state-dict value that is no tensor (the message stopped at "Error(s) in loading
    state_dict"), an ema or config entry of the wrong type (torch's or dict()'s own words, no flag),
    a size of 2^31 (a traceback from interpolate) and a version that is no whole number >= 1."""
    good = _fastmde_checkpoint(tmp_path / "good.pt")
    weights = torch.load(good, weights_only=True)["model"]
    first = next(iter(weights))
    cases = {
        "str.pt": ({"model": dict(weights, **{first: "bogus"})}, f"1 not tensors: {first} is str"),
        "ema.pt": ({"ema": {"model": None}}, "is a damaged fastmde checkpoint: its ema model entry is NoneType"),
        "config.pt": ({"config": "bogus"}, "is a damaged fastmde checkpoint: its config is 'bogus'"),
        "size.pt": ({"model_spec": {"name": "unet34-k3-1x1", "size": [2**31, 2**31]}},
                    "is a damaged fastmde checkpoint: its model_spec is"),
        "version.pt": ({"version": "1"}, "is a damaged fastmde checkpoint: its version is '1'"),
        "version0.pt": ({"version": 0}, "is a damaged fastmde checkpoint: its version is 0"),
    }
    for name, (changes, said) in cases.items():
        path = _fastmde_checkpoint(tmp_path / name, **changes)
        status, _, err = fastmde_cli(["eval", "--checkpoint", path, "--out", tmp_path / "r.json"], capsys)
        assert status == 2 and len(err.splitlines()) == 1 and said in err and "--checkpoint" in err, (name, err)


def test_model_dtype_messages_name_the_model_and_autocast():
    model = fastmde.models.build("unet34-k3-1x1", size=(64, 80), pretrained=None, encoder=18).eval()
    with pytest.raises(TypeError, match=r"^unet18-k3-1x1: expected a float image in 0-255, got torch.int64 \(convert it with"):
        model(torch.zeros(1, 3, 64, 80, dtype=torch.int64))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
            TypeError, match=r"the model's weights are torch.float32: .*\(autocast does not cast float64\)$"):
        model.net(torch.zeros(1, 3, 64, 80, dtype=torch.float64))
