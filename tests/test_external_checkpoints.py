"""Checkpoints of the paper authors' code and of Hu et al.'s code load into fastmde.

The key sets (names, shapes, dtypes) come from tests/fixtures/external_checkpoint_keys.json,
written from reading the two codebases (provenance in tests/fixtures/EXTERNAL_CHECKPOINTS.md);
the tensors are drawn here. The equivalence tests build, in plain PyTorch, modules with each
source's module structure and forward (written for this test from reading their code: the
names must reproduce the fixture exactly), and compare them with the loaded fastmde model in
float64 on the reference and the C++ up-projection.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastmde
from fastmde import _backend
from fastmde.cli import main
from fastmde.engine import CheckpointError
from fastmde.models import ExternalCheckpointError, build, from_external, variant_name

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "external_checkpoint_keys.json")
with open(FIXTURE) as _f:
    CASES = json.load(_f)


def _draw(shape, name, dtype, g):
    """A tensor for ``name``: conv weights at He scale, BatchNorm affines near 1/0, running
    statistics with a positive variance, integer counters."""
    if dtype == torch.int64:
        return torch.randint(0, 1000, shape, generator=g, dtype=dtype)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=g, dtype=dtype) + 0.5
    if name.endswith("running_mean") or name.endswith("bias"):
        return torch.randn(shape, generator=g, dtype=dtype) * 0.1
    if len(shape) == 1:  # BatchNorm weight
        return torch.rand(shape, generator=g, dtype=dtype) + 0.5
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=g, dtype=dtype) * (2.0 / fan_in) ** 0.5


def fixture_state(case, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, dt in CASES[case]["keys"]:
        d = getattr(torch, dt)
        state[name] = _draw(shape, name, dtype if (dtype is not None and d.is_floating_point) else d, g)
    return state


def _fastmde_key(case, key):
    """Where the loader must put ``key`` (independent restatement of the mapping in the test)."""
    from fastmde.models.external import map_keys

    mapped, origin, unmapped = map_keys({key: torch.zeros(())}, CASES[case]["source"])
    assert not unmapped, key
    return next(iter(mapped))


# ---------------------------------------------------------------- every variant loads strictly

@pytest.mark.parametrize("case", list(CASES))
def test_fixture_loads_strictly_and_builds_the_right_variant(case):
    spec = CASES[case]
    state = fixture_state(case)
    model = from_external(state, size=None)
    # named by what it is (the ResNet18 baseline: unet18-k3-1x1), built from the variant's name
    assert model.fastmde_variant == variant_name(spec["variant"], **spec["overrides"])
    assert model.fastmde_spec == {"name": spec["variant"], "size": None, "overrides": spec["overrides"]}
    assert model.fastmde_source["source"] == spec["source"]
    loaded = model.state_dict()
    # every tensor of the file is in the model, unchanged, at the place the source's layout names
    targets = {}
    for key, value in state.items():
        target = _fastmde_key(case, key)
        targets[target] = key
        assert torch.equal(loaded[target], value.to(loaded[target].dtype)), key
    # and every tensor of the model came from the file (bar num_batches_tracked of old files)
    for key, value in loaded.items():
        if key not in targets:
            assert key.endswith("num_batches_tracked") and spec["source"] == "hu2019", key
            assert int(value) == 0
    # the model is exactly the one build() gives for the variant: its state dict loads strictly
    rebuilt = build(spec["variant"], size=None, **spec["overrides"])
    rebuilt.load_state_dict(loaded, strict=True)
    assert type(rebuilt.net) is type(model.net)
    assert rebuilt.net.encoder.depth == model.net.encoder.depth
    assert rebuilt.net.encoder.normalize == (spec["source"] == "hu2019")


def test_source_defaults_internal_size_and_input_convention():
    m = from_external(fixture_state("freeman2021/Baseline34-k3-1x1"))
    assert m.size == (288, 384) and not m.net.encoder.normalize
    assert "0-255" in m.fastmde_source["input"] and "metres" in m.fastmde_source["output"]
    h = from_external(fixture_state("hu2019/resnet50"))
    assert h.size == (228, 304) and h.net.encoder.normalize
    assert "ImageNet" in h.fastmde_source["input"] and "half" in h.fastmde_source["output"]
    assert from_external(fixture_state("freeman2021/Hu34-k3"), size=(64, 96)).size == (64, 96)


# ---------------------------------------------------------------- wrappers, prefixes, files

@pytest.mark.parametrize("wrap", ["plain", "state_dict+module", "model+_orig_mod", "state_dict+module._orig_mod",
                                  "model_state_dict"])
def test_nested_and_prefixed_checkpoints_load(wrap, tmp_path):
    state = fixture_state("freeman2021/Baseline-k3-1x1")
    if wrap == "plain":
        obj = state
    elif wrap == "state_dict+module":
        obj = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}
    elif wrap == "model+_orig_mod":
        obj = {"model": {"_orig_mod." + k: v for k, v in state.items()}, "optimizer": {"lr": 1e-4}}
    elif wrap == "state_dict+module._orig_mod":
        obj = {"state_dict": {"module._orig_mod." + k: v for k, v in state.items()}}
    else:
        obj = {"model_state_dict": state}
    path = str(tmp_path / "weights.checkpoint")
    torch.save(obj, path)
    for given in (obj, path):
        model = from_external(given, size=None)
        assert model.fastmde_variant == "unet18-k3-1x1" and model.fastmde_spec["overrides"] == {"encoder": 18}
        assert torch.equal(model.state_dict()["net.up1.reduce_conv.weight"], state["decoder.up1.conv0.weight"])


@pytest.mark.parametrize("archive", ["zip", "legacy"])
def test_hu2019_file_as_their_train_py_saves_it(archive, tmp_path):
    # train.py: DataParallel(model) ... save_checkpoint({'state_dict': model.state_dict()}); PyTorch
    # 0.3.1 wrote the legacy (non-zip) format
    state = fixture_state("hu2019/resnet50")
    path = str(tmp_path / "checkpoint.pth.tar")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path,
               _use_new_zipfile_serialization=archive == "zip")
    model = from_external(path)
    assert fastmde.load(path).fastmde_variant == "hu50"
    assert model.fastmde_variant == "hu50" and model.fastmde_source["source"] == "hu2019"
    assert torch.equal(model.state_dict()["net.up4.conv2.weight"], state["D.up4.conv1_2.weight"])
    assert torch.equal(model.state_dict()["net.up4.shortcut_conv.weight"], state["D.up4.conv2.weight"])


def test_explicit_source_must_match_the_keys():
    state = fixture_state("freeman2021/Hu34-k5")
    assert from_external(state, source="freeman2021", size=None).fastmde_variant == "hu34-k5"
    with pytest.raises(ExternalCheckpointError, match="has freeman2021 key names, not hu2019's: pass source='freeman2021'"):
        from_external(state, source="hu2019")
    with pytest.raises(ValueError, match="unknown source"):
        from_external(state, source="bts")


# ---------------------------------------------------------------- foreign and broken files

def test_foreign_state_dict_is_a_clear_error():
    classifier = {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8),
                  "classifier.bias": torch.zeros(10)}
    with pytest.raises(ExternalCheckpointError) as info:
        from_external(classifier)
    text = str(info.value)
    assert "not a checkpoint of the paper authors' code" in text and "['classifier', 'features']" in text
    # issue 22 §2: nothing of it maps onto a fastmde model, so no "closest variant" is named
    assert "closest" not in text and "none of fastmde's models is close" in text and "classifier.weight" in text


def test_random_state_dict_names_no_closest_variant():
    """Issue 22 §2: a random state dict got a bogus "closest variant" (unet34-k3 with 252 missing keys)."""
    g = torch.Generator().manual_seed(0)
    state = {f"block{i}.conv.weight": torch.randn(4, 4, generator=g) for i in range(5)}
    with pytest.raises(ExternalCheckpointError) as info:
        from_external(state)
    text = str(info.value)
    assert "closest" not in text and "missing keys" not in text and "5 tensors" in text and "['block0'" in text
    # a file of the authors' code with one extra module is still measured against its variant
    extra = fixture_state("freeman2021/Baseline34-k5")
    extra["classifier.weight"] = torch.zeros(3)
    with pytest.raises(ExternalCheckpointError, match="closest fastmde variant is 'unet34-k5'.*classifier.weight"):
        from_external(extra)
    with pytest.raises(ExternalCheckpointError, match="none of its keys follows the hu2019 names"):
        from_external(state, source="hu2019")


def test_text_file_is_named_without_a_bare_pickle_byte(tmp_path):
    """Issue 22 §2: a text file ended its message with torch.load's "KeyError: 101"."""
    text = tmp_path / "weights.txt"
    text.write_text("epoch 3: loss 0.41\n")
    with pytest.raises(ExternalCheckpointError) as info:
        from_external(str(text))
    message = str(info.value)
    assert "weights.txt" in message and "starts with text (b'epoch 3: los')" in message
    assert "zip archive" in message and not message.rstrip().endswith("101") and "KeyError" not in message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ExternalCheckpointError, match="it is empty"):
        from_external(str(empty))
    with pytest.raises(CheckpointError, match=r"weights.txt' is not a fastmde checkpoint: .*starts with text"):
        fastmde.load(str(text))


