"""``pretrained="imagenet"``: torchvision's weights through the torch hub cache; nothing downloads here.

The cache is a temporary ``$TORCH_HOME`` filled with a torchvision-format state dict under the
published file name. The download path (``check_hash=True``) runs for real from a ``file://``
URL, named by the file's own SHA-256 prefix as torchvision names its files; the offline case
runs the real download code with ``urlopen`` failing as it does without a network.
"""
import hashlib
import os
import urllib.error

import pytest
import torch

from fastmde.models import ResNetEncoder, build, imagenet
from fastmde.models.imagenet import ImageNetWeightsUnavailable, cache_dir, file_name


def torchvision_state(depth: int, seed: int = 0) -> dict:
    """A state dict with torchvision's resnet<depth> keys and shapes (``fc`` included), random values."""
    torch.manual_seed(seed)
    enc = ResNetEncoder(depth)
    for t in enc.state_dict().values():
        if t.is_floating_point():
            t.uniform_(-1, 1)
    state = dict(enc.state_dict())
    state["fc.weight"] = torch.randn(1000, enc.channels[-1])
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "source.pth"
    state = torchvision_state(18)
    torch.save(state, path)
    return str(path), state


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache ($TORCH_HOME), and no network: a download attempt fails as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def _assert_loaded(encoder, state):
    got = encoder.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k


def test_published_names():
    assert [file_name(d) for d in (18, 34, 50, 101)] == [
        "resnet18-f37072fd.pth", "resnet34-b627a593.pth", "resnet50-0676ba61.pth", "resnet101-63fe2227.pth"]
    assert all(url.startswith("https://download.pytorch.org/models/") for url in imagenet.IMAGENET_URLS.values())


def test_loads_from_the_hub_cache(hub, resnet18_file):
    path, state = resnet18_file
    os.makedirs(hub)
    os.link(path, hub / "resnet18-f37072fd.pth")
    assert cache_dir() == str(hub)
    _assert_loaded(ResNetEncoder(18, pretrained="imagenet"), state)
    model = build("unet34-k3-1x1", encoder=18, size=(32, 48), pretrained="imagenet")
    _assert_loaded(model.net.encoder, state)


def test_missing_file_is_named_with_its_folder(hub):
    with pytest.raises(ImageNetWeightsUnavailable) as info:
        ResNetEncoder(34, pretrained="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert f"put resnet34-b627a593.pth (from https://download.pytorch.org/models/resnet34-b627a593.pth) in {hub}" \
        in message and "Temporary failure in name resolution" in message
    assert isinstance(info.value, FileNotFoundError)     # the command line prints it as one line


def test_download_is_hash_checked(hub, resnet18_file, tmp_path, monkeypatch):
    """The real download path, from a file:// URL: torch checks the SHA-256 prefix in the name."""
    import urllib.request

    monkeypatch.setattr(torch.hub, "urlopen", urllib.request.urlopen)
    path, state = resnet18_file
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    served = tmp_path / "served"
    os.makedirs(served)
    good, bad = served / f"resnet18-{digest[:8]}.pth", served / "resnet18-00000000.pth"
    for target in (good, bad):
        os.link(path, target)
    monkeypatch.setitem(imagenet.IMAGENET_URLS, 18, bad.as_uri())
    with pytest.raises(ValueError, match=r"resnet18-00000000.pth from file:.* does not match the SHA-256 prefix"):
        ResNetEncoder(18, pretrained="imagenet", )
    assert not os.path.exists(hub / "resnet18-00000000.pth")          # nothing half-kept
    monkeypatch.setitem(imagenet.IMAGENET_URLS, 18, good.as_uri())
    _assert_loaded(ResNetEncoder(18, pretrained="imagenet"), state)
    assert os.path.isfile(hub / good.name)                           # kept in the cache for next time


def test_a_corrupt_cached_file_is_named(hub):
    os.makedirs(hub)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cached ImageNet weights .*resnet18-f37072fd.pth cannot be read .*delete it"):
        ResNetEncoder(18, pretrained="imagenet")


def test_a_cached_file_of_another_network_is_named(hub, resnet18_file):
    path, _ = resnet18_file
    os.makedirs(hub)
    os.link(path, hub / "resnet34-b627a593.pth")          # resnet18 weights under resnet34's name
    with pytest.raises(ValueError, match=r"ImageNet weights resnet34-b627a593.pth does not fit resnet34; missing keys"):
        ResNetEncoder(34, pretrained="imagenet")
