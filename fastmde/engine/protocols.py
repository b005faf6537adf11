"""Named evaluation protocols: which pixels count and how per-pixel errors become one number.

Published NYU-Depth-v2 and KITTI numbers are not comparable unless these rules match, and the
projects differ in every one of them. Each protocol below sets every rule from its source's
code, one comparison at a time; the comments cite the file and line (line numbers of the stored
copy at the commit named in ``source``). Every protocol gives the nine metrics of BTS
``compute_errors``; where a source computes fewer, the other metrics follow its aggregation and
its rules. The fields:

``aggregate``
    per metric: ``per_image`` (each image's value averaged over images), ``pooled`` (all valid
    pixels of the set at once) or, for ``rms``, ``per_image_mse`` (sqrt of the mean per-image
    MSE).
``crop``
    ``"eigen"`` (rows 45:471, cols 41:601 of 480x640), ``"densedepth"`` (20:460, 24:616),
    ``"garg"`` / ``"eigen_kitti"`` (fractions of the frame, see ``FRACTION_CROPS``) or None.
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
    REL = mean |ŷ-y|/y and SqRel = mean (ŷ-y)²/y (``"target"``), or over ŷ (``"prediction"``).
``log10_nonfinite``
    ``"zero"``: a non-finite logarithm of either side counts as 0; ``"propagate"``: it stays.
``flip``
    the prediction averaged with that of the mirrored image.
``frame``
    what the maps must be: ``"any"``; ``"kitti_full"`` (whole KITTI frames, about 375x1242, the
    crop taken on them); ``"kitti_kb"`` (the kb-cropped 352x1216 array, the crop taken on it).
    The same Garg fractions select other pixels on the two (on a 375x1242 frame: rows 153:371,
    columns 44:1197; on its 352x1216 kb crop: rows 143:349, columns 43:1172, which are rows
    166:372, columns 56:1185 of the frame), so the numbers differ (NeWCRFs#7):
    :meth:`Protocol.frame_warning` names a mismatch.

Which protocols count a prediction <= 0 as a δ hit (no positive clamp: ``paper``, ``hu``):
``fastmde.depth_metrics`` / ``DepthMetrics.compute`` warn with the share of such pixels.

What the sources do that fastmde does not reproduce (listed per protocol): the resolution
and resampling the source evaluates at, and ground-truth values no depth map holds (negative,
±inf: fastmde never scores non-finite ground truth).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..reference.depth_metrics import KB_CROP_SIZE, METRIC_NAMES


def _same(rule: str) -> dict[str, str]:
    return {name: rule for name in METRIC_NAMES}


FRAMES = ("any", "kitti_full", "kitti_kb")


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
    frame: str = "any"

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
        """A ``DepthMetrics`` with this protocol's rules (its warnings name the protocol)."""
        from ..nn import DepthMetrics

        return DepthMetrics(protocol=self.name, **self.metric_options())

    def frame_warning(self, height: int, width: int) -> str | None:
        """A message when (height, width) maps are not what this protocol scores (a KITTI
        protocol for full frames given kb-cropped 352x1216 arrays, or the other way), else None."""
        kb = (height, width) == KB_CROP_SIZE
        if self.frame == "kitti_full" and kb:
            return (f"protocol {self.name!r} takes its crop on whole KITTI frames (about 375x1242, as BTS "
                    f"eval_with_pngs.py and monodepth2), but these maps are {height}x{width}, the kb crop: the crop "
                    f"then selects other pixels and the numbers are not comparable; use protocol 'kitti_garg_kb' "
                    f"(BTS/AdaBins online evaluation) or evaluate whole frames")
        if self.frame == "kitti_kb" and not kb:
            return (f"protocol {self.name!r} takes the Garg crop on the kb-cropped {KB_CROP_SIZE[0]}x{KB_CROP_SIZE[1]} "
                    f"array (BTS/AdaBins online evaluation), but these maps are {height}x{width}: kb-crop the "
                    f"ground truth (--kb-crop), or use protocol 'kitti_garg' for whole frames")
        return None

    def to_dict(self) -> dict:
        return asdict(self)