def test_wrong_shape_names_closest_variant_and_key():
    # the authors' MFF fusion conv is 5x5 whatever the kernel size: a 3x3 one fits no variant
    state = fixture_state("freeman2021/Hu34-k3-1x1")
    state["mff.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ExternalCheckpointError) as info:
        from_external(state)
    text = str(info.value)
    assert "closest fastmde variant is 'hu34-k3-1x1'" in text
    assert "mff.conv1.weight: checkpoint (64, 64, 3, 3) vs model (64, 64, 5, 5)" in text
    assert "missing" not in text and "unexpected" not in text


def test_missing_and_unexpected_keys_are_named():
    state = fixture_state("freeman2021/Baseline34-k5")
    del state["decoder.conv3.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(ExternalCheckpointError) as info:
        from_external(state)
    text = str(info.value)
    assert "closest fastmde variant is 'unet34-k5'" in text
    assert "missing keys (fastmde names): net.head_conv2.bias" in text
    assert "unexpected keys (freeman2021 names): decoder.extra.weight" in text


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_external(str(tmp_path / "missing.pth"))
    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(512))
    with pytest.raises(ExternalCheckpointError, match="cannot be read"):
        from_external(str(bad))
    pickled = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), str(pickled))  # a whole pickled module: weights_only refuses it
    with pytest.raises(ExternalCheckpointError, match="weights_only=True"):
        from_external(str(pickled))
    with pytest.raises(ExternalCheckpointError, match="not a state dict"):
        from_external({"epoch": 3, "lr": 1e-4})


