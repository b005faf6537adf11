#pragma once
// Branch-free elementwise math that GCC/Clang auto-vectorise (-O3 -march=native): libm's log
// is a call the vectoriser cannot inline, and ATen's Vectorized<T>::log needs the per-CPU
// builds that an extension does not get.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <c10/util/BFloat16.h>

namespace fastmde {

// x = m 2^e with m in [0.5, 1) for a positive finite float; a subnormal x is scaled by 2^25 first
// (its exponent field is 0, so read as it was, log(1e-40) came out several units off).
__attribute__((always_inline)) inline void split_exponent(float x, float& e, float& m) {
  // (one comparison, the product formed unconditionally: with `(x > 0) & (x < min)` gcc kept
  // every loop calling this scalar; x <= 0 is no logarithm's argument here anyway)
  const float scaled = x * 33554432.0f;
  const bool subnormal = x < std::numeric_limits<float>::min();
  x = subnormal ? scaled : x;
  const std::int32_t bits = __builtin_bit_cast(std::int32_t, x);
  e = static_cast<float>(((bits >> 23) & 0xff) - (subnormal ? 126 + 25 : 126));
  m = __builtin_bit_cast(float, (bits & 0x807fffff) | 0x3f000000);
}

// ln(m 2^e) for m in [0.5, 1): Cephes logf's polynomial (relative error about 1 ulp).
__attribute__((always_inline)) inline float log_of_split(float e, float m) {
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// x = m 2^e with m in [0.5, 1) for a positive finite double (subnormals scaled by 2^54 first).
__attribute__((always_inline)) inline void split_exponent(double x, double& e, double& m) {
  const double scaled = x * 18014398509481984.0;  // as in the float version
  const bool subnormal = x < std::numeric_limits<double>::min();
  x = subnormal ? scaled : x;
  const std::int64_t bits = __builtin_bit_cast(std::int64_t, x);
  e = static_cast<double>(((bits >> 52) & 0x7ff) - (subnormal ? 1022 + 54 : 1022));
  m = __builtin_bit_cast(double, (bits & static_cast<std::int64_t>(0x800fffffffffffffULL)) | 0x3fe0000000000000LL);
}

// ln(m 2^e) for m in [0.5, 1): Cephes log's rational approximation (about 1 ulp).
__attribute__((always_inline)) inline double log_of_split(double e, double m) {
  const bool small = m < 0.70710678118654752440;
  e = small ? e - 1.0 : e;
  m = small ? m + m - 1.0 : m - 1.0;
  const double z = m * m;
  const double p = ((((1.01875663804580931796e-4 * m + 4.97494994976747001425e-1) * m +
                      4.70579119878881725854e0) * m + 1.44989225341610930846e1) * m +
                    1.79368678507819816313e1) * m + 7.70838733755885391666e0;
  const double q = ((((m + 1.12873587189167450590e1) * m + 4.52279145837532221105e1) * m +
                     8.29875266912776603211e1) * m + 7.11544750618563894466e1) * m +
                   2.31251620126765340583e1;
  double y = m * (z * p / q);
  y -= e * 2.121944400546905827679e-4;
  y -= 0.5 * z;
  return m + y + e * 0.693359375;
}

// Natural log of a positive float or double (Cephes, about 1 ulp; subnormals included); inf and
// NaN pass through, as from std::log.
template <typename T>
__attribute__((always_inline)) inline T log_approx(T x) {
  T e, m;
  split_exponent(x, e, m);
  const T r = log_of_split(e, m);
  return x < std::numeric_limits<T>::infinity() ? r : x;
}

// ln a + ln b of positive a, b with one polynomial: ln(m_a m_b 2^(e_a + e_b)), the mantissas'
// product renormalised to [0.5, 1) (never over- or underflows, unlike ln(a b)); inf or NaN in
// either gives a + b.
template <typename T>
__attribute__((always_inline)) inline T log_sum_approx(T a, T b) {
  T ea, ma, eb, mb;
  split_exponent(a, ea, ma);
  split_exponent(b, eb, mb);
  T m = ma * mb;  // [0.25, 1)
  const bool low = m < T(0.5);
  m = low ? m + m : m;
  const T r = log_of_split(ea + eb - (low ? T(1) : T(0)), m);
  const T inf = std::numeric_limits<T>::infinity();
  return (a < inf) & (b < inf) ? r : a + b;
}

// 1 / sqrt(x) for x >= 1: bit-trick start and Newton steps to full precision; 0 for x = inf,
// NaN for NaN. std::sqrt sets errno on negative input, which keeps GCC from vectorising loops
// that call it.
__attribute__((always_inline)) inline float inv_sqrt_approx(float x) {
  float y = __builtin_bit_cast(float, 0x5f3759df - (__builtin_bit_cast(std::int32_t, x) >> 1));
  for (int i = 0; i < 3; ++i) y = y * (1.5f - 0.5f * x * y * y);
  return x == std::numeric_limits<float>::infinity() ? 0.0f : y;
}

__attribute__((always_inline)) inline double inv_sqrt_approx(double x) {
  double y = __builtin_bit_cast(double, 0x5fe6eb50c7b537a9LL - (__builtin_bit_cast(std::int64_t, x) >> 1));
  for (int i = 0; i < 5; ++i) y = y * (1.5 - 0.5 * x * y * y);
  return x == std::numeric_limits<double>::infinity() ? 0.0 : y;
}

template <typename T>
__attribute__((always_inline)) inline T sign_of(T v) {
  return static_cast<T>(v > T(0)) - static_cast<T>(v < T(0));
}

// out[q] = v rounded to P. For bfloat16 the rounding of c10::BFloat16(float) (to nearest even,
// NaN -> 0x7FC0) written branch-free: c10's conversion branches on NaN, which keeps gcc from
// vectorising a loop that stores bfloat16.
template <typename P, typename T>
__attribute__((always_inline)) inline void store_narrow(P* out, std::int64_t q, T v) {
  out[q] = static_cast<P>(v);
}

template <typename T>
__attribute__((always_inline)) inline void store_narrow(c10::BFloat16* out, std::int64_t q, T v) {
  const float f = static_cast<float>(v);
  const std::uint32_t u = __builtin_bit_cast(std::uint32_t, f);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  reinterpret_cast<std::uint16_t*>(out)[q] = static_cast<std::uint16_t>(f != f ? 0x7FC0u : rounded);
}

// v rounded to P's precision exactly as store_narrow stores it, back in T (the value a later
// pass reads from the stored map): identity for P = T.
template <typename P, typename T>
__attribute__((always_inline)) inline T narrowed(T v) {
  if constexpr (std::is_same_v<P, c10::BFloat16>) {
    const float f = static_cast<float>(v);
    const std::uint32_t u = __builtin_bit_cast(std::uint32_t, f);
    const float rounded = __builtin_bit_cast(float, (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
    return static_cast<T>(f != f ? f : rounded);
  } else {
    return static_cast<T>(static_cast<P>(v));
  }
}

}  // namespace fastmde
