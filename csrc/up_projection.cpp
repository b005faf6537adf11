// Bilinear upsample + k x k convolution (fastmde/reference/up_projection.py is the spec),
// without the upsampled tensor and with the convolution's multiply-adds at the input size.
//
// Channel mixing commutes with the (per-channel, linear) spatial upsampling, so with
// W_t = weight[:, :, kh, kw] and S_t the shift of tap t (zero outside the output),
//
//     out = Σ_t S_t(up(W_t x)) ,      up = V ⊗ U   (vertical and horizontal 2-tap interpolation)
//
// Forward, per band of output rows: z = x_rows @ [W_t]^T (one GEMM at the low resolution for
// all k² taps and all output channels), then the separable interpolation-and-shift passes:
// horizontal (per low-res row, k² taps -> k), vertical (k taps -> the output row). Backward is
// the adjoint: g -> vertical adjoint -> horizontal adjoint gives t (the k² tap maps at the low
// resolution), grad_x = t @ [W_t] and grad_weight = t^T @ x, again GEMMs at the input size.
// Everything is exact up to float rounding, for any sizes and both align_corners settings.
// Inner loops run over the output channels (contiguous in the pixel-major buffers).
//
// bfloat16 input on a CPU with bf16 matrix units (AMX-BF16 or AVX512-BF16): the GEMMs run in
// bfloat16 through ATen (oneDNN, float32 accumulation), z and the output rows are stored in bfloat16 and every
// interpolation pass accumulates in float32; float16 and float32 compute in float32, float64
// in float64 (Z below is the storage type of z and of the output, T the accumulation type).
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fastmde.h"
#include "simd_math.h"

namespace fastmde {
namespace {

// Elements of the per-band buffers (at most about 16 MB): bounds the extra memory. Bands of
// a quarter of this ran the U-Net's last block (1x64x144x192 -> 288x384, bfloat16) 1.3x slower
// forward and 1.1x slower backward: their GEMMs over 3-5 low-resolution rows paid oneDNN's
// per-call cost (5-row GEMMs at half the speed of 10-row ones).
constexpr int64_t kBandBudget = int64_t(1) << 22;

// One axis of the bilinear interpolation (PyTorch's upsample_bilinear2d conventions).
template <typename T>
struct Axis {
  int64_t in = 0, out = 0;
  std::vector<int64_t> i0, i1;  // per output (upsampled) coordinate
  std::vector<T> l0, l1;
  // inverse: for each input index, the (upsampled coordinate, weight) pairs that read it
  std::vector<std::vector<std::pair<int64_t, T>>> readers;

  Axis(int64_t in_size, int64_t out_size, bool align_corners) : in(in_size), out(out_size) {
    i0.resize(out);
    i1.resize(out);
    l0.resize(out);
    l1.resize(out);
    readers.resize(in);
    T ratio;
    if (align_corners)
      ratio = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
    else
      ratio = static_cast<T>(in) / static_cast<T>(out);
    for (int64_t o = 0; o < out; ++o) {
      T src = align_corners ? ratio * static_cast<T>(o)
                            : std::max(ratio * (static_cast<T>(o) + T(0.5)) - T(0.5), T(0));
      int64_t a = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
      T lam = std::min(std::max(src - static_cast<T>(a), T(0)), T(1));
      i0[o] = a;
      i1[o] = a + (a < in - 1 ? 1 : 0);
      l1[o] = lam;
      l0[o] = T(1) - lam;
      readers[i0[o]].emplace_back(o, l0[o]);
      readers[i1[o]].emplace_back(o, l1[o]);
    }
  }
};

inline void check_inputs(const char* what, const at::Tensor& x, const at::Tensor& weight,
                         const std::vector<int64_t>& size) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), what, ": x and weight must be CPU tensors");
  TORCH_CHECK(x.dim() == 4, what, ": x must be (B, Cin, h, w), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              what, ": weight must be (Cout, Cin, k, k) with k odd, got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), what, ": weight has ", weight.size(1),
              " input channels but x has ", x.size(1));
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, what, ": size must be [H, W] > 0");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, what, ": x must not be empty, got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() == weight.scalar_type(), what,
              ": x and weight must have the same floating dtype, got ", x.scalar_type(), " and ",
              weight.scalar_type());
}