# ---------------------------------------------------------------- the sources' networks, in plain PyTorch

class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + r)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        r = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + r)


class TorchvisionStyleTrunk(nn.Module):
    """torchvision's ResNet layout (stride on the 3x3 conv) without avgpool/fc; both sources'
    encoders (``E_resnet``) keep exactly these modules and return the four stage outputs."""

    def __init__(self, depth):
        super().__init__()
        block, layers = {18: (_Basic, [2, 2, 2, 2]), 34: (_Basic, [3, 4, 6, 3]),
                         50: (_Bottleneck, [3, 4, 6, 3])}[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers), start=1):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 1 and j == 0) else 1
                down = None
                if j == 0 and (stride != 1 or cin != planes * block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block(cin, planes, stride, down))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        b1 = self.layer1(x)
        b2 = self.layer2(b1)
        b3 = self.layer3(b2)
        return b1, b2, b3, self.layer4(b3)


def _conv(cin, cout, k, bias=False):
    return nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias)


class FreemanUp(nn.Module):
    """The authors' UpProjection: [cat block] -> [1x1 conv0 -> bn0 -> relu] -> bilinear x scale
    (align_corners=True) -> relu(bn1(conv1)) -> bn1_2(conv1_2) + bn2(conv2) -> relu."""

    def __init__(self, cin, cout, scale, k, one_by_one):
        super().__init__()
        self.scale, self.one_by_one = scale, one_by_one
        mid = cin
        if one_by_one:
            self.conv0, self.bn0 = _conv(cin, cout, 1), nn.BatchNorm2d(cout)
            mid = cout
        self.conv1, self.bn1 = _conv(mid, cout, k), nn.BatchNorm2d(cout)
        self.conv1_2, self.bn1_2 = _conv(cout, cout, k), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(mid, cout, k), nn.BatchNorm2d(cout)

    def forward(self, x, block=None):
        if block is not None:
            x = torch.cat([x, block], 1)
        if self.one_by_one:
            x = F.relu(self.bn0(self.conv0(x)))
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)
        branch = self.bn1_2(self.conv1_2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(branch + self.bn2(self.conv2(x)))


class FreemanSkipDecoder(nn.Module):
    def __init__(self, bc, k, one):
        super().__init__()
        self.conv, self.bn = _conv(bc[3], bc[2], 1), nn.BatchNorm2d(bc[2])
        self.up1 = FreemanUp(2 * bc[2], bc[1], 2, k, one)
        self.up2 = FreemanUp(2 * bc[1], bc[0], 2, k, one)
        self.up3 = FreemanUp(2 * bc[0], bc[0], 2, k, one)
        self.up4 = FreemanUp(bc[0], bc[0], 2, k, one)
        self.conv2, self.bn2 = _conv(bc[0], bc[0], k), nn.BatchNorm2d(bc[0])
        self.conv3 = _conv(bc[0], 1, k, bias=True)

    def forward(self, b1, b2, b3, b4):
        x = F.relu(self.bn(self.conv(b4)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.up4(self.up3(self.up2(self.up1(x, b3), b2), b1))
        return self.conv3(F.relu(self.bn2(self.conv2(x))))


class FreemanBaseline(nn.Module):
    """``Baseline34`` (``Baseline`` with ResNet18) without its input/output resize."""

    def __init__(self, depth, k, one):
        super().__init__()
        self.encoder = TorchvisionStyleTrunk(depth)
        self.decoder = FreemanSkipDecoder([64, 128, 256, 512], k, one)

    def forward(self, x):
        return self.decoder(*self.encoder(x))


class FreemanDecoder(nn.Module):
    def __init__(self, bc, k, one):
        super().__init__()
        self.up1 = FreemanUp(bc[3], bc[2], 2, k, one)
        self.up2 = FreemanUp(bc[2], bc[1], 2, k, one)
        self.up3 = FreemanUp(bc[1], bc[0], 2, k, one)
        self.up4 = FreemanUp(bc[0], bc[0], 4, k, one)

    def forward(self, b4):
        return self.up4(self.up3(self.up2(self.up1(b4))))


class FreemanMFF(nn.Module):
    def __init__(self, bc, k, one):
        super().__init__()
        for i, (c, s) in enumerate(zip(bc, (4, 8, 16, 32)), start=1):
            setattr(self, f"up{i}", FreemanUp(c, 16, s, k, one))
        self.conv1, self.bn = _conv(64, 64, 5), nn.BatchNorm2d(64)  # 5x5 whatever ksize

    def forward(self, b1, b2, b3, b4):
        x = torch.cat((self.up1(b1), self.up2(b2), self.up3(b3), self.up4(b4)), 1)
        return F.relu(self.bn(self.conv1(x)))


class FreemanRefinement(nn.Module):
    def __init__(self, bc, k):
        super().__init__()
        w = 64 + bc[0]
        self.conv0, self.bn0 = _conv(w, w, k), nn.BatchNorm2d(w)
        self.conv1, self.bn1 = _conv(w, w, k), nn.BatchNorm2d(w)
        self.conv2 = _conv(w, 1, k, bias=True)

    def forward(self, d, m):
        x = F.relu(self.bn0(self.conv0(torch.cat([d, m], 1))))
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class FreemanHu(nn.Module):
    """``Hu34`` / ``Hu50`` without the input/output resize."""

    def __init__(self, depth, k, one):
        super().__init__()
        bc = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
        self.encoder = TorchvisionStyleTrunk(depth)
        self.decoder = FreemanDecoder(bc, k, one)
        self.mff = FreemanMFF(bc, k, one)
        self.refinement = FreemanRefinement(bc, k)

    def forward(self, x):
        b1, b2, b3, b4 = self.encoder(x)
        return self.refinement(self.decoder(b4), self.mff(b1, b2, b3, b4))


class HuUp(nn.Module):
    """Hu et al.'s _UpProjection: bilinear to ``size`` (PyTorch 0.3.1: corners aligned), then
    relu(bn1(conv1 5x5)) -> bn1_2(conv1_2 3x3), plus bn2(conv2 5x5), relu."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 5), nn.BatchNorm2d(cout)
        self.conv1_2, self.bn1_2 = _conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(cin, cout, 5), nn.BatchNorm2d(cout)

    def forward(self, x, size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        branch = self.bn1_2(self.conv1_2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(branch + self.bn2(self.conv2(x)))


class HuD(nn.Module):
    def __init__(self, n=2048):
        super().__init__()
        self.conv, self.bn = _conv(n, n // 2, 1), nn.BatchNorm2d(n // 2)
        n //= 2
        for i in range(1, 5):
            setattr(self, f"up{i}", HuUp(n, n // 2))
            n //= 2

    def forward(self, b1, b2, b3, b4):
        x = F.relu(self.bn(self.conv(b4)))
        x = self.up1(x, b3.shape[-2:])
        x = self.up2(x, b2.shape[-2:])
        x = self.up3(x, b1.shape[-2:])
        return self.up4(x, [b1.shape[2] * 2, b1.shape[3] * 2])


class HuMFF(nn.Module):
    def __init__(self, bc):
        super().__init__()
        for i, c in enumerate(bc, start=1):
            setattr(self, f"up{i}", HuUp(c, 16))
        self.conv, self.bn = _conv(64, 64, 5), nn.BatchNorm2d(64)

    def forward(self, b1, b2, b3, b4, size):
        x = torch.cat((self.up1(b1, size), self.up2(b2, size), self.up3(b3, size), self.up4(b4, size)), 1)
        return F.relu(self.bn(self.conv(x)))


class HuR(nn.Module):
    def __init__(self, bc):
        super().__init__()
        w = 64 + bc[3] // 32
        self.conv0, self.bn0 = _conv(w, w, 5), nn.BatchNorm2d(w)
        self.conv1, self.bn1 = _conv(w, w, 5), nn.BatchNorm2d(w)
        self.conv2 = _conv(w, 1, 5, bias=True)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class HuNet(nn.Module):
    """Hu et al.'s ``net.model`` with ``E_resnet(resnet50)``; takes the normalised image."""

    def __init__(self):
        super().__init__()
        bc = [256, 512, 1024, 2048]
        self.E, self.D, self.MFF, self.R = TorchvisionStyleTrunk(50), HuD(), HuMFF(bc), HuR(bc)

    def forward(self, x):
        b = self.E(x)
        d = self.D(*b)
        return self.R(torch.cat((d, self.MFF(*b, list(d.shape[-2:]))), 1))


def _source_model(case):
    name = CASES[case]["model"]
    if case.startswith("hu2019/"):
        return HuNet()
    k = 5 if "-k5" in case else 3
    one = case.endswith("-1x1")
    depth = int(name[-2:]) if name[-2:].isdigit() else 18
    return (FreemanBaseline if name.startswith("Baseline") else FreemanHu)(depth, k, one)


def _without_tracked(keys, source):
    return keys if source != "hu2019" else [k for k in keys if not k[0].endswith("num_batches_tracked")]


@pytest.mark.parametrize("case", list(CASES))
def test_plain_source_modules_reproduce_the_fixture(case):
    """The test's own rendition of each source's modules has exactly the fixture's names and
    shapes (two independent readings of the code agree)."""
    with torch.device("meta"):
        module = _source_model(case)
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()]
    want = CASES[case]["keys"]
    assert sorted(_without_tracked(got, CASES[case]["source"])) == sorted(want)


@pytest.fixture(params=["reference", "native"])
def cpu_backend(request):
    if request.param == "native":
        from native_kernel_helpers import require_native_extension

        require_native_extension()
    _backend.set_backend(request.param)
    try:
        yield request.param
    finally:
        _backend.set_backend(None)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(_draw(tuple(t.shape), name, t.dtype, g))


EQUIVALENCE = ["freeman2021/Baseline34-k3-1x1", "freeman2021/Baseline34-k5", "freeman2021/Hu34-k3-1x1",
               "freeman2021/Hu34-k5", "freeman2021/Hu50-k3-1x1", "hu2019/resnet50"]


@pytest.mark.parametrize("case", EQUIVALENCE)
def test_loaded_model_computes_what_the_source_model_computes(case, cpu_backend):
    torch.manual_seed(0)
    source = _source_model(case).eval()
    _randomise(source, seed=1)  # float32 values, as checkpoints hold, then both sides in float64
    state = source.state_dict()
    if CASES[case]["source"] == "hu2019":  # as PyTorch 0.3.1 wrote it
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = from_external(state, size=None).double().eval()
    source = source.double()
    assert model.fastmde_variant == CASES[case]["variant"]
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 255
    with torch.no_grad():
        if CASES[case]["source"] == "hu2019":
            mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
            want = source((x / 255 - mean) / std)      # their loaddata.py: ToTensor, Normalize
            assert tuple(want.shape) == (2, 1, 16, 32)  # half resolution
        else:
            want = source(x)                           # raw 0-255, as their preprocessing gives
            assert tuple(want.shape) == (2, 1, 32, 64)
        got = model.net(x)
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 1e-3  # a real signal, not a collapsed one
    assert (got - want).abs().max().item() <= 1e-10 * max(scale, 1.0)
    if CASES[case]["source"] == "freeman2021":  # at a size divisible by 32 the wrapper adds nothing
        with torch.no_grad():
            assert torch.equal(model(x), got)


# ---------------------------------------------------------------- fastmde.load and the CLI

def test_fastmde_load_takes_external_files(tmp_path):
    state = fixture_state("hu2019/resnet50")
    path = str(tmp_path / "model_resnet.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = fastmde.load(path)
    assert not model.training
    assert model.fastmde_variant == "hu50" and model.fastmde_source["source"] == "hu2019"
    assert model.fastmde_config == {} and model.fastmde_checkpoint == path
    spec = model.fastmde_spec
    assert spec == {"name": "hu50", "size": [228, 304], "overrides": {"normalize": True}}
    # what `train --init-from` does with it: the same variant, built by name, takes its weights
    fresh = build(spec["name"], size=spec["size"], **spec["overrides"])
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
        assert torch.equal(from_external(path).eval()(x), model(x))


def test_fastmde_load_on_a_plain_state_dict_is_one_clear_message(tmp_path):
    """Issue 22 §2: the message said "not a fastmde checkpoint" twice."""
    model = build("unet34-k3", size=(32, 48))
    plain = str(tmp_path / "plain.pt")
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError) as info:
        fastmde.load(plain)
    message = str(info.value)
    assert message.count("not a fastmde checkpoint") == 1
    assert "plain state_dict of a fastmde model" in message and "source='fastmde'" in message
    # what the message proposes works
    loaded = from_external(plain, source="fastmde", size=(32, 48))
    assert loaded.fastmde_variant == "unet34-k3"
    encoder = str(tmp_path / "resnet34.pth")
    torch.save(model.net.encoder.state_dict(), encoder)
    with pytest.raises(CheckpointError, match="a ResNet's state_dict .*--pretrained") as info:
        fastmde.load(encoder)
    assert str(info.value).count("not a fastmde checkpoint") == 1
    other = str(tmp_path / "other.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match=r"a plain state_dict \(1 tensor, e.g. 'fc.weight'\) whose names fit none"):
        fastmde.load(other)


def test_fastmde_load_reports_an_external_file_that_fits_nothing(tmp_path):
    state = fixture_state("freeman2021/Baseline34-k3-1x1")
    state["decoder.up2.conv1_2.weight"] = torch.zeros(64, 64, 7, 7)
    path = str(tmp_path / "Baseline34_best_val.checkpoint")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"closest fastmde variant is 'unet34-k3-1x1'.*decoder\.up2\.conv1_2"):
        fastmde.load(path)


@pytest.fixture(scope="module")
def freeman_file(tmp_path_factory):
    """The smallest external checkpoint: the authors' ResNet18 U-Net ('Baseline'), as their
    model_utils.save_model writes it (a plain state dict)."""
    path = str(tmp_path_factory.mktemp("external") / "Baseline_best_val.checkpoint")
    torch.save(fixture_state("freeman2021/Baseline-k3-1x1"), path)
    return path


def test_predict_cli_takes_an_external_checkpoint(freeman_file, tmp_path, capsys):
    from PIL import Image

    image = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    Image.fromarray(image).save(tmp_path / "room.png")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "room.png"), "--checkpoint", freeman_file, "--out", str(out),
                 "--device", "cpu", "--amp", "none"]) == 0
    depth = np.load(out / "room.npy")
    assert depth.shape == (40, 56) and np.isfinite(depth).all()
    model = fastmde.load(freeman_file)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        want = model(x)[0, 0].numpy()
    want = np.clip(want, 1e-3, 10.0)   # predict clamps as evaluation does (--min-depth/--max-depth defaults)
    assert np.allclose(depth, want, rtol=1e-5, atol=1e-5)


