"""Depth files are read in their own convention or refused, never reinterpreted (issue 22 §1)."""
import numpy as np
import pytest
from PIL import Image

from fastmde.data import DataFormatError
from fastmde.data.csv import decode_depth_png
from fastmde.data.depth_files import read_depth


def test_palette_depth_png_is_refused(tmp_path):
    """np.asarray of a palette PNG gives colour-table indices: read as 8-bit depth they became
    0-0.6 m instead of the grey levels' 0-7.8 m, without a word."""
    grey = (np.arange(48 * 64).reshape(48, 64) % 200).astype(np.uint8)
    palette = tmp_path / "depth.png"
    Image.fromarray(grey, "L").convert("P", palette=Image.ADAPTIVE, colors=16).save(palette)
    for read in (lambda: decode_depth_png(palette, "png8"), lambda: read_depth(palette, 1000.0)):
        with pytest.raises(DataFormatError, match=r"depth.png: is a palette image \(mode P\).*indices"):
            read()
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")          # the same map in grey: read as stored
    np.testing.assert_allclose(decode_depth_png(tmp_path / "grey.png", "png8"), grey * np.float32(10 / 255))