inline at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Whether the CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16), read once through cpuinfo.
inline bool cpu_has_bf16_units() {
  static const bool has = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    auto flag = [&](const char* name) {
      const auto it = caps.find(name);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return flag("amx_bf16") || flag("avx512_bf16");
  }();
  return has;
}

// The dtype of the GEMM operands, of z and of the output: bfloat16 stays where the CPU has bf16
// matrix units (the GEMMs then run on them); elsewhere, and for every other dtype, the compute
// type (a bf16 GEMM without those units is slower than the float32 one).
inline at::ScalarType storage_type(at::ScalarType t) {
  return t == at::kBFloat16 && cpu_has_bf16_units() ? at::kBFloat16 : compute_type(t);
}

// weight (C, Cin, k, k) -> Wm (k*k*C, Cin), rows ordered (kh, kw, co)
inline at::Tensor tap_matrix(const at::Tensor& weight, at::ScalarType ct) {
  const int64_t C = weight.size(0), Cin = weight.size(1), k = weight.size(2);
  return weight.to(ct).permute({2, 3, 0, 1}).reshape({k * k * C, Cin}).contiguous();
}

// dst[c * dst_c + x * dst_x] = src[x * C + c] for a (n, C) pixel-major row: a blocked
// transpose when dst is channel-major (NCHW), a plain copy when it is pixel-major.
template <typename T, typename O>
void store_row(const T* __restrict src, O* __restrict dst, int64_t n, int64_t C, int64_t dst_c, int64_t dst_x) {
  if (dst_c == 1) {
    for (int64_t x = 0; x < n; ++x)
      for (int64_t c = 0; c < C; ++c) dst[x * dst_x + c] = static_cast<O>(src[x * C + c]);
    return;
  }
  constexpr int64_t kBlock = 16;
  for (int64_t x0 = 0; x0 < n; x0 += kBlock) {
    const int64_t x1 = std::min(n, x0 + kBlock);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = x0; x < x1; ++x) dst[c * dst_c + x * dst_x] = static_cast<O>(src[x * C + c]);
  }
}

// The inverse gather: dst[x * C + c] = src[c * src_c + x * src_x].
template <typename S, typename T>
void load_row(const S* __restrict src, T* __restrict dst, int64_t n, int64_t C, int64_t src_c, int64_t src_x) {
  if (src_c == 1) {
    for (int64_t x = 0; x < n; ++x)
      for (int64_t c = 0; c < C; ++c) dst[x * C + c] = static_cast<T>(src[x * src_x + c]);
    return;
  }
  constexpr int64_t kBlock = 16;
  for (int64_t x0 = 0; x0 < n; x0 += kBlock) {
    const int64_t x1 = std::min(n, x0 + kBlock);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = x0; x < x1; ++x) dst[x * C + c] = static_cast<T>(src[c * src_c + x * src_x]);
  }
}

