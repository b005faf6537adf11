"""Named evaluation protocols: which pixels count and how per-pixel errors become one number.

Published NYU-Depth-v2 numbers are not comparable unless these rules match, and the projects
differ in every one of them. Each protocol below sets every rule from its source's code, one
comparison at a time; the comments cite the file and line (line numbers of the stored copy at
the commit named in ``source``). The fields:

``aggregate``
    per metric: ``per_image`` (each image's value averaged over images), ``pooled`` (all valid
    pixels of the set at once) or, for ``rms``, ``per_image_mse`` (sqrt of the mean per-image
    MSE).
``crop``
    ``"eigen"`` (rows 45:471, cols 41:601 of 480x640), ``"densedepth"`` (20:460, 24:616) or None.
``min_depth`` / ``min_inclusive``, ``max_depth`` / ``max_inclusive``
    the ground-truth range test: ``y > min`` or ``y >= min``; ``y <= max`` or ``y < max``
    (``max_depth`` None: no upper bound). Ground truth must also be finite, and the engine's
    evaluation passes ``mask = depth > 0`` (0 marks missing depth in every reader).
``clamp``
    the prediction clamp (low, high) in metres, or None (no clamp).
``nan_prediction``
    what a NaN prediction becomes (None: it stays NaN, so the metrics become NaN).
``delta_inclusive``
    δ counted by ``max(ŷ/y, y/ŷ) <= 1.25^k`` (True) or ``< 1.25^k`` (False).
``rel_denominator``
    REL = mean |ŷ-y|/y (``"target"``) or |ŷ-y|/ŷ (``"prediction"``).
``log10_nonfinite``
    ``"zero"``: a non-finite log10 of either side counts as 0; ``"propagate"``: it stays.
``flip``
    the prediction averaged with that of the mirrored image.

What the sources do that fastmde does not reproduce (listed per protocol): the resolution
and resampling the source evaluates at, and ground-truth values no depth map holds (negative,
±inf: fastmde never scores non-finite ground truth).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..reference.depth_metrics import METRIC_NAMES


def _same(rule: str) -> dict[str, str]:
    return {name: rule for name in METRIC_NAMES}


@dataclass(frozen=True)
class Protocol:
    name: str
    aggregate: dict = field(hash=False)  # metric -> "per_image" | "pooled" | "per_image_mse" (rms)
    crop: str | None
    min_depth: float
    min_inclusive: bool
    max_depth: float | None
    max_inclusive: bool
    clamp: tuple[float, float] | None
    nan_prediction: float | None
    delta_inclusive: bool
    rel_denominator: str
    log10_nonfinite: str
    flip: bool
    source: str

    def metric_options(self) -> dict:
        """Keyword arguments of ``fastmde.depth_metrics`` / ``fastmde.nn.DepthMetrics``."""
        return dict(
            min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop, aggregate=dict(self.aggregate),
            min_inclusive=self.min_inclusive, max_inclusive=self.max_inclusive,
            clamp=False if self.clamp is None else self.clamp, nan_prediction=self.nan_prediction,
            delta_inclusive=self.delta_inclusive, rel_denominator=self.rel_denominator,
            log10_nonfinite=self.log10_nonfinite,
        )

    def metrics(self):
        from ..nn import DepthMetrics

        return DepthMetrics(**self.metric_options())

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS = {
    # fastmde's own convention (the defaults of fastmde.depth_metrics, DESIGN.md §3 "Metrics"):
    # what the trainer validates, tests and picks best.pt with. Unlike the paper authors' code it
    # clamps predictions to the range, so an untrained network's negative output cannot count as
    # a δ hit (max(ŷ/y, y/ŷ) < 1.25 holds for any ŷ < 0) and a non-finite log10 is not zeroed.
    "fastmde": Protocol(
        "fastmde",
        aggregate=_same("per_image"),     # each image's metrics averaged over images
        crop=None,
        min_depth=1e-3, min_inclusive=False, max_depth=10.0, max_inclusive=True,
        clamp=(1e-3, 10.0),
        nan_prediction=None,
        delta_inclusive=False,
        rel_denominator="target",
        log10_nonfinite="propagate",
        flip=False,
        source="fastmde's default convention (fastmde.depth_metrics defaults with max_depth=10)",
    ),
    # Freeman & Tilney-Volk, thatcherfreeman/CS231A-FinalProject test.py @387383e (test_model):
    "paper": Protocol(
        "paper",
        # test.py:53-58 add one value per batch (RMS: sqrt of the batch's mean square, line 53),
        # divided by the number of images at 70-75; args.py add_test_args: batch_size 1
        # ("Don't change this one"), so each value is one image's: per-image means throughout.
        aggregate=_same("per_image"),
        crop=None,                        # test.py:48-58: the whole map
        # test.py:48-49: the count is the finite ground truth (getNanMask, 86-88), and no range
        # test: 0 counts (the paper's §5.1 says "nonzero"; the engine's mask drops zeros)
        min_depth=0.0, min_inclusive=True, max_depth=None, max_inclusive=True,
        clamp=None,                       # test.py:44-47: y_pred used as is ("Maybe clamp ... TODO")
        nan_prediction=None,              # a NaN prediction enters the sums (53-54): NaN
        delta_inclusive=False,            # test.py:56-58: `< 1.25`, `< 1.25**2`, `< 1.25**3`
        rel_denominator="target",         # test.py:54: / y_batch
        log10_nonfinite="zero",           # test.py:55: removeNans (80-84) zeroes NaN/inf log10s
        flip=False,
        source="Freeman & Tilney-Volk, thatcherfreeman/CS231A-FinalProject test.py@387383e test_model",
    ),
    # Hu et al. 2019, JunjH/Revisiting_Single_Depth_Estimation test.py @79f2235, util.py @6c84206:
    "hu": Protocol(
        "hu",
        # test.py:16 batch size 1; util.py:82-99 addErrors/averageErrors average each image's
        # MSE, REL, LG10, DELTA over images; test.py:79 RMSE = sqrt(mean MSE).
        aggregate={"rms": "per_image_mse", "rel": "per_image", "log10": "per_image",
                   "delta1": "per_image", "delta2": "per_image", "delta3": "per_image"},
        crop=None,                        # test.py:43-50: the whole upsampled map
        # util.py:25-35 setNanToZero/nValid: only NaN ground truth is left out (0 counts)
        min_depth=0.0, min_inclusive=True, max_depth=None, max_inclusive=True,
        clamp=None,                       # util.py:45: the network output as is
        nan_prediction=None,              # util.py:45-69: a NaN output gives NaN errors
        delta_inclusive=True,             # util.py:64-69: torch.le(maxRatio, 1.25 ** k)
        rel_denominator="target",         # util.py:51: diffMatrix / _target
        log10_nonfinite="propagate",      # util.py:7-8, 55: lg10 = log(x) / log(10), no masking
        flip=False,
        source="Hu et al. 2019, JunjH/Revisiting_Single_Depth_Estimation test.py@79f2235 util.py@6c84206",
    ),
    # Lee et al., cleinc/bts utils/eval_with_pngs.py @118a9da (the NYU evaluation of its README:
    # --min_depth_eval 1e-3 --max_depth_eval 10 --eigen_crop) and pytorch/bts_eval.py @094fe24:
    "bts": Protocol(
        "bts",
        # eval_with_pngs.py:162-170, 209: one value per image; 213-215: d1.mean(), rms.mean()
        # over images (RMS = mean per-image RMSE, compute_errors 56-57)
        aggregate=_same("per_image"),
        crop="eigen",                     # eval_with_pngs.py:205: eval_mask[45:471, 41:601]
        # eval_with_pngs.py:184: gt_depth > min_depth_eval and gt_depth < max_depth_eval
        min_depth=1e-3, min_inclusive=False, max_depth=10.0, max_inclusive=False,
        # eval_with_pngs.py:177-179: pred < min -> min, pred > max -> max, inf -> max
        clamp=(1e-3, 10.0),
        nan_prediction=1e-3,              # bts_eval.py:273: pred[isnan] = min_depth_eval
        delta_inclusive=False,            # eval_with_pngs.py:52-54: thresh < 1.25 ** k
        rel_denominator="target",         # eval_with_pngs.py:62: np.abs(gt - pred) / gt
        log10_nonfinite="propagate",      # eval_with_pngs.py:68: clamped, so always finite
        flip=False,
        source="Lee et al. BTS, cleinc/bts utils/eval_with_pngs.py@118a9da, pytorch/bts_eval.py@094fe24",
    ),
    # Alhashim & Wonka, ialhashim/DenseDepth utils.py @5433d3e (evaluate, called by evaluate.py):
    "densedepth": Protocol(
        "densedepth",
        # utils.py:135-138: all test predictions stacked, compute_errors once over every pixel
        aggregate=_same("pooled"),
        crop="densedepth",                # utils.py:126: crop[0]:crop[1]+1, crop[2]:crop[3]+1
        # utils.py:96-105: no ground-truth test at all
        min_depth=0.0, min_inclusive=True, max_depth=None, max_inclusive=True,
        # utils.py:14, 120: clip(1000 / output, 10, 1000) / 1000 * 10 -> [0.1, 10] m
        clamp=(0.1, 10.0),
        nan_prediction=None,              # np.clip keeps NaN
        delta_inclusive=False,            # utils.py:98-100: thresh < 1.25 ** k
        # utils.py:138 calls compute_errors(predictions, testSetDepths) against its signature
        # compute_errors(gt, pred) (96): abs_rel at 101 divides by the prediction
        rel_denominator="prediction",
        log10_nonfinite="propagate",      # utils.py:104
        flip=True,                        # utils.py:123, 132: mean with the mirrored prediction
        source="Alhashim & Wonka DenseDepth, ialhashim/DenseDepth utils.py@5433d3e evaluate",
    ),
}
# Not reproduced: Hu et al. evaluate at their loader's reduced size and count an image with no
# valid pixel as 0 error (util.py:44: errors stay 0, test.py:49 still counts the image; here such
# images are left out); BTS's eval_with_pngs reads predictions quantised to millimetres (PNG /
# 1000); DenseDepth clips before the bilinear upscale and the flip average (here the clamp
# follows the average; equal whenever both predictions lie inside [0.1, 10] m).


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]
