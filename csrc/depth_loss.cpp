// Fused depth loss (fastmde/reference/depth_loss.py is the spec): one pass over row tiles of
// prediction and ground truth computes the blurred ground truth, both Sobel gradients, the
// normals, the three loss terms and d total / d pred (through the Sobel adjoint) together.
//
// A tile of rows [r0, r1) of one image needs pred and the (blurred) ground truth on rows
// [r0-2, r1+2) (Sobel of rows r0-1..r1, whose derivatives the adjoint spreads back onto the
// tile), so the 2-row halo is recomputed by neighbouring tiles instead of being stored.
// Loss sums: per tile in double, reduced in tile order, so the value does not depend on the
// thread count. N (valid pixels of the batch) comes from a cheap counting pre-pass.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

constexpr int kTileRows = 32;
constexpr int kBlurRadius = 3;

inline int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i >= n ? period - i : i;
}

// 1-D Gaussian weights as the reference builds them (float32 values, normalised in float32).
std::array<float, 7> gaussian_weights() {
  std::array<float, 7> w{};
  float sum = 0.0f;
  for (int i = 0; i < 7; ++i) {
    const double d = i - kBlurRadius;
    w[i] = static_cast<float>(std::exp(-(d * d) / (2.0 * 1.4 * 1.4)));
  }
  for (int i = 0; i < 7; ++i) sum += w[i];
  for (int i = 0; i < 7; ++i) w[i] /= sum;
  return w;
}

struct LossOptions {
  bool log_depth, gradient, normal, blur;
  double alpha, w0, w1, w2;
};

template <typename scalar_t, typename T>
struct LossKernel {
  const scalar_t* pred;
  const scalar_t* target;
  const bool* mask;  // may be null
  scalar_t* grad;
  int64_t B, H, W;
  LossOptions opt;
  T inv_n;
  std::array<T, 7> gw;

  T load_target(int64_t b, int64_t i, int64_t q) const {
    const T v = static_cast<T>(target[(b * H + i) * W + q]);
    return std::isfinite(v) ? v : T(0);
  }

