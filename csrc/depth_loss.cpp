// Fused depth loss (fastmde/reference/depth_loss.py is the spec): one pass over row tiles of
// prediction and ground truth computes the blurred ground truth, both Sobel gradients, the
// normals, the three loss terms, the counts N_d (valid pixels) and N_s (pixels whose whole
// ground-truth stencil is valid) and the unnormalised gradients d (N_d w0 depth) / d pred and
// d (N_s (w1 gradient + w2 normal)) / d pred (through the Sobel adjoint) together, so the counts
// need no pass of their own; one elementwise pass then applies 1/N_d and 1/N_s and leaves the
// gradient of the total, which the op's backward only scales by the incoming gradient.
//
// A tile of rows [r0, r1) of one image needs pred and the (blurred) ground truth on rows
// [r0-2, r1+2) (Sobel of rows r0-1..r1, whose derivatives the adjoint spreads back onto the
// tile), and the validity on rows [r0-1-h, r1+1+h) for the stencil validity of rows r0-1..r1
// (an erosion of the validity by the stencil's half-width h: 1, or 4 with the blur); the halos
// are recomputed by neighbouring tiles instead of being stored.
// Loss sums: per tile in double, reduced in tile order, so the value does not depend on the
// thread count. The counts are taken per tile in the same pass.
// The ground truth keeps its precision: it is read in its own dtype when that is pred's dtype or
// the compute dtype (float32; double for float64 pred), else converted to the compute dtype once;
// a float32 ground truth beside a bfloat16 prediction is never rounded to bfloat16.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
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

// 1-D Gaussian weights as the reference builds them: values in T (float, or double for float64
// input) normalised by ATen's own sum in T (a hand-written sum can round differently in the
// last bit).
template <typename T>
std::array<T, 7> gaussian_weights() {
  std::vector<T> raw(7);
  for (int i = 0; i < 7; ++i) {
    const double d = i - kBlurRadius;
    raw[i] = static_cast<T>(std::exp(-(d * d) / (2.0 * 1.4 * 1.4)));
  }
  const at::Tensor w = at::tensor(raw, c10::CppTypeToScalarType<T>::value);
  const at::Tensor normalised = (w / w.sum()).contiguous();
  std::array<T, 7> out{};
  for (int i = 0; i < 7; ++i) out[i] = normalised.data_ptr<T>()[i];
  return out;
}

struct LossOptions {
  bool log_depth, gradient, normal, blur;
  double alpha, w0, w1, w2;
};

// Validity of one row as 0/1 in T: finite ground truth and mask (two loops, so that neither
// has a branch on the optional mask inside). Returns the row's number of valid pixels (summed
// in T: exact, a row is far below 2^24).
template <typename target_t, typename T>
int64_t validity_row(const target_t* y, const bool* mask, int64_t W, T* m) {
  T n = T(0);
  if (mask == nullptr) {
#pragma omp simd reduction(+ : n)
    for (int64_t q = 0; q < W; ++q) {
      m[q] = std::isfinite(static_cast<T>(y[q])) ? T(1) : T(0);
      n += m[q];
    }
  } else {
#pragma omp simd reduction(+ : n)
    for (int64_t q = 0; q < W; ++q) {
      m[q] = (std::isfinite(static_cast<T>(y[q])) && mask[q]) ? T(1) : T(0);
      n += m[q];
    }
  }
  return static_cast<int64_t>(n);
}

// The number of ones in a row of 0/1 values (summed in T: exact, a row is far below 2^24).
template <typename T>
int64_t row_count(const T* v, int64_t W) {
  T n = T(0);
#pragma omp simd reduction(+ : n)
  for (int64_t q = 0; q < W; ++q) n += v[q];
  return static_cast<int64_t>(n);
}

// Horizontal erosion of one row of 0/1 values: out[q] = min(v[q-h..q+h]) over the columns
// inside the image (``padded`` holds v at [h, h+W) and 1 in the h columns each side).
// (One pass per offset: with the offsets as an inner loop of run-time length gcc keeps it scalar.)
template <typename T>
void erode_row(const T* __restrict padded, T* __restrict out, int64_t W, int h) {
#pragma omp simd
  for (int64_t q = 0; q < W; ++q) out[q] = padded[q];
  for (int k = 1; k <= 2 * h; ++k) {
    const T* shifted = padded + k;
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) out[q] = std::min(out[q], shifted[q]);
  }
}

template <typename T>
struct RowParams {
  T alpha, w0, w1, w2;
};

