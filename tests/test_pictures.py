"""Depth pictures (fastmde/engine/pictures.py): colours, the colour bar's ticks and labels, sizes."""
from __future__ import annotations

import numpy as np
import pytest

from fastmde.engine.pictures import NO_DEPTH, bar_layout, colour_bar, colour_bar_ticks, colourise, depth_picture


@pytest.mark.parametrize("lo, hi, inner", [
    (1e-3, 10.0, [2, 4, 6, 8]),          # predict's default range
    (0.0, 10.0, [2, 4, 6, 8]),
    (0.5, 3.7, [1, 2, 3]),
    (1.0, 80.0, [20, 40, 60]),
    (2.0, 2.1, [2.02, 2.04, 2.06, 2.08]),
    (0.3, 1.4, [0.5, 0.75, 1.0, 1.25]),
])
def test_ticks_span_exactly_the_range(lo, hi, inner):
    ticks, labels = colour_bar_ticks(lo, hi)
    assert ticks[0] == lo and ticks[-1] == hi                    # the bar's ends are the range's ends
    assert ticks[1:-1] == pytest.approx(inner)
    assert float(labels[0]) == pytest.approx(lo) and float(labels[-1]) == pytest.approx(hi)
    assert [float(t) for t in labels[1:-1]] == pytest.approx(inner)
    assert len(ticks) <= 6 and ticks == sorted(ticks)


def test_ticks_refuse_an_empty_range():
    with pytest.raises(ValueError, match="lo < hi"):
        colour_bar_ticks(5.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        colour_bar_ticks(0.0, float("inf"))


def test_colours_near_red_far_blue_invalid_black():
    d = np.array([[1.0, 9.0, 0.0, np.nan, -1.0, np.inf, 50.0]])
    rgb = colourise(d, 1.0, 9.0)
    near, far = rgb[0, 0].astype(int), rgb[0, 1].astype(int)
    assert near[0] > 100 and near[0] > 3 * near[2]               # near: red
    assert far[2] > far[0] and far[2] > far[1]                   # far: blue
    for k in (2, 3, 4, 5):                                       # 0, NaN, negative, inf: no depth
        assert tuple(rgb[0, k]) == NO_DEPTH
    assert tuple(rgb[0, 6]) == tuple(rgb[0, 1])                  # beyond the range: the far end's colour


@pytest.mark.parametrize("h, w", [(9, 11), (48, 64), (480, 640)])
def test_picture_is_the_map_plus_the_bar(h, w):
    depth = np.linspace(0.5, 9.5, h * w).reshape(h, w)
    depth[h // 2, w // 2] = np.nan
    picture = np.asarray(depth_picture(depth, 1e-3, 10.0))
    layout = bar_layout(h)
    assert picture.shape == (max(h, layout["min_height"]), w + layout["width"], 3)
    np.testing.assert_array_equal(picture[:h, :w], colourise(depth, 1e-3, 10.0))   # lines up with the photo
    assert tuple(picture[h // 2, w // 2]) == NO_DEPTH                               # invalid pixel: black
    # the bar: far (dark blue) at its top, near (red) at its bottom, in the panel's column
    bar = picture[:, w:]
    column = bar[:, layout["unit"] // 2 + layout["unit"] // 2]
    coloured = [i for i, c in enumerate(column) if len(set(c.tolist())) > 1 and tuple(c) != (255, 255, 255)]
    top, bottom = column[coloured[0]].astype(int), column[coloured[-1]].astype(int)
    assert tuple(top) == tuple(colourise(np.array([[10.0]]), 1e-3, 10.0)[0, 0])
    assert tuple(bottom) == tuple(colourise(np.array([[1e-3]]), 1e-3, 10.0)[0, 0])
    assert (bar == 0).all(axis=-1).any()                         # the "no depth" swatch is black


def test_bar_grows_with_the_picture():
    small, large = bar_layout(48), bar_layout(960)
    assert small["unit"] == 10 and large["unit"] == 30 and large["width"] > small["width"]
    assert colour_bar(960, 0.0, 10.0).size == (large["width"], 960)
    assert colour_bar(20, 0.0, 10.0).size == (small["width"], small["min_height"])


def test_sweep_figure_range_follows_the_validation_protocol():
    # the figure draws every depth map over the clamp of the protocol the rows validate with
    from fastmde.engine import TrainConfig
    from fastmde.engine.sweep import figure_range

    assert figure_range(TrainConfig()) == (1e-3, 10.0)
    kitti = TrainConfig(dataset="kitti", data_format="list", data="train.txt")
    assert figure_range(kitti) == (1e-3, 80.0)
