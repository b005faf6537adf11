// One-pass depth metric sums (fastmde/reference/depth_metrics.py is the spec): per image,
// [n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³]] in float64.
// Work is split into row tiles of one image; each tile's sums are kept and added per image in
// tile order, so the result does not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

constexpr int64_t kMetricTileRows = 16;

template <typename scalar_t, bool MASKED>
std::array<double, 7> metric_tile(const scalar_t* pred, const scalar_t* target, const bool* mask,
                                  int64_t W, int64_t r0, int64_t r1, int64_t left, int64_t right,
                                  double lo, double hi) {
  constexpr double kInvLn10 = 0.43429448190325182765;
  constexpr double t1 = 1.25, t2 = 1.25 * 1.25, t3 = 1.25 * 1.25 * 1.25;
  double n = 0, sq = 0, rel = 0, lg = 0, d1 = 0, d2 = 0, d3 = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const scalar_t* p = pred + i * W;
    const scalar_t* t = target + i * W;
    const bool* m = mask ? mask + i * W : nullptr;
#pragma omp simd reduction(+ : n, sq, rel, lg, d1, d2, d3)
    for (int64_t q = left; q < right; ++q) {
      const double y0 = static_cast<double>(t[q]);
      // y in (lo, hi] also rejects NaN; +inf passes only when hi = inf, so check finiteness
      const bool valid = std::isfinite(y0) && y0 > lo && y0 <= hi && (!MASKED || m[q]);
      const double v = valid ? 1.0 : 0.0;
      const double y = valid ? y0 : 1.0;
      const double d = std::min(std::max(static_cast<double>(p[q]), lo), hi);
      const double diff = d - y;
      const double ratio = d / y;
      const double delta = std::max(ratio, y / d);
      n += v;
      sq += v * diff * diff;
      rel += v * std::abs(diff) / y;
      // |log10 d - log10 y| = |ln(d / y)| / ln 10
      lg += v * std::abs(log_approx(ratio)) * kInvLn10;
      d1 += (valid && delta < t1) ? 1.0 : 0.0;
      d2 += (valid && delta < t2) ? 1.0 : 0.0;
      d3 += (valid && delta < t3) ? 1.0 : 0.0;
    }
  }
  return {n, sq, rel, lg, d1, d2, d3};
}

at::Tensor depth_metric_sums(const at::Tensor& pred_in, const at::Tensor& target_in,
                             const c10::optional<at::Tensor>& mask_in, double min_depth,
                             double max_depth, const std::vector<int64_t>& crop) {
  TORCH_CHECK(pred_in.device().is_cpu(), "depth_metric_sums: pred must be a CPU tensor");
  TORCH_CHECK(pred_in.dim() == 3, "depth_metric_sums: pred must be (B, H, W), got ", pred_in.sizes());
  TORCH_CHECK(target_in.sizes() == pred_in.sizes(), "depth_metric_sums: target shape ",
              target_in.sizes(), " differs from pred shape ", pred_in.sizes());
  TORCH_CHECK(at::isFloatingType(pred_in.scalar_type()),
              "depth_metric_sums: pred must be floating point, got ", pred_in.scalar_type());
  TORCH_CHECK(crop.size() == 4, "depth_metric_sums: crop must be [top, bottom, left, right]");
  const int64_t B = pred_in.size(0), H = pred_in.size(1), W = pred_in.size(2);
  const int64_t top = crop[0], bottom = crop[1], left = crop[2], right = crop[3];
  TORCH_CHECK(0 <= top && top <= bottom && bottom <= H && 0 <= left && left <= right && right <= W,
              "depth_metric_sums: crop [", top, ", ", bottom, ", ", left, ", ", right,
              "] does not fit a ", H, "x", W, " image");
  TORCH_CHECK(min_depth > 0.0 && max_depth > min_depth,
              "depth_metric_sums: need 0 < min_depth < max_depth, got ", min_depth, ", ", max_depth);
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.to(pred.scalar_type()).contiguous();
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->sizes() == pred.sizes(), "depth_metric_sums: mask shape ", mask_in->sizes(),
                " differs from pred shape ", pred.sizes());
    mask = (mask_in->scalar_type() == at::kBool ? *mask_in : mask_in->ne(0)).contiguous();
  }
  at::Tensor out = at::zeros({B, 7}, pred.options().dtype(at::kDouble));
  const int64_t rows = bottom - top;
  if (B == 0 || rows == 0 || right == left) return out;
  const int64_t tiles_per_image = (rows + kMetricTileRows - 1) / kMetricTileRows;
  std::vector<std::array<double, 7>> sums(B * tiles_per_image);
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
        sums[tile] = mask_ptr ? metric_tile<scalar_t, true>(p + off, t + off, mask_ptr + off, W, r0, r1, left,
                                                            right, min_depth, max_depth)
                              : metric_tile<scalar_t, false>(p + off, t + off, nullptr, W, r0, r1, left, right,
                                                             min_depth, max_depth);
      }
    });
  });
  double* o = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < tiles_per_image; ++k)
      for (int c = 0; c < 7; ++c) o[b * 7 + c] += sums[b * tiles_per_image + k][c];
  return out;
}

}  // namespace

void register_depth_metrics(pybind11::module_& m) {
  m.def("depth_metric_sums", &depth_metric_sums,
        "Per-image metric sums (B, 7) float64: n, sq_err, abs_rel, log10, delta1..3",
        pybind11::arg("pred"), pybind11::arg("target"), pybind11::arg("mask"),
        pybind11::arg("min_depth"), pybind11::arg("max_depth"), pybind11::arg("crop"));
}

}  // namespace fastmde