// Sobel of pred (rows da, db, dc) and of the ground truth (ya, yb, yc), all read at columns
// q-1..q+1 (one zero column of padding each side); m is the stencil validity. Writes
// d (N_s (w1 gradient + w2 normal)) / d(ĝx, ĝy) into ox, oy and returns the row's gradient and
// normal sums (unscaled) in sg, sn.
template <typename T, bool GRAD, bool NORMAL>
void sobel_row(const T* __restrict da, const T* __restrict db, const T* __restrict dc,
               const T* __restrict ya, const T* __restrict yb, const T* __restrict yc,
               const T* __restrict m, T* __restrict ox, T* __restrict oy, int64_t W,
               const RowParams<T>& rp, T& sg_out, T& sn_out) {
  const T alpha = rp.alpha, w1 = rp.w1, w2 = rp.w2;
  T sg = T(0), sn = T(0);
#pragma omp simd reduction(+ : sg, sn)
  for (int64_t q = 0; q < W; ++q) {
    const T px = (da[q - 1] + 2 * db[q - 1] + dc[q - 1]) - (da[q + 1] + 2 * db[q + 1] + dc[q + 1]);
    const T py = (da[q - 1] + 2 * da[q] + da[q + 1]) - (dc[q - 1] + 2 * dc[q] + dc[q + 1]);
    const T gx = (ya[q - 1] + 2 * yb[q - 1] + yc[q - 1]) - (ya[q + 1] + 2 * yb[q + 1] + yc[q + 1]);
    const T gy = (ya[q - 1] + 2 * ya[q] + ya[q + 1]) - (yc[q - 1] + 2 * yc[q] + yc[q + 1]);
    const T mq = m[q];
    T ax = T(0), ay = T(0);
    if constexpr (GRAD) {
      const T ex = px - gx, ey = py - gy;
      const T aex = std::abs(ex) + alpha, aey = std::abs(ey) + alpha;
      sg += mq * log_sum_approx(aex, aey);  // ln aex + ln aey
      ax = w1 * sign_of(ex) / aex;
      ay = w1 * sign_of(ey) / aey;
    }
    if constexpr (NORMAL) {
      const T np2 = px * px + py * py + T(1);
      const T ng2 = gx * gx + gy * gy + T(1);
      // 1/(|n̂||n|) = rsqrt(np2 ng2) with the product scaled by k² (k = 2^-32 for float, 2^-500
      // for double; exact, and the same bits as unscaled): unscaled it overflowed float32 once
      // ŷ's Sobel passed 1e19 (a diverged network) and the loss became inf with NaN gradients.
      // An infinite np2 gives 0 (cos = 0), as in the reference. (One rsqrt of the product, not
      // rsqrt(np2) rsqrt(ng2): with ŷ's Sobel equal to y's the gradient below cancels to 0.)
      constexpr T k = std::is_same_v<T, float> ? T(0x1p-32) : T(0x1p-500);
      const T inv_pg = inv_sqrt_approx((np2 * (k * k)) * ng2) * k;
      const T c = (px * gx + py * gy + T(1)) * inv_pg;
      sn += mq * std::abs(T(1) - c);
      const T s = -w2 * sign_of(T(1) - c);
      // a division, not c inv_pg² ng2: with ŷ's Sobel equal to y's, gx inv_pg - (c / np2) px
      // cancels to exactly 0 (test_sign_of_zero_gives_zero_gradient), the product form did not
      const T c_np2 = c / np2;
      ax += s * (gx * inv_pg - c_np2 * px);
      ay += s * (gy * inv_pg - c_np2 * py);
    }
    ox[q] = ax * mq;
    oy[q] = ay * mq;
  }
  sg_out = sg;
  sn_out = sn;
}

// Depth term of one row: returns its (unscaled) sum, writes d depth / d pred into g.
template <typename T, bool LOG>
T depth_row(const T* __restrict d, const T* __restrict y, const T* __restrict m, T* __restrict g,
            int64_t W, const RowParams<T>& rp) {
  const T alpha = rp.alpha, scale = rp.w0;
  T sd = T(0);
#pragma omp simd reduction(+ : sd)
  for (int64_t q = 0; q < W; ++q) {
    const T e = d[q] - y[q];
    const T ae = std::abs(e);
    T v, gq;
    if constexpr (LOG) {
      v = log_approx(ae + alpha);
      gq = sign_of(e) / (ae + alpha);
    } else {
      v = ae;
      gq = sign_of(e);
    }
    sd += m[q] * v;
    g[q] = scale * m[q] * gq;
  }
  return sd;
}