template <typename T, typename Z>
void forward_impl(const at::Tensor& xcl, const at::Tensor& Wm, at::Tensor& out, int64_t C, int64_t k,
                  const Axis<T>& ay, const Axis<T>& ax) {
  const int64_t B = xcl.size(0), h = xcl.size(1), w = xcl.size(2), Cin = xcl.size(3);
  const int64_t H = ay.out, W = ax.out, p = k / 2, kk = k * k;
  // low-res rows read by output row Y (over its k taps)
  std::vector<int64_t> rmin(H), rmax(H);
  for (int64_t Y = 0; Y < H; ++Y) {
    int64_t lo = h, hi = -1;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t u = Y + t - p;
      if (u < 0 || u >= H) continue;
      lo = std::min(lo, ay.i0[u]);
      hi = std::max(hi, ay.i1[u]);
    }
    rmin[Y] = lo;
    rmax[Y] = hi;
  }
  const int64_t per_row = w * kk * C + W * k * C;
  const int64_t rows_budget = std::max<int64_t>(2, kBandBudget / per_row);
  const int64_t BY = std::max<int64_t>(1, rows_budget * H / std::max<int64_t>(1, h) / 2);
  int64_t cap = 1;
  for (int64_t Y0 = 0; Y0 < H; Y0 += BY)
    cap = std::max(cap, rmax[std::min(H, Y0 + BY) - 1] - rmin[Y0] + 1);
  Z* out_ptr = out.data_ptr<Z>();
  const int64_t os_b = out.stride(0), os_c = out.stride(1), os_y = out.stride(2), os_x = out.stride(3);
  const int64_t urow = W * k * C;
  const int64_t nbands = (H + BY - 1) / BY;

  // Bands run one after another, carrying their interpolated rows from band to band; each
  // pass inside is parallel, and the GEMM runs at the top level so that BLAS threads it
  // itself. (Calling ATen kernels from several threads of one parallel region gave wrong
  // results.)
  at::Tensor ubuf = at::empty({cap, W, k, C}, Wm.options().dtype(c10::CppTypeToScalarType<T>::value));
  at::Tensor zbuf = at::empty({cap * w, kk * C}, Wm.options());
  T* u = ubuf.data_ptr<T>();
  int64_t have_lo = 0, have_hi = -1, have_b = -1;  // low-res rows of image have_b held in ubuf
  for (int64_t band = 0; band < B * nbands; ++band) {
    const int64_t b = band / nbands;
    if (b != have_b) {
      have_lo = 0;
      have_hi = -1;
      have_b = b;
    }
    const int64_t Y0 = (band % nbands) * BY;
    const int64_t Y1 = std::min(H, Y0 + BY);
    const int64_t nlo = rmin[Y0], nhi = rmax[Y1 - 1];
    int64_t first_new = nlo;
    if (have_hi >= nlo && have_lo <= nlo) {  // keep the overlap with the previous band
      const int64_t keep = have_hi - nlo + 1;
      std::memmove(u, u + (nlo - have_lo) * urow, sizeof(T) * keep * urow);
      first_new = have_hi + 1;
    }
    have_lo = nlo;
    have_hi = nhi;
    if (first_new <= nhi) {
      const int64_t nrows = nhi - first_new + 1;
      // z = x_rows @ Wm^T: one BLAS GEMM on the (pixels, Cin) rows of x, written pixel-major
      // into the band's z buffer, as the passes below read it
      at::Tensor zc = zbuf.narrow(0, 0, nrows * w);
      at::mm_out(zc, xcl[b].slice(0, first_new, nhi + 1).view({nrows * w, Cin}), Wm.t());
      const Z* z = zc.data_ptr<Z>();
      const int64_t off = first_new - nlo;
      // horizontal: u[r, X, kh, :] = Σ_kw Σ_c l_c(X') z[r, i_c(X'), kh, kw, :], X' = X + kw - p
      at::parallel_for(0, nrows * W, 16, [&](int64_t begin, int64_t end) {
        for (int64_t rX = begin; rX < end; ++rX) {
          const int64_t r = rX / W, X = rX % W;
          const Z* zr = z + r * w * kk * C;
          for (int64_t kh = 0; kh < k; ++kh) {
            T* acc = u + ((off + r) * W + X) * k * C + kh * C;
            for (int64_t c = 0; c < C; ++c) acc[c] = T(0);
            for (int64_t kw = 0; kw < k; ++kw) {
              const int64_t xu = X + kw - p;
              if (xu < 0 || xu >= W) continue;
              const T a0 = ax.l0[xu], a1 = ax.l1[xu];
              const Z* z0 = zr + (ax.i0[xu] * kk + kh * k + kw) * C;
              const Z* z1 = zr + (ax.i1[xu] * kk + kh * k + kw) * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c)
                acc[c] += a0 * static_cast<T>(z0[c]) + a1 * static_cast<T>(z1[c]);
            }
          }
        }
      });
    }
    // vertical: out[Y, X, :] = Σ_kh Σ_a l_a(Y') u[i_a(Y'), X, kh, :], Y' = Y + kh - p
    at::parallel_for(Y0, Y1, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> obuf(W * C);  // one output row, pixel-major
      for (int64_t Y = begin; Y < end; ++Y) {
        T* orow = obuf.data();
        for (int64_t i = 0; i < W * C; ++i) orow[i] = T(0);
        for (int64_t kh = 0; kh < k; ++kh) {
          const int64_t yu = Y + kh - p;
          if (yu < 0 || yu >= H) continue;
          const T a0 = ay.l0[yu], a1 = ay.l1[yu];
          const T* u0 = u + (ay.i0[yu] - have_lo) * urow + kh * C;
          const T* u1 = u + (ay.i1[yu] - have_lo) * urow + kh * C;
          for (int64_t X = 0; X < W; ++X) {
            T* oc = orow + X * C;
            const T* p0 = u0 + X * k * C;
            const T* p1 = u1 + X * k * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) oc[c] += a0 * p0[c] + a1 * p1[c];
          }
        }
        store_row(orow, out_ptr + b * os_b + Y * os_y, W, C, os_c, os_x);
      }
    });
  }
}