  // Row i of the sanitised ground truth, blurred when asked, into out[1..W] (out[0], out[W+1] = 0).
  void ground_truth_row(int64_t b, int64_t i, T* out, T* tmp) const {
    out[0] = out[W + 1] = T(0);
    if (!opt.blur) {
      const scalar_t* src = target + (b * H + i) * W;
      for (int64_t q = 0; q < W; ++q) {
        const T v = static_cast<T>(src[q]);
        out[q + 1] = std::isfinite(v) ? v : T(0);
      }
      return;
    }
    // vertical pass into tmp (sanitising each source row on the fly), then horizontal
    for (int64_t q = 0; q < W; ++q) tmp[q] = T(0);
    for (int k = 0; k < 7; ++k) {
      const int64_t src_row = reflect101(i + k - kBlurRadius, H);
      const scalar_t* src = target + (b * H + src_row) * W;
      const T wk = gw[k];
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) {
        const T v = static_cast<T>(src[q]);
        tmp[q] += wk * (std::isfinite(v) ? v : T(0));
      }
    }
    auto border = [&](int64_t q) {
      T s = T(0);
      for (int k = 0; k < 7; ++k) s += gw[k] * tmp[reflect101(q + k - kBlurRadius, W)];
      out[q + 1] = s;
    };
    const int64_t lo = std::min<int64_t>(kBlurRadius, W);
    const int64_t hi = std::max<int64_t>(lo, W - kBlurRadius);
    for (int64_t q = 0; q < lo; ++q) border(q);
#pragma omp simd
    for (int64_t q = lo; q < hi; ++q) {
      T s = T(0);
      for (int k = 0; k < 7; ++k) s += gw[k] * tmp[q + k - kBlurRadius];
      out[q + 1] = s;
    }
    for (int64_t q = hi; q < W; ++q) border(q);
  }

  bool is_valid(int64_t b, int64_t i, int64_t q) const {
    const int64_t idx = (b * H + i) * W + q;
    return std::isfinite(static_cast<T>(target[idx])) && (mask == nullptr || mask[idx]);
  }

  // Sums (depth, gradient, normal) of one tile; writes grad on rows [r0, r1).
  std::array<double, 3> tile(int64_t b, int64_t r0, int64_t r1) const {
    const int64_t Wp = W + 2;
    const bool sobel = opt.gradient || opt.normal;
    const int64_t rows = r1 - r0;
    // rows [r0-2, r1+2) of pred and ground truth, zero-padded by one column each side
    std::vector<T> dbuf, ybuf, tmp, dpx, dpy, mrow(W);
    if (sobel) {
      dbuf.assign((rows + 4) * Wp, T(0));
      ybuf.assign((rows + 4) * Wp, T(0));
      tmp.resize(W);
      dpx.assign((rows + 2) * Wp, T(0));  // rows [r0-1, r1+1)
      dpy.assign((rows + 2) * Wp, T(0));
      for (int64_t j = std::max<int64_t>(0, r0 - 2); j < std::min<int64_t>(H, r1 + 2); ++j) {
        T* drow = dbuf.data() + (j - r0 + 2) * Wp;
        const scalar_t* src = pred + (b * H + j) * W;
        for (int64_t q = 0; q < W; ++q) drow[q + 1] = static_cast<T>(src[q]);
        ground_truth_row(b, j, ybuf.data() + (j - r0 + 2) * Wp, tmp.data());
      }
    }
    const T alpha = static_cast<T>(opt.alpha);
    const T w0 = static_cast<T>(opt.w0), w1 = static_cast<T>(opt.w1), w2 = static_cast<T>(opt.w2);
    const T inv_n_ = inv_n;
    double s_depth = 0.0, s_grad = 0.0, s_norm = 0.0;

    if (sobel) {
      for (int64_t j = std::max<int64_t>(0, r0 - 1); j < std::min<int64_t>(H, r1 + 1); ++j) {
        const bool own = j >= r0 && j < r1;
        const int64_t jj = j - r0 + 2;
        const T* da = dbuf.data() + (jj - 1) * Wp + 1;
        const T* db = dbuf.data() + jj * Wp + 1;
        const T* dc = dbuf.data() + (jj + 1) * Wp + 1;
        const T* ya = ybuf.data() + (jj - 1) * Wp + 1;
        const T* yb = ybuf.data() + jj * Wp + 1;
        const T* yc = ybuf.data() + (jj + 1) * Wp + 1;
        T* ox = dpx.data() + (j - r0 + 1) * Wp + 1;
        T* oy = dpy.data() + (j - r0 + 1) * Wp + 1;
        T* m = mrow.data();
        for (int64_t q = 0; q < W; ++q) m[q] = is_valid(b, j, q) ? T(1) : T(0);
        const bool grad_on = opt.gradient, normal_on = opt.normal;
        T sg = T(0), sn = T(0);
#pragma omp simd reduction(+ : sg, sn)
        for (int64_t q = 0; q < W; ++q) {
          const T px = (da[q - 1] + 2 * db[q - 1] + dc[q - 1]) - (da[q + 1] + 2 * db[q + 1] + dc[q + 1]);
          const T py = (da[q - 1] + 2 * da[q] + da[q + 1]) - (dc[q - 1] + 2 * dc[q] + dc[q + 1]);
          const T gx = (ya[q - 1] + 2 * yb[q - 1] + yc[q - 1]) - (ya[q + 1] + 2 * yb[q + 1] + yc[q + 1]);
          const T gy = (ya[q - 1] + 2 * ya[q] + ya[q + 1]) - (yc[q - 1] + 2 * yc[q] + yc[q + 1]);
          const T mq = m[q];
          T ax = T(0), ay = T(0);
          if (grad_on) {
            const T ex = px - gx, ey = py - gy;
            const T aex = std::abs(ex) + alpha, aey = std::abs(ey) + alpha;
            sg += mq * (log_approx(aex) + log_approx(aey));
            ax = w1 * sign_of(ex) / aex;
            ay = w1 * sign_of(ey) / aey;
          }
          if (normal_on) {
            const T np2 = px * px + py * py + T(1);
            const T ng2 = gx * gx + gy * gy + T(1);
            const T inv_pg = T(1) / std::sqrt(np2 * ng2);
            const T c = (px * gx + py * gy + T(1)) * inv_pg;
            sn += mq * std::abs(T(1) - c);
            const T s = -w2 * sign_of(T(1) - c);
            const T c_np2 = c / np2;
            ax += s * (gx * inv_pg - c_np2 * px);
            ay += s * (gy * inv_pg - c_np2 * py);
          }
          const T scale = mq * inv_n_;
          ox[q] = ax * scale;
          oy[q] = ay * scale;
        }
        if (own) {
          s_grad += static_cast<double>(sg);
          s_norm += static_cast<double>(sn);
        }
      }
    }

    // depth term and the gradient of own rows (Sobel adjoint of dpx, dpy)
    for (int64_t i = r0; i < r1; ++i) {
      const scalar_t* prow = pred + (b * H + i) * W;
      const scalar_t* trow = target + (b * H + i) * W;
      const bool* mrow_in = mask ? mask + (b * H + i) * W : nullptr;
      scalar_t* grow = grad + (b * H + i) * W;
      T* gtmp = mrow.data();  // reuse: holds the gradient row in T
      T sd = T(0);
      const bool log_depth = opt.log_depth;
#pragma omp simd reduction(+ : sd)
      for (int64_t q = 0; q < W; ++q) {
        const T y = static_cast<T>(trow[q]);
        const bool fin = std::isfinite(y);
        const T mq = (fin && (mrow_in == nullptr || mrow_in[q])) ? T(1) : T(0);
        const T e = static_cast<T>(prow[q]) - (fin ? y : T(0));
        const T ae = std::abs(e);
        T v, g;
        if (log_depth) {
          v = log_approx(ae + alpha);
          g = sign_of(e) / (ae + alpha);
        } else {
          v = ae;
          g = sign_of(e);
        }
        sd += mq * v;
        gtmp[q] = w0 * mq * g * inv_n_;
      }
      s_depth += static_cast<double>(sd);
      if (sobel) {
        const int64_t k = i - r0 + 1;  // row of i in dpx / dpy
        const T* xa = dpx.data() + (k - 1) * Wp + 1;
        const T* xb = dpx.data() + k * Wp + 1;
        const T* xc = dpx.data() + (k + 1) * Wp + 1;
        const T* ya = dpy.data() + (k - 1) * Wp + 1;
        const T* yc = dpy.data() + (k + 1) * Wp + 1;
#pragma omp simd
        for (int64_t q = 0; q < W; ++q) {
          const T gxa = (xc[q + 1] + 2 * xb[q + 1] + xa[q + 1]) - (xc[q - 1] + 2 * xb[q - 1] + xa[q - 1]);
          const T gya = (yc[q + 1] + 2 * yc[q] + yc[q - 1]) - (ya[q + 1] + 2 * ya[q] + ya[q - 1]);
          gtmp[q] += gxa + gya;
        }
      }
      for (int64_t q = 0; q < W; ++q) grow[q] = static_cast<scalar_t>(gtmp[q]);
    }
    return {s_depth, s_grad, s_norm};
  }
};