// g = Sobel_x^T(P) + Sobel_y^T(Q) at one row: P, Q rows above (a), at (b) and below (c).
template <typename T>
void sobel_adjoint_row(const T* __restrict xa, const T* __restrict xb, const T* __restrict xc,
                       const T* __restrict ya, const T* __restrict yc, T* __restrict g, int64_t W) {
#pragma omp simd
  for (int64_t q = 0; q < W; ++q) {
    const T gxa = (xc[q + 1] + 2 * xb[q + 1] + xa[q + 1]) - (xc[q - 1] + 2 * xb[q - 1] + xa[q - 1]);
    const T gya = (yc[q + 1] + 2 * yc[q] + yc[q - 1]) - (ya[q + 1] + 2 * ya[q] + ya[q - 1]);
    g[q] = gxa + gya;
  }
}

// out = gd * a + gs * b over [begin, end) (gs null: gd * a), computed in T with the products and
// the sum rounded one by one, as the reference's tensor operations do: no fused multiply-add
// here, so the result is the reference's to the bit (normalise_gradient_reference, and with
// b = 0 and gs null the backward's g * grad).
template <typename in_t, typename out_t, typename T>
__attribute__((optimize("fp-contract=off"))) void scale_add_tile(const in_t* __restrict gd,
                                                                  const in_t* __restrict gs,
                                                                  out_t* __restrict out, int64_t begin,
                                                                  int64_t end, T a, T b) {
  if (gs == nullptr) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) store_narrow(out, i, static_cast<T>(gd[i]) * a);
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const T depth = static_cast<T>(gd[i]) * a;
      const T stencil = static_cast<T>(gs[i]) * b;
      store_narrow(out, i, depth + stencil);
    }
  }
}

// d total / d pred of one row from its two unnormalised parts (gs null: the depth part only),
// each rounded to pred's dtype as the two-part pass stores them, then combined by
// scale_add_tile's arithmetic: the bits of the two-part pass and normalise_gradient.
template <typename scalar_t, typename T>
__attribute__((optimize("fp-contract=off"))) void combine_row(const T* __restrict gd, const T* __restrict gs,
                                                              scalar_t* __restrict out, int64_t W, T a, T b) {
  if (gs == nullptr) {
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) store_narrow(out, q, narrowed<scalar_t>(gd[q]) * a);
  } else {
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) {
      const T depth = narrowed<scalar_t>(gd[q]) * a;
      const T stencil = narrowed<scalar_t>(gs[q]) * b;
      store_narrow(out, q, depth + stencil);
    }
  }
}

// The rows one tile works on, kept per thread and reused by its next tile and the next call: a
// fresh zero-filled std::vector per buffer per tile was 4% of the loss's time. Only what is
// read as padding is cleared.
template <typename T>
struct TileScratch {
  std::vector<T> valid, stencil_valid, padded, acc, pred, stencil_target, sanitised, tmp, row, dpx, dpy;
  std::vector<T> grad_depth, grad_stencil, target_row;
  std::vector<int64_t> vcount;

  // the first n elements of v (grown when needed, never shrunk; contents unspecified)
  template <typename V>
  static typename V::value_type* take(V& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
    return v.data();
  }
};

template <typename T>
TileScratch<T>& tile_scratch() {
  thread_local TileScratch<T> scratch;
  return scratch;
}

// 1 / max(n, 1): the factor a term's count gives its gradient (a NaN count propagates, as in max())
template <typename T>
inline T inverse_count(T n) {
  return T(1) / std::max(n, T(1));
}

// scalar_t: pred's (and the gradients') dtype; target_t: the ground truth's (scalar_t or T);
// T: the compute dtype.
template <typename scalar_t, typename target_t, typename T>
struct LossKernel {
  const scalar_t* pred;
  const target_t* target;
  const bool* mask;  // may be null
  scalar_t* grad_depth;
  scalar_t* grad_stencil;  // null when neither stencil term is on, or when ``combined``
  // ``combined``: every pixel is expected valid, so N_d = N_s = B H W is known before the pass and
  // each row is written as d total / d pred (grad_depth, inv_d and inv_s applied) into
  // grad_depth at once, by normalise_gradient's arithmetic (scale_add_tile)
  bool combined = false;
  T inv_d = T(1), inv_s = T(1);
  int64_t B, H, W;
  LossOptions opt;
  RowParams<T> rp;
  std::array<T, 7> gw;

  // Row i of the sanitised ground truth (non-finite -> 0) into out[0..W).
  void sanitised_row(int64_t b, int64_t i, T* out) const {
    const target_t* src = target + (b * H + i) * W;
#pragma omp simd
    for (int64_t q = 0; q < W; ++q) {
      const T v = static_cast<T>(src[q]);
      out[q] = std::isfinite(v) ? v : T(0);
    }
  }

