"""ResNet encoders: torchvision-compatible state dicts, checkpoint loading, feature shapes."""
import json
import math
import os

import pytest
import torch

from fastmde.models.resnet import CheckpointMismatchError, ResNetEncoder

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_resnet_keys.json")

# torchvision's documented parameter counts (with the 1000-class fc)
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.fixture(scope="module")
def torchvision_keys():
    with open(FIXTURE) as f:
        return json.load(f)


def _meta_encoder(depth, **kwargs):
    with torch.device("meta"):
        return ResNetEncoder(depth, **kwargs)


def test_fixture_matches_torchvision_parameter_counts(torchvision_keys):
    # guards the fixture itself against a wrong block count or width
    for name, entries in torchvision_keys.items():
        params = sum(
            math.prod(shape) for key, shape in entries
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert params == TORCHVISION_PARAMS[name], name


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_state_dict_keys_and_shapes_are_torchvision(torchvision_keys, depth):
    expected = [(k, s) for k, s in torchvision_keys[f"resnet{depth}"] if not k.startswith("fc.")]
    got = [(k, list(v.shape)) for k, v in _meta_encoder(depth).state_dict().items()]
    assert got == expected  # same names, same order, same shapes


def test_resnet101_layout():
    enc = _meta_encoder(101)
    keys = enc.state_dict().keys()
    assert "layer3.22.conv3.weight" in keys and "layer3.23.conv1.weight" not in keys
    assert enc.channels == (256, 512, 1024, 2048)
    # torchvision's resnet101 has 44,549,160 parameters with its 2,049,000-parameter fc
    assert sum(p.numel() for p in enc.parameters()) == 44_549_160 - 2_049_000


@pytest.mark.parametrize("depth,channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
@pytest.mark.parametrize("hw", [(64, 96), (65, 97), (33, 50)])
def test_feature_shapes(depth, channels, hw):
    enc = _meta_encoder(depth)
    feats = enc(torch.empty(2, 3, *hw, device="meta"))
    h, w = hw
    for f, c, s in zip(feats, channels, (4, 8, 16, 32)):
        assert tuple(f.shape) == (2, c, math.ceil(h / s), math.ceil(w / s))
    assert ResNetEncoder.stem_size(h, w) == (math.ceil(h / 2), math.ceil(w / 2))


def _fake_torchvision_checkpoint(torchvision_keys, name, seed=0, drop_num_batches=False):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_keys[name]:
        if key.endswith("num_batches_tracked"):
            if not drop_num_batches:
                state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_load_torchvision_checkpoint_with_fc(tmp_path, torchvision_keys, wrap):
    state = _fake_torchvision_checkpoint(torchvision_keys, "resnet18")
    saved = state
    if wrap == "state_dict":
        saved = {"state_dict": state, "epoch": 3}
    elif wrap == "module_prefix":
        saved = {"module." + k: v for k, v in state.items()}
    path = tmp_path / "resnet18.pth"
    torch.save(saved, path)
    enc = ResNetEncoder(18, pretrained=str(path))
    loaded = enc.state_dict()
    assert not any(k.startswith("fc.") for k in loaded)
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k


def test_load_accepts_missing_num_batches_tracked(tmp_path, torchvision_keys):
    state = _fake_torchvision_checkpoint(torchvision_keys, "resnet34", drop_num_batches=True)
    path = tmp_path / "old.pth"
    torch.save(state, path)
    enc = ResNetEncoder(34, pretrained=path)
    assert torch.equal(enc.layer4[2].bn2.weight.detach(), state["layer4.2.bn2.weight"])
    assert int(enc.bn1.num_batches_tracked) == 0


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    src = ResNetEncoder(18)
    for m in src.modules():  # make the BN statistics non-trivial too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "enc.pth"
    torch.save(src.state_dict(), path)
    dst = ResNetEncoder(18, pretrained=path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 3, 40, 56) * 255
    src.eval(), dst.eval()
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*never downloaded"):
        ResNetEncoder(34, pretrained=tmp_path / "nope.pth")


def test_mismatched_checkpoint_names_the_keys(tmp_path, torchvision_keys):
    state = _fake_torchvision_checkpoint(torchvision_keys, "resnet18")
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    # a resnet18 file into a resnet34: layer1.2 etc. missing
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: .*layer1\.2\.conv1\.weight"):
        ResNetEncoder(34, pretrained=path)
    # a resnet18 file into a resnet50: shapes differ and bottleneck keys are missing
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: layer1\.0\.conv1\.weight"):
        ResNetEncoder(50, pretrained=path)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: extra\.weight"):
        ResNetEncoder(18, pretrained=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="are not a PyTorch file"):
        ResNetEncoder(18, pretrained=path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointMismatchError, match="not a state dict"):
        ResNetEncoder(18, pretrained=path)


def test_bad_depth():
    with pytest.raises(ValueError, match="18, 34, 50, 101"):
        ResNetEncoder(42)


def test_normalize_is_imagenet_mean_std():
    torch.manual_seed(0)
    raw = ResNetEncoder(18).eval()
    norm = ResNetEncoder(18, normalize=True).eval()
    norm.load_state_dict(raw.state_dict())
    assert raw.state_dict().keys() == norm.state_dict().keys()  # constants not persisted
    x = torch.rand(1, 3, 32, 48) * 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = raw((x / 255 - mean) / std)
        got = norm(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
