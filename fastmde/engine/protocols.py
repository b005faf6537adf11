"""Named evaluation protocols: which pixels count and how per-pixel errors become one number.

Published NYU-Depth-v2 numbers are not comparable unless these match, and the projects differ:

``paper``
    Freeman & Tilney-Volk's code: the metrics of each test image averaged over images
    (RMS = mean of per-image RMSE), full 480x640 image (no crop), ground truth > 1e-3 m and
    <= 10 m, predictions clamped to that range.
``hu``
    Hu et al., "Revisiting Single Image Depth Estimation" (WACV 2019), ``test.py`` /
    ``util.evaluateError``: errors per test batch of size 1, averaged over images (per-image),
    valid = ground truth > 0, no crop and no depth cap. Their code evaluates at its own
    reduced test resolution (resize to 320x240, centre crop 304x228); here the metrics are
    taken at the data's resolution, so only the aggregation and validity match.
``bts``
    Lee et al., BTS (``bts_eval.py`` / ``eval_with_pngs.py``): the Eigen crop (rows 45:471,
    cols 41:601), valid = 1e-3 < ground truth < 10 m, predictions clamped to [1e-3, 10], each
    image's metrics computed separately and then averaged (``d1.mean()`` over images): this is
    per-image, not pooled, despite the crop's Eigen et al. origin.
``densedepth``
    Alhashim & Wonka, DenseDepth (``utils.evaluate``): predictions of every test image stacked
    and the errors computed over all pixels at once (pooled: RMS = sqrt of the mean square over
    the whole set), crop rows 20:460, cols 24:616, predictions clipped to [0.1, 10] m, and the
    prediction averaged with that of the horizontally flipped image (``flip=True``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Protocol:
    name: str
    aggregate: str            # "per_image" or "pooled" (see fastmde.nn.DepthMetrics)
    crop: str | None          # "eigen", "densedepth" or None
    min_depth: float
    max_depth: float | None
    flip: bool                # average with the prediction of the mirrored image
    source: str

    def metrics(self):
        from ..nn import DepthMetrics

        return DepthMetrics(min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop,
                            aggregate=self.aggregate)

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS = {
    "paper": Protocol("paper", "per_image", None, 1e-3, 10.0, False,
                      "Freeman & Tilney-Volk's code: per-image means, full image"),
    "hu": Protocol("hu", "per_image", None, 1e-3, None, False,
                   "Hu et al. 2019 test.py/util.evaluateError: per-image, gt > 0, no crop, no cap"),
    "bts": Protocol("bts", "per_image", "eigen", 1e-3, 10.0, False,
                    "Lee et al. BTS bts_eval.py: Eigen crop, 1e-3..10 m, per-image means"),
    "densedepth": Protocol("densedepth", "pooled", "densedepth", 0.1, 10.0, True,
                           "Alhashim & Wonka DenseDepth utils.evaluate: pooled, crop 20:460/24:616, "
                           "0.1..10 m, flip averaging"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]
