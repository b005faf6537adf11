// One-pass depth metric sums (fastmde/reference/depth_metrics.py is the spec): per image, over
// valid pixels, [n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ(ŷ-y)²/y, Σ|log10 ŷ - log10 y|, Σe², Σe, Σ[δ<1.25],
// Σ[δ<1.25²], Σ[δ<1.25³]] with e = ln ŷ - ln y, then the counts of considered pixels below /
// above the valid range and of valid pixels whose prediction <= 0 is a δ1 hit, in float64.
//
// Speed: the tile loop is one `omp simd` loop the compiler vectorises (8 doubles per AVX-512
// register), whatever the protocol. The rules that change what the loop computes are template
// parameters, picked once per call from the 8 instantiations (mask or not; REL and SqRel over ŷ
// or y; non-finite logarithms as 0 or not); the others are constants of the loop: inclusive
// bounds become strict comparisons against the neighbouring double, the NaN value and the
// clamp are selects. Every value is computed on every lane and then selected (no control flow
// in the loop body), with two divisions per pixel (d / y and y / d give δ, REL and SqRel).
// Work is split into row tiles of one image; each tile's sums are kept and added per image in
// tile order, so the result does not depend on the thread count.
//
// Floating-point operations never trap here (no FP exceptions are enabled): telling gcc so lets
// it if-convert the selects between values that may be NaN or inf, without which it keeps the
// scalar loop (no other effect on the values). Before the includes: gcc applies it to the
// functions defined after it, and the inlined helpers of simd_math.h must agree. Check: every
// metric_tile instantiation of `objdump -dC` of the object holds `vdivpd ... zmm` (AVX-512).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

constexpr int64_t kMetricTileRows = 16;
constexpr int kNumSums = 13;
using MetricSums = std::array<double, kNumSums>;

// The run-time rules as the loop reads them: every test one strict comparison.
struct LoopRules {
  double lo, hi;                  // valid: lo < y < hi
  double pred_min, pred_max;      // clamp (±inf: none)
  double nan_prediction;          // what a NaN prediction becomes (NaN: stays)
  double t1, t2, t3;              // δ hit: delta < t_k
};

// A value as double. float16 goes through the branch-free bit conversion of the FP16 library
// (exact for every half, subnormals, inf and NaN included) instead of c10::Half's scalar F16C
// call, which keeps gcc from vectorising the loop.
template <typename scalar_t>
__attribute__((always_inline)) inline double as_double(scalar_t v) {
  return static_cast<double>(v);
}

