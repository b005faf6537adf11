// Scale-invariant losses (fastmde/reference/scale_invariant_loss.py is the spec): the per-pixel
// passes of the SILog family (silog_sums, silog_backward) and of MiDaS's scale-and-shift-
// invariant loss (ssi_moments, ssi_residual_sums, ssi_backward). The per-image algebra between
// the passes is the op's (fastmde/ops/scale_invariant_loss.py), in float64.
//
// Work is split into tiles of kTileRows rows of one image, run in parallel; each tile returns
// its sums in double (rows accumulate in the compute type T, then add to the tile's doubles),
// and the tiles of an image are added in tile order, so results do not depend on the thread
// count. pred and target are read in their own dtypes (a target of another dtype than pred is
// read in the compute type: the ground truth is never rounded to the prediction's dtype).
//
// ssi's gradient-matching pairs join grid pixels 2^k apart (k = 0..3): a tile reads the
// residual of up to 8 rows beyond its own (recomputed, not shared between tiles).
// The loops select (a ? x : y) between values that may be inf/NaN; with trapping math gcc 12
// does not vectorise such selects (as in csrc/depth_metrics.cpp). Before the includes, so the
// inlined helpers of simd_math.h agree.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

constexpr int64_t kTileRows = 16;
constexpr int kScales = 4;
constexpr int64_t kMaxStep = 1 << (kScales - 1);

// The inputs of a pass, typed: P = pred's scalar type, Y = target's, T = the compute type.
template <typename P, typename Y, typename T>
struct Maps {
  using compute_t = T;
  using pred_t = P;
  const P* pred;
  const Y* target;
  const bool* mask;  // may be null
  int64_t B, H, W;

  const P* pred_row(int64_t b, int64_t i) const { return pred + (b * H + i) * W; }
  const Y* target_row(int64_t b, int64_t i) const { return target + (b * H + i) * W; }
  const bool* mask_row(int64_t b, int64_t i) const { return mask ? mask + (b * H + i) * W : nullptr; }
};

// Validity of one row as 0/1 in T and the ground truth with invalid pixels replaced by
// ``fill``: SILog needs y finite and > 0, ssi y finite; both the mask.
template <bool SILOG, bool MASK, typename Y, typename T>
void valid_row_impl(const Y* y, const bool* mask, int64_t W, T fill, T* v, T* ys) {
#pragma omp simd
  for (int64_t q = 0; q < W; ++q) {
    const T yq = static_cast<T>(y[q]);
    bool ok = std::isfinite(yq);
    if constexpr (SILOG) ok = ok & (yq > T(0));
    if constexpr (MASK) ok = ok & mask[q];
    v[q] = ok ? T(1) : T(0);
    ys[q] = ok ? yq : fill;
  }
}

template <bool SILOG, typename Y, typename T>
void valid_row(const Y* y, const bool* mask, int64_t W, T fill, T* v, T* ys) {
  if (mask == nullptr) valid_row_impl<SILOG, false>(y, mask, W, fill, v, ys);
  else valid_row_impl<SILOG, true>(y, mask, W, fill, v, ys);
}

template <typename P, typename T>
void pred_row(const P* p, int64_t W, T* out) {
#pragma omp simd
  for (int64_t q = 0; q < W; ++q) out[q] = static_cast<T>(p[q]);
}

// The tiles of every image, in parallel; ``tile(b, r0, r1)`` returns N doubles, added per image
// in tile order into a (B, N) float64 tensor.
template <size_t N, typename F>
at::Tensor per_image_sums(int64_t B, int64_t H, const at::TensorOptions& options, F tile) {
  const int64_t tiles = (H + kTileRows - 1) / kTileRows;
  std::vector<std::array<double, N>> parts(B * tiles);
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / tiles, r0 = (k % tiles) * kTileRows;
      parts[k] = tile(b, r0, std::min(H, r0 + kTileRows));
    }
  });
  at::Tensor out = at::zeros({B, static_cast<int64_t>(N)}, options.dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < tiles; ++t)
      for (size_t c = 0; c < N; ++c) o[b * N + c] += parts[b * tiles + t][c];
  return out;
}