at::Tensor upsample_conv2d_forward(const at::Tensor& x, const at::Tensor& weight,
                                   const std::vector<int64_t>& size, bool align_corners) {
  check_inputs("upsample_conv2d_forward", x, weight, size);
  const auto ct = compute_type(x.scalar_type());
  const auto st = storage_type(x.scalar_type());
  const int64_t B = x.size(0), C = weight.size(0), k = weight.size(2);
  const auto fmt = x.suggest_memory_format();
  at::Tensor out = at::empty({B, C, size[0], size[1]}, x.options().dtype(st).memory_format(fmt));
  if (B == 0 || C == 0) return out.to(x.scalar_type());
  if (x.size(1) == 0) return out.zero_().to(x.scalar_type());
  const at::Tensor xcl = x.permute({0, 2, 3, 1}).to(st).contiguous();  // (B, h, w, Cin)
  const at::Tensor Wm = tap_matrix(weight, st);
  AT_DISPATCH_FLOATING_TYPES(ct, "upsample_conv2d_forward", [&] {
    Axis<scalar_t> ay(x.size(2), size[0], align_corners), ax(x.size(3), size[1], align_corners);
    if (st == at::kBFloat16)
      forward_impl<scalar_t, at::BFloat16>(xcl, Wm, out, C, k, ay, ax);
    else
      forward_impl<scalar_t, scalar_t>(xcl, Wm, out, C, k, ay, ax);
  });
  return out.to(x.scalar_type());
}