# BTS's KITTI evaluation (--min_depth_eval 1e-3 --max_depth_eval 80, the defaults at
# eval_with_pngs.py:43-44), shared by the three KITTI protocols below.
_KITTI_RULES = dict(
    # eval_with_pngs.py:162-170, 209: one value per image; 213-215: the mean over images
    # (BTS bts_main.py online_eval 297-300, 307-309 and AdaBins evaluate.py:137 likewise)
    aggregate=_same("per_image"),
    # eval_with_pngs.py:184: gt_depth > min_depth_eval and gt_depth < max_depth_eval (181-182
    # set inf and NaN ground truth to 0 first: left out)
    min_depth=1e-3, min_inclusive=False, max_depth=80.0, max_inclusive=False,
    # eval_with_pngs.py:177-179: pred < min -> min, pred > max -> max, inf -> max
    clamp=(1e-3, 80.0),
    nan_prediction=1e-3,                  # bts_eval.py:273 (and bts_main.py:278): NaN -> min_depth_eval
    delta_inclusive=False,                # eval_with_pngs.py:52-54: thresh < 1.25 ** k
    rel_denominator="target",             # eval_with_pngs.py:62-63: / gt
    log10_nonfinite="propagate",          # eval_with_pngs.py:59, 65, 68: clamped, so always finite
    flip=False,
)