// The tiles of every image, in parallel, for passes that write per pixel.
template <typename F>
void per_tile(int64_t B, int64_t H, F tile) {
  const int64_t tiles = (H + kTileRows - 1) / kTileRows;
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / tiles, r0 = (k % tiles) * kTileRows;
      tile(b, r0, std::min(H, r0 + kTileRows));
    }
  });
}

// ------------------------------------------------------------------------------------ SILog

// log of the floored prediction and of the ground truth: d = ln max(p, eps) - ln y (NaN stays).
template <typename T>
inline T log_error(T p, T y, T eps) {
  return log_approx(p < eps ? eps : p) - log_approx(y);
}

template <typename P, typename Y, typename T>
std::array<double, 3> silog_sums_tile(const Maps<P, Y, T>& m, T eps, int64_t b, int64_t r0, int64_t r1) {
  const int64_t W = m.W;
  std::vector<T> p(W), v(W), y(W), e(W);
  double n = 0.0, s1 = 0.0, s2 = 0.0;
  for (int64_t i = r0; i < r1; ++i) {
    pred_row(m.pred_row(b, i), W, p.data());
    valid_row<true>(m.target_row(b, i), m.mask_row(b, i), W, T(1), v.data(), y.data());
    // SILog's square root takes Σd²/n - (Σd/n)², which cancels: float32 row sums of d left 3e-6 of
    // Σd²/n where a prediction at a constant scale of the ground truth has 0 (and hid a real spread
    // under a large mean log offset). So each row is summed centred on its own mean m (two passes
    // over the row's d, kept in e): the float32 sums of d - m round relative to the row's spread
    // (an error in m moves them by n δm² only, where a shift by one pixel's d failed when that
    // pixel was an outlier), and the rows are added back in double:
    // Σd = Σ(d-m) + n m, Σd² = Σ(d-m)² + 2m Σ(d-m) + n m².
    T rn = 0, rs = 0;
#pragma omp simd reduction(+ : rn, rs)
    for (int64_t q = 0; q < W; ++q) {
      const T d = v[q] != T(0) ? log_error(p[q], y[q], eps) : T(0);
      e[q] = d;
      rn += v[q];
      rs += d;
    }
    if (rn == T(0)) continue;
    const T mean = rs / rn;
    T c1 = 0, c2 = 0;
#pragma omp simd reduction(+ : c1, c2)
    for (int64_t q = 0; q < W; ++q) {
      const T c = v[q] != T(0) ? e[q] - mean : T(0);
      c1 += c;
      c2 += c * c;
    }
    const double md = static_cast<double>(mean), nd = static_cast<double>(rn), c1d = static_cast<double>(c1);
    n += nd;
    s1 += c1d + nd * md;
    s2 += static_cast<double>(c2) + 2.0 * md * c1d + nd * md * md;
  }
  return {n, s1, s2};
}

template <typename P, typename Y, typename T>
void silog_backward_tile(const Maps<P, Y, T>& m, T eps, const double* coeffs, P* grad, int64_t b, int64_t r0,
                         int64_t r1) {
  const int64_t W = m.W;
  const T a = static_cast<T>(coeffs[b * 2]), c = static_cast<T>(coeffs[b * 2 + 1]);
  std::vector<T> p(W), v(W), y(W);
  for (int64_t i = r0; i < r1; ++i) {
    pred_row(m.pred_row(b, i), W, p.data());
    valid_row<true>(m.target_row(b, i), m.mask_row(b, i), W, T(1), v.data(), y.data());
    P* out = grad + (b * m.H + i) * W;
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) {
      const T pq = p[q];
      const bool on = v[q] != T(0) && pq >= eps;  // the floor passes no gradient
      const T g = (a * log_error(pq, y[q], eps) + c) / (on ? pq : T(1));
      store_narrow(out, q, on ? g : T(0));
    }
  }
}

// -------------------------------------------------------------------------------------- ssi

// The grid of scale k keeps every 2^k-th column: grid[k][q] = 1 where q % 2^k == 0, else 0. The
// grid loops below run over every column with this factor on the validity, instead of striding
// by 2^k: a strided loop stays scalar (gcc does not vectorise it), a unit-stride one vectorises,
// and columns off the grid add exactly 0.
template <typename T>
std::array<std::vector<T>, kScales> column_grids(int64_t W) {
  std::array<std::vector<T>, kScales> grid;
  for (int k = 0; k < kScales; ++k) {
    grid[k].assign(W, T(0));
    for (int64_t q = 0; q < W; q += int64_t(1) << k) grid[k][q] = T(1);
  }
  return grid;
}