  // Row i of the ground truth for the Sobel stencil (blurred when asked) into out[0..W).
  // ``cache`` holds the sanitised rows [cache_lo, cache_hi); rows outside it (only reached by
  // the reflection on tiny maps) are sanitised on the fly into ``row`` (7 rows of scratch).
  void stencil_row(int64_t b, int64_t i, T* out, T* tmp, T* row, const T* cache, int64_t cache_lo,
                   int64_t cache_hi) const {
    if (!opt.blur) {
      sanitised_row(b, i, out);
      return;
    }
    // vertical pass into tmp (in the reference's order: taps 0..6, one pass over the seven rows),
    // then horizontal (reflect-101 indices, folded for tiny maps)
    const T* r[7];
    for (int k = 0; k < 7; ++k) {
      const int64_t src = reflect101(i + k - kBlurRadius, H);
      if (src >= cache_lo && src < cache_hi) {
        r[k] = cache + (src - cache_lo) * W;
      } else {
        sanitised_row(b, src, row + k * W);
        r[k] = row + k * W;
      }
    }
    {
      const T w0 = gw[0], w1 = gw[1], w2 = gw[2], w3 = gw[3], w4 = gw[4], w5 = gw[5], w6 = gw[6];
      const T *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3], *r4 = r[4], *r5 = r[5], *r6 = r[6];
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) {
        T v = T(0);
        v += w0 * r0[q];
        v += w1 * r1[q];
        v += w2 * r2[q];
        v += w3 * r3[q];
        v += w4 * r4[q];
        v += w5 * r5[q];
        v += w6 * r6[q];
        tmp[q] = v;
      }
    }
    auto border = [&](int64_t q) {
      T s = T(0);
      for (int k = 0; k < 7; ++k) s += gw[k] * tmp[reflect101(q + k - kBlurRadius, W)];
      out[q] = s;
    };
    const int64_t lo = std::min<int64_t>(kBlurRadius, W);
    const int64_t hi = std::max<int64_t>(lo, W - kBlurRadius);
    for (int64_t q = 0; q < lo; ++q) border(q);
    const T w0 = gw[0], w1 = gw[1], w2 = gw[2], w3 = gw[3], w4 = gw[4], w5 = gw[5], w6 = gw[6];