template <typename T, typename Z>
void backward_impl(const at::Tensor& g, const at::Tensor& xcl, const at::Tensor& Wm, at::Tensor& gxcl,
                   at::Tensor& gWm, int64_t C, int64_t k, const Axis<T>& ay, const Axis<T>& ax) {
  const int64_t B = xcl.size(0), h = xcl.size(1), w = xcl.size(2), Cin = xcl.size(3);
  const int64_t H = ay.out, W = ax.out, p = k / 2, kk = k * k;
  const int64_t rows_per_in = (H + h - 1) / h + 2;
  const int64_t per_row = w * kk * C + W * k * C + rows_per_in * W * C;
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(h, kBandBudget / per_row));
  // g rows each low-res row band reads
  std::vector<int64_t> gmin(h), gmax(h);
  for (int64_t r = 0; r < h; ++r) {
    int64_t lo = H, hi = -1;
    for (const auto& [yu, wt] : ay.readers[r]) {
      lo = std::min(lo, std::max<int64_t>(0, yu - p));
      hi = std::max(hi, std::min<int64_t>(H - 1, yu + p));
    }
    gmin[r] = lo;
    gmax[r] = hi;
  }
  int64_t gcap = 1;
  for (int64_t r0 = 0; r0 < h; r0 += RB) {
    int64_t lo = H, hi = -1;
    for (int64_t r = r0; r < std::min(h, r0 + RB); ++r) {
      lo = std::min(lo, gmin[r]);
      hi = std::max(hi, gmax[r]);
    }
    gcap = std::max(gcap, hi - lo + 1);
  }
  const Z* g_ptr = g.data_ptr<Z>();
  const int64_t gs_b = g.stride(0), gs_c = g.stride(1), gs_y = g.stride(2), gs_x = g.stride(3);
  const int64_t nbands = (h + RB - 1) / RB;
  // Bands run one after another (see forward_impl): each pass inside is parallel, and the
  // GEMMs run at the top level, adding into one grad_weight in band order.
  const auto acc_options = Wm.options().dtype(c10::CppTypeToScalarType<T>::value);
  // g is read in place when its channels are contiguous (channels_last), else row by row
  // through G, pixel-major in the accumulation type
  const bool g_in_place = gs_c == 1;
  at::Tensor gbuf = at::empty({g_in_place ? 0 : gcap, W, C}, acc_options);
  at::Tensor ubuf = at::empty({RB, W, k, C}, acc_options);
  // t is written in the GEMMs' dtype (bfloat16: each value rounded once, as t.to(bf16) would)
  at::Tensor tbuf = at::empty({RB * w, kk * C}, Wm.options());
  T* G = gbuf.data_ptr<T>();
  T* u = ubuf.data_ptr<T>();
  Z* t = tbuf.data_ptr<Z>();
  for (int64_t band = 0; band < B * nbands; ++band) {
    const int64_t b = band / nbands;
    const int64_t r0 = (band % nbands) * RB;
    const int64_t r1 = std::min(h, r0 + RB), nrows = r1 - r0;
    int64_t glo = H, ghi = -1;
    for (int64_t r = r0; r < r1; ++r) {
      glo = std::min(glo, gmin[r]);
      ghi = std::max(ghi, gmax[r]);
    }
    // vertical adjoint: u[r, X, kh, :] = Σ_{(Y', l) reading r} l g[Y' - kh + p, X, :], g's row Y
    // at src + (Y - row0) * row_stride, its pixels px_stride apart
    auto vertical_adjoint = [&](const auto* src, int64_t row0, int64_t row_stride, int64_t px_stride) {
      at::parallel_for(0, nrows * W, 16, [&](int64_t begin, int64_t end) {
        for (int64_t rX = begin; rX < end; ++rX) {
          const int64_t rl = rX / W, X = rX % W;
          for (int64_t kh = 0; kh < k; ++kh) {
            T* acc = u + ((rl * W + X) * k + kh) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] = T(0);
            for (const auto& [yu, wt] : ay.readers[r0 + rl]) {
              const int64_t Y = yu - kh + p;
              if (Y < 0 || Y >= H) continue;
              const auto* gp = src + (Y - row0) * row_stride + X * px_stride;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) acc[c] += wt * static_cast<T>(gp[c]);
            }
          }
        }
      });
    };
    if (g_in_place) {
      vertical_adjoint(g_ptr + b * gs_b, 0, gs_y, gs_x);
    } else {
      // g[b, :, glo:ghi+1, :] -> G (rows, W, C)
      at::parallel_for(glo, ghi + 1, 1, [&](int64_t begin, int64_t end) {
        for (int64_t Y = begin; Y < end; ++Y)
          load_row(g_ptr + b * gs_b + Y * gs_y, G + (Y - glo) * W * C, W, C, gs_c, gs_x);
      });
      vertical_adjoint(G, glo, W * C, C);
    }
    // horizontal adjoint: t[r, ix, kh, kw, :] = Σ_{(X', l) reading ix} l u[r, X' - kw + p, kh, :],
    // summed in the accumulation type in a per-thread row, then stored in t's dtype
    at::parallel_for(0, nrows * w, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> row(kk * C);
      for (int64_t ri = begin; ri < end; ++ri) {
        const int64_t rl = ri / w, ix = ri % w;
        for (int64_t kh = 0; kh < k; ++kh) {
          for (int64_t kw = 0; kw < k; ++kw) {
            T* acc = row.data() + (kh * k + kw) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] = T(0);
            for (const auto& [xu, wt] : ax.readers[ix]) {
              const int64_t X = xu - kw + p;
              if (X < 0 || X >= W) continue;
              const T* up = u + ((rl * W + X) * k + kh) * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) acc[c] += wt * up[c];
            }
          }
        }
        Z* dst = t + ri * kk * C;