template <typename P, typename Y, typename T>
std::array<double, 8> ssi_moments_tile(const Maps<P, Y, T>& m, int64_t b, int64_t r0, int64_t r1) {
  const int64_t W = m.W;
  std::vector<T> p(W), v(W), y(W);
  const auto grid = column_grids<T>(W);
  std::array<double, 8> s{};
  for (int64_t i = r0; i < r1; ++i) {
    pred_row(m.pred_row(b, i), W, p.data());
    valid_row<false>(m.target_row(b, i), m.mask_row(b, i), W, T(0), v.data(), y.data());
    T n = 0, sp = 0, spp = 0, sy = 0, spy = 0;
#pragma omp simd reduction(+ : n, sp, spp, sy, spy)
    for (int64_t q = 0; q < W; ++q) {
      const T pv = v[q] != T(0) ? p[q] : T(0);  // invalid pixels add exactly 0, whatever p holds
      n += v[q];
      sp += pv;
      spp += pv * pv;
      sy += y[q];
      spy += pv * y[q];
    }
    s[0] += static_cast<double>(n);
    s[1] += static_cast<double>(sp);
    s[2] += static_cast<double>(spp);
    s[3] += static_cast<double>(sy);
    s[4] += static_cast<double>(spy);
    for (int k = 1; k < kScales; ++k) {
      const int64_t step = int64_t(1) << k;
      if (i % step != 0) continue;
      const T* on_grid = grid[k].data();
      T c = 0;
#pragma omp simd reduction(+ : c)
      for (int64_t q = 0; q < W; ++q) c += v[q] * on_grid[q];
      s[4 + k] += static_cast<double>(c);
    }
  }
  return s;
}

// Residual r = s p + t - y (0 where not valid), validity v (0/1) and p of rows [lo, hi) of image
// b, each row padded with kMaxStep columns of v = 0 on both sides, and a row of zeros standing
// for the rows outside the image: a grid neighbour outside the image is simply not valid, so the
// pair loops below need no bounds tests and vectorise (unit stride at scale 0).
template <typename P, typename Y, typename T>
struct ResidualRows {
  int64_t lo, hi, W, H, Wp;
  std::vector<T> r, v, p, zero;

  ResidualRows(const Maps<P, Y, T>& m, int64_t b, int64_t lo_, int64_t hi_, T s, T t)
      : lo(lo_), hi(hi_), W(m.W), H(m.H), Wp(m.W + 2 * kMaxStep), r((hi_ - lo_) * Wp, T(0)), v((hi_ - lo_) * Wp, T(0)),
        p((hi_ - lo_) * Wp, T(0)), zero(Wp, T(0)) {
    std::vector<T> y(W);
    for (int64_t i = lo; i < hi; ++i) {
      T* pr = p.data() + (i - lo) * Wp + kMaxStep;
      T* vr = v.data() + (i - lo) * Wp + kMaxStep;
      T* rr = r.data() + (i - lo) * Wp + kMaxStep;
      pred_row(m.pred_row(b, i), W, pr);
      valid_row<false>(m.target_row(b, i), m.mask_row(b, i), W, T(0), vr, y.data());
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) rr[q] = vr[q] != T(0) ? s * pr[q] + t - y[q] : T(0);
    }
  }
  // Row i (column 0 at the returned pointer); the zero row for i outside the image.
  const T* R(int64_t i) const { return i >= 0 && i < H ? r.data() + (i - lo) * Wp + kMaxStep : zero.data() + kMaxStep; }
  const T* V(int64_t i) const { return i >= 0 && i < H ? v.data() + (i - lo) * Wp + kMaxStep : zero.data() + kMaxStep; }
  const T* Pp(int64_t i) const { return i >= 0 && i < H ? p.data() + (i - lo) * Wp + kMaxStep : zero.data() + kMaxStep; }
};