#pragma omp simd
    for (int64_t q = lo; q < hi; ++q)
      out[q] = w0 * tmp[q - 3] + w1 * tmp[q - 2] + w2 * tmp[q - 1] + w3 * tmp[q] + w4 * tmp[q + 1] +
               w5 * tmp[q + 2] + w6 * tmp[q + 3];
    for (int64_t q = hi; q < W; ++q) border(q);
  }

  // Rows [r0 - halo, r1 + halo) of a tile buffer (rows W + 2 apart): a row inside [lo, hi) gets a
  // zero column each side and fill(j, row + 1) between them, any other row is zero (the Sobel's
  // zero padding outside the image).
  template <typename F>
  void padded_rows(T* buf, int64_t r0, int64_t r1, int halo, int64_t lo, int64_t hi, F fill) const {
    const int64_t Wp = W + 2;
    for (int64_t j = r0 - halo; j < r1 + halo; ++j) {
      T* row = buf + (j - r0 + halo) * Wp;
      if (j < lo || j >= hi) {
        std::fill(row, row + Wp, T(0));
        continue;
      }
      row[0] = row[W + 1] = T(0);
      fill(j, row + 1);
    }
  }

  // Sums (depth, gradient, normal, N_d, N_s) of one tile; writes the gradients on rows [r0, r1).
  template <bool GRAD, bool NORMAL, bool LOG>
  std::array<double, 5> tile(int64_t b, int64_t r0, int64_t r1) const {
    constexpr bool SOBEL = GRAD || NORMAL;
    const int64_t Wp = W + 2;
    const int64_t rows = r1 - r0;
    TileScratch<T>& sc = tile_scratch<T>();
    // validity of rows [vlo, vhi) and each row's count: the tile's rows, and with a stencil the
    // rows its stencil validity reads (rows r0-1..r1, eroded by h rows each side)
    const int h = SOBEL ? (opt.blur ? 1 + kBlurRadius : 1) : 0;
    const int64_t mlo = SOBEL ? std::max<int64_t>(0, r0 - 1) : r0;
    const int64_t mhi = SOBEL ? std::min<int64_t>(H, r1 + 1) : r1;
    const int64_t vlo = std::max<int64_t>(0, mlo - h), vhi = std::min<int64_t>(H, mhi + h);
    T* valid = sc.take(sc.valid, (vhi - vlo) * W);
    int64_t* vcount = sc.take(sc.vcount, vhi - vlo);
    for (int64_t j = vlo; j < vhi; ++j)
      vcount[j - vlo] = validity_row(target + (b * H + j) * W, mask ? mask + (b * H + j) * W : nullptr, W,
                                     valid + (j - vlo) * W);
    // pred on rows [r0-2, r1+2) (rows [r0, r1) without a stencil), one zero column each side and
    // zero rows outside the image (the Sobel's zero padding)
    const int64_t dlo = SOBEL ? std::max<int64_t>(0, r0 - 2) : r0;
    const int64_t dhi = SOBEL ? std::min<int64_t>(H, r1 + 2) : r1;
    T* dbuf = sc.take(sc.pred, (rows + 4) * Wp);
    padded_rows(dbuf, r0, r1, 2, dlo, dhi, [&](int64_t j, T* drow) {
      const scalar_t* src = pred + (b * H + j) * W;
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) drow[q] = static_cast<T>(src[q]);
    });
    double s_depth = 0.0, s_grad = 0.0, s_norm = 0.0;
    int64_t count_s = 0;
    // the sanitised ground truth of row r0 when the stencil pass made it (the blur's cache, or
    // without the blur the stencil ground truth itself), rows ystride apart; else made per row
    const T* ysan = nullptr;
    T* dpx = nullptr;
    T* dpy = nullptr;
    if constexpr (SOBEL) {
      // stencil validity of rows [mlo, mhi): the validity eroded by h vertically (rows outside the
      // image count as valid), then horizontally. Vertically, acc counts the invalid pixels per
      // column over the rows [a_lo, a_hi) of the window; it slides with j (lo and hi only grow)
      // and only rows holding an invalid pixel touch it, so a dense ground truth costs no pass.
      T* sv = sc.take(sc.stencil_valid, (mhi - mlo) * W);
      T* padded = sc.take(sc.padded, W + 2 * h);
      T* acc = sc.take(sc.acc, W);
      std::fill(padded, padded + W + 2 * h, T(1));
      std::fill(acc, acc + W, T(0));
      int64_t a_lo = vlo, a_hi = vlo, partial_rows = 0;  // rows of the window with an invalid pixel
      for (int64_t j = mlo; j < mhi; ++j) {
        const int64_t lo = std::max<int64_t>(vlo, j - h), hi = std::min<int64_t>(vhi, j + h + 1);
        for (; a_hi < hi; ++a_hi) {
          if (vcount[a_hi - vlo] == W) continue;
          const T* v = valid + (a_hi - vlo) * W;
#pragma omp simd
          for (int64_t q = 0; q < W; ++q) acc[q] += T(1) - v[q];
          ++partial_rows;
        }
        for (; a_lo < lo; ++a_lo) {
          if (vcount[a_lo - vlo] == W) continue;
          const T* v = valid + (a_lo - vlo) * W;
#pragma omp simd
          for (int64_t q = 0; q < W; ++q) acc[q] -= T(1) - v[q];
          --partial_rows;
        }
        T* eroded = sv + (j - mlo) * W;
        int64_t n;
        if (partial_rows == 0) {  // every row of the window valid: so is the eroded row
          std::fill(eroded, eroded + W, T(1));
          n = W;
        } else {
          T* col = padded + h;
#pragma omp simd
          for (int64_t q = 0; q < W; ++q) col[q] = acc[q] == T(0) ? T(1) : T(0);
          erode_row(padded, eroded, W, h);
          n = row_count(eroded, W);
        }
        if (j >= r0 && j < r1) count_s += n;
      }
      // the stencil ground truth (blurred when asked) on rows [r0-2, r1+2), laid out as pred
      T* ybuf = sc.take(sc.stencil_target, (rows + 4) * Wp);
      T* tmp = sc.take(sc.tmp, W);
      T* row = sc.take(sc.row, 7 * W);
      // sanitised ground truth rows that the blur of rows [dlo, dhi) reads
      const int64_t clo = opt.blur ? std::max<int64_t>(0, r0 - 2 - kBlurRadius) : 0;
      const int64_t chi = opt.blur ? std::min<int64_t>(H, r1 + 2 + kBlurRadius) : 0;
      T* cache = sc.take(sc.sanitised, (chi - clo) * W);
      for (int64_t j = clo; j < chi; ++j) sanitised_row(b, j, cache + (j - clo) * W);
      padded_rows(ybuf, r0, r1, 2, dlo, dhi,
                  [&](int64_t j, T* yrow) { stencil_row(b, j, yrow, tmp, row, cache, clo, chi); });
      // d/d(ĝx, ĝy) on rows [r0-1, r1+1), zero padded as pred
      dpx = sc.take(sc.dpx, (rows + 2) * Wp);
      dpy = sc.take(sc.dpy, (rows + 2) * Wp);
      padded_rows(dpy, r0, r1, 1, mlo, mhi, [](int64_t, T*) {});   // its rows are written with dpx's
      padded_rows(dpx, r0, r1, 1, mlo, mhi, [&](int64_t j, T* ox) {
        const int64_t jj = j - r0 + 2;
        const T* d = dbuf + jj * Wp + 1;
        const T* y = ybuf + jj * Wp + 1;
        T sg, sn;
        sobel_row<T, GRAD, NORMAL>(d - Wp, d, d + Wp, y - Wp, y, y + Wp, sv + (j - mlo) * W, ox,
                                   dpy + (j - r0 + 1) * Wp + 1, W, rp, sg, sn);
        if (j >= r0 && j < r1) {
          s_grad += static_cast<double>(sg);
          s_norm += static_cast<double>(sn);
        }
      });
      ysan = opt.blur ? cache + (r0 - clo) * W : ybuf + 2 * Wp + 1;
    }
    const int64_t ystride = SOBEL && !opt.blur ? Wp : W;
    T* grow_d = sc.take(sc.grad_depth, W);
    T* grow_s = sc.take(sc.grad_stencil, W);
    T* yrow = sc.take(sc.target_row, W);
    int64_t count = 0;
    for (int64_t i = r0; i < r1; ++i) {
      const T* m = valid + (i - vlo) * W;
      count += vcount[i - vlo];
      const T* y = yrow;
      if (ysan != nullptr) y = ysan + (i - r0) * ystride;
      else sanitised_row(b, i, yrow);
      s_depth += static_cast<double>(depth_row<T, LOG>(dbuf + (i - r0 + 2) * Wp + 1, y, m, grow_d, W, rp));
      scalar_t* out = grad_depth + (b * H + i) * W;
      if constexpr (SOBEL) {
        const T* px = dpx + (i - r0 + 1) * Wp + 1;
        const T* py = dpy + (i - r0 + 1) * Wp + 1;
        sobel_adjoint_row(px - Wp, px, px + Wp, py - Wp, py + Wp, grow_s, W);
      }
      if (combined) {
        combine_row<scalar_t>(grow_d, SOBEL ? grow_s : nullptr, out, W, inv_d, inv_s);
        continue;
      }
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) store_narrow(out, q, grow_d[q]);
      if constexpr (SOBEL) {
        scalar_t* out_s = grad_stencil + (b * H + i) * W;
#pragma omp simd
        for (int64_t q = 0; q < W; ++q) store_narrow(out_s, q, grow_s[q]);
      }
    }
    return {s_depth, s_grad, s_norm, static_cast<double>(count), static_cast<double>(count_s)};
  }

  std::array<double, 5> run_tile(int64_t b, int64_t r0, int64_t r1) const {
    const bool lg = opt.log_depth;
    if (opt.gradient && opt.normal)
      return lg ? tile<true, true, true>(b, r0, r1) : tile<true, true, false>(b, r0, r1);
    if (opt.gradient) return lg ? tile<true, false, true>(b, r0, r1) : tile<true, false, false>(b, r0, r1);
    if (opt.normal) return lg ? tile<false, true, true>(b, r0, r1) : tile<false, true, false>(b, r0, r1);
    return lg ? tile<false, false, true>(b, r0, r1) : tile<false, false, false>(b, r0, r1);
  }
};