PROTOCOLS = {
    # fastmde's own convention (the defaults of fastmde.depth_metrics, DESIGN.md §3 "Metrics"):
    # what the trainer validates, tests and picks best.pt with, and the default of `fastmde eval`
    # and `fastmde sweep`. Unlike the paper authors' code it clamps predictions to the range, so
    # an untrained network's negative output cannot count as a δ hit (max(ŷ/y, y/ŷ) < 1.25 holds
    # for any ŷ < 0) and a non-finite log10 is not zeroed; on predictions inside (1e-3, 10] m it
    # gives the paper protocol's numbers.
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
        # ("Don't change this one"), so each value is one image's: per-image means throughout
        # (sq_rel, rmse_log, silog, which it does not compute, likewise).
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
        # MSE, REL, LG10, DELTA over images; test.py:79 RMSE = sqrt(mean MSE); the three
        # metrics it does not compute are per-image means as its others.
        aggregate={**_same("per_image"), "rms": "per_image_mse"},
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
    # all nine metrics of compute_errors (eval_with_pngs.py:50-71).
    "bts": Protocol(
        "bts",
        # eval_with_pngs.py:162-170, 209: one value per image; 213-215: d1.mean(), rms.mean()
        # over images (RMS = mean per-image RMSE, compute_errors 56-57; RMSE-log 59-60, SILog
        # 65-66 per image too)
        aggregate=_same("per_image"),
        crop="eigen",                     # eval_with_pngs.py:205: eval_mask[45:471, 41:601]
        # eval_with_pngs.py:184: gt_depth > min_depth_eval and gt_depth < max_depth_eval
        min_depth=1e-3, min_inclusive=False, max_depth=10.0, max_inclusive=False,
        # eval_with_pngs.py:177-179: pred < min -> min, pred > max -> max, inf -> max
        clamp=(1e-3, 10.0),
        nan_prediction=1e-3,              # bts_eval.py:273: pred[isnan] = min_depth_eval
        delta_inclusive=False,            # eval_with_pngs.py:52-54: thresh < 1.25 ** k
        rel_denominator="target",         # eval_with_pngs.py:62-63: np.abs(gt - pred) / gt, (gt - pred)**2 / gt
        log10_nonfinite="propagate",      # eval_with_pngs.py:59, 65, 68: clamped, so always finite
        flip=False,
        source="Lee et al. BTS, cleinc/bts utils/eval_with_pngs.py@118a9da, pytorch/bts_eval.py@094fe24",
    ),
    # KITTI, Eigen split, Garg crop on the whole frame: BTS utils/eval_with_pngs.py @118a9da
    # --garg_crop (with --do_kb_crop it pastes a kb-cropped prediction into the full frame,
    # 186-192, and crops the full-frame ground truth) and pytorch/bts_eval.py @094fe24 (262-293);
    # monodepth2 evaluate_depth.py evaluate() takes the same crop on the full frame (.astype(int32)).
    "kitti_garg": Protocol(
        "kitti_garg",
        # eval_with_pngs.py:195, 199: int(0.40810811 * gt_height):int(0.99189189 * gt_height),
        # int(0.03594771 * gt_width):int(0.96405229 * gt_width) of the full-frame ground truth
        crop="garg",
        frame="kitti_full",
        source="Lee et al. BTS, cleinc/bts utils/eval_with_pngs.py@118a9da --garg_crop, pytorch/bts_eval.py@094fe24",
        **_KITTI_RULES,
    ),
    # KITTI, Eigen crop on the whole frame: the same sources with --eigen_crop --dataset kitti.
    "kitti_eigen": Protocol(
        "kitti_eigen",
        # eval_with_pngs.py:203: int(0.3324324 * gt_height):int(0.91351351 * gt_height),
        # int(0.0359477 * gt_width):int(0.96405229 * gt_width) (bts_eval.py:286 likewise)
        crop="eigen_kitti",
        frame="kitti_full",
        source="Lee et al. BTS, cleinc/bts utils/eval_with_pngs.py@118a9da --eigen_crop, pytorch/bts_eval.py@094fe24",
        **_KITTI_RULES,
    ),
    # KITTI, Garg crop on the kb-cropped array: BTS's online evaluation during training, BTS
    # pytorch/bts_main.py @9f02617 online_eval (250-309) with --do_kb_crop --garg_crop: its loader
    # kb-crops the ground truth to 352x1216 (pytorch/bts_dataloader.py @29d6a32 168-175), so
    # online_eval's margins are 0 (267-273) and the crop fractions apply to the 352x1216 array
    # (283, 287). AdaBins evaluate.py @3db726c (119-125, on its copy of that loader) and the
    # projects built on them (NeWCRFs, ZoeDepth) evaluate the same way.
    "kitti_garg_kb": Protocol(
        "kitti_garg_kb",
        crop="garg",
        frame="kitti_kb",
        source="Lee et al. BTS, cleinc/bts pytorch/bts_main.py@9f02617 online_eval with --do_kb_crop --garg_crop",
        # bts_main.py:275-278: the same clamp and NaN rule; 280: the same range test; 297-300,
        # 307-309: per-image values summed and divided by the image count
        **_KITTI_RULES,
    ),
    # Alhashim & Wonka, ialhashim/DenseDepth utils.py @5433d3e (evaluate, called by evaluate.py):
    "densedepth": Protocol(
        "densedepth",
        # utils.py:135-138: all test predictions stacked, compute_errors once over every pixel
        # (sq_rel, rmse_log, silog, which it does not compute, pooled likewise)
        aggregate=_same("pooled"),
        crop="densedepth",                # utils.py:126: crop[0]:crop[1]+1, crop[2]:crop[3]+1
        # utils.py:96-105: no ground-truth test at all
        min_depth=0.0, min_inclusive=True, max_depth=None, max_inclusive=True,
        # utils.py:14, 120: clip(1000 / output, 10, 1000) / 1000 * 10 -> [0.1, 10] m
        clamp=(0.1, 10.0),
        nan_prediction=None,              # np.clip keeps NaN
        delta_inclusive=False,            # utils.py:98-100: thresh < 1.25 ** k
        # utils.py:138 calls compute_errors(predictions, testSetDepths) against its signature
        # compute_errors(gt, pred) (96): abs_rel at 101 divides by the prediction (SqRel too)
        rel_denominator="prediction",
        log10_nonfinite="propagate",      # utils.py:104
        flip=True,                        # utils.py:123, 132: mean with the mirrored prediction
        source="Alhashim & Wonka DenseDepth, ialhashim/DenseDepth utils.py@5433d3e evaluate",
    ),
}
# Not reproduced: Hu et al. evaluate at their loader's reduced size and count an image with no
# valid pixel as 0 error (util.py:44: errors stay 0, test.py:49 still counts the image; here such
# images are left out); BTS's eval_with_pngs reads predictions quantised to millimetres (NYU,
# PNG / 1000) or 1/256 m (KITTI), and computes compute_errors in float32 (here float64: SILog's
# mean(e²) - mean(e)² is exact here where float32 can round it below 0, giving NaN there);
# BTS/AdaBins give an image with no valid pixel NaN metrics, which make the mean NaN (left out
# here); AdaBins evaluates a bilinear upsampling of its half-resolution output and clips it to the
# model range before the flip average; monodepth2 median-scales monocular predictions;
# DenseDepth clips before the bilinear upscale and the flip average (here the clamp follows the
# average; equal whenever both predictions lie inside [0.1, 10] m).

#: The protocol of ``fastmde eval`` and ``fastmde sweep`` when none is named: fastmde's own,
#: which never counts a prediction <= 0 as a δ hit and gives the paper protocol's numbers on
#: predictions inside the range (the faithful ``paper`` protocol stays available by name).
DEFAULT_PROTOCOL = "fastmde"


def default_protocol(config: dict | None = None) -> str:
    """The protocol that fits a run's configuration (a checkpoint's ``fastmde_config`` or a
    ``TrainConfig``'s fields): a KITTI run (``dataset == "kitti"``) is scored like BTS's online
    evaluation on its kb-cropped frames (``kitti_garg_kb``, the KITTI default) or, with the kb crop
    off, on whole frames (``kitti_garg``); everything else ``DEFAULT_PROTOCOL``."""
    config = config or {}
    if config.get("dataset") == "kitti":
        return "kitti_garg" if config.get("kb_crop") is False else "kitti_garg_kb"
    return DEFAULT_PROTOCOL


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]