// One pair (q, q') of grid neighbours: |r_q' - r_q| and sgn(r_q' - r_q) (p_q' - p_q), 0 unless
// both are valid (selects, not products: p may hold anything where not valid).
template <typename T>
inline void pair_sums(T vq, T vn, T rq, T rn, T pq, T pn, T& g, T& qs) {
  const bool both = (vq != T(0)) & (vn != T(0));
  const T dr = rn - rq;
  g += both ? std::abs(dr) : T(0);
  qs += both ? sign_of(dr) * (pn - pq) : T(0);
}

template <typename P, typename Y, typename T>
std::array<double, 11> ssi_residual_tile(const Maps<P, Y, T>& m, const double* st, int64_t b, int64_t r0,
                                         int64_t r1) {
  const int64_t W = m.W;
  const T s = static_cast<T>(st[b * 2]), t = static_cast<T>(st[b * 2 + 1]);
  const ResidualRows<P, Y, T> rows(m, b, r0, std::min(m.H, r1 + kMaxStep), s, t);
  const auto grid = column_grids<T>(W);
  std::array<double, 11> out{};
  for (int64_t i = r0; i < r1; ++i) {
    const T *r = rows.R(i), *v = rows.V(i), *p = rows.Pp(i);
    T r2 = 0, rs = 0, rp = 0;
#pragma omp simd reduction(+ : r2, rs, rp)
    for (int64_t q = 0; q < W; ++q) {
      r2 += r[q] * r[q];  // r is 0 at invalid pixels
      rs += r[q];
      rp += v[q] != T(0) ? r[q] * p[q] : T(0);
    }
    out[0] += static_cast<double>(r2);
    out[1] += static_cast<double>(rs);
    out[2] += static_cast<double>(rp);
    for (int k = 0; k < kScales; ++k) {
      const int64_t step = int64_t(1) << k;
      if (i % step != 0) continue;
      // each pair once, at its left / upper member: the right neighbour and the one below
      const T *rd = rows.R(i + step), *vd = rows.V(i + step), *pd = rows.Pp(i + step);
      const T* on_grid = grid[k].data();
      T g = 0, qs = 0;
#pragma omp simd reduction(+ : g, qs)
      for (int64_t q = 0; q < W; ++q) {
        const T vq = v[q] * on_grid[q];
        pair_sums(vq, v[q + step], r[q], r[q + step], p[q], p[q + step], g, qs);
        pair_sums(vq, vd[q], r[q], rd[q], p[q], pd[q], g, qs);
      }
      out[3 + k] += static_cast<double>(g);
      out[7 + k] += static_cast<double>(qs);
    }
  }
  return out;
}

template <typename P, typename Y, typename T>
void ssi_backward_tile(const Maps<P, Y, T>& m, const double* coeffs, P* grad, int64_t b, int64_t r0, int64_t r1) {
  const int64_t W = m.W, H = m.H;
  const double* c = coeffs + b * 10;
  const T s = static_cast<T>(c[0]), t = static_cast<T>(c[1]), w_data = static_cast<T>(c[2]);
  const T k_y = static_cast<T>(c[7]), k_p = static_cast<T>(c[8]), k_1 = static_cast<T>(c[9]);
  const int64_t lo = std::max<int64_t>(0, r0 - kMaxStep), hi = std::min(H, r1 + kMaxStep);
  const ResidualRows<P, Y, T> rows(m, b, lo, hi, s, t);
  std::vector<T> e(W), y(W), vv(W);
  const auto grid = column_grids<T>(W);
  // d|r_q - r_q'|/d r_q = sgn(r_q - r_q') for a valid neighbour q' (0 otherwise)
  auto pull = [](T rq, T rn, T vn) { return vn != T(0) ? sign_of(rq - rn) : T(0); };
  for (int64_t i = r0; i < r1; ++i) {
    const T *r = rows.R(i), *v = rows.V(i), *p = rows.Pp(i);
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) e[q] = w_data * r[q];
    for (int k = 0; k < kScales; ++k) {
      const int64_t step = int64_t(1) << k;
      if (i % step != 0) continue;
      const T gk = static_cast<T>(c[3 + k]);
      const T *ru = rows.R(i - step), *vu = rows.V(i - step);
      const T *rd = rows.R(i + step), *vd = rows.V(i + step);
      T* ek = e.data();
      const T* on_grid = grid[k].data();
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) {
        const T acc = pull(r[q], r[q - step], v[q - step]) + pull(r[q], r[q + step], v[q + step]) +
                      pull(r[q], ru[q], vu[q]) + pull(r[q], rd[q], vd[q]);
        ek[q] += v[q] * on_grid[q] != T(0) ? gk * acc : T(0);
      }
    }
    valid_row<false>(m.target_row(b, i), m.mask_row(b, i), W, T(0), vv.data(), y.data());
    P* out = grad + (b * H + i) * W;