// One loss pass over every tile, for pred in scalar_t and the ground truth in target_t; writes the
// gradients, the terms and the counts; returns whether every pixel (and stencil) was valid.
template <typename scalar_t, typename target_t, typename T>
bool run_loss(const at::Tensor& pred, const at::Tensor& target, const bool* mask_ptr, at::Tensor& grad_depth,
              at::Tensor& grad_stencil, const std::string& depth_term, double alpha, bool gradient, bool normal,
              bool blur, const std::vector<double>& weights, at::Tensor& terms, at::Tensor& counts,
              bool combined = false) {
  const int64_t B = pred.size(0), H = pred.size(1), W = pred.size(2);
  const int64_t tiles_per_image = (H + kTileRows - 1) / kTileRows;
  const int64_t ntiles = B * tiles_per_image;
  const bool stencil = gradient || normal;
  LossKernel<scalar_t, target_t, T> kernel;
  kernel.pred = pred.data_ptr<scalar_t>();
  kernel.target = target.data_ptr<target_t>();
  kernel.mask = mask_ptr;
  kernel.grad_depth = grad_depth.data_ptr<scalar_t>();
  kernel.grad_stencil = stencil && !combined ? grad_stencil.data_ptr<scalar_t>() : nullptr;
  kernel.combined = combined;
  if (combined) {   // normalise_gradient's factors for N_d = N_s = B H W (the count rounded to T as there)
    kernel.inv_d = kernel.inv_s = inverse_count(static_cast<T>(static_cast<double>(pred.numel())));
  }
  kernel.B = B;
  kernel.H = H;
  kernel.W = W;
  kernel.opt = LossOptions{depth_term == "log", gradient, normal, blur, alpha,
                           weights[0], weights[1], weights[2]};
  kernel.rp = RowParams<T>{static_cast<T>(alpha), static_cast<T>(weights[0]), static_cast<T>(weights[1]),
                           static_cast<T>(weights[2])};
  kernel.gw = gaussian_weights<T>();
  std::vector<std::array<double, 5>> sums(ntiles);
  at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t b = tile / tiles_per_image, r0 = (tile % tiles_per_image) * kTileRows;
      sums[tile] = kernel.run_tile(b, r0, std::min(H, r0 + kTileRows));
    }
  });
  double s[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (const auto& v : sums)
    for (int k = 0; k < 5; ++k) s[k] += v[k];
  const double inv_d = 1.0 / std::max(s[3], 1.0), inv_s = 1.0 / std::max(s[4], 1.0);
  const double depth = s[0] * inv_d;
  const double grad_term = gradient ? s[1] * inv_s : 0.0;
  const double normal_term = normal ? s[2] * inv_s : 0.0;
  const double total = weights[0] * depth + weights[1] * grad_term + weights[2] * normal_term;
  terms.copy_(at::tensor({depth, grad_term, normal_term, total}, at::kDouble));
  counts.copy_(at::tensor({s[3], gradient ? s[4] : 0.0, normal ? s[4] : 0.0}, at::kDouble));
  // every pixel valid (the counts are exact integers in double, whatever the compute dtype)
  const double n = static_cast<double>(pred.numel());
  return s[3] == n && (!stencil || s[4] == n);
}