#pragma omp simd
        for (int64_t i = 0; i < kk * C; ++i) store_narrow(dst, i, row[i]);
      }
    });
    // grad_x rows = t @ Wm and grad_Wm += t^T @ x_rows: the forward GEMM's backward, two
    // BLAS GEMMs writing straight into grad_x's rows and accumulating into grad_Wm
    // (bfloat16: t rounded once to bf16, the GEMMs on the bf16 units, grad_Wm summed in float32)
    const at::Tensor t2 = tbuf.narrow(0, 0, nrows * w);
    at::Tensor gx_rows = gxcl[b].slice(0, r0, r1).view({nrows * w, Cin});
    const at::Tensor x_rows = xcl[b].slice(0, r0, r1).view({nrows * w, Cin});
    at::mm_out(gx_rows, t2, Wm);
    if (gWm.scalar_type() == t2.scalar_type())
      gWm.addmm_(t2.t(), x_rows);
    else
      gWm.add_(at::mm(t2.t(), x_rows));
  }
}

std::tuple<at::Tensor, at::Tensor> upsample_conv2d_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& weight,
                                                            const std::vector<int64_t>& size,
                                                            bool align_corners) {
  check_inputs("upsample_conv2d_backward", x, weight, size);
  const int64_t B = x.size(0), Cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t C = weight.size(0), k = weight.size(2);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == B && grad_out.size(1) == C &&
                  grad_out.size(2) == size[0] && grad_out.size(3) == size[1],
              "upsample_conv2d_backward: grad_out must be (", B, ", ", C, ", ", size[0], ", ", size[1],
              "), got ", grad_out.sizes());
  const auto ct = compute_type(x.scalar_type());
  const auto st = storage_type(x.scalar_type());
  const at::Tensor xcl = x.permute({0, 2, 3, 1}).to(st).contiguous();
  const at::Tensor Wm = tap_matrix(weight, st);
  // read in place when already in the storage dtype and dense in NCHW or channels_last
  at::Tensor g = grad_out.to(st);
  if (!g.is_contiguous() && !g.is_contiguous(at::MemoryFormat::ChannelsLast)) g = g.contiguous();
  at::Tensor gxcl = at::empty({B, h, w, Cin}, Wm.options());
  at::Tensor gWm = at::zeros({k * k * C, Cin}, Wm.options().dtype(ct));
  if (B > 0 && C > 0 && Cin > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "upsample_conv2d_backward", [&] {
      Axis<scalar_t> ay(h, size[0], align_corners), ax(w, size[1], align_corners);
      if (st == at::kBFloat16)
        backward_impl<scalar_t, at::BFloat16>(g, xcl, Wm, gxcl, gWm, C, k, ay, ax);
      else
        backward_impl<scalar_t, scalar_t>(g, xcl, Wm, gxcl, gWm, C, k, ay, ax);
    });
  } else {
    gxcl.zero_();
  }
  at::Tensor grad_x = gxcl.permute({0, 3, 1, 2}).to(x.scalar_type());
  at::Tensor grad_w = gWm.view({k, k, C, Cin}).permute({2, 3, 0, 1}).to(weight.scalar_type()).contiguous();
  return {grad_x, grad_w};
}

}  // namespace

void register_up_projection(pybind11::module_& m) {
  m.def("upsample_conv2d_forward", &upsample_conv2d_forward,
        "conv_kxk(bilinear_upsample(x, size), weight), padding k // 2, no bias", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("size"), pybind11::arg("align_corners"));
  m.def("upsample_conv2d_backward", &upsample_conv2d_backward,
        "(grad_x, grad_weight) of upsample_conv2d_forward", pybind11::arg("grad_out"), pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("size"), pybind11::arg("align_corners"));
}

}  // namespace fastmde
