"""The models' input conventions (issues 22 §4 and 23): a training batch BatchNorm cannot take is
refused in the Python API's words (the size, the batch, the smallest size that trains), and
an image in another range than 0-255 (a 0-1 ToTensor image, an ImageNet-normalised one) is
warned about at the caller's line, on every call that gets one (not on the model's first call only)."""
import warnings

import pytest
import torch

from fastmde import models


@pytest.mark.parametrize("name, size, smallest", [("unet34-k3", (24, 32), "size=(27, 36)"),
                                                  ("hu34", (16, 16), "size=(33, 33)")])
def test_untrainable_batch_names_size_batch_and_smallest_size(name, size, smallest):
    """mmsegmentation#272: build("unet34-k3", size=(24, 32)) trained at batch 1 died inside
    BatchNorm ("Expected more than 1 value per channel when training")."""
    torch.manual_seed(0)
    model = models.build(name, size=size)
    image = torch.rand(1, 3, 48, 64) * 255
    with pytest.raises(ValueError) as info:
        model(image)
    message = str(info.value)
    assert f"size={size}" in message and "a training batch of 1" in message and name in message
    assert smallest in message and "1x1" in message and "stride 32" in message and "batches of 2" in message
    model(torch.cat([image, image]))                # two images train
    model.eval()
    assert model(image).shape == (1, 1, 48, 64)     # inference at batch 1 is fine


def test_untrainable_input_at_its_own_size():
    model = models.build("unet34-k3", size=None)
    with pytest.raises(ValueError, match=r"an input of 20x30 .* a training batch of 1.*an input of 22x33 \(keeping the height: an input of 20x33\)"):
        model(torch.rand(1, 3, 20, 30) * 255)
    model(torch.rand(1, 3, 20, 40) * 255)           # 1x2 deepest map: two values per channel


@pytest.mark.parametrize("image, words", [
    (torch.rand(2, 3, 40, 56), "0-1 image"),                              # torchvision's ToTensor
    ((torch.rand(2, 3, 40, 56) - 0.45) / 0.225, "ImageNet-normalised"),   # normalised by hand
    (torch.rand(2, 3, 40, 56) * 65535, "above 255"),                      # a 16-bit photo
])
def test_other_image_ranges_warn_once_at_the_callers_line(image, words):
    model = models.build("unet34-k3", size=(32, 48)).eval()
    with pytest.warns(UserWarning, match=words) as record:
        model(image)
    assert [w.filename for w in record] == [__file__]
    assert "unet34-k3" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(1, 3, 40, 56) * 255)      # a 0-255 image between: nothing to say
    with pytest.warns(UserWarning, match=words):
        model(image)                                # a later call is checked too, not the first one only


def test_a_0_255_image_is_not_warned_about():
    model = models.build("unet34-k3", size=(32, 48)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.rand(2, 3, 40, 56) * 255)
        model(torch.zeros(1, 3, 40, 56))           # a black image says nothing about its range