def test_eval_cli_takes_an_external_checkpoint(freeman_file, tmp_path, capsys):
    from _data_files import pattern_image, write_csv_layout

    root = str(tmp_path / "nyu")
    # Hu et al.'s / DenseDepth's CSV layout (480x640 as the reader requires): test depth as
    # 16-bit PNG in millimetres
    rgbs = [pattern_image(480, 640, k) for k in range(2)]
    depths = [np.full((480, 640), 1000 + 500 * k, dtype=np.uint16) for k in range(2)]
    write_csv_layout(root, "test", rgbs, depths)
    out = str(tmp_path / "eval.json")
    assert main(["eval", "--checkpoint", freeman_file, "--data-format", "csv", "--data", root, "--device", "cpu",
                 "--amp", "none", "--workers", "0", "--batch-size", "2", "--out", out]) == 0
    result = json.load(open(out))
    assert result["model"] == "unet18-k3-1x1" and result["items"] == 2
    assert result["checkpoint"] == freeman_file
    assert all(np.isfinite(v) for v in result["metrics"].values())


def test_train_init_from_takes_an_external_checkpoint(freeman_file, tmp_path_factory, tmp_path):
    """`fastmde train --init-from` goes through fastmde.load: a fine-tuning run starts from the
    authors' weights (their ResNet18 U-Net is fastmde's unet34-k3-1x1 with encoder=18)."""
    from engine_helpers import synthetic_cache, tiny_config

    from fastmde.engine import Trainer

    cache = synthetic_cache(tmp_path_factory)
    trainer = Trainer(tiny_config(cache, str(tmp_path / "ft"), init_from=freeman_file))
    want = fastmde.load(freeman_file).state_dict()
    got = trainer.model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k].cpu(), want[k]) for k in want)
    with pytest.raises(CheckpointError, match="holds a unet18-k3-1x1 model"):
        Trainer(tiny_config(cache, str(tmp_path / "other"), model="unet34-k5", init_from=freeman_file))


def test_train_init_from_refuses_another_input_normalisation(freeman_file, tmp_path_factory, tmp_path):
    """The authors' model takes the raw 0-255 image; fine-tuning it with --normalize would feed
    it ImageNet-normalised input: refused, naming the flag to pass (Hu et al.'s model is the
    converse case: normalisation on)."""
    from engine_helpers import synthetic_cache, tiny_config

    from fastmde.engine import Trainer

    cache = synthetic_cache(tmp_path_factory)
    with pytest.raises(CheckpointError, match="does not apply the ImageNet mean/std.*pass --no-normalize"):
        Trainer(tiny_config(cache, str(tmp_path / "norm"), init_from=freeman_file, normalize=True))