#pragma omp simd
    for (int64_t q = 0; q < W; ++q)
      store_narrow(out, q, s * e[q] + (v[q] != T(0) ? k_y * y[q] + k_p * p[q] + k_1 : T(0)));
  }
}

// ------------------------------------------------------------------------- entry points

struct Inputs {
  at::Tensor pred, target, mask;
  bool is_double;
};

// Checks the (B, H, W) pair and mask; target stays in its dtype when it is pred's or the
// compute dtype, else it is converted (exactly) to the compute dtype.
Inputs prepare(const char* what, const at::Tensor& pred_in, const at::Tensor& target_in,
               const c10::optional<at::Tensor>& mask_in) {
  TORCH_CHECK(pred_in.device().is_cpu() && target_in.device().is_cpu(), what, ": pred and target must be CPU tensors");
  TORCH_CHECK(pred_in.dim() == 3, what, ": pred must be (B, H, W), got ", pred_in.sizes());
  TORCH_CHECK(target_in.sizes() == pred_in.sizes(), what, ": target shape ", target_in.sizes(),
              " differs from pred shape ", pred_in.sizes());
  TORCH_CHECK(at::isFloatingType(pred_in.scalar_type()) && at::isFloatingType(target_in.scalar_type()), what,
              ": pred and target must be floating point, got ", pred_in.scalar_type(), " and ",
              target_in.scalar_type());
  Inputs in;
  in.is_double = pred_in.scalar_type() == at::kDouble || target_in.scalar_type() == at::kDouble;
  const auto cdtype = in.is_double ? at::kDouble : at::kFloat;
  in.pred = pred_in.contiguous();
  const bool keep = target_in.scalar_type() == pred_in.scalar_type() || target_in.scalar_type() == cdtype;
  in.target = (keep ? target_in : target_in.to(cdtype)).contiguous();
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->sizes() == pred_in.sizes(), what, ": mask shape ", mask_in->sizes(),
                " differs from pred shape ", pred_in.sizes());
    in.mask = (mask_in->scalar_type() == at::kBool ? *mask_in : mask_in->ne(0)).contiguous();
  }
  return in;
}

void check_coeffs(const char* what, const at::Tensor& coeffs, int64_t B, int64_t K) {
  TORCH_CHECK(coeffs.scalar_type() == at::kDouble && coeffs.dim() == 2 && coeffs.size(0) == B &&
                  coeffs.size(1) == K && coeffs.is_contiguous(),
              what, ": coeffs must be a contiguous float64 (", B, ", ", K, ") tensor, got ", coeffs.scalar_type(),
              " ", coeffs.sizes());
}

// Calls f(Maps<P, Y, T>) with P = pred's type, Y = target's (pred's or the compute type).
template <typename F>
void dispatch(const Inputs& in, F f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "scale_invariant_loss", [&] {
    using P = scalar_t;
    const bool* mask = in.mask.defined() ? in.mask.data_ptr<bool>() : nullptr;
    const int64_t B = in.pred.size(0), H = in.pred.size(1), W = in.pred.size(2);
    auto run = [&](auto t_tag, auto y_tag) {
      using T = decltype(t_tag);
      using Y = decltype(y_tag);
      f(Maps<P, Y, T>{in.pred.data_ptr<P>(), in.target.data_ptr<Y>(), mask, B, H, W});
    };
    if (in.is_double) {
      if (in.target.scalar_type() == in.pred.scalar_type()) run(double{}, P{});
      else run(double{}, double{});
    } else {
      if (in.target.scalar_type() == in.pred.scalar_type()) run(float{}, P{});
      else run(float{}, float{});
    }
  });
}

template <typename M>
using compute_of = typename std::decay_t<M>::compute_t;
template <typename M>
using pred_of = typename std::decay_t<M>::pred_t;

