// RMSNorm with an optional fused residual add on the CPU, one pass over each row.
//
// The torch composition (add, float cast, pow, mean, rsqrt, two multiplies, cast) launches
// about eight ops per call; a decode step calls it four times per layer, and at prefill
// sizes the intermediates are row-sized tensors. Rounding follows Qwen3's RMSNorm: the sum
// with the residual and the normalised value are rounded to the input dtype.
#include "rms_norm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>

#include "cpu_simd.h"

namespace baton {
namespace {

using simd::to_float;

#if defined(__x86_64__)
// Eight partial sums: the compiler may not reorder a float sum itself.
template <typename T>
BATON_AVX2 float sum_squares_avx2(const T* v, int64_t H) {
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= H; i += 8) {
    const __m256 x = simd::load8(v + i);
    a = _mm256_fmadd_ps(x, x, a);
  }
  float s = simd::hsum(a);
  for (; i < H; ++i) s += to_float(v[i]) * to_float(v[i]);
  return s;
}
#endif

// One row; always inlined into the two entry points below, so the AVX2 one compiles its
// elementwise loops (residual add, scaling) with 256-bit vectors.
template <bool kAvx2, typename T>
inline __attribute__((always_inline)) void norm_row(const T* x, const T* r, const T* w, T* out,
                                                    T* new_r, int64_t H, float eps) {
  const T* v = x;
  if (r != nullptr) {
    for (int64_t i = 0; i < H; ++i) new_r[i] = T(to_float(x[i]) + to_float(r[i]));
    v = new_r;
  }
  float s = 0.0f;
#if defined(__x86_64__)
  if constexpr (kAvx2) s = sum_squares_avx2(v, H);
  else
#endif
    for (int64_t i = 0; i < H; ++i) s += to_float(v[i]) * to_float(v[i]);
  const float inv = 1.0f / std::sqrt(s / static_cast<float>(H) + eps);
  for (int64_t i = 0; i < H; ++i) out[i] = T(to_float(w[i]) * to_float(T(to_float(v[i]) * inv)));
}

template <typename T>
void norm_rows_plain(const T* x, const T* r, const T* w, T* out, T* new_r, int64_t n0, int64_t n1,
                     int64_t H, float eps) {
  for (int64_t n = n0; n < n1; ++n)
    norm_row<false>(x + n * H, r ? r + n * H : nullptr, w, out + n * H, new_r ? new_r + n * H : nullptr, H, eps);
}

#if defined(__x86_64__)
template <typename T>
BATON_AVX2 void norm_rows_avx2(const T* x, const T* r, const T* w, T* out, T* new_r, int64_t n0,
                               int64_t n1, int64_t H, float eps) {
  for (int64_t n = n0; n < n1; ++n)
    norm_row<true>(x + n * H, r ? r + n * H : nullptr, w, out + n * H, new_r ? new_r + n * H : nullptr, H, eps);
}
#endif

template <typename T>
void rows(const T* x, const T* residual, const T* weight, T* out, T* new_residual, int64_t N,
          int64_t H, float eps) {
#if defined(__x86_64__)
  const bool avx2 = simd::cpu_has_avx2_fma();
#else
  const bool avx2 = false;
#endif
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));  // ~128 KiB per task
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if (avx2) return norm_rows_avx2(x, residual, weight, out, new_residual, begin, end, H, eps);
#endif
    norm_rows_plain(x, residual, weight, out, new_residual, begin, end, H, eps);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                double eps,
                                                const std::optional<at::Tensor>& residual) {
  const int64_t H = x.size(-1), N = H ? x.numel() / H : 0;
  at::Tensor out = at::empty_like(x);
  at::Tensor new_residual = residual ? at::empty_like(x) : at::Tensor();
  if (x.scalar_type() == at::kBFloat16) {
    using T = c10::BFloat16;
    rows<T>(x.data_ptr<T>(), residual ? residual->data_ptr<T>() : nullptr, weight.data_ptr<T>(),
            out.data_ptr<T>(), residual ? new_residual.data_ptr<T>() : nullptr, N, H, eps);
  } else {
    rows<float>(x.data_ptr<float>(), residual ? residual->data_ptr<float>() : nullptr,
                weight.data_ptr<float>(), out.data_ptr<float>(),
                residual ? new_residual.data_ptr<float>() : nullptr, N, H, eps);
  }
  return {out, new_residual};
}

}  // namespace baton
