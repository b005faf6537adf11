// One-pass depth metric sums (fastmde/reference/depth_metrics.py is the spec): per image, over
// valid pixels, [n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³]],
// then the counts of considered pixels below / above the valid range, in float64. The rules
// (range bounds inclusive or not, prediction NaN value and clamp, δ by < or <=, REL over y or ŷ,
// non-finite logarithms as 0) are the op's arguments (MetricRules in the reference).
// Work is split into row tiles of one image; each tile's sums are kept and added per image in
// tile order, so the result does not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

constexpr int64_t kMetricTileRows = 16;
constexpr int kNumSums = 9;

struct MetricRules {
  double min_depth, max_depth;
  bool min_inclusive, max_inclusive;
  double pred_min, pred_max, nan_prediction;
  bool delta_inclusive, rel_by_prediction;
};

template <typename scalar_t, bool MASKED, bool LOG10_NONFINITE_ZERO>
std::array<double, kNumSums> metric_tile(const scalar_t* pred, const scalar_t* target, const bool* mask,
                                         int64_t W, int64_t r0, int64_t r1, int64_t left, int64_t right,
                                         const MetricRules& R) {
  constexpr double kInvLn10 = 0.43429448190325182765;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  // Inclusive bounds become strict ones against the neighbouring double (y >= lo  <=>  y > the
  // double below lo; x <= t  <=>  x < the double above t): one comparison per test, no
  // run-time-flag logic in the loop, which gcc would not vectorise.
  const double lo = R.min_inclusive ? std::nextafter(R.min_depth, -kInf) : R.min_depth;
  const double hi = R.max_inclusive ? std::nextafter(R.max_depth, kInf) : R.max_depth;
  const double t1 = R.delta_inclusive ? std::nextafter(1.25, kInf) : 1.25;
  const double t2 = R.delta_inclusive ? std::nextafter(1.25 * 1.25, kInf) : 1.25 * 1.25;
  const double t3 = R.delta_inclusive ? std::nextafter(1.25 * 1.25 * 1.25, kInf) : 1.25 * 1.25 * 1.25;
  const bool rel_by_prediction = R.rel_by_prediction;
  const double pred_min = R.pred_min, pred_max = R.pred_max, nan_prediction = R.nan_prediction;
  double n = 0, sq = 0, rel = 0, lg = 0, d1 = 0, d2 = 0, d3 = 0, below = 0, above = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const scalar_t* p = pred + i * W;
    const scalar_t* t = target + i * W;
    const bool* m = mask ? mask + i * W : nullptr;
#pragma omp simd reduction(+ : n, sq, rel, lg, d1, d2, d3, below, above)
    for (int64_t q = left; q < right; ++q) {
      const double y0 = static_cast<double>(t[q]);
      // considered: finite ground truth under the mask; valid: also inside the range
      const bool in_mask = MASKED ? m[q] : true;  // (m is null when not MASKED)
      const bool considered = std::isfinite(y0) & in_mask;
      const bool above_min = y0 > lo;
      const bool below_max = y0 < hi;
      const bool valid = considered & above_min & below_max;
      below += (considered & !above_min & (y0 > 0)) ? 1.0 : 0.0;
      above += (considered & !below_max) ? 1.0 : 0.0;
      const double y = valid ? y0 : 1.0;
      double d = static_cast<double>(p[q]);
      d = d != d ? nan_prediction : d;
      d = d < pred_min ? pred_min : d;  // comparisons keep NaN
      d = d > pred_max ? pred_max : d;
      const double diff = d - y;
      const double ratio = d / y;
      const double delta = std::max(ratio, y / d);
      // Every value is computed on every lane and then selected, with & and | instead of the
      // short-circuit && and || (control flow), so the loop stays vectorised whatever the rules.
      double log_err;
      if constexpr (LOG10_NONFINITE_ZERO) {
        const double ld = log_approx(d), ly = log_approx(y);
        log_err = std::abs((((d > 0) & (d < kInf)) ? ld : 0.0) - (((y > 0) & (y < kInf)) ? ly : 0.0)) * kInvLn10;
      } else {
        // |log10 d - log10 y| = |ln(d / y)| / ln 10; ln 0 = -inf, ln of a negative or NaN is NaN
        const double lr = std::abs(log_approx(ratio)) * kInvLn10;
        log_err = ratio > 0 ? lr : (ratio == 0 ? kInf : kNaN);
      }
      const bool h1 = delta < t1;
      const bool h2 = delta < t2;
      const bool h3 = delta < t3;
      n += valid ? 1.0 : 0.0;
      sq += valid ? diff * diff : 0.0;
      rel += valid ? std::abs(diff) / (rel_by_prediction ? d : y) : 0.0;
      lg += valid ? log_err : 0.0;
      d1 += (valid & h1) ? 1.0 : 0.0;
      d2 += (valid & h2) ? 1.0 : 0.0;
      d3 += (valid & h3) ? 1.0 : 0.0;
    }
  }
  return {n, sq, rel, lg, d1, d2, d3, below, above};
}