template <>
__attribute__((always_inline)) inline double as_double(c10::Half v) {
  const std::uint32_t w = static_cast<std::uint32_t>(v.x) << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;
  const float normalized = __builtin_bit_cast(float, (two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = __builtin_bit_cast(float, (two_w >> 17) | (126u << 23)) - 0.5f;
  const std::uint32_t bits = two_w < (1u << 27) ? __builtin_bit_cast(std::uint32_t, denormalized)
                                                : __builtin_bit_cast(std::uint32_t, normalized);
  return static_cast<double>(__builtin_bit_cast(float, sign | bits));
}

template <typename scalar_t, bool MASKED, bool REL_BY_PREDICTION, bool LOG_NONFINITE_ZERO>
MetricSums metric_tile(const scalar_t* pred, const scalar_t* target, const bool* mask, int64_t W, int64_t r0,
                       int64_t r1, int64_t left, int64_t right, const LoopRules& R) {
  constexpr double kInvLn10 = 0.43429448190325182765;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  const double lo = R.lo, hi = R.hi, pred_min = R.pred_min, pred_max = R.pred_max;
  const double nan_prediction = R.nan_prediction, t1 = R.t1, t2 = R.t2, t3 = R.t3;
  double n = 0, sq = 0, rel = 0, sq_rel = 0, lg = 0, e2 = 0, e1 = 0, d1 = 0, d2 = 0, d3 = 0;
  double below = 0, above = 0, nonpositive = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const scalar_t* p = pred + i * W;
    const scalar_t* t = target + i * W;
    const unsigned char* m = MASKED ? reinterpret_cast<const unsigned char*>(mask + i * W) : nullptr;
#pragma omp simd reduction(+ : n, sq, rel, sq_rel, lg, e2, e1, d1, d2, d3, below, above, nonpositive)
    for (int64_t q = left; q < right; ++q) {
      const double y0 = as_double(t[q]);
      // considered: finite ground truth under the mask; valid: also inside the range
      // (the mask read as bytes compared with 0: gcc 12 does not vectorise the bool load in a select)
      const bool considered = std::isfinite(y0) & (MASKED ? m[q] != 0 : true);
      const bool above_min = y0 > lo;
      const bool below_max = y0 < hi;
      const bool valid = considered & above_min & below_max;
      below += (considered & !above_min & (y0 > 0)) ? 1.0 : 0.0;
      above += (considered & !below_max) ? 1.0 : 0.0;
      const double y = valid ? y0 : 1.0;
      double d = as_double(p[q]);
      d = d != d ? nan_prediction : d;
      d = std::min(std::max(d, pred_min), pred_max);  // (a < b ? b : a): NaN stays NaN
      const double diff = d - y;
      const double ratio = d / y;     // ŷ / y
      const double inverse = y / d;   // y / ŷ
      const double delta = std::max(ratio, inverse);
      // (ŷ-y) / den from the two quotients: (ŷ-y)/y = ŷ/y - 1, (ŷ-y)/ŷ = 1 - y/ŷ (NaN for ŷ = ±inf,
      // as inf/inf); then |ŷ-y| / den (over ŷ it keeps ŷ's sign, as the formula) and (ŷ-y)² / den
      double relative, abs_relative;
      if constexpr (REL_BY_PREDICTION) {
        relative = std::abs(d) == kInf ? kNaN : 1.0 - inverse;
        abs_relative = std::copysign(std::abs(relative), d);
      } else {
        relative = ratio - 1.0;
        abs_relative = std::abs(relative);
      }
      double e;  // ln ŷ - ln y
      if constexpr (LOG_NONFINITE_ZERO) {
        const double ld = log_approx(d), ly = log_approx(y);  // then selected: finite logarithms only
        e = (((d > 0) & (d < kInf)) ? ld : 0.0) - (((y > 0) & (y < kInf)) ? ly : 0.0);
      } else if constexpr (std::is_same_v<scalar_t, double>) {
        // float64 input: ŷ/y itself can leave float64's range (5e-324 m against 2 m, 2 m against
        // a 1e-310 m ground truth), so two logarithms, as the reference (ln 0 = -inf, ln of a
        // negative or NaN is NaN); every narrower input keeps its ratio within range
        const double ld = d > 0 ? log_approx(d) : (d == 0 ? -kInf : kNaN);
        const double ly = y > 0 ? log_approx(y) : (y == 0 ? -kInf : kNaN);
        e = ld - ly;
      } else {
        // one logarithm: ln(ŷ / y); ln 0 = -inf, ln of a negative or NaN is NaN
        e = ratio > 0 ? log_approx(ratio) : (ratio == 0 ? -kInf : kNaN);
      }
      const bool h1 = delta < t1;
      n += valid ? 1.0 : 0.0;
      sq += valid ? diff * diff : 0.0;
      rel += valid ? abs_relative : 0.0;
      sq_rel += valid ? diff * relative : 0.0;
      lg += valid ? std::abs(e) * kInvLn10 : 0.0;
      e2 += valid ? e * e : 0.0;
      e1 += valid ? e : 0.0;
      d1 += (valid & h1) ? 1.0 : 0.0;
      d2 += (valid & (delta < t2)) ? 1.0 : 0.0;
      d3 += (valid & (delta < t3)) ? 1.0 : 0.0;
      nonpositive += (valid & (d <= 0) & (delta < t1)) ? 1.0 : 0.0;  // (operand order: gcc 12 vectorises this one)
    }
  }
  return {n, sq, rel, sq_rel, lg, e2, e1, d1, d2, d3, below, above, nonpositive};
}

template <typename scalar_t>
using MetricTile = MetricSums (*)(const scalar_t*, const scalar_t*, const bool*, int64_t, int64_t, int64_t,
                                  int64_t, int64_t, const LoopRules&);

// The instantiation for a call's rules, chosen once per call.
template <typename scalar_t>
MetricTile<scalar_t> pick_metric_tile(bool masked, bool rel_by_prediction, bool log_nonfinite_zero) {
  static constexpr MetricTile<scalar_t> tiles[8] = {
      metric_tile<scalar_t, false, false, false>, metric_tile<scalar_t, false, false, true>,
      metric_tile<scalar_t, false, true, false>,  metric_tile<scalar_t, false, true, true>,
      metric_tile<scalar_t, true, false, false>,  metric_tile<scalar_t, true, false, true>,
      metric_tile<scalar_t, true, true, false>,   metric_tile<scalar_t, true, true, true>,
  };
  return tiles[(masked ? 4 : 0) + (rel_by_prediction ? 2 : 0) + (log_nonfinite_zero ? 1 : 0)];
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
  TORCH_CHECK(at::isFloatingType(pred_in.scalar_type()) && at::isFloatingType(target_in.scalar_type()),
              "depth_metric_sums: pred and target must be floating point, got ", pred_in.scalar_type(), " and ",
              target_in.scalar_type());
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
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // Inclusive bounds become strict ones against the neighbouring double (y >= lo  <=>  y > the
  // double below lo; x <= t  <=>  x < the double above t).
  const auto strict_above = [&](double t, bool inclusive) { return inclusive ? std::nextafter(t, kInf) : t; };
  const LoopRules rules{min_inclusive ? std::nextafter(min_depth, -kInf) : min_depth,
                        strict_above(max_depth, max_inclusive),
                        pred_min,
                        pred_max,
                        nan_prediction,
                        strict_above(1.25, delta_inclusive),
                        strict_above(1.25 * 1.25, delta_inclusive),
                        strict_above(1.25 * 1.25 * 1.25, delta_inclusive)};
  // Prediction and ground truth in one dtype that holds both exactly (a bfloat16 prediction
  // beside a float32 ground truth reads both as float32: the ground truth is never rounded).
  const auto common = at::promote_types(pred_in.scalar_type(), target_in.scalar_type());
  const at::Tensor pred = pred_in.to(common).contiguous();
  const at::Tensor target = target_in.to(common).contiguous();
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
  std::vector<MetricSums> sums(B * tiles_per_image);
  const bool* mask_ptr = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, common, "depth_metric_sums", [&] {
    const scalar_t* p = pred.data_ptr<scalar_t>();
    const scalar_t* t = target.data_ptr<scalar_t>();
    const MetricTile<scalar_t> tile_sums =
        pick_metric_tile<scalar_t>(mask_ptr != nullptr, rel_by_prediction, log10_nonfinite_zero);
    at::parallel_for(0, B * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t b = tile / tiles_per_image;
        const int64_t r0 = top + (tile % tiles_per_image) * kMetricTileRows;
        const int64_t r1 = std::min(bottom, r0 + kMetricTileRows);
        const int64_t off = b * H * W;
        sums[tile] = tile_sums(p + off, t + off, mask_ptr ? mask_ptr + off : nullptr, W, r0, r1, left, right, rules);
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
        "Per-image metric sums (B, 13) float64: n, sq_err, abs_rel, sq_rel, log10, log_sq, log_sum, delta1..3, "
        "below_range, above_range, nonpositive_hits",
        pybind11::arg("pred"), pybind11::arg("target"), pybind11::arg("mask"), pybind11::arg("min_depth"),
        pybind11::arg("max_depth"), pybind11::arg("crop"), pybind11::arg("min_inclusive"),
        pybind11::arg("max_inclusive"), pybind11::arg("pred_min"), pybind11::arg("pred_max"),
        pybind11::arg("nan_prediction"), pybind11::arg("delta_inclusive"), pybind11::arg("rel_by_prediction"),
        pybind11::arg("log10_nonfinite_zero"));
}

}  // namespace fastmde