// The dtype of the gradient map: pred's, except float32 for float16 (1/N for a batch of NYU
// frames is subnormal in float16; reference.depth_loss.gradient_dtype).
at::ScalarType gradient_dtype(const at::Tensor& pred) {
  return pred.scalar_type() == at::kHalf ? at::kFloat : pred.scalar_type();
}

// The stencil part lives only inside one forward call (normalise_gradient folds it into the
// depth part), so its memory is kept per thread and reused: a fresh map of this size comes from
// zero-filled pages on every call (3.5 MiB at 8x288x384: page faults were a tenth of the
// forward's time right after a network's forward). Grown as needed, never shrunk; one per
// calling thread.
at::Tensor stencil_workspace(const at::Tensor& pred) {
  thread_local at::Tensor buffer;
  const int64_t bytes = pred.numel() * static_cast<int64_t>(pred.element_size());
  if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, pred.options().dtype(at::kByte));
  return buffer.narrow(0, 0, bytes).view(pred.scalar_type()).view(pred.sizes());
}

// d total / d pred = grad_depth (1 / max(N_d, 1)) + grad_stencil (1 / max(N_s, 1)) from the tile
// loop's unnormalised parts (in pred's dtype), in place into grad_depth unless the gradient dtype
// differs (float16 -> float32).
at::Tensor normalise_gradient(at::Tensor& grad_depth, const at::Tensor& grad_stencil, const at::Tensor& counts) {
  const bool stencil = grad_stencil.numel() > 0;
  const auto out_dtype = gradient_dtype(grad_depth);
  at::Tensor out = out_dtype == grad_depth.scalar_type() ? grad_depth : at::empty_like(grad_depth, grad_depth.options().dtype(out_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_depth.scalar_type(), "depth_loss_normalise", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const at::Tensor c = counts.to(c10::CppTypeToScalarType<T>::value);
    const T* n = c.data_ptr<T>();
    const T a = inverse_count(n[0]);
    const T b = inverse_count(std::max(n[1], n[2]));
    const scalar_t* gd = grad_depth.data_ptr<scalar_t>();
    const scalar_t* gs = stencil ? grad_stencil.data_ptr<scalar_t>() : nullptr;
    auto run = [&](auto* o) {
      at::parallel_for(0, grad_depth.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        scale_add_tile<scalar_t>(gd, gs, o, begin, end, a, b);
      });
    };
    if (out_dtype == grad_depth.scalar_type()) run(out.data_ptr<scalar_t>());
    else run(out.data_ptr<float>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depth_loss_forward(
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
  TORCH_CHECK(at::isFloatingType(target_in.scalar_type()),
              "depth_loss_forward: target must be floating point, got ", target_in.scalar_type());
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->sizes() == pred.sizes(), "depth_loss_forward: mask shape ", mask_in->sizes(),
                " differs from pred shape ", pred.sizes());
    mask = (mask_in->scalar_type() == at::kBool ? *mask_in : mask_in->ne(0)).contiguous();
  }
  const bool is_double = pred.scalar_type() == at::kDouble;
  const auto cdtype = is_double ? at::kDouble : at::kFloat;
  // the ground truth in pred's dtype or the compute dtype as it is, any other dtype converted to
  // the compute dtype (never to pred's: that would round a float32 ground truth to bf16/fp16)
  const at::Tensor target =
      (target_in.scalar_type() == pred.scalar_type() ? target_in : target_in.to(cdtype)).contiguous();
  const bool target_in_compute_dtype = target.scalar_type() != pred.scalar_type();
  const bool stencil = gradient || normal;
  at::Tensor grad_depth = at::empty_like(pred);
  at::Tensor terms = at::zeros({4}, pred.options().dtype(cdtype));
  at::Tensor counts = at::zeros({3}, pred.options().dtype(cdtype));
  if (pred.numel() == 0) return {terms, at::empty_like(pred, pred.options().dtype(gradient_dtype(pred))), counts};
  const bool* mask_ptr = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  at::Tensor grad_stencil = at::empty({0}, pred.options());
  auto pass = [&](bool combined) {
    bool all_valid = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "depth_loss_forward", [&] {
      using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      if (target_in_compute_dtype) {
        all_valid = run_loss<scalar_t, T, T>(pred, target, mask_ptr, grad_depth, grad_stencil, depth_term, alpha,
                                             gradient, normal, blur, weights, terms, counts, combined);
      } else {
        all_valid = run_loss<scalar_t, scalar_t, T>(pred, target, mask_ptr, grad_depth, grad_stencil, depth_term,
                                                    alpha, gradient, normal, blur, weights, terms, counts, combined);
      }
    });
    return all_valid;
  };
  // Every pixel valid (dense ground truth, no holes): the counts are B H W before the pass, so it
  // writes d total / d pred at once (no stencil part, no normalising pass). Whether to expect
  // that is the last call's outcome on this thread; a pass that meets an invalid pixel is redone
  // in two parts (then the following calls take two parts until a batch is all valid again).
  // Same bits either way: the combined rows use normalise_gradient's arithmetic.
  thread_local bool expect_all_valid = true;
  if (expect_all_valid && gradient_dtype(pred) == pred.scalar_type()) {
    if (pass(true)) return {terms, grad_depth, counts};
    expect_all_valid = false;
  }
  if (stencil) grad_stencil = stencil_workspace(pred);
  expect_all_valid = pass(false);
  return {terms, normalise_gradient(grad_depth, grad_stencil, counts), counts};
}

