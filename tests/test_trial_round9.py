"""Faults found by using this round's checkpoint checks as a new user would, each with the right
value: the --ema average of a resumed run was loaded with a bare load_state_dict (bool weights
resumed as 0/1, complex ones after torch's warning, a wrong shape gave a traceback); integer
weights (a uint8 0/1 mask, int8) loaded silently; an encoder file given to --pretrained had no
check at all; a quantized tensor gave a multi-line traceback."""
from __future__ import annotations

import warnings

import pytest
import torch

import fastmde
from fastmde import models
from engine_helpers import cache  # noqa: F401 (cache: fixture)
from test_input_edges_round8 import _checkpoint, _one_line
from test_trial_round8 import _saved_run, resume_refusal


KEY = "net.head_conv1.weight"
DAMAGE = {
    "bool": lambda s: s.__setitem__(KEY, s[KEY] > 0),
    "complex": lambda s: s.__setitem__(KEY, s[KEY] * (1 + 1j)),
    "shape": lambda s: s.__setitem__(KEY, s[KEY][:1]),
    "nan": lambda s: s[KEY].__setitem__((0, 0, 0, 0), float("nan")),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_resume_checks_the_ema_average_as_the_weights(cache, tmp_path, kind):
    cfg, last = _saved_run(cache, tmp_path / "run", DAMAGE[kind], part=lambda ckpt: ckpt["ema"]["model"], ema=0.9)
    where = f"--resume: {last!r} (its --ema average)"
    said = {"bool": f"{where} is a damaged fastmde checkpoint: 1 of its weights holds true/false or integer values "
                    f"where the model's are floating: {KEY} is bool (the model's is float32)",
            "complex": f"{where} is a damaged fastmde checkpoint: 1 of its weights holds complex numbers",
            "shape": f"{where}: its weights do not fit model 'unet34-k3-1x1'",
            "nan": f"{where}: 1 weight tensor holds NaN/inf ({KEY}; a diverged run?): resume from an earlier "
                   "checkpoint, or start again (--overwrite)"}[kind]
    message = resume_refusal(cfg)
    assert message.startswith(said), message


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int64])
def test_integer_weights_are_a_damaged_checkpoint(cache, tmp_path, dtype):
    def integers(state):
        state[KEY] = (state[KEY] > 0).to(dtype)

    path = _checkpoint(tmp_path / "i.pt", cache, damage=integers)
    from fastmde.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError) as info:
        fastmde.load(path)
    name = str(dtype).replace("torch.", "")
    assert _one_line(info).endswith(f"1 of its weights holds true/false or integer values where the model's are "
                                    f"floating: {KEY} is {name} (the model's is float32)")


def test_a_quantized_weight_is_refused_in_one_line(cache, tmp_path):
    """It stopped with a multi-line RuntimeError from load_state_dict (from_external: a traceback)."""
    from fastmde.engine.checkpoint import CheckpointError
    from fastmde.models.external import ExternalCheckpointError

    def quantized(state):
        state[KEY] = torch.quantize_per_tensor(state[KEY], 0.01, 0, torch.qint8)

    path = _checkpoint(tmp_path / "q.pt", cache, damage=quantized)
    with pytest.raises(CheckpointError) as info:
        fastmde.load(path)
    assert _one_line(info).endswith(f"1 of its weights holds no plain dense values: {KEY} is a quantized tensor")
    state = torch.load(path, weights_only=False)["model"]
    with pytest.raises(ExternalCheckpointError) as info:
        models.from_external(state, source="fastmde", size=(32, 48))
    assert _one_line(info).endswith(f"{KEY} is a quantized tensor")


def test_pretrained_encoder_file_is_checked(tmp_path):
    """``--pretrained FILE`` (a torchvision-layout ResNet state dict) trained from bool weights
    without a word, from complex ones after torch's warning."""
    from fastmde.models.resnet import CheckpointMismatchError, ResNetEncoder

    encoder = ResNetEncoder(18)
    for name, damage in (("bool", lambda w: w > 0), ("complex", lambda w: w * (1 + 1j))):
        state = {k: v.clone() for k, v in encoder.state_dict().items()}
        state["conv1.weight"] = damage(state["conv1.weight"])
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CheckpointMismatchError) as info:
                ResNetEncoder(18, pretrained=str(path))
        message = str(info.value)
        assert "\n" not in message and "is damaged: 1 of its weights holds" in message and "conv1.weight" in message
    # a faithful file still loads
    path = tmp_path / "good.pth"
    torch.save(encoder.state_dict(), path)
    loaded = ResNetEncoder(18, pretrained=str(path))
    assert torch.equal(loaded.state_dict()["conv1.weight"], encoder.state_dict()["conv1.weight"])


def test_random_crops_take_sizes_by_the_one_size_rule():
    """``RandomCrops(ds, "16x20")`` cropped to (1, 6) (the string's characters), (15.7, 20) was
    truncated, (-3, 0) and (True, 5) accepted; a float seed truncated."""
    import numpy as np

    from fastmde.data import RandomCrops

    assert RandomCrops([], "16x20").size == (16, 20)
    assert RandomCrops([], np.array([16, 20])).size == (16, 20)
    for bad in ((15.7, 20), (-3, 0), (True, 5), "16", (16, 20, 3)):
        with pytest.raises(ValueError, match="RandomCrops: size must"):
            RandomCrops([], bad)
    with pytest.raises(TypeError, match="RandomCrops: seed must be an integer"):
        RandomCrops([], (16, 20), seed=1.5)