template <typename scalar_t>
std::array<double, kNumSums> metric_tile_dispatch(const scalar_t* pred, const scalar_t* target, const bool* mask,
                                                  int64_t W, int64_t r0, int64_t r1, int64_t left, int64_t right,
                                                  const MetricRules& R, bool log10_nonfinite_zero) {
  if (mask) {
    return log10_nonfinite_zero ? metric_tile<scalar_t, true, true>(pred, target, mask, W, r0, r1, left, right, R)
                                : metric_tile<scalar_t, true, false>(pred, target, mask, W, r0, r1, left, right, R);
  }
  return log10_nonfinite_zero ? metric_tile<scalar_t, false, true>(pred, target, nullptr, W, r0, r1, left, right, R)
                              : metric_tile<scalar_t, false, false>(pred, target, nullptr, W, r0, r1, left, right, R);
}

at::Tensor depth_metric_sums(const at::Tensor& pred_in, const at::Tensor& target_in,
                             const c10::optional<at::Tensor>& mask_in, double min_depth,
                             double max_depth, const std::vector<int64_t>& crop, bool min_inclusive,
                             bool max_inclusive, double pred_min, double pred_max, double nan_prediction,
                             bool delta_inclusive, bool rel_by_prediction, bool log10_nonfinite_zero) {
  TORCH_CHECK(pred_in.device().is_cpu(), "depth_metric_sums: pred must be a CPU tensor");
  TORCH_CHECK(pred_in.dim() == 3, "depth_metric_sums: pred must be (B, H, W), got ", pred_in.sizes());
  TORCH_CHECK(target_in.sizes() == pred_in.sizes(), "depth_metric_sums: target shape ",
              target_in.sizes(), " differs from pred shape ", pred_in.sizes());
  TORCH_CHECK(at::isFloatingType(pred_in.scalar_type()),
              "depth_metric_sums: pred must be floating point, got ", pred_in.scalar_type());
  TORCH_CHECK(crop.size() == 4, "depth_metric_sums: crop must be [top, bottom, left, right]");
  const int64_t B = pred_in.size(0), H = pred_in.size(1), W = pred_in.size(2);
  const int64_t top = crop[0], bottom = crop[1], left = crop[2], right = crop[3];
  TORCH_CHECK_VALUE(0 <= top && top <= bottom && bottom <= H && 0 <= left && left <= right && right <= W,
              "depth_metric_sums: crop [", top, ", ", bottom, ", ", left, ", ", right,
              "] does not fit a ", H, "x", W, " image");
  TORCH_CHECK_VALUE(min_depth >= 0.0 && max_depth > min_depth,
              "depth_metric_sums: need 0 <= min_depth < max_depth, got ", min_depth, ", ", max_depth);
  TORCH_CHECK_VALUE(!(pred_min > pred_max), "depth_metric_sums: need pred_min <= pred_max, got ", pred_min, ", ",
              pred_max);
  const MetricRules rules{min_depth, max_depth, min_inclusive, max_inclusive, pred_min,
                          pred_max, nan_prediction, delta_inclusive, rel_by_prediction};
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.to(pred.scalar_type()).contiguous();
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->sizes() == pred.sizes(), "depth_metric_sums: mask shape ", mask_in->sizes(),
                " differs from pred shape ", pred.sizes());
    mask = (mask_in->scalar_type() == at::kBool ? *mask_in : mask_in->ne(0)).contiguous();
  }
  at::Tensor out = at::zeros({B, kNumSums}, pred.options().dtype(at::kDouble));
  const int64_t rows = bottom - top;
  if (B == 0 || rows == 0 || right == left) return out;
  const int64_t tiles_per_image = (rows + kMetricTileRows - 1) / kMetricTileRows;
  std::vector<std::array<double, kNumSums>> sums(B * tiles_per_image);
  const bool* mask_ptr = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "depth_metric_sums", [&] {
    const scalar_t* p = pred.data_ptr<scalar_t>();
    const scalar_t* t = target.data_ptr<scalar_t>();
    at::parallel_for(0, B * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t b = tile / tiles_per_image;
        const int64_t r0 = top + (tile % tiles_per_image) * kMetricTileRows;
        const int64_t r1 = std::min(bottom, r0 + kMetricTileRows);
        const int64_t off = b * H * W;
        sums[tile] = metric_tile_dispatch<scalar_t>(p + off, t + off, mask_ptr ? mask_ptr + off : nullptr, W, r0,
                                                    r1, left, right, rules, log10_nonfinite_zero);
      }
    });
  });
  double* o = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < tiles_per_image; ++k)
      for (int c = 0; c < kNumSums; ++c) o[b * kNumSums + c] += sums[b * tiles_per_image + k][c];
  return out;
}

}  // namespace

void register_depth_metrics(pybind11::module_& m) {
  m.def("depth_metric_sums", &depth_metric_sums,
        "Per-image metric sums (B, 9) float64: n, sq_err, abs_rel, log10, delta1..3, below_range, above_range",
        pybind11::arg("pred"), pybind11::arg("target"), pybind11::arg("mask"), pybind11::arg("min_depth"),
        pybind11::arg("max_depth"), pybind11::arg("crop"), pybind11::arg("min_inclusive"),
        pybind11::arg("max_inclusive"), pybind11::arg("pred_min"), pybind11::arg("pred_max"),
        pybind11::arg("nan_prediction"), pybind11::arg("delta_inclusive"), pybind11::arg("rel_by_prediction"),
        pybind11::arg("log10_nonfinite_zero"));
}

}  // namespace fastmde