// d loss / d pred = g grad, in the compute dtype, returned in dtype (pred's): one pass
// (fastmde/reference/depth_loss.py: depth_loss_backward_reference is the spec).
at::Tensor depth_loss_backward(const at::Tensor& grad_total, const at::Tensor& grad_in, at::ScalarType dtype) {
  TORCH_CHECK(grad_in.device().is_cpu(), "depth_loss_backward: grad must be a CPU tensor");
  TORCH_CHECK(grad_total.numel() == 1, "depth_loss_backward: grad_total must hold one value");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor out = at::empty_like(grad, grad.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depth_loss_backward", [&] {
    using in_t = scalar_t;
    using T = std::conditional_t<std::is_same_v<in_t, double>, double, float>;
    const T g = grad_total.to(c10::CppTypeToScalarType<T>::value).item<T>();
    const in_t* gd = grad.data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "depth_loss_backward_out", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      at::parallel_for(0, grad.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        scale_add_tile<in_t, scalar_t, T>(gd, nullptr, o, begin, end, g, T(0));
      });
    });
  });
  return out;
}

}  // namespace

void register_depth_loss(pybind11::module_& m) {
  m.def("depth_loss_forward", &depth_loss_forward,
        "Fused depth loss: (terms [depth, gradient, normal, total], d total / d pred, counts [N_d, N_s, N_s])",
        pybind11::arg("pred"), pybind11::arg("target"), pybind11::arg("mask"),
        pybind11::arg("depth_term"), pybind11::arg("alpha"), pybind11::arg("gradient"),
        pybind11::arg("normal"), pybind11::arg("blur"), pybind11::arg("weights"));
  m.def("depth_loss_backward", &depth_loss_backward,
        "d loss / d pred = grad_total * grad, in dtype",
        pybind11::arg("grad_total"), pybind11::arg("grad"), pybind11::arg("dtype"));
}

}  // namespace fastmde