at::Tensor silog_sums(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& mask,
                      double eps) {
  const Inputs in = prepare("silog_sums", pred, target, mask);
  at::Tensor out;
  dispatch(in, [&](const auto& m) {
    using T = compute_of<decltype(m)>;
    out = per_image_sums<3>(m.B, m.H, pred.options(), [&](int64_t b, int64_t r0, int64_t r1) {
      return silog_sums_tile(m, static_cast<T>(eps), b, r0, r1);
    });
  });
  return out;
}

at::Tensor silog_backward(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& mask,
                          const at::Tensor& coeffs, double eps) {
  const Inputs in = prepare("silog_backward", pred, target, mask);
  check_coeffs("silog_backward", coeffs, in.pred.size(0), 2);
  at::Tensor grad = at::empty_like(in.pred);
  dispatch(in, [&](const auto& m) {
    using T = compute_of<decltype(m)>;
    using P = pred_of<decltype(m)>;
    P* g = grad.data_ptr<P>();
    const double* c = coeffs.data_ptr<double>();
    per_tile(m.B, m.H, [&](int64_t b, int64_t r0, int64_t r1) {
      silog_backward_tile(m, static_cast<T>(eps), c, g, b, r0, r1);
    });
  });
  return grad;
}

at::Tensor ssi_moments(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& mask) {
  const Inputs in = prepare("ssi_moments", pred, target, mask);
  at::Tensor out;
  dispatch(in, [&](const auto& m) {
    out = per_image_sums<8>(m.B, m.H, pred.options(),
                            [&](int64_t b, int64_t r0, int64_t r1) { return ssi_moments_tile(m, b, r0, r1); });
  });
  return out;
}

at::Tensor ssi_residual_sums(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& mask,
                             const at::Tensor& st) {
  const Inputs in = prepare("ssi_residual_sums", pred, target, mask);
  check_coeffs("ssi_residual_sums", st, in.pred.size(0), 2);
  at::Tensor out;
  const double* c = st.data_ptr<double>();
  dispatch(in, [&](const auto& m) {
    out = per_image_sums<11>(m.B, m.H, pred.options(),
                             [&](int64_t b, int64_t r0, int64_t r1) { return ssi_residual_tile(m, c, b, r0, r1); });
  });
  return out;
}

at::Tensor ssi_backward(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& mask,
                        const at::Tensor& coeffs) {
  const Inputs in = prepare("ssi_backward", pred, target, mask);
  check_coeffs("ssi_backward", coeffs, in.pred.size(0), 10);
  at::Tensor grad = at::empty_like(in.pred);
  dispatch(in, [&](const auto& m) {
    using P = pred_of<decltype(m)>;
    P* g = grad.data_ptr<P>();
    const double* c = coeffs.data_ptr<double>();
    per_tile(m.B, m.H, [&](int64_t b, int64_t r0, int64_t r1) { ssi_backward_tile(m, c, g, b, r0, r1); });
  });
  return grad;
}

}  // namespace

void register_scale_invariant_loss(pybind11::module_& m) {
  using pybind11::arg;
  m.def("silog_sums", &silog_sums, "SILog: per-image float64 (B, 3) [n, sum d, sum d^2], d = ln max(p, eps) - ln y",
        arg("pred"), arg("target"), arg("mask"), arg("eps"));
  m.def("silog_backward", &silog_backward, "SILog: d loss / d pred = m [p >= eps] (a d + b) / p, coeffs (B, 2)",
        arg("pred"), arg("target"), arg("mask"), arg("coeffs"), arg("eps"));
  m.def("ssi_moments", &ssi_moments, "ssi: per-image float64 (B, 8) least-squares sums and grid counts",
        arg("pred"), arg("target"), arg("mask"));
  m.def("ssi_residual_sums", &ssi_residual_sums,
        "ssi: per-image float64 (B, 11) residual sums for the scale and shift st (B, 2)", arg("pred"), arg("target"),
        arg("mask"), arg("st"));
  m.def("ssi_backward", &ssi_backward, "ssi: d loss / d pred from the (B, 10) coefficients", arg("pred"),
        arg("target"), arg("mask"), arg("coeffs"));
}

}  // namespace fastmde