std::tuple<at::Tensor, at::Tensor> depth_loss_forward(
    const at::Tensor& pred_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& mask_in,
    const std::string& depth_term, double alpha, bool gradient, bool normal, bool blur,
    const std::vector<double>& weights) {
  TORCH_CHECK(pred_in.device().is_cpu(), "depth_loss_forward: pred must be a CPU tensor");
  TORCH_CHECK(pred_in.dim() == 3, "depth_loss_forward: pred must be (B, H, W), got ", pred_in.sizes());
  TORCH_CHECK(target_in.sizes() == pred_in.sizes(), "depth_loss_forward: target shape ",
              target_in.sizes(), " differs from pred shape ", pred_in.sizes());
  TORCH_CHECK(at::isFloatingType(pred_in.scalar_type()),
              "depth_loss_forward: pred must be floating point, got ", pred_in.scalar_type());
  TORCH_CHECK(depth_term == "log" || depth_term == "l1",
              "depth_loss_forward: depth_term must be 'log' or 'l1', got '", depth_term, "'");
  TORCH_CHECK(weights.size() == 3, "depth_loss_forward: weights must have 3 values, got ", weights.size());
  TORCH_CHECK(alpha > 0.0 && std::isfinite(alpha), "depth_loss_forward: alpha must be positive, got ", alpha);
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.to(pred.scalar_type()).contiguous();
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->sizes() == pred.sizes(), "depth_loss_forward: mask shape ", mask_in->sizes(),
                " differs from pred shape ", pred.sizes());
    mask = (mask_in->scalar_type() == at::kBool ? *mask_in : mask_in->ne(0)).contiguous();
  }
  const int64_t B = pred.size(0), H = pred.size(1), W = pred.size(2);
  const bool is_double = pred.scalar_type() == at::kDouble;
  const auto cdtype = is_double ? at::kDouble : at::kFloat;
  at::Tensor grad = at::empty_like(pred);
  at::Tensor terms = at::zeros({4}, pred.options().dtype(cdtype));
  if (pred.numel() == 0) {
    grad.zero_();
    return {terms, grad};
  }
  const int64_t tiles_per_image = (H + kTileRows - 1) / kTileRows;
  const int64_t ntiles = B * tiles_per_image;
  const bool* mask_ptr = mask.defined() ? mask.data_ptr<bool>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "depth_loss_forward", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* p = pred.data_ptr<scalar_t>();
    const scalar_t* t = target.data_ptr<scalar_t>();
    // N: valid pixels of the batch
    std::vector<int64_t> counts(ntiles, 0);
    at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t b = tile / tiles_per_image, r0 = (tile % tiles_per_image) * kTileRows;
        const int64_t r1 = std::min(H, r0 + kTileRows);
        int64_t c = 0;
        for (int64_t idx = (b * H + r0) * W; idx < (b * H + r1) * W; ++idx)
          c += std::isfinite(static_cast<T>(t[idx])) && (mask_ptr == nullptr || mask_ptr[idx]);
        counts[tile] = c;
      }
    });
    int64_t n = 0;
    for (int64_t c : counts) n += c;
    if (n == 0) {
      grad.zero_();
      return;
    }
    LossKernel<scalar_t, T> kernel;
    kernel.pred = p;
    kernel.target = t;
    kernel.mask = mask_ptr;
    kernel.grad = grad.data_ptr<scalar_t>();
    kernel.B = B;
    kernel.H = H;
    kernel.W = W;
    kernel.opt = LossOptions{depth_term == "log", gradient, normal, blur, alpha,
                             weights[0], weights[1], weights[2]};
    kernel.inv_n = static_cast<T>(1.0 / static_cast<double>(n));
    const auto gw = gaussian_weights();
    for (int k = 0; k < 7; ++k) kernel.gw[k] = static_cast<T>(gw[k]);
    std::vector<std::array<double, 3>> sums(ntiles);
    at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t b = tile / tiles_per_image, r0 = (tile % tiles_per_image) * kTileRows;
        sums[tile] = kernel.tile(b, r0, std::min(H, r0 + kTileRows));
      }
    });
    double s[3] = {0.0, 0.0, 0.0};
    for (const auto& v : sums)
      for (int k = 0; k < 3; ++k) s[k] += v[k];
    const double inv = 1.0 / static_cast<double>(n);
    const double depth = s[0] * inv;
    const double grad_term = gradient ? s[1] * inv : 0.0;
    const double normal_term = normal ? s[2] * inv : 0.0;
    const double total = weights[0] * depth + weights[1] * grad_term + weights[2] * normal_term;
    terms.copy_(at::tensor({depth, grad_term, normal_term, total}, at::kDouble));
  });
  return {terms, grad};
}

}  // namespace

void register_depth_loss(pybind11::module_& m) {
  m.def("depth_loss_forward", &depth_loss_forward,
        "Fused depth loss: (terms [depth, gradient, normal, total], d total / d pred)",
        pybind11::arg("pred"), pybind11::arg("target"), pybind11::arg("mask"),
        pybind11::arg("depth_term"), pybind11::arg("alpha"), pybind11::arg("gradient"),
        pybind11::arg("normal"), pybind11::arg("blur"), pybind11::arg("weights"));
}

}  // namespace fastmde
